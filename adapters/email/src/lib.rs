//! carebridge's email adapter: IMAP in, SMTP out.
//!
//! - [`config`]: the `[email.<name>]` table and its pure validation.
//! - [`inbound`]: reads the clinic mailbox (IDLE or polling), submits each message and marks it
//!   `\Seen` (or moves it) only after the router recorded it.
//! - [`parse`]: raw MIME → [`carebridge_contract::Envelope`], or a quarantined submission.
//! - [`quotes`]: strips quoted earlier messages and signatures from replies.
//! - [`html`]: HTML-only bodies to plain text.
//! - [`outbound`]: sends deliveries with lettre, threading and plus-addressing them so replies
//!   come back to the right conversation.
//! - `tls`: certificate trust shared by both directions.
//!
//! The daemon deserialises `[email.<name>]` into [`Config`], calls [`Config::validate`], then
//! [`build_inbound`] and [`build_outbound`] (see `carebridge_contract::adapter_shape`).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod html;
pub mod inbound;
pub mod outbound;
pub mod parse;
pub mod quotes;
mod tls;

pub use config::{Config, ImapConfig, SmtpConfig, TlsMode};
pub use inbound::ImapInbound;
pub use outbound::SmtpOutbound;

use carebridge_contract::config::BuildContext;
use carebridge_contract::{AdapterError, Inbound, Outbound};
use std::sync::Arc;

/// The IMAP reader for an account with an `imap` table; `None` for send-only accounts. Reads
/// the password and CA file, but does not connect (that happens in `run`, with retries).
pub fn build_inbound(cfg: &Config, cx: &BuildContext) -> Result<Option<Box<dyn Inbound>>, AdapterError> {
    let Some(imap) = &cfg.imap else {
        return Ok(None);
    };
    Ok(Some(Box::new(ImapInbound::new(cfg, imap, &cx.config_dir)?)))
}

/// Checks the IMAP side of an account for `carebridge check-config`: reads its password and CA
/// file, then connects and logs in and out once. `Ok` for send-only accounts.
pub async fn check_inbound(cfg: &Config, cx: &BuildContext) -> Result<(), AdapterError> {
    let Some(imap) = &cfg.imap else {
        return Ok(());
    };
    ImapInbound::new(cfg, imap, &cx.config_dir)?.check_login(cx.account.clone()).await
}

/// The SMTP sender for an account with an `smtp` table; `None` for receive-only accounts.
/// Reads the password and CA file, but does not connect (see `Outbound::healthcheck`).
pub fn build_outbound(cfg: &Config, cx: &BuildContext) -> Result<Option<Arc<dyn Outbound>>, AdapterError> {
    Ok(build_smtp(cfg, cx)?.map(|s| Arc::new(s) as Arc<dyn Outbound>))
}

/// Like [`build_outbound`] but with the concrete type, for callers that want
/// [`SmtpOutbound::build_message`] or [`SmtpOutbound::message_id_for`].
pub fn build_smtp(cfg: &Config, cx: &BuildContext) -> Result<Option<SmtpOutbound>, AdapterError> {
    let Some(smtp) = &cfg.smtp else {
        return Ok(None);
    };
    Ok(Some(SmtpOutbound::new(cx.account.clone(), cfg, smtp, &cx.config_dir)?))
}
