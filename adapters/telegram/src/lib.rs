//! carebridge's Telegram adapter: Bot API updates in (long polling or webhook), messages and
//! documents out.
//!
//! # Layout
//! - [`config`]: the `[telegram.<name>]` table and its pure validation.
//! - `api`: a thin Bot API client over reqwest (why not teloxide's `Bot`: see its docs).
//! - [`parse`]: one raw update → an `Envelope` draft, something to ignore, or malformed input
//!   (public for fuzzing: `fuzz/fuzz_targets/bot_update.rs`).
//! - `intake`: one update end to end (parse, download files, submit, decide whether to ack),
//!   shared by both inbound modes.
//! - `inbound`: the long-polling loop, where the getUpdates offset is the ack.
//! - `webhook`: the webhook server (secret header checked, 200 only after a durable receipt).
//! - `outbound`: sendMessage / sendDocument, error classification, staff header, threading.
//! - [`format`]: splitting at 4096 UTF-16 units, MarkdownV2/HTML escaping.
//! - `ratelimit`: Telegram's per-chat and global sending limits.
//!
//! The crate depends on carebridge only through `carebridge-contract`; the daemon calls
//! [`Config::validate`], [`build_inbound`] and [`build_outbound`].

pub mod config;
pub mod format;
pub mod parse;

mod api;
mod inbound;
mod intake;
mod outbound;
mod ratelimit;
mod webhook;

pub use config::{Config, Mode, ParseMode};
pub use inbound::TelegramInbound;
pub use outbound::TelegramOutbound;
pub use webhook::SECRET_HEADER;

use carebridge_contract::config::ConfigError;
use carebridge_contract::config::{BuildContext, load_secret};
use carebridge_contract::{AdapterError, Inbound, Outbound, Redacted};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Builds the inbound task of an account (always present: a Telegram bot always receives).
pub fn build_inbound(cfg: &Config, cx: &BuildContext) -> Result<Option<Box<dyn Inbound>>, AdapterError> {
    Ok(Some(Box::new(inbound(cfg, cx)?)))
}

/// Builds the sending side of an account.
pub fn build_outbound(cfg: &Config, cx: &BuildContext) -> Result<Option<Arc<dyn Outbound>>, AdapterError> {
    Ok(Some(Arc::new(outbound(cfg, cx)?)))
}

/// Like [`build_inbound`], but returns the concrete type, whose
/// [`bind`](TelegramInbound::bind) tells the webhook's address before it runs (tests, port 0).
pub fn inbound(cfg: &Config, cx: &BuildContext) -> Result<TelegramInbound, AdapterError> {
    let api = api_for(cfg, cx)?;
    let opts = parse::ParseOptions {
        account: cx.account.clone(),
        staff_chat_id: cfg.staff_chat_id,
        max_attachment_bytes: cfg.max_attachment_bytes,
    };
    let intake = Arc::new(intake::Intake::new(api.clone(), opts));
    let mode = match cfg.mode {
        Mode::Polling => inbound::InboundMode::Polling { timeout_secs: cfg.poll_timeout_secs },
        Mode::Webhook => inbound::InboundMode::Webhook(webhook_server(cfg, cx)?),
    };
    Ok(TelegramInbound { api, intake, mode })
}

/// Like [`build_outbound`], but returns the concrete type.
pub fn outbound(cfg: &Config, cx: &BuildContext) -> Result<TelegramOutbound, AdapterError> {
    let api = api_for(cfg, cx)?;
    Ok(TelegramOutbound {
        account: cx.account.clone(),
        api,
        staff_chat_id: cfg.staff_chat_id,
        parse_mode: cfg.parse_mode,
        limiter: ratelimit::RateLimiter::new(
            Duration::from_millis(cfg.min_interval_per_chat_ms),
            cfg.max_messages_per_sec,
        ),
        progress: Mutex::new(outbound::Progress::default()),
    })
}

/// Refuses a config that does not validate, so a caller that skipped `validate` still gets a
/// clear error rather than odd behaviour.
fn check(cfg: &Config, cx: &BuildContext) -> Result<(), AdapterError> {
    carebridge_contract::config::ensure_valid(cfg.validate(&cx.account.to_string()))
}

fn api_for(cfg: &Config, cx: &BuildContext) -> Result<api::BotApi, AdapterError> {
    check(cfg, cx)?;
    let token = load_secret(&cfg.token_env, &cfg.token_file, &cx.config_dir)?
        .ok_or_else(|| ConfigError::Missing { what: format!("{}: token_env or token_file", cx.account) })?;
    if token.expose().contains(['/', '?', '#', ' ', '\n']) {
        return Err(ConfigError::Value {
            key: format!("{}.token", cx.account),
            reason: "the bot token has characters a Bot API token never has".into(),
        }
        .into());
    }
    api::BotApi::new(cfg.api_base(), token)
        .map_err(|e| ConfigError::Setup { what: "HTTP client", reason: e.to_string() }.into())
}

fn webhook_server(cfg: &Config, cx: &BuildContext) -> Result<webhook::WebhookServer, AdapterError> {
    let listen = cfg.webhook_listen.as_deref().and_then(|l| l.parse().ok()).ok_or_else(|| ConfigError::Value {
        key: format!("{}.webhook_listen", cx.account),
        reason: "not an address".into(),
    })?;
    let secret: Redacted<String> = load_secret(&cfg.webhook_secret_env, &cfg.webhook_secret_file, &cx.config_dir)?
        .ok_or_else(|| ConfigError::Missing {
            what: format!("{}: webhook_secret_env or webhook_secret_file", cx.account),
        })?;
    if !config::is_valid_webhook_secret(secret.expose()) {
        return Err(ConfigError::Value {
            key: format!("{}.webhook_secret", cx.account),
            reason: "the webhook secret must be 1-256 characters of A-Z, a-z, 0-9, `_` or `-` (Telegram's rule)".into(),
        }
        .into());
    }
    Ok(webhook::WebhookServer {
        listen,
        path: cfg.webhook_path.clone(),
        secret,
        url: cfg.webhook_url.clone(),
        listener: None,
    })
}
