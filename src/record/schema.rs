//! The types written to the record store. They are a compatibility contract (the privacy
//! officer's audit trail outlives any version of this program), so they are versioned and kept
//! apart from the in-memory types: a change of `Envelope` never silently changes what is on disk.
//! Every value is JSON with a `"v"` tag; readers accept the versions they know.

use crate::policy::{Class, ConsentGrant};
use carebridge_contract::{
    AccountId, Address, AddressKind, Attachment, Delivery, DeliveryId, DeliveryKind, RecordId, Redacted, SourceKey,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Schema version written into `meta` at creation and checked at open. v1: plain JSON values;
/// v2: sealed values, blinded index keys, the journal (hash chain), audit and tombstones (both on
/// sled); v3: the same trees and values on fjall, ids dense, the commit counter. The value types
/// (`…V1`) did not change between them: their own `v` tag versions them.
pub const SCHEMA_VERSION: u32 = 3;

/// What kind of address, as stored. Mirrors the contract's [`AddressKind`] so that a kind added
/// there needs a deliberate change here (and a reader for it) before it reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressKindV1 {
    /// An email address.
    Email,
    /// A phone number (E.164).
    Phone,
    /// A Telegram chat id.
    Telegram,
    /// Anything else a webhook names.
    Opaque,
}

/// An address as stored (PHI: sealed with the value that holds it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressV1 {
    /// What the value is.
    pub kind: AddressKindV1,
    /// The normalised address.
    pub value: Redacted<String>,
}

impl AddressV1 {
    /// The `kind:value` form, as [`Address::key`] gives it. PHI: never log it.
    pub fn key(&self) -> Redacted<String> {
        Address::from(self).key()
    }
}

impl From<&Address> for AddressV1 {
    fn from(a: &Address) -> Self {
        let kind = match a.kind {
            AddressKind::Email => AddressKindV1::Email,
            AddressKind::Phone => AddressKindV1::Phone,
            AddressKind::Telegram => AddressKindV1::Telegram,
            AddressKind::Opaque => AddressKindV1::Opaque,
        };
        AddressV1 { kind, value: a.value.clone() }
    }
}

impl From<Address> for AddressV1 {
    fn from(a: Address) -> Self {
        AddressV1::from(&a)
    }
}

impl From<&AddressV1> for Address {
    fn from(a: &AddressV1) -> Self {
        let kind = match a.kind {
            AddressKindV1::Email => AddressKind::Email,
            AddressKindV1::Phone => AddressKind::Phone,
            AddressKindV1::Telegram => AddressKind::Telegram,
            AddressKindV1::Opaque => AddressKind::Opaque,
        };
        Address { kind, value: a.value.clone() }
    }
}

/// An attachment as stored: its description, and a reference to its bytes, which are stored
/// once per record as a sealed blob (the `blobs` tree, key: record id and index) however many
/// deliveries, dead letters and held items carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentV1 {
    /// The sender's file name (PHI).
    pub filename: Option<Redacted<String>>,
    /// The declared MIME type.
    pub content_type: String,
    /// Size in bytes.
    #[serde(default)]
    pub len: u64,
    /// SHA-256 of the bytes (hex): ties the blob to the record, whose own hash is chained.
    #[serde(default)]
    pub sha256: String,
    /// Where the bytes are: the record that stores them and their index there.
    #[serde(default)]
    pub blob: Option<BlobRefV1>,
    /// The bytes themselves, only between the router and the store's commit (which moves them
    /// into the blob) and when reading values of stores before issue #14, which inlined them
    /// as JSON arrays of numbers. Never written.
    #[serde(default, rename = "data", skip_serializing)]
    pub inline: Option<Redacted<Vec<u8>>>,
    /// The bytes in base64, only in what the privacy officer's commands print (`records show`,
    /// `export`), filled from the blob when read for them. Never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl AttachmentV1 {
    /// This reference without the bytes (for a delivery's copy: the record's carries them to
    /// the blob).
    pub fn without_data(self) -> AttachmentV1 {
        AttachmentV1 { inline: None, data_base64: None, ..self }
    }

    /// The bytes, if this copy carries them (read from the blob, or from a value of an older
    /// store that inlined them).
    pub fn data(&self) -> Option<&[u8]> {
        self.inline.as_ref().map(|d| d.expose().as_slice())
    }
}

/// A reference to an attachment's bytes in the `blobs` tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRefV1 {
    /// The record the attachment came with.
    pub record: RecordId,
    /// Its position among that record's attachments.
    pub index: u32,
}

impl BlobRefV1 {
    /// The key in the `blobs` tree: record id, then index (big-endian), so a record's blobs sort
    /// together and a purge removes them by prefix.
    pub fn key(&self) -> [u8; 12] {
        let mut k = [0u8; 12];
        k[..8].copy_from_slice(&self.record.0.to_be_bytes());
        k[8..].copy_from_slice(&self.index.to_be_bytes());
        k
    }
}

impl From<&Attachment> for AttachmentV1 {
    fn from(a: &Attachment) -> Self {
        AttachmentV1 {
            filename: a.filename.clone(),
            content_type: a.content_type.clone(),
            len: a.data.expose().len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(a.data.expose())),
            blob: None,
            inline: Some(a.data.clone()),
            data_base64: None,
        }
    }
}

/// Why a delivery is sent, as stored (mirrors [`DeliveryKind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKindV1 {
    /// A patient's message forwarded to the clinic side.
    Forward,
    /// A clinician's answer going back to the patient.
    Reply,
    /// A PHI-free notice from carebridge itself.
    Notice,
}

impl From<DeliveryKind> for DeliveryKindV1 {
    fn from(k: DeliveryKind) -> Self {
        match k {
            DeliveryKind::Forward => DeliveryKindV1::Forward,
            DeliveryKind::Reply => DeliveryKindV1::Reply,
            DeliveryKind::Notice => DeliveryKindV1::Notice,
        }
    }
}

impl From<DeliveryKindV1> for DeliveryKind {
    fn from(k: DeliveryKindV1) -> Self {
        match k {
            DeliveryKindV1::Forward => DeliveryKind::Forward,
            DeliveryKindV1::Reply => DeliveryKind::Reply,
            DeliveryKindV1::Notice => DeliveryKind::Notice,
        }
    }
}

/// One message to send, as stored in the outbox, dead letters and the review queue: the
/// contract's [`Delivery`] with attachments by reference. The outbox turns it back into a
/// `Delivery` (bytes read from their blobs) just before the send.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliveryV1 {
    /// Unique and stable across retries (idempotency keys, Message-IDs).
    pub id: DeliveryId,
    /// The exchange this delivery belongs to.
    pub record_id: RecordId,
    /// The account that sends it.
    pub account: AccountId,
    /// Why it is sent.
    pub kind: DeliveryKindV1,
    /// The recipient (`None`: the account's default destination).
    pub to: Option<AddressV1>,
    /// The conversation's token (a capability: never logged).
    pub conversation: Redacted<String>,
    /// The patient id, for staff-facing forwards.
    pub patient_id: Option<Redacted<String>>,
    /// Who wrote the message, for staff (PHI).
    pub sender_label: Option<Redacted<String>>,
    /// Subject line (from config, PHI-free).
    pub subject: Option<String>,
    /// The text to send.
    pub body: Redacted<String>,
    /// Files to send, by reference.
    pub attachments: Vec<AttachmentV1>,
    /// Native ids to thread under.
    #[serde(default)]
    pub in_reply_to: Vec<String>,
    /// For a rerouted delivery, the account it was meant for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerouted_from: Option<AccountId>,
    /// For a `fhir` account's delivery that files one notice sent after its message (a
    /// rejection after review, a reroute notice at approval): that notice's delivery. `None`
    /// for every other delivery, a `fhir` one filing its message included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_notice: Option<DeliveryId>,
}

impl From<Delivery> for DeliveryV1 {
    fn from(d: Delivery) -> Self {
        DeliveryV1 {
            id: d.id,
            record_id: d.record_id,
            account: d.account,
            kind: d.kind.into(),
            to: d.to.as_ref().map(AddressV1::from),
            conversation: d.conversation,
            patient_id: d.patient_id,
            sender_label: d.sender_label,
            subject: d.subject,
            body: d.body,
            attachments: d.attachments.iter().map(AttachmentV1::from).collect(),
            in_reply_to: d.in_reply_to,
            rerouted_from: d.rerouted_from,
            files_notice: None,
        }
    }
}

impl DeliveryV1 {
    /// The contract's form, with the attachments' bytes (read by the store) in their order.
    pub fn to_contract(&self, attachments: Vec<Attachment>) -> Delivery {
        Delivery {
            id: self.id,
            record_id: self.record_id,
            account: self.account.clone(),
            kind: self.kind.into(),
            to: self.to.as_ref().map(Address::from),
            conversation: self.conversation.clone(),
            patient_id: self.patient_id.clone(),
            sender_label: self.sender_label.clone(),
            subject: self.subject.clone(),
            body: self.body.clone(),
            attachments,
            in_reply_to: self.in_reply_to.clone(),
            rerouted_from: self.rerouted_from.clone(),
            filed_as: None,
        }
    }
}

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
    pub from: AddressV1,
    /// Who the sender is.
    pub sender: SenderV1,
    /// Sender's display name (PHI).
    pub display_name: Option<Redacted<String>>,
    /// Subject (PHI).
    pub subject: Option<Redacted<String>>,
    /// The text (PHI).
    pub body: Redacted<String>,
    /// Files (PHI), by reference to their blobs.
    pub attachments: Vec<AttachmentV1>,
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
    pub origin_address: AddressV1,
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
    pub delivery: DeliveryV1,
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
        to: Option<AddressV1>,
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
    pub reject_notice: Option<DeliveryV1>,
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
