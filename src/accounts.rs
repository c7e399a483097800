//! The glue between the daemon and the adapter crates: one closed enum over the channel kinds
//! (no `typetag`), so adding a channel is a variant plus a match arm in each function here.

use carebridge_contract::config::{BuildContext, Problem};
use carebridge_contract::{AdapterError, ChannelKind, Inbound, Outbound};
use std::sync::Arc;

/// One account's config section, parsed into its adapter's type.
// Sizes differ by adapter; there are a handful of accounts, built once at start-up.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum AccountConfig {
    /// `[email.<name>]`.
    Email(carebridge_email::Config),
    /// `[telegram.<name>]`.
    Telegram(carebridge_telegram::Config),
    /// `[webhook.<name>]`.
    Webhook(carebridge_webhook::Config),
    /// `[fhir.<name>]`.
    Fhir(carebridge_fhir::Config),
}

impl AccountConfig {
    /// Parses an account table into its adapter's config type (unknown keys rejected there).
    /// `path` is the account's TOML path (`webhook.in`); every parse or type error is returned,
    /// each naming its key (`webhook.in.listen`).
    pub fn parse(kind: ChannelKind, table: toml::Table, path: &str) -> Result<Self, Vec<Problem>> {
        use crate::config::deserialize_all;
        let value = toml::Value::Table(table);
        let mut problems = Vec::new();
        let parsed = match kind {
            ChannelKind::Email => deserialize_all(value, path, &mut problems).map(AccountConfig::Email),
            ChannelKind::Telegram => deserialize_all(value, path, &mut problems).map(AccountConfig::Telegram),
            ChannelKind::Webhook => deserialize_all(value, path, &mut problems).map(AccountConfig::Webhook),
            ChannelKind::Fhir => deserialize_all(value, path, &mut problems).map(AccountConfig::Fhir),
        };
        parsed.ok_or(problems)
    }

    /// The adapter's own pure validation; `path` is the account's TOML path.
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        match self {
            AccountConfig::Email(c) => c.validate(path),
            AccountConfig::Telegram(c) => c.validate(path),
            AccountConfig::Webhook(c) => c.validate(path),
            AccountConfig::Fhir(c) => c.validate(path),
        }
    }

    /// Whether the account has an inbound side (may appear in a route's `from`).
    pub fn receives(&self) -> bool {
        match self {
            AccountConfig::Email(c) => c.imap.is_some(),
            AccountConfig::Telegram(_) => true,
            AccountConfig::Webhook(c) => c.listen.is_some(),
            AccountConfig::Fhir(_) => false,
        }
    }

    /// Whether the account has an outbound side (may appear in a route's `to`).
    pub fn sends(&self) -> bool {
        match self {
            AccountConfig::Email(c) => c.smtp.is_some(),
            AccountConfig::Telegram(_) => true,
            AccountConfig::Webhook(c) => c.url.is_some(),
            AccountConfig::Fhir(_) => true,
        }
    }

    /// The key a forward to this account needs and lacks, if any. A forward (a patient's
    /// message on its way to staff) has no recipient of its own: a Telegram account sends it to
    /// `staff_chat_id`, and without one every forward is dead-lettered, so a route naming such
    /// an account in `to` is refused by validation instead.
    pub fn missing_forward_destination(&self) -> Option<&'static str> {
        match self {
            AccountConfig::Telegram(c) if c.staff_chat_id.is_none() => Some("staff_chat_id"),
            _ => None,
        }
    }

    /// The address this account's HTTP listener binds, with the key that sets it, if it listens.
    pub fn listen_addr(&self) -> Option<(&'static str, std::net::SocketAddr)> {
        match self {
            AccountConfig::Email(_) => None,
            AccountConfig::Telegram(c) => match c.mode {
                carebridge_telegram::Mode::Webhook => {
                    c.webhook_listen.as_deref().and_then(|l| l.parse().ok()).map(|a| ("webhook_listen", a))
                }
                carebridge_telegram::Mode::Polling => None,
            },
            AccountConfig::Webhook(c) => c.listen.map(|a| ("listen", a)),
            AccountConfig::Fhir(_) => None,
        }
    }

    /// Builds the inbound task, if the account receives.
    pub fn build_inbound(&self, cx: &BuildContext) -> Result<Option<Box<dyn Inbound>>, AdapterError> {
        match self {
            AccountConfig::Email(c) => carebridge_email::build_inbound(c, cx),
            AccountConfig::Telegram(c) => carebridge_telegram::build_inbound(c, cx),
            AccountConfig::Webhook(c) => carebridge_webhook::build_inbound(c, cx),
            AccountConfig::Fhir(c) => carebridge_fhir::build_inbound(c, cx),
        }
    }

    /// The environment check of the receiving side (`carebridge check-config`): builds it (reads
    /// its secrets and files) and, for email, logs in to the IMAP server once. Telegram's token
    /// and webhook secrets are read by the build; its API is checked through the sending side.
    pub async fn check_inbound(&self, cx: &BuildContext) -> Result<(), AdapterError> {
        match self {
            AccountConfig::Email(c) => carebridge_email::check_inbound(c, cx).await,
            _ => self.build_inbound(cx).map(drop),
        }
    }

    /// Builds the sender, if the account sends.
    pub fn build_outbound(&self, cx: &BuildContext) -> Result<Option<Arc<dyn Outbound>>, AdapterError> {
        match self {
            AccountConfig::Email(c) => carebridge_email::build_outbound(c, cx),
            AccountConfig::Telegram(c) => carebridge_telegram::build_outbound(c, cx),
            AccountConfig::Webhook(c) => carebridge_webhook::build_outbound(c, cx),
            AccountConfig::Fhir(c) => carebridge_fhir::build_outbound(c, cx),
        }
    }
}
