//! The normalised inbound message every adapter produces.

use crate::{Redacted, SourceKey};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// What kind of address a sender or recipient has, so the directory can match addresses across
/// channels without guessing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    /// An email address (compared case-insensitively).
    Email,
    /// A Telegram chat id (a private chat's id is the user's id).
    Telegram,
    /// A phone number in E.164 form (SMS gateways).
    Phone,
    /// Any other opaque id a webhook client uses for its users.
    Opaque,
}

impl AddressKind {
    /// The name used in TOML directory entries: `email:ann@x.test`, `telegram:42`, `phone:+1…`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressKind::Email => "email",
            AddressKind::Telegram => "telegram",
            AddressKind::Phone => "phone",
            AddressKind::Opaque => "opaque",
        }
    }
}

/// A sender's or recipient's address on some channel. The value is PHI (an email address, a
/// phone number), so it is [`Redacted`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address {
    /// What the value is.
    pub kind: AddressKind,
    /// The address itself, normalised by the adapter (lower-cased email, E.164 phone).
    pub value: Redacted<String>,
}

impl Address {
    /// Builds an address, normalising what can be normalised without guessing: email addresses
    /// are lower-cased and trimmed, phone numbers lose spaces, dashes and brackets.
    pub fn new(kind: AddressKind, value: impl Into<String>) -> Self {
        let v: String = value.into();
        let v = match kind {
            AddressKind::Email => v.trim().to_ascii_lowercase(),
            AddressKind::Phone => v.chars().filter(|c| c.is_ascii_digit() || *c == '+').collect(),
            AddressKind::Telegram | AddressKind::Opaque => v.trim().to_string(),
        };
        Self { kind, value: Redacted::new(v) }
    }

    /// The `kind:value` form used as a directory key. PHI: never log it.
    pub fn key(&self) -> Redacted<String> {
        Redacted::new(format!("{}:{}", self.kind.as_str(), self.value.expose()))
    }
}

/// A file that came with a message. The name and the bytes are PHI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The sender's file name, if any.
    pub filename: Option<Redacted<String>>,
    /// The MIME type as declared by the sender (not trusted for anything but display).
    pub content_type: String,
    /// The bytes.
    pub data: Redacted<Vec<u8>>,
}

/// One message from outside, parsed into the common shape but not yet trusted.
///
/// Adapters fill in what their channel knows and leave the rest empty; the router identifies the
/// sender, checks the privacy rules and records it.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Where it came from; stable across redelivery (the dedup key).
    pub source: SourceKey,
    /// Who sent it.
    pub from: Address,
    /// The sender's display name if the channel gives one (email `From:` name, Telegram first
    /// name). Kept in the record, never used for identification.
    pub display_name: Option<Redacted<String>>,
    /// The subject line (email only). PHI: patients put anything in subjects.
    pub subject: Option<Redacted<String>>,
    /// The new text of the message, with quoted replies and signatures already stripped where the
    /// adapter can tell (email).
    pub body: Redacted<String>,
    /// Files, already size-checked by the adapter.
    pub attachments: Vec<Attachment>,
    /// The message's own id on its channel (`Message-ID`, `<chat>:<message_id>`), so a later reply
    /// that references it can be mapped to the conversation. Not PHI.
    pub native_message_id: Option<String>,
    /// Ids of channel messages this one answers (`In-Reply-To`/`References`, Telegram's
    /// `reply_to_message`). The router maps them to a conversation. Not PHI.
    pub references: Vec<String>,
    /// A conversation token carried explicitly (email plus-address `clinic+<token>@…`, a webhook's
    /// `conversation` field). Only valid if the router knows it.
    pub conversation_token: Option<String>,
    /// Set when this message is an edit of an earlier one: that message's `native_message_id`.
    pub edit_of: Option<String>,
    /// A patient-linking code the sender presented (Telegram `/start CODE`). Secret-like: it is
    /// redacted and only the router's linking step reads it.
    pub link_code: Option<Redacted<String>>,
    /// When the channel says the message was sent, or when the adapter received it.
    pub received_at: SystemTime,
}

impl Envelope {
    /// A minimal envelope: the rest of the fields empty. Adapters fill in what they know.
    pub fn new(source: SourceKey, from: Address, body: impl Into<String>) -> Self {
        Self {
            source,
            from,
            display_name: None,
            subject: None,
            body: Redacted::new(body.into()),
            attachments: Vec::new(),
            native_message_id: None,
            references: Vec::new(),
            conversation_token: None,
            edit_of: None,
            link_code: None,
            received_at: SystemTime::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_normalise() {
        let a = Address::new(AddressKind::Email, " Ann@Example.TEST ");
        assert_eq!(a.value.expose(), "ann@example.test");
        let p = Address::new(AddressKind::Phone, "+1 (416) 555-0199");
        assert_eq!(p.key().expose(), "phone:+14165550199");
        assert_eq!(format!("{p:?}"), "Address { kind: Phone, value: <redacted> }");
    }
}
