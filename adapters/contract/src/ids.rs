//! Identifiers that cross the adapter boundary. None of them carries PHI, so all of them may be
//! logged: that is their point.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of channel an account speaks. The set is closed: a new channel is a new variant, a
/// new adapter crate and a new config section, and the compiler lists every place to touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// IMAP in, SMTP out.
    Email,
    /// Telegram Bot API.
    Telegram,
    /// Signed JSON over HTTP, in and out (web forms, SMS gateways, the EHR).
    Webhook,
    /// A FHIR R4 server (the clinic's EMR): out only, every exchange filed as a `Communication`.
    Fhir,
}

impl ChannelKind {
    /// The kind's name as it appears in account ids and the TOML file.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Email => "email",
            ChannelKind::Telegram => "telegram",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Fhir => "fhir",
        }
    }

    /// All kinds, for did-you-mean suggestions and docs.
    pub const ALL: [ChannelKind; 4] =
        [ChannelKind::Email, ChannelKind::Telegram, ChannelKind::Webhook, ChannelKind::Fhir];
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account id such as `webhook.forms` or `email.clinic` (Matterbridge's `protocol.name`), so
/// one channel kind can have several accounts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId {
    kind: ChannelKind,
    name: String,
}

/// Why a string is not a valid [`AccountId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountIdError {
    /// No `.` between kind and name.
    #[error("`{0}` is not of the form kind.name (for example `webhook.forms`)")]
    Shape(String),
    /// The kind is not one we know.
    #[error("unknown channel kind `{0}` (expected email, telegram, webhook or fhir)")]
    Kind(String),
    /// The name has characters that would not be safe in logs, paths and keys.
    #[error("account name `{0}` must be 1-64 characters of a-z, 0-9, `-` or `_`")]
    Name(String),
}

impl AccountId {
    /// Builds an id from its parts, checking the name.
    pub fn new(kind: ChannelKind, name: &str) -> Result<Self, AccountIdError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(AccountIdError::Name(name.to_string()));
        }
        Ok(Self { kind, name: name.to_string() })
    }

    /// The channel kind (`email` in `email.clinic`).
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// The account's own name (`clinic` in `email.clinic`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::str::FromStr for AccountId {
    type Err = AccountIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = s.split_once('.').ok_or_else(|| AccountIdError::Shape(s.to_string()))?;
        let kind = match kind {
            "email" => ChannelKind::Email,
            "telegram" => ChannelKind::Telegram,
            "webhook" => ChannelKind::Webhook,
            "fhir" => ChannelKind::Fhir,
            other => return Err(AccountIdError::Kind(other.to_string())),
        };
        AccountId::new(kind, name)
    }
}

impl TryFrom<String> for AccountId {
    type Error = AccountIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AccountId> for String {
    fn from(a: AccountId) -> String {
        a.to_string()
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind, self.name)
    }
}

/// Where a message came from, stable across redelivery: the account plus the channel's own id
/// for it (`<uidvalidity>:<uid>` for IMAP, the `update_id` for Telegram, the client's message id
/// for webhooks). The router de-duplicates on it. `native_id` must not carry PHI (no addresses,
/// no phone numbers): adapters build it from the channel's opaque ids.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceKey {
    /// The inbound account.
    pub account: AccountId,
    /// The channel's own id for this message.
    pub native_id: String,
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.account, self.native_id)
    }
}

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "-{:010}"), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.strip_prefix(concat!($prefix, "-")).unwrap_or(s).parse().map($name)
            }
        }
    };
}

numeric_id!(
    /// One exchange in the record store (an inbound message, with its decision and deliveries).
    RecordId,
    "rec"
);
numeric_id!(
    /// One outbound delivery of one record to one destination. Adapters derive idempotency keys
    /// and email Message-IDs from it, so a resend is recognisably the same message.
    DeliveryId,
    "dlv"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_parse_and_print() {
        let a: AccountId = "webhook.forms".parse().unwrap();
        assert_eq!(a.kind(), ChannelKind::Webhook);
        assert_eq!(a.name(), "forms");
        assert_eq!(a.to_string(), "webhook.forms");
        assert!(matches!("sms.x".parse::<AccountId>(), Err(AccountIdError::Kind(_))));
        assert!(matches!("email".parse::<AccountId>(), Err(AccountIdError::Shape(_))));
        assert!(matches!("email.Bad Name".parse::<AccountId>(), Err(AccountIdError::Name(_))));
    }

    #[test]
    fn numeric_ids_round_trip() {
        let r = RecordId(42);
        assert_eq!(r.to_string(), "rec-0000000042");
        assert_eq!("rec-0000000042".parse::<RecordId>().unwrap(), r);
        assert_eq!("42".parse::<DeliveryId>().unwrap(), DeliveryId(42));
    }
}
