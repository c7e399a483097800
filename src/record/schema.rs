//! The types written to the record store. They are a compatibility contract (the privacy
//! officer's audit trail outlives any version of this program), so they are versioned and kept
//! apart from the in-memory types: a change of `Envelope` never silently changes what is on disk.
//! Every value is JSON with a `"v"` tag; readers accept the versions they know.

use crate::policy::{Class, ConsentGrant};
use carebridge_contract::{Address, Attachment, Delivery, DeliveryId, RecordId, Redacted, SourceKey};
use serde::{Deserialize, Serialize};

/// Schema version written into `meta` at creation and checked at open. v1: plain JSON values;
/// v2: sealed values, blinded index keys, the journal (hash chain), audit and tombstones (both on
/// sled); v3: the same trees and values on fjall, ids dense, the commit counter. The value types
/// (`…V1`) did not change between them: their own `v` tag versions them.
pub const SCHEMA_VERSION: u32 = 3;

/// Who sent a message, as the directory (or a Telegram link) placed them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum SenderV1 {
    /// A patient in the directory or linked by code.
    Patient {
        /// Directory id.
        id: String,
    },
    /// A clinician or staff member in the directory.
    Staff {
        /// Directory id.
        id: String,
    },
    /// Not in the directory: recorded as unverified.
    Unknown,
}

/// What the router decided for one destination of one exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteDecisionV1 {
    /// Destination account.
    pub account: String,
    /// `allow`, `redact`, `reroute`, `hold`, `block`, `skip` (e.g. unknown sender, record only).
    pub action: String,
    /// Rule ids behind the action.
    pub rules: Vec<String>,
    /// The class of the text sent there.
    pub class: Class,
    /// The delivery created, if any.
    pub delivery: Option<DeliveryId>,
    /// For a reroute: the account the delivery goes by instead (the secure account), so the
    /// file says where a rerouted message went, not only where it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerouted_to: Option<String>,
}

/// One exchange: an inbound message with everything decided about it. Written once, in the same
/// transaction as its outbox rows; what happens later is appended as [`EventV1`]s.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordV1 {
    /// Always 1.
    pub v: u32,
    /// The record's id.
    pub id: RecordId,
    /// Unix milliseconds when recorded.
    pub recorded_at_ms: u64,
    /// Unix milliseconds the channel gave for the message.
    pub sent_at_ms: u64,
    /// Where it came from (dedup key).
    pub source: SourceKey,
    /// Sender's address (PHI).
    pub from: Address,
    /// Who the sender is.
    pub sender: SenderV1,
    /// Sender's display name (PHI).
    pub display_name: Option<Redacted<String>>,
    /// Subject (PHI).
    pub subject: Option<Redacted<String>>,
    /// The text (PHI).
    pub body: Redacted<String>,
    /// Files (PHI).
    pub attachments: Vec<Attachment>,
    /// The channel's id for this message.
    pub native_message_id: Option<String>,
    /// The conversation this message belongs to (opaque token).
    pub conversation: String,
    /// The patient whose file this exchange belongs to, if known.
    pub patient_id: Option<String>,
    /// The record this one edits, if it is an edit.
    pub edit_of: Option<RecordId>,
    /// Inbound classification of the text.
    pub class: Class,
    /// Kinds of the inbound findings (no spans' text).
    pub finding_kinds: Vec<String>,
    /// Consents in force when recorded, per destination account.
    pub consents: Vec<ConsentGrant>,
    /// Per-destination decisions.
    pub decisions: Vec<RouteDecisionV1>,
    /// Notes (PHI-free): `unverified_sender`, `link_redeemed`, `link_code_invalid`, …
    pub notes: Vec<String>,
}

/// A conversation: the patient, and where to answer them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConversationV1 {
    /// Always 1.
    pub v: u32,
    /// The opaque token (also the key).
    pub token: String,
    /// The patient, if known.
    pub patient_id: Option<String>,
    /// The account the patient wrote from: replies go back there.
    pub origin_account: String,
    /// The patient's address on that account (PHI).
    pub origin_address: Address,
    /// Highest class seen so far (a reply to a prescription request is clinical).
    pub class: Class,
    /// The channel's id of the patient's latest message, so replies thread under it.
    #[serde(default)]
    pub last_patient_message: Option<String>,
    /// Unix milliseconds of creation.
    pub created_at_ms: u64,
}

/// A channel-native message id known to belong to a conversation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NativeRefV1 {
    /// Always 1.
    pub v: u32,
    /// The conversation token.
    pub conversation: String,
    /// The record the id belongs to (inbound) or was sent for (outbound).
    pub record: RecordId,
}

/// A delivery waiting in the outbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxItemV1 {
    /// Always 1.
    pub v: u32,
    /// What to send.
    pub delivery: Delivery,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix milliseconds before which it must not be tried again.
    pub not_before_ms: u64,
    /// The patient, for the consent re-check just before a send.
    pub patient_id: Option<String>,
    /// Consent needed for this send: the send is re-checked and held back if it was withdrawn.
    pub requires_consent: bool,
}

/// Something that happened to a record after it was written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventV1 {
    /// Always 1.
    pub v: u32,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of [`EventV1`]. Reasons are PHI-free.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// One send attempt and its outcome.
    Attempt {
        /// The delivery.
        delivery: DeliveryId,
        /// Attempt number, from 1.
        attempt: u32,
        /// `sent`, `retry` or `permanent`.
        outcome: String,
        /// Why, for failures.
        reason: Option<String>,
    },
    /// Given up: moved to dead letters.
    DeadLettered {
        /// The delivery.
        delivery: DeliveryId,
        /// Why.
        reason: String,
    },
    /// A held delivery was approved or rejected by a clinician.
    Reviewed {
        /// The delivery.
        delivery: DeliveryId,
        /// `approved` or `rejected`.
        verdict: String,
        /// Who (staff id or `cli`).
        by: String,
    },
    /// A send was held back because consent was withdrawn since recording.
    ConsentWithdrawn {
        /// The delivery.
        delivery: DeliveryId,
    },
    /// An operator put a dead letter back in the outbox (`carebridge outbox retry`), attempts
    /// reset, same delivery id.
    Requeued {
        /// The delivery.
        delivery: DeliveryId,
        /// Who (staff id or `cli`).
        by: String,
    },
    /// An operator dropped a dead letter (`carebridge outbox drop`): it will not be sent.
    Dropped {
        /// The delivery.
        delivery: DeliveryId,
        /// Who (staff id or `cli`).
        by: String,
    },
    /// A notice carebridge queued about this record (the link confirmation, the advice not to
    /// send health information on a channel, "you have a new secure message", "your reply was
    /// not sent", a notice to a staff channel): what was said to whom, written in the same
    /// transaction as its delivery, so the file holds all correspondence, not only bare
    /// attempts. Its sends follow as `attempt` events of `delivery`.
    Notice {
        /// The notice's delivery.
        delivery: DeliveryId,
        /// The account it goes out by.
        account: String,
        /// The recipient (PHI); `None`: the account's default destination (staff chat, inbox).
        to: Option<Address>,
        /// The text (PHI-free by construction: a fixed template and clinic-level values).
        text: String,
    },
    /// An administrator attached a record that had no patient (an unverified sender) to a
    /// patient's file (`carebridge records assign`). Chained into that patient's chain, which
    /// is how the record is then found in their file; the record itself is never rewritten.
    Assigned {
        /// The patient's directory id.
        patient: String,
        /// Who.
        by: String,
    },
}

/// Input that could not be parsed, kept for review.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuarantineV1 {
    /// Always 1.
    pub v: u32,
    /// Its id (shares the record id space).
    pub id: RecordId,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Where it came from.
    pub source: SourceKey,
    /// What was wrong (PHI-free).
    pub reason: String,
    /// The bytes (PHI).
    pub raw: Redacted<Vec<u8>>,
}

/// A delivery given up on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetterV1 {
    /// Always 1.
    pub v: u32,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The outbox row as it was.
    pub item: OutboxItemV1,
    /// Why (PHI-free).
    pub reason: String,
}

/// A delivery held for clinician review.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReviewItemV1 {
    /// Always 1.
    pub v: u32,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The delivery that would be sent on approval.
    pub item: OutboxItemV1,
    /// Rules that held it.
    pub rules: Vec<String>,
    /// Notice to send the author on rejection (PHI-free), with the account and address to use.
    pub reject_notice: Option<Delivery>,
}

/// A one-time code that links a chat to a patient.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkCodeV1 {
    /// Always 1.
    pub v: u32,
    /// The patient.
    pub patient_id: String,
    /// The account the code is valid on.
    pub account: String,
    /// Consent purpose granted by linking.
    pub purpose: String,
    /// Unix milliseconds after which the code is void.
    pub expires_at_ms: u64,
}

/// A chat or address linked to a patient.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkV1 {
    /// Always 1.
    pub v: u32,
    /// The patient.
    pub patient_id: String,
    /// The account.
    pub account: String,
    /// Unix milliseconds.
    pub linked_at_ms: u64,
}

/// An audited access to the patient's file or change to it: reading is an auditable event
/// (PHIPA s.10.1, HIPAA §164.312(b)), so every read and export through carebridge leaves one.
/// Chained like the records it is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditV1 {
    /// Always 1.
    pub v: u32,
    /// Its id.
    pub id: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Who: the name the operator gave (`--actor`, default their login name).
    pub actor: String,
    /// Through what: `cli` (store opened directly) or `admin-api`.
    pub via: String,
    /// What: `records.list`, `records.show`, `records.export`, `records.purge`, `review.show`, …
    pub action: String,
    /// Whose file, if one patient's.
    pub patient_id: Option<String>,
    /// The records read.
    pub records: Vec<RecordId>,
    /// PHI-free detail (the export format, a count, a retention rule).
    pub detail: Option<String>,
}
