//! The outbound half of the contract: the router's outbox hands an adapter one [`Delivery`] at a
//! time and learns from the result what to do next ([`SendError`] says *retry* or *give up*).

use crate::{AccountId, AdapterError, Address, Attachment, DeliveryId, RecordId, Redacted};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Why a delivery is being sent, so adapters can format it (a staff-facing forward shows who the
/// patient is; a reply to a patient does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    /// A patient's message forwarded to the clinic side (inbox, staff chat, EHR).
    Forward,
    /// A clinician's answer going back to the patient.
    Reply,
    /// A PHI-free notice from carebridge itself (blocked-content notice, how to link, "you have a
    /// secure message").
    Notice,
}

/// One message to send to one destination. Built by the router from a durable record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    /// Unique and stable across retries: derive idempotency keys and Message-IDs from it.
    pub id: DeliveryId,
    /// The exchange this delivery belongs to.
    pub record_id: RecordId,
    /// The account that sends it.
    pub account: AccountId,
    /// Why it is sent.
    pub kind: DeliveryKind,
    /// The recipient. `None` means the account's configured default destination (the clinic
    /// inbox, the staff chat, the EHR's URL).
    pub to: Option<Address>,
    /// The conversation's opaque token. Adapters put it where a reply will carry it back
    /// (plus-address, webhook field). Not PHI, but a capability: do not log it.
    pub conversation: Redacted<String>,
    /// The patient id from the directory, if known (internal, not an external identifier); for
    /// staff-facing forwards only.
    pub patient_id: Option<Redacted<String>>,
    /// Who wrote the message, as a display label for staff ("Telegram chat 42", a name). PHI.
    pub sender_label: Option<Redacted<String>>,
    /// Subject line for channels that have one. PHI-free by construction: it comes from config.
    pub subject: Option<String>,
    /// The text to send (already redacted by policy where it had to be).
    pub body: Redacted<String>,
    /// Files to send, where policy allowed them.
    pub attachments: Vec<Attachment>,
    /// Native ids on the destination channel to thread under (`In-Reply-To`, Telegram
    /// `reply_to_message_id` as `<chat>:<id>`).
    pub in_reply_to: Vec<String>,
    /// The account this delivery was meant for, when the privacy policy rerouted it here (a
    /// reply that may not go by SMS, sent to the secure portal instead): the receiver can say
    /// where the patient wrote from. `None` for a delivery to the account it was meant for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerouted_from: Option<AccountId>,
    /// The exchange as the patient's file has it, as one FHIR R4 `Communication` (JSON text),
    /// for accounts that file records rather than relay text (`fhir`). Attached by the outbox
    /// from the record just before the send, never stored with the delivery, and `None` for
    /// every other account. PHI.
    #[serde(skip)]
    pub filed_as: Option<Redacted<String>>,
}

/// What a successful send reports back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// The channel's id for the sent message (the `Message-ID`, `<chat>:<message_id>`), so a
    /// reply to it can be mapped back to the conversation. Not PHI.
    pub native_ids: Vec<String>,
    /// A PHI-free word on how it went, recorded with the attempt, where the channel tells more
    /// than "sent" (a FHIR server: `created`, or `already there` for a resend it had kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// Why a send failed, classified by what the outbox must do next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later (connection errors, timeouts, HTTP 429/5xx, SMTP 4xx). `after` is the
    /// remote's own hint (Retry-After, Telegram's `retry_after`); the outbox waits at least that.
    #[error("transient: {reason}")]
    Retry {
        /// The remote's minimum wait, if it said one.
        after: Option<Duration>,
        /// PHI-free description (logged and recorded).
        reason: String,
    },
    /// Will never succeed as is (HTTP 4xx, SMTP 5xx, bot blocked): dead-letter it.
    #[error("permanent: {reason}")]
    Permanent {
        /// PHI-free description (logged and recorded).
        reason: String,
    },
    /// Cannot go until a person acts on the other side (a FHIR server that does not know the
    /// patient): held for review, where staff see it, rather than retried in a loop or given up.
    /// Approving it sends it again.
    #[error("held: {reason}")]
    Hold {
        /// The review rule it is held under (`fhir.unknown_patient`), PHI-free.
        rule: String,
        /// PHI-free description (logged and recorded).
        reason: String,
    },
}

impl SendError {
    /// Shorthand for a transient error without a hint.
    pub fn retry(reason: impl Into<String>) -> Self {
        SendError::Retry { after: None, reason: reason.into() }
    }

    /// Shorthand for a permanent error.
    pub fn permanent(reason: impl Into<String>) -> Self {
        SendError::Permanent { reason: reason.into() }
    }
}

/// An outbound adapter. One instance per account, shared by that account's delivery worker.
pub trait Outbound: Send + Sync {
    /// Sends one delivery. Should be idempotent per `delivery.id` where the channel allows it
    /// (webhook `Idempotency-Key`, email `Message-ID`).
    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<Sent, SendError>>;

    /// Environment check (SMTP EHLO, getMe, …) run by `check-config` and at start-up; the default
    /// does nothing.
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), AdapterError>> {
        Box::pin(async { Ok(()) })
    }
}
