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
}

impl AccountConfig {
    /// Parses an account table into its adapter's config type (unknown keys rejected there).
    pub fn parse(kind: ChannelKind, table: toml::Table) -> Result<Self, String> {
        let value = toml::Value::Table(table);
        let r = match kind {
            ChannelKind::Email => value.try_into().map(AccountConfig::Email),
            ChannelKind::Telegram => value.try_into().map(AccountConfig::Telegram),
            ChannelKind::Webhook => value.try_into().map(AccountConfig::Webhook),
        };
        r.map_err(|e: toml::de::Error| crate::config::toml_message(&e, ""))
    }

    /// The adapter's own pure validation; `path` is the account's TOML path.
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        match self {
            AccountConfig::Email(c) => c.validate(path),
            AccountConfig::Telegram(c) => c.validate(path),
            AccountConfig::Webhook(c) => c.validate(path),
        }
    }

    /// Whether the account has an inbound side (may appear in a route's `from`).
    pub fn receives(&self) -> bool {
        match self {
            AccountConfig::Email(c) => c.imap.is_some(),
            AccountConfig::Telegram(_) => true,
            AccountConfig::Webhook(c) => c.listen.is_some(),
        }
    }

    /// Whether the account has an outbound side (may appear in a route's `to`).
    pub fn sends(&self) -> bool {
        match self {
            AccountConfig::Email(c) => c.smtp.is_some(),
            AccountConfig::Telegram(_) => true,
            AccountConfig::Webhook(c) => c.url.is_some(),
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

    /// Builds the inbound task, if the account receives.
    pub fn build_inbound(&self, cx: &BuildContext) -> Result<Option<Box<dyn Inbound>>, AdapterError> {
        match self {
            AccountConfig::Email(c) => carebridge_email::build_inbound(c, cx),
            AccountConfig::Telegram(c) => carebridge_telegram::build_inbound(c, cx),
            AccountConfig::Webhook(c) => carebridge_webhook::build_inbound(c, cx),
        }
    }

    /// Builds the sender, if the account sends.
    pub fn build_outbound(&self, cx: &BuildContext) -> Result<Option<Arc<dyn Outbound>>, AdapterError> {
        match self {
            AccountConfig::Email(c) => carebridge_email::build_outbound(c, cx),
            AccountConfig::Telegram(c) => carebridge_telegram::build_outbound(c, cx),
            AccountConfig::Webhook(c) => carebridge_webhook::build_outbound(c, cx),
        }
    }
}
