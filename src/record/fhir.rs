//! The patient's file as FHIR R4 (4.0.1): a `Bundle` of `Communication` resources, for
//! `carebridge records export --patient ID --format fhir`.
//!
//! Pure: it takes the store's persisted types ([`RecordV1`], [`EventV1`]) and returns JSON. It
//! does no I/O and never logs (its output is PHI: the patient's messages).
//!
//! # Model
//!
//! Two kinds of `Communication`, because FHIR tracks one transmission per resource ("if receipts
//! need to be tracked by an individual, a separate resource instance will need to be created for
//! each recipient", R4 `Communication.recipient`):
//!
//! - **The message** (`id` = the record id, `rec-0000000042`): what carebridge received, as it
//!   received it. Its `status` is always `completed`: it was received and recorded, whatever
//!   happened to it afterwards.
//! - **Each delivery** of it (`id` = the delivery id, `dlv-0000000043`): the forward to a clinic
//!   account or the reply to the patient. It is `partOf` the message, carries no payload (the text
//!   sent may have been redacted by policy and is not kept once sent) and has the status of the
//!   delivery, from the record's events:
//!
//! | what happened (last event wins; a send is final) | `status` |
//! |---|---|
//! | queued, retrying, or approved after review | `in-progress` |
//! | sent (the `sent` attempt's time is `sent`) | `completed` |
//! | held for review, or held because consent was withdrawn | `on-hold` |
//! | rejected by a reviewer (nothing was sent) | `not-done` |
//! | given up after failed attempts (dead-lettered) | `stopped` |
//!
//! - **Each notice** carebridge sent about it (`id` = the notice's delivery id): the link
//!   confirmation, the advice not to send health information on a channel, "you have a new
//!   secure message", "your reply was not sent", a notice to a staff channel. `partOf` the
//!   message, sent by the clinic's account, with its (PHI-free) text as the payload and the
//!   status of its delivery; the recipient is the message's author, the patient (for a reply),
//!   or the account's default destination.
//!
//! A routing decision without a delivery (blocked, skipped) is a `note` on the message.
//! `entered-in-error` is never used: carebridge does not retract records.
//!
//! # Element by element
//!
//! | element | message | delivery |
//! |---|---|---|
//! | `id` | record id | delivery id |
//! | `identifier` | `urn:carebridge:record` = record id; `urn:carebridge:native:<channel>` = the channel's message id (email `Message-ID`), if any | `urn:carebridge:delivery` = delivery id |
//! | `partOf` | the conversation: a logical reference, `identifier` `urn:carebridge:conversation` = a hash of the conversation token (the token itself is a capability and is not exported) | the message |
//! | `inResponseTo` | the latest earlier message of the *other* party in the same conversation (a clinician's reply answers the patient's latest message; the patient's follow-up answers the latest reply) | – |
//! | `status` | `completed` | see above; `statusReason.text` says why when not `completed` |
//! | `medium` | `v3-ParticipationMode` by channel: email `EMAILWRIT`; Telegram, SMS gateways and other webhooks `ONLINEWRIT` (text over a computer network), `text` naming the channel | same, for the account it went by (rerouted: the secure account) |
//! | `subject` | `Patient/<patient id>` | same |
//! | `topic` | the email subject, as `text` | – |
//! | `sent` | the channel's time for the message | time of the successful attempt |
//! | `received` | when carebridge recorded it | – |
//! | `sender` | `Patient/<id>` or `Practitioner/<id>` for directory entries (`display` = the name the channel gave); an unknown sender is a display-only reference whose `identifier` is its address (`urn:carebridge:address` = `email:ann@x.test`) | the message's sender (carebridge relays their words) |
//! | `recipient` | a clinician's reply: the patient; otherwise the clinic account written to (`urn:carebridge:account` = `email.clinic`) | the patient (reply) or the account it went by (forward; when rerouted, the secure account) |
//! | `payload` | the text as `contentString`; each file as `contentAttachment` (`contentType`, `title` = file name, `size`, `data` base64) | – |
//! | `note` | PHI-free facts: unverified sender, link codes, edits, privacy class, decisions without a delivery | the routing decision and its rules |
//!
//! Directory ids that are not valid FHIR ids (`[A-Za-z0-9-.]{1,64}`) become logical references
//! (`type` + `identifier` `urn:carebridge:patient` / `urn:carebridge:staff`) instead of
//! `Patient/<id>`.
//!
//! Strings are made valid FHIR `string`s: whitespace other than space, tab, CR and LF (for example
//! a no-break space, which the R4 JSON schema's pattern rejects) and control characters become
//! spaces; empty strings are left out, as are empty arrays. The `jsonl` export keeps the exact
//! text.
//!
//! # Bundle
//!
//! `type` is `collection`: the export is a set of resources gathered for distribution, not the
//! answer to a FHIR search (`searchset` would promise search semantics: `total`, `search.mode`,
//! and a query that selected the entries). `timestamp` is when the export was made. Each entry's
//! `fullUrl` is a `urn:uuid:` derived from the conversation and the resource id (a name-based
//! UUID, version 8, over SHA-256), so the same input gives the same bundle, byte for byte, and
//! `partOf` / `inResponseTo` between entries resolve inside the bundle. Entries are ordered by
//! record id, each message followed by its deliveries.

use super::schema::{AttachmentV1, EventKind, EventV1, RecordV1, RouteDecisionV1, SenderV1};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use carebridge_contract::{AccountId, Address, AddressKind, ChannelKind, DeliveryId, RecordId};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The HL7 v3 code system `Communication.medium` is bound to (example binding).
pub const PARTICIPATION_MODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode";
/// Identifier system of a record (the message's business identifier).
pub const SYSTEM_RECORD: &str = "urn:carebridge:record";
/// Identifier system of a delivery.
pub const SYSTEM_DELIVERY: &str = "urn:carebridge:delivery";
/// Identifier system of a conversation (value: a hash of its token, never the token).
pub const SYSTEM_CONVERSATION: &str = "urn:carebridge:conversation";
/// Identifier system of a patient's directory id.
pub const SYSTEM_PATIENT: &str = "urn:carebridge:patient";
/// Identifier system of a staff member's directory id.
pub const SYSTEM_STAFF: &str = "urn:carebridge:staff";
/// Identifier system of an address in the directory's `kind:value` form.
pub const SYSTEM_ADDRESS: &str = "urn:carebridge:address";
/// Identifier system of a carebridge account (`email.clinic`).
pub const SYSTEM_ACCOUNT: &str = "urn:carebridge:account";
/// Prefix of the identifier system of a channel's own message id (`urn:carebridge:native:email`).
pub const SYSTEM_NATIVE_PREFIX: &str = "urn:carebridge:native:";

/// The R4 `Bundle` (type `collection`) of one patient's file: for each of the patient's records,
/// oldest first, the message's `Communication` and one per delivery of it.
///
/// `items` are records with their events, in any order; records of other patients (or of none)
/// are left out, so a caller that passes too much cannot leak another patient's messages into
/// this export. The same input gives the same output.
pub fn bundle(patient_id: &str, items: &[(RecordV1, Vec<EventV1>)], generated_at_ms: u64) -> Value {
    let mut mine: Vec<&(RecordV1, Vec<EventV1>)> =
        items.iter().filter(|(r, _)| r.patient_id.as_deref() == Some(patient_id)).collect();
    mine.sort_by_key(|(r, _)| r.id);
    mine.dedup_by_key(|(r, _)| r.id);
    let answers = in_response_to(mine.iter().map(|(r, _)| r));
    let mut entries = Vec::new();
    for (record, events) in mine {
        let message = communication(record, answers.get(&record.id).copied());
        entries.push(json!({ "fullUrl": record_url(record), "resource": message }));
        for (decision, id) in delivered(record) {
            let resource = delivery(record, decision, id, events);
            entries.push(json!({ "fullUrl": delivery_url(record, id), "resource": resource }));
        }
        for (id, resource) in notices(record, events) {
            entries.push(json!({ "fullUrl": delivery_url(record, id), "resource": resource }));
        }
    }
    let mut b = Map::new();
    b.insert("resourceType".into(), "Bundle".into());
    b.insert("type".into(), "collection".into());
    if let Some(t) = instant(generated_at_ms) {
        b.insert("timestamp".into(), t.into());
    }
    put_array(&mut b, "entry", entries);
    Value::Object(b)
}

/// What a `fhir` account files for one delivery of `record` (its destination, the EMR): the
/// message's [`communication`], the same resource as the export's, with two differences that a
/// live server needs, and then the record's [`notices`] so far.
///
/// - `payload` is what the delivery carries (the text and files the policy allowed on this
///   hop), not the record's own words: a redaction the policy asks for holds here as on any
///   other destination.
/// - `inResponseTo` and each notice's `partOf` are logical references by the carebridge record
///   identifier (`urn:carebridge:record`), not the bundle's `urn:uuid:` entries, for the
///   destination to resolve against what the server holds.
///
/// Answers a JSON array: the message first.
pub fn filing(
    record: &RecordV1,
    events: &[EventV1],
    answers: Option<RecordId>,
    delivery: &carebridge_contract::Delivery,
) -> Value {
    let mut message = communication(record, None);
    if let Value::Object(m) = &mut message {
        let mut payload = Vec::new();
        if let Some(text) = fhir_string(delivery.body.expose()) {
            payload.push(json!({ "contentString": text }));
        }
        for a in &delivery.attachments {
            let as_recorded = AttachmentV1 {
                filename: a.filename.clone(),
                content_type: a.content_type.clone(),
                len: a.data.expose().len() as u64,
                sha256: String::new(),
                blob: None,
                inline: Some(a.data.clone()),
                data_base64: None,
            };
            payload.push(json!({ "contentAttachment": attachment(&as_recorded) }));
        }
        m.remove("payload");
        put_array(m, "payload", payload);
        if let Some(prev) = answers {
            m.insert("inResponseTo".into(), json!([record_identifier_ref(prev)]));
        }
    }
    let mut out = vec![message];
    for (_, mut notice) in notices(record, events) {
        if let Value::Object(n) = &mut notice {
            n.insert("partOf".into(), json!([record_identifier_ref(record.id)]));
        }
        out.push(notice);
    }
    Value::Array(out)
}

/// What a `fhir` account files for a notice sent after its message was filed (a rejection
/// after review, a reroute notice at approval, a link confirmation): that notice's
/// `Communication` alone, as [`filing`] maps it, `partOf` the message by its carebridge record
/// identifier (the destination points it at the server's copy). `None` if the record has no such
/// notice. A JSON array, like [`filing`].
pub fn notice_filing(record: &RecordV1, events: &[EventV1], notice: DeliveryId) -> Option<Value> {
    let (_, mut n) = notices(record, events).into_iter().find(|(id, _)| *id == notice)?;
    if let Value::Object(o) = &mut n {
        o.insert("partOf".into(), json!([record_identifier_ref(record.id)]));
    }
    Some(Value::Array(vec![n]))
}

/// A logical reference to the `Communication` of a carebridge record, by its identifier.
fn record_identifier_ref(id: RecordId) -> Value {
    json!({ "type": "Communication", "identifier": { "system": SYSTEM_RECORD, "value": id.to_string() } })
}

/// Threading: for each record, the latest earlier record of the other party (patient side or
/// clinic side) in the same conversation, if any. Records are taken in the order given (oldest
/// first, as the store lists them).
pub fn in_response_to<'a>(records: impl IntoIterator<Item = &'a RecordV1>) -> HashMap<RecordId, RecordId> {
    // Per conversation: the latest record from the patient side, and from the clinic side.
    let mut latest: HashMap<&str, [Option<RecordId>; 2]> = HashMap::new();
    let mut out = HashMap::new();
    for r in records {
        let side = usize::from(matches!(r.sender, SenderV1::Staff { .. }));
        let seen = latest.entry(r.conversation.as_str()).or_default();
        if let Some(prev) = seen[1 - side] {
            out.insert(r.id, prev);
        }
        seen[side] = Some(r.id);
    }
    out
}

/// The `Communication` of the message a record holds, as carebridge received it (`status`
/// `completed`). `in_response_to` is the record it answers (see [`in_response_to`]).
pub fn communication(record: &RecordV1, in_response_to: Option<RecordId>) -> Value {
    let mut c = Map::new();
    c.insert("resourceType".into(), "Communication".into());
    c.insert("id".into(), record.id.to_string().into());
    let mut ids = vec![identifier(SYSTEM_RECORD, &record.id.to_string())];
    if let Some(n) = record.native_message_id.as_deref().and_then(fhir_string) {
        ids.push(identifier(&format!("{SYSTEM_NATIVE_PREFIX}{}", record.source.account.kind()), &n));
    }
    put_array(&mut c, "identifier", ids.into_iter().flatten().collect());
    put_array(&mut c, "partOf", conversation_ref(&record.conversation).into_iter().collect());
    if let Some(prev) = in_response_to {
        c.insert(
            "inResponseTo".into(),
            json!([{ "reference": entry_uuid(&record.conversation, "Communication/rec", prev.0) }]),
        );
    }
    c.insert("status".into(), "completed".into());
    c.insert("medium".into(), json!([medium(record.source.account.kind(), Some(Address::from(&record.from).kind))]));
    if let Some(s) = record.patient_id.as_deref().and_then(|p| party("Patient", SYSTEM_PATIENT, p, None)) {
        c.insert("subject".into(), s);
    }
    if let Some(t) = record.subject.as_ref().and_then(|s| fhir_string(s.expose())) {
        c.insert("topic".into(), json!({ "text": t }));
    }
    if let Some(t) = instant(record.sent_at_ms) {
        c.insert("sent".into(), t.into());
    }
    if let Some(t) = instant(record.recorded_at_ms) {
        c.insert("received".into(), t.into());
    }
    let recipient = if is_reply(record) {
        record.patient_id.as_deref().and_then(|p| party("Patient", SYSTEM_PATIENT, p, None))
    } else {
        account_ref(&record.source.account.to_string())
    };
    put_array(&mut c, "recipient", recipient.into_iter().collect());
    if let Some(s) = sender(record) {
        c.insert("sender".into(), s);
    }
    let mut payload = Vec::new();
    if let Some(text) = fhir_string(record.body.expose()) {
        payload.push(json!({ "contentString": text }));
    }
    payload.extend(record.attachments.iter().map(|a| json!({ "contentAttachment": attachment(a) })));
    put_array(&mut c, "payload", payload);
    put_array(&mut c, "note", message_notes(record).into_iter().map(|t| json!({ "text": t })).collect());
    Value::Object(c)
}

/// The `Communication`s of a record's deliveries (one per routing decision that created one),
/// each `partOf` the message, with its status from `events` (the record's events, oldest first).
pub fn deliveries(record: &RecordV1, events: &[EventV1]) -> Vec<Value> {
    delivered(record).into_iter().map(|(d, id)| delivery(record, d, id, events)).collect()
}

/// Each delivery of a record once, with the decision it is described by. Two destinations may
/// share one delivery (a staff group's copy rerouted to the EHR that is also on the route): one
/// transmission, one resource, described by the direct decision rather than the reroute.
fn delivered(record: &RecordV1) -> Vec<(&RouteDecisionV1, DeliveryId)> {
    let mut out: Vec<(&RouteDecisionV1, DeliveryId)> = Vec::new();
    for d in &record.decisions {
        let Some(id) = d.delivery else { continue };
        match out.iter_mut().find(|(_, seen)| *seen == id) {
            Some(slot) if slot.0.action == "reroute" && d.action != "reroute" => slot.0 = d,
            Some(_) => {}
            None => out.push((d, id)),
        }
    }
    out
}

/// One delivery's `Communication`.
fn delivery(record: &RecordV1, decision: &RouteDecisionV1, id: DeliveryId, events: &[EventV1]) -> Value {
    let state = delivery_state(decision, id, events);
    let mut c = Map::new();
    c.insert("resourceType".into(), "Communication".into());
    c.insert("id".into(), id.to_string().into());
    put_array(&mut c, "identifier", identifier(SYSTEM_DELIVERY, &id.to_string()).into_iter().collect());
    c.insert("partOf".into(), json!([{ "reference": record_url(record) }]));
    c.insert("status".into(), state.status.into());
    if let Some(reason) = state.reason.as_deref().and_then(fhir_string) {
        c.insert("statusReason".into(), json!({ "text": reason }));
    }
    // A rerouted delivery went by the account the policy chose (recorded since issue 15; an
    // older record only says it did not go by `decision.account`, and gets no medium or
    // recipient).
    let rerouted = decision.action == "reroute";
    let went_by = if rerouted { decision.rerouted_to.as_deref() } else { Some(decision.account.as_str()) };
    let account: Option<AccountId> = went_by.and_then(|a| a.parse().ok());
    if let Some(a) = &account {
        c.insert("medium".into(), json!([medium(a.kind(), None)]));
    }
    if let Some(s) = record.patient_id.as_deref().and_then(|p| party("Patient", SYSTEM_PATIENT, p, None)) {
        c.insert("subject".into(), s);
    }
    if let Some(t) = state.sent_at_ms.and_then(instant) {
        c.insert("sent".into(), t.into());
    }
    let recipient = match (went_by, is_reply(record)) {
        (None, _) => None,
        (Some(_), true) => record.patient_id.as_deref().and_then(|p| party("Patient", SYSTEM_PATIENT, p, None)),
        (Some(a), false) => account_ref(a),
    };
    put_array(&mut c, "recipient", recipient.into_iter().collect());
    if let Some(s) = sender(record) {
        c.insert("sender".into(), s);
    }
    let mut note = format!("Routing decision for {}: {}{}", decision.account, decision.action, rules(&decision.rules));
    match (rerouted, went_by) {
        (true, Some(a)) => note.push_str(&format!(" (sent by {a} instead)")),
        (true, None) => note.push_str(" (sent over a secure account instead)"),
        _ => {}
    }
    put_array(&mut c, "note", fhir_string(&note).map(|t| json!({ "text": t })).into_iter().collect());
    Value::Object(c)
}

/// The `Communication`s of the notices carebridge sent about a record (its `notice` events):
/// the link confirmation, the advice to use a secure channel, "you have a new secure message",
/// "your reply was not sent". Each is `partOf` the message, carries its text as the payload (a
/// notice is PHI-free and kept whole), is sent by the clinic's account and has the status of its
/// delivery.
pub fn notices(record: &RecordV1, events: &[EventV1]) -> Vec<(DeliveryId, Value)> {
    let mut out = Vec::new();
    for e in events {
        let EventKind::Notice { delivery: id, account, to, text } = &e.kind else { continue };
        if out.iter().any(|(seen, _)| seen == id) {
            continue;
        }
        let as_delivery = RouteDecisionV1 {
            account: account.clone(),
            action: "notice".into(),
            rules: Vec::new(),
            class: crate::policy::Class::None,
            delivery: Some(*id),
            rerouted_to: None,
        };
        let state = delivery_state(&as_delivery, *id, events);
        let mut c = Map::new();
        c.insert("resourceType".into(), "Communication".into());
        c.insert("id".into(), id.to_string().into());
        put_array(&mut c, "identifier", identifier(SYSTEM_DELIVERY, &id.to_string()).into_iter().collect());
        c.insert("partOf".into(), json!([{ "reference": record_url(record) }]));
        c.insert("status".into(), state.status.into());
        if let Some(reason) = state.reason.as_deref().and_then(fhir_string) {
            c.insert("statusReason".into(), json!({ "text": reason }));
        }
        if let Ok(a) = account.parse::<AccountId>() {
            c.insert("medium".into(), json!([medium(a.kind(), to.as_ref().map(|t| Address::from(t).kind))]));
        }
        if let Some(s) = record.patient_id.as_deref().and_then(|p| party("Patient", SYSTEM_PATIENT, p, None)) {
            c.insert("subject".into(), s);
        }
        if let Some(t) = state.sent_at_ms.and_then(instant) {
            c.insert("sent".into(), t.into());
        }
        let recipient = match to {
            // Back to the message's author (an advisory, a link confirmation, "not sent").
            Some(a) if *a == record.from => sender(record),
            // To the reader of a clinician's reply: the patient.
            Some(_) if is_reply(record) => {
                record.patient_id.as_deref().and_then(|p| party("Patient", SYSTEM_PATIENT, p, None))
            }
            Some(a) => Some(unknown_sender(&Address::from(a), Some("Notice recipient"))),
            None => account_ref(account),
        };
        put_array(&mut c, "recipient", recipient.into_iter().collect());
        if let Some(s) = account_ref(account) {
            c.insert("sender".into(), s);
        }
        put_array(&mut c, "payload", fhir_string(text).map(|t| json!({ "contentString": t })).into_iter().collect());
        c.insert("note".into(), json!([{ "text": "Notice sent by carebridge (no health information)." }]));
        out.push((*id, Value::Object(c)));
    }
    out
}

/// What a delivery's events say about it.
#[derive(Debug, PartialEq, Eq)]
struct DeliveryState {
    status: &'static str,
    reason: Option<String>,
    sent_at_ms: Option<u64>,
}

fn delivery_state(decision: &RouteDecisionV1, id: DeliveryId, events: &[EventV1]) -> DeliveryState {
    let mut s = if decision.action == "hold" {
        DeliveryState {
            status: "on-hold",
            reason: Some(format!("Held for review{}", rules(&decision.rules))),
            sent_at_ms: None,
        }
    } else {
        DeliveryState { status: "in-progress", reason: Some("Queued for delivery".into()), sent_at_ms: None }
    };
    for e in events {
        if s.status == "completed" {
            break; // a send is final: nothing after it un-sends the message
        }
        match &e.kind {
            EventKind::Attempt { delivery, attempt, outcome, reason } if *delivery == id => match outcome.as_str() {
                "sent" => s = DeliveryState { status: "completed", reason: None, sent_at_ms: Some(e.at_ms) },
                "held" => {
                    s.status = "on-hold";
                    s.reason = Some(format!("Held for review after attempt {attempt}{}", because(reason.as_deref())));
                }
                "permanent" => {
                    s.status = "stopped";
                    s.reason = Some(format!("Attempt {attempt} failed permanently{}", because(reason.as_deref())));
                }
                _ => {
                    s.status = "in-progress";
                    s.reason = Some(format!("Attempt {attempt} failed, to be retried{}", because(reason.as_deref())));
                }
            },
            EventKind::DeadLettered { delivery, reason } if *delivery == id => {
                s.status = "stopped";
                s.reason = Some(format!("Given up{}", because(Some(reason))));
            }
            EventKind::Reviewed { delivery, verdict, by } if *delivery == id => {
                if verdict == "approved" {
                    s.status = "in-progress";
                    s.reason = Some(format!("Approved by {by}; queued for delivery"));
                } else {
                    s.status = "not-done";
                    s.reason = Some(format!("Rejected by {by}"));
                }
            }
            EventKind::ConsentWithdrawn { delivery } if *delivery == id => {
                s.status = "on-hold";
                s.reason = Some("Held: the patient's consent was withdrawn".into());
            }
            EventKind::Requeued { delivery, by } if *delivery == id => {
                s.status = "in-progress";
                s.reason = Some(format!("Put back in the outbox by {by}"));
            }
            EventKind::Dropped { delivery, by } if *delivery == id => {
                s.status = "stopped";
                s.reason = Some(format!("Dropped by {by}"));
            }
            _ => {}
        }
    }
    s
}

fn because(reason: Option<&str>) -> String {
    match reason {
        Some(r) if !r.trim().is_empty() => format!(": {r}"),
        _ => String::new(),
    }
}

fn rules(rules: &[String]) -> String {
    if rules.is_empty() { String::new() } else { format!(" (rules: {})", rules.join(", ")) }
}

/// A clinician's reply to the patient (the router only gives a staff message a patient when it
/// answers the patient's conversation).
fn is_reply(record: &RecordV1) -> bool {
    matches!(record.sender, SenderV1::Staff { .. }) && record.patient_id.is_some()
}

/// PHI-free facts about a message, for `note`.
fn message_notes(record: &RecordV1) -> Vec<String> {
    let mut notes: Vec<String> = record
        .notes
        .iter()
        .map(|n| match n.as_str() {
            "unverified_sender" => "Sender is not in the clinic's directory: identity unverified.".to_string(),
            "link_redeemed" => "Sender linked this chat to the patient with a one-time code.".to_string(),
            "link_code_invalid" => "Sender presented an invalid or expired link code.".to_string(),
            "conversation_mismatch" => {
                "Referred to another party's conversation: recorded as a new conversation.".to_string()
            }
            other => format!("carebridge note: {other}"),
        })
        .collect();
    if let Some(orig) = record.edit_of {
        notes.push(format!("Edit of an earlier message ({orig})."));
    }
    if record.class != crate::policy::Class::None {
        let findings = if record.finding_kinds.is_empty() {
            String::new()
        } else {
            format!(" (findings: {})", record.finding_kinds.join(", "))
        };
        notes.push(format!("Privacy classification: {}{findings}.", record.class.as_str()));
    }
    for d in record.decisions.iter().filter(|d| d.delivery.is_none()) {
        notes.push(format!("Not delivered to {}: {}{}.", d.account, d.action, rules(&d.rules)));
    }
    notes.into_iter().filter_map(|n| fhir_string(&n)).collect()
}

fn sender(record: &RecordV1) -> Option<Value> {
    let display = record.display_name.as_ref().map(|d| d.expose().as_str());
    match &record.sender {
        SenderV1::Patient { id } => party("Patient", SYSTEM_PATIENT, id, display),
        SenderV1::Staff { id } => party("Practitioner", SYSTEM_STAFF, id, display),
        SenderV1::Unknown => Some(unknown_sender(&Address::from(&record.from), display)),
    }
}

/// A display-only reference (R4 `Reference.display`) for a sender not in the directory, with
/// the address it wrote from as a logical identifier.
fn unknown_sender(from: &Address, display: Option<&str>) -> Value {
    let mut r = Map::new();
    if let Some(i) = identifier(SYSTEM_ADDRESS, from.key().expose()) {
        r.insert("identifier".into(), i);
    }
    let d = display.and_then(fhir_string).unwrap_or_else(|| "Unverified sender".into());
    r.insert("display".into(), d.into());
    Value::Object(r)
}

/// A reference to a directory entry: `Patient/<id>` when the id is a valid FHIR id, otherwise a
/// logical reference by `type` and `identifier`.
fn party(resource: &str, system: &str, id: &str, display: Option<&str>) -> Option<Value> {
    let ident = identifier(system, id)?;
    let mut r = Map::new();
    if is_fhir_id(id) {
        r.insert("reference".into(), format!("{resource}/{id}").into());
    } else {
        r.insert("type".into(), resource.into());
    }
    r.insert("identifier".into(), ident);
    if let Some(d) = display.and_then(fhir_string) {
        r.insert("display".into(), d.into());
    }
    Some(Value::Object(r))
}

fn account_ref(account: &str) -> Option<Value> {
    let ident = identifier(SYSTEM_ACCOUNT, account)?;
    Some(json!({ "identifier": ident, "display": fhir_string(account)? }))
}

/// The conversation as a logical reference: the larger exchange this message is a step of.
fn conversation_ref(token: &str) -> Option<Value> {
    let ident = identifier(SYSTEM_CONVERSATION, &conversation_id(token))?;
    Some(json!({ "identifier": ident, "display": "carebridge conversation" }))
}

/// A stable, non-reversible id for a conversation: the token itself lets its holder write into
/// the conversation, so it stays in the store.
pub fn conversation_id(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"carebridge.fhir.conversation\0");
    h.update(token.as_bytes());
    hex::encode(&h.finalize()[..16])
}

fn identifier(system: &str, value: &str) -> Option<Value> {
    Some(json!({ "system": system, "value": fhir_string(value)? }))
}

/// `Communication.medium` for a channel (and, inbound, the kind of the sender's address).
fn medium(channel: ChannelKind, address: Option<AddressKind>) -> Value {
    let (code, display, text) = match (channel, address) {
        (ChannelKind::Email, _) => ("EMAILWRIT", "email", "email"),
        (ChannelKind::Telegram, _) => ("ONLINEWRIT", "online written", "Telegram"),
        (ChannelKind::Webhook, Some(AddressKind::Phone)) => ("ONLINEWRIT", "online written", "SMS (via webhook)"),
        (ChannelKind::Webhook, _) => ("ONLINEWRIT", "online written", "webhook"),
        (ChannelKind::Fhir, _) => ("ONLINEWRIT", "online written", "FHIR (the clinic's EMR)"),
    };
    json!({ "coding": [{ "system": PARTICIPATION_MODE, "code": code, "display": display }], "text": text })
}

fn attachment(a: &AttachmentV1) -> Value {
    let mut m = Map::new();
    let content_type = fhir_code(&a.content_type).unwrap_or_else(|| "application/octet-stream".into());
    m.insert("contentType".into(), content_type.into());
    let data = a.data().unwrap_or_default();
    if !data.is_empty() {
        m.insert("data".into(), BASE64.encode(data).into());
    }
    // R4 `unsignedInt` stops at 2^31 - 1.
    if let Ok(size) = i32::try_from(a.len.max(data.len() as u64)) {
        m.insert("size".into(), size.into());
    }
    if let Some(t) = a.filename.as_ref().and_then(|f| fhir_string(f.expose())) {
        m.insert("title".into(), t.into());
    }
    Value::Object(m)
}

/// The entry URL of a record's message.
fn record_url(record: &RecordV1) -> String {
    entry_uuid(&record.conversation, "Communication/rec", record.id.0)
}

/// The entry URL of one of a record's deliveries.
fn delivery_url(record: &RecordV1, id: DeliveryId) -> String {
    entry_uuid(&record.conversation, "Communication/dlv", id.0)
}

/// A deterministic `urn:uuid:` (RFC 9562 version 8, name-based over SHA-256) for an entry:
/// stable across exports, distinct across stores (the conversation token is random).
fn entry_uuid(conversation: &str, kind: &str, id: u64) -> String {
    let mut h = Sha256::new();
    h.update(b"carebridge.fhir.entry\0");
    h.update(conversation.as_bytes());
    h.update([0]);
    h.update(kind.as_bytes());
    h.update(id.to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!("urn:uuid:{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..])
}

fn put_array(m: &mut Map<String, Value>, key: &str, items: Vec<Value>) {
    // FHIR JSON has no empty arrays: an element with no values is left out.
    if !items.is_empty() {
        m.insert(key.into(), Value::Array(items));
    }
}

/// A FHIR `id`: `[A-Za-z0-9-.]{1,64}`.
fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Whitespace as the R4 JSON schema's patterns see it (JavaScript's `\s`), which adds U+FEFF to
/// Unicode's White_Space.
fn is_schema_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

/// A valid FHIR `string` (and `markdown`): the R4 JSON schema admits no whitespace but space, tab,
/// CR and LF, and the spec says strings should not hold other control characters; those become
/// spaces. A string with nothing but whitespace is no string (`None`).
fn fhir_string(s: &str) -> Option<String> {
    let out: String = s
        .chars()
        .map(|c| match c {
            ' ' | '\t' | '\r' | '\n' => c,
            c if is_schema_space(c) || c.is_control() => ' ',
            c => c,
        })
        .collect();
    if out.chars().all(is_schema_space) { None } else { Some(out) }
}

/// A valid FHIR `code`: words separated by single spaces.
fn fhir_code(s: &str) -> Option<String> {
    let words: Vec<&str> = s.split(|c: char| is_schema_space(c) || c.is_control()).filter(|w| !w.is_empty()).collect();
    if words.is_empty() { None } else { Some(words.join(" ")) }
}

/// An R4 `instant` / `dateTime` in UTC with milliseconds. `None` for 0 (time unknown) and past
/// year 9999.
fn instant(ms: u64) -> Option<String> {
    if ms == 0 {
        return None;
    }
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).ok()?);
    if y > 9999 {
        return None;
    }
    let rem = secs % 86_400;
    Some(format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000))
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day): Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Class;
    use carebridge_contract::{Attachment, Redacted, SourceKey};

    const TOKEN: &str = "00112233445566778899aabbccddeeff";

    fn record(id: u64, sender: SenderV1, patient: Option<&str>) -> RecordV1 {
        RecordV1 {
            v: 1,
            id: RecordId(id),
            recorded_at_ms: 1_704_164_645_006,
            sent_at_ms: 1_704_164_600_000,
            source: SourceKey { account: "email.clinic".parse().unwrap(), native_id: format!("7:{id}") },
            from: Address::new(AddressKind::Email, "Ann@Example.test").into(),
            sender,
            display_name: Some(Redacted::new("Ann Patient".into())),
            subject: Some(Redacted::new("Refill".into())),
            body: Redacted::new("Please refill my metformin.".into()),
            attachments: Vec::new(),
            native_message_id: Some(format!("<m{id}@example.test>")),
            conversation: TOKEN.into(),
            patient_id: patient.map(str::to_string),
            edit_of: None,
            class: Class::None,
            finding_kinds: Vec::new(),
            consents: Vec::new(),
            decisions: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn patient_msg(id: u64) -> RecordV1 {
        record(id, SenderV1::Patient { id: "p-1".into() }, Some("p-1"))
    }

    fn decision(account: &str, action: &str, delivery: Option<u64>) -> RouteDecisionV1 {
        RouteDecisionV1 {
            account: account.into(),
            action: action.into(),
            rules: if action == "allow" { Vec::new() } else { vec!["clinical_on_sms".into()] },
            class: Class::None,
            delivery: delivery.map(DeliveryId),
            rerouted_to: (action == "reroute").then(|| "webhook.portal".into()),
        }
    }

    fn ev(at_ms: u64, kind: EventKind) -> EventV1 {
        EventV1 { v: 1, at_ms, kind }
    }

    fn attempt(delivery: u64, attempt: u32, outcome: &str) -> EventKind {
        EventKind::Attempt {
            delivery: DeliveryId(delivery),
            attempt,
            outcome: outcome.into(),
            reason: (outcome != "sent").then(|| "http 503".into()),
        }
    }

    #[test]
    fn instants_are_utc_with_milliseconds() {
        assert_eq!(instant(0), None, "0 means the time is unknown");
        assert_eq!(instant(1).as_deref(), Some("1970-01-01T00:00:00.001Z"));
        assert_eq!(instant(1_704_164_645_006).as_deref(), Some("2024-01-02T03:04:05.006Z"));
        assert_eq!(instant(1_709_164_800_000).as_deref(), Some("2024-02-29T00:00:00.000Z"));
        assert_eq!(instant(951_825_600_000).as_deref(), Some("2000-02-29T12:00:00.000Z"));
        assert_eq!(instant(946_684_799_999).as_deref(), Some("1999-12-31T23:59:59.999Z"));
        assert_eq!(instant(4_107_542_400_000).as_deref(), Some("2100-03-01T00:00:00.000Z"));
        assert_eq!(instant(253_402_300_799_999).as_deref(), Some("9999-12-31T23:59:59.999Z"));
        assert_eq!(instant(253_402_300_800_000), None, "FHIR years have four digits");
        assert_eq!(instant(u64::MAX), None);
    }

    #[test]
    fn strings_and_codes_are_made_valid() {
        assert_eq!(fhir_string("a\tb\r\nc d").as_deref(), Some("a\tb\r\nc d"));
        assert_eq!(fhir_string("100\u{a0}mg\u{feff}\u{2028}x\u{0}y").as_deref(), Some("100 mg  x y"));
        assert_eq!(fhir_string("héllo 👋").as_deref(), Some("héllo 👋"));
        assert_eq!(fhir_string(""), None);
        assert_eq!(fhir_string(" \n\u{a0}\u{0}"), None);
        assert_eq!(fhir_code(" text/plain;  charset=utf-8\n").as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(fhir_code(" \t"), None);
        assert!(is_fhir_id("rec-0000000042") && is_fhir_id("p.1") && !is_fhir_id("p_1") && !is_fhir_id(""));
        assert!(!is_fhir_id(&"a".repeat(65)));
    }

    #[test]
    fn a_patient_message_maps_field_by_field() {
        let mut r = patient_msg(42);
        r.attachments.push(AttachmentV1::from(&Attachment {
            filename: Some(Redacted::new("lab results.pdf".into())),
            content_type: "application/pdf".into(),
            data: Redacted::new(b"%PDF-1.4\n".to_vec()),
        }));
        r.decisions.push(decision("webhook.ehr", "allow", Some(43)));
        r.decisions.push(decision("webhook.sms", "block", None));
        let c = communication(&r, None);
        assert_eq!(c["resourceType"], "Communication");
        assert_eq!(c["id"], "rec-0000000042");
        assert_eq!(
            c["identifier"],
            json!([
                { "system": "urn:carebridge:record", "value": "rec-0000000042" },
                { "system": "urn:carebridge:native:email", "value": "<m42@example.test>" },
            ])
        );
        assert_eq!(c["status"], "completed");
        assert_eq!(
            c["subject"],
            json!({ "reference": "Patient/p-1", "identifier": { "system": SYSTEM_PATIENT, "value": "p-1" } })
        );
        assert_eq!(
            c["sender"],
            json!({ "reference": "Patient/p-1", "identifier": { "system": SYSTEM_PATIENT, "value": "p-1" }, "display": "Ann Patient" })
        );
        assert_eq!(
            c["recipient"],
            json!([{ "identifier": { "system": SYSTEM_ACCOUNT, "value": "email.clinic" }, "display": "email.clinic" }])
        );
        assert_eq!(c["sent"], "2024-01-02T03:03:20.000Z");
        assert_eq!(c["received"], "2024-01-02T03:04:05.006Z");
        assert_eq!(c["topic"], json!({ "text": "Refill" }));
        assert_eq!(
            c["medium"],
            json!([{ "coding": [{ "system": PARTICIPATION_MODE, "code": "EMAILWRIT", "display": "email" }], "text": "email" }])
        );
        assert_eq!(
            c["payload"],
            json!([
                { "contentString": "Please refill my metformin." },
                { "contentAttachment": { "contentType": "application/pdf", "data": "JVBERi0xLjQK", "size": 9, "title": "lab results.pdf" } },
            ])
        );
        // The conversation is a logical reference by a hash, never the token (a capability).
        assert_eq!(c["partOf"][0]["identifier"]["system"], SYSTEM_CONVERSATION);
        assert_eq!(c["partOf"][0]["identifier"]["value"], conversation_id(TOKEN));
        assert!(!c.to_string().contains(TOKEN));
        assert!(c.get("inResponseTo").is_none());
        assert_eq!(c["note"], json!([{ "text": "Not delivered to webhook.sms: block (rules: clinical_on_sms)." }]));
    }

    #[test]
    fn a_staff_reply_goes_to_the_patient_and_answers_the_message() {
        let mut r = record(50, SenderV1::Staff { id: "s-1".into() }, Some("p-1"));
        r.source.account = "telegram.staff".parse().unwrap();
        r.from = Address::new(AddressKind::Telegram, "7001").into();
        r.display_name = None;
        r.subject = None;
        r.native_message_id = None;
        let c = communication(&r, Some(RecordId(42)));
        assert_eq!(
            c["sender"],
            json!({ "reference": "Practitioner/s-1", "identifier": { "system": SYSTEM_STAFF, "value": "s-1" } })
        );
        assert_eq!(
            c["recipient"],
            json!([{ "reference": "Patient/p-1", "identifier": { "system": SYSTEM_PATIENT, "value": "p-1" } }])
        );
        assert_eq!(c["inResponseTo"], json!([{ "reference": record_url(&patient_msg(42)) }]));
        assert_eq!(c["medium"][0]["coding"][0]["code"], "ONLINEWRIT");
        assert_eq!(c["medium"][0]["text"], "Telegram");
        assert_eq!(c["identifier"], json!([{ "system": SYSTEM_RECORD, "value": "rec-0000000050" }]));
        assert!(c.get("topic").is_none());
    }

    #[test]
    fn an_unknown_sender_is_a_display_only_reference() {
        let mut r = record(7, SenderV1::Unknown, Some("p-1"));
        r.source.account = "webhook.sms".parse().unwrap();
        r.from = Address::new(AddressKind::Phone, "+1 (416) 555-0199").into();
        r.display_name = None;
        r.notes = vec!["unverified_sender".into(), "something_new".into()];
        let c = communication(&r, None);
        assert_eq!(
            c["sender"],
            json!({ "identifier": { "system": SYSTEM_ADDRESS, "value": "phone:+14165550199" }, "display": "Unverified sender" })
        );
        assert_eq!(c["medium"][0]["text"], "SMS (via webhook)");
        assert_eq!(
            c["note"],
            json!([
                { "text": "Sender is not in the clinic's directory: identity unverified." },
                { "text": "carebridge note: something_new" },
            ])
        );
    }

    #[test]
    fn directory_ids_that_are_not_fhir_ids_become_logical_references() {
        let r = record(8, SenderV1::Patient { id: "patient 17".into() }, Some("patient 17"));
        let c = communication(&r, None);
        let expected = json!({ "type": "Patient", "identifier": { "system": SYSTEM_PATIENT, "value": "patient 17" } });
        assert_eq!(c["subject"], expected);
        assert_eq!(c["sender"]["type"], "Patient");
        assert!(c["sender"].get("reference").is_none());
    }

    #[test]
    fn empty_parts_are_left_out() {
        let mut r = record(9, SenderV1::Unknown, None);
        r.body = Redacted::new(" \u{a0}".into());
        r.subject = Some(Redacted::new("".into()));
        r.display_name = Some(Redacted::new("\u{200b}".into())); // zero-width space is not whitespace: kept
        r.native_message_id = None;
        r.sent_at_ms = 0;
        let c = communication(&r, None);
        for key in ["payload", "topic", "subject", "sent", "note", "inResponseTo"] {
            assert!(c.get(key).is_none(), "{key} should be absent: {c}");
        }
        assert_eq!(c["sender"]["display"], "\u{200b}");
        assert_no_empty_values(&c);
    }

    #[test]
    fn notes_say_what_happened_without_phi() {
        let mut r = patient_msg(10);
        r.edit_of = Some(RecordId(9));
        r.class = Class::Clinical;
        r.finding_kinds = vec!["medication".into()];
        r.notes = vec!["link_redeemed".into()];
        let c = communication(&r, None);
        let notes: Vec<&str> = c["note"].as_array().unwrap().iter().map(|n| n["text"].as_str().unwrap()).collect();
        assert_eq!(
            notes,
            [
                "Sender linked this chat to the patient with a one-time code.",
                "Edit of an earlier message (rec-0000000009).",
                "Privacy classification: clinical (findings: medication).",
            ]
        );
    }

    #[test]
    fn delivery_status_follows_its_events() {
        let allow = decision("webhook.ehr", "allow", Some(43));
        let hold = decision("webhook.ehr", "hold", Some(43));
        let id = DeliveryId(43);
        let state = |d: &RouteDecisionV1, evs: &[EventV1]| delivery_state(d, id, evs);
        let other = ev(5, attempt(99, 1, "sent"));

        assert_eq!(state(&allow, &[]).status, "in-progress");
        assert_eq!(state(&allow, std::slice::from_ref(&other)).status, "in-progress", "another delivery's events");
        let retry = state(&allow, &[ev(10, attempt(43, 1, "retry"))]);
        assert_eq!(
            (retry.status, retry.reason.as_deref()),
            ("in-progress", Some("Attempt 1 failed, to be retried: http 503"))
        );
        let sent = state(&allow, &[ev(10, attempt(43, 1, "retry")), ev(20, attempt(43, 2, "sent"))]);
        assert_eq!(sent, DeliveryState { status: "completed", reason: None, sent_at_ms: Some(20) });
        let dead = state(
            &allow,
            &[
                ev(10, attempt(43, 1, "permanent")),
                ev(11, EventKind::DeadLettered { delivery: id, reason: "http 404".into() }),
            ],
        );
        assert_eq!((dead.status, dead.reason.as_deref()), ("stopped", Some("Given up: http 404")));

        let held = state(&hold, &[]);
        assert_eq!(
            (held.status, held.reason.as_deref()),
            ("on-hold", Some("Held for review (rules: clinical_on_sms)"))
        );
        let approved = [ev(10, EventKind::Reviewed { delivery: id, verdict: "approved".into(), by: "s-1".into() })];
        assert_eq!(state(&hold, &approved).status, "in-progress");
        let rejected = [ev(10, EventKind::Reviewed { delivery: id, verdict: "rejected".into(), by: "cli".into() })];
        let rejected = state(&hold, &rejected);
        assert_eq!((rejected.status, rejected.reason.as_deref()), ("not-done", Some("Rejected by cli")));
        let withdrawn = state(&allow, &[ev(10, EventKind::ConsentWithdrawn { delivery: id })]);
        assert_eq!(withdrawn.status, "on-hold");
        // A send is final.
        let after =
            state(&allow, &[ev(20, attempt(43, 1, "sent")), ev(30, EventKind::ConsentWithdrawn { delivery: id })]);
        assert_eq!(after.status, "completed");
    }

    #[test]
    fn a_delivery_is_part_of_its_message() {
        let mut r = patient_msg(42);
        r.decisions = vec![decision("webhook.ehr", "redact", Some(43)), decision("email.secure", "reroute", Some(44))];
        let events = [ev(1_704_164_700_000, attempt(43, 1, "sent"))];
        let ds = deliveries(&r, &events);
        assert_eq!(ds.len(), 2);
        let d = &ds[0];
        assert_eq!(d["id"], "dlv-0000000043");
        assert_eq!(d["identifier"], json!([{ "system": SYSTEM_DELIVERY, "value": "dlv-0000000043" }]));
        assert_eq!(d["partOf"], json!([{ "reference": record_url(&r) }]));
        assert_eq!(d["status"], "completed");
        assert_eq!(d["sent"], "2024-01-02T03:05:00.000Z");
        assert!(d.get("statusReason").is_none());
        assert_eq!(d["recipient"][0]["identifier"]["value"], "webhook.ehr");
        assert_eq!(d["medium"][0]["text"], "webhook");
        assert_eq!(d["sender"]["reference"], "Patient/p-1");
        assert_eq!(d["subject"]["reference"], "Patient/p-1");
        assert_eq!(d["note"], json!([{ "text": "Routing decision for webhook.ehr: redact (rules: clinical_on_sms)" }]));
        assert!(d.get("payload").is_none(), "the text sent may be redacted and is not kept");
        let rerouted = &ds[1];
        assert_eq!(rerouted["status"], "in-progress");
        assert_eq!(rerouted["statusReason"], json!({ "text": "Queued for delivery" }));
        // Where it went instead: the secure account's medium, and it as the recipient.
        assert_eq!(rerouted["medium"][0]["text"], "webhook");
        assert_eq!(rerouted["recipient"][0]["identifier"]["value"], "webhook.portal");
        assert_eq!(
            rerouted["note"][0]["text"],
            "Routing decision for email.secure: reroute (rules: clinical_on_sms) (sent by webhook.portal instead)"
        );
        // A rerouted reply goes to the patient, by the secure account.
        let mut reply = record(50, SenderV1::Staff { id: "s-1".into() }, Some("p-1"));
        reply.decisions = vec![decision("webhook.sms", "reroute", Some(51))];
        let d = &deliveries(&reply, &[])[0];
        assert_eq!(d["recipient"][0]["reference"], "Patient/p-1");
        assert_eq!(d["medium"][0]["text"], "webhook");
        // A record from before the secure account was recorded: no guess.
        reply.decisions[0].rerouted_to = None;
        let d = &deliveries(&reply, &[])[0];
        assert!(d.get("recipient").is_none() && d.get("medium").is_none());
    }

    #[test]
    fn a_delivery_two_destinations_share_is_one_communication() {
        let mut r = patient_msg(42);
        r.decisions = vec![decision("telegram.staff", "reroute", Some(43)), decision("webhook.ehr", "allow", Some(43))];
        let ds = deliveries(&r, &[]);
        assert_eq!(ds.len(), 1, "{ds:?}");
        assert_eq!(ds[0]["id"], "dlv-0000000043");
        assert_eq!(ds[0]["recipient"][0]["identifier"]["value"], "webhook.ehr", "described by the direct hop");
        let b = bundle("p-1", &[(r, Vec::new())], 1);
        assert_eq!(b["entry"].as_array().unwrap().len(), 2, "the message and one delivery");
    }

    #[test]
    fn a_notice_sent_later_is_filed_alone_part_of_its_message_by_identifier() {
        let r = patient_msg(42);
        let notice = |id: u64, text: &str| {
            ev(
                10,
                EventKind::Notice {
                    delivery: DeliveryId(id),
                    account: "webhook.sms".into(),
                    to: Some(r.from.clone()),
                    text: text.into(),
                },
            )
        };
        let events = [notice(43, "Please use the portal."), notice(47, "Your message was not sent.")];
        let filed = notice_filing(&r, &events, DeliveryId(47)).unwrap();
        let filed = filed.as_array().unwrap();
        assert_eq!(filed.len(), 1, "the notice alone, not its message nor the other notice");
        assert_eq!(filed[0]["identifier"], json!([{ "system": SYSTEM_DELIVERY, "value": "dlv-0000000047" }]));
        assert_eq!(filed[0]["partOf"], json!([record_identifier_ref(RecordId(42))]));
        assert_eq!(filed[0]["payload"][0]["contentString"], "Your message was not sent.");
        assert!(notice_filing(&r, &events, DeliveryId(99)).is_none());
    }

    #[test]
    fn threading_answers_the_other_party() {
        let staff = |id| record(id, SenderV1::Staff { id: "s-1".into() }, Some("p-1"));
        let mut elsewhere = patient_msg(4);
        elsewhere.conversation = "another".into();
        let rs = [patient_msg(1), patient_msg(2), staff(3), elsewhere, patient_msg(5), staff(6), staff(7)];
        let t = in_response_to(&rs);
        let got: Vec<(u64, Option<u64>)> = rs.iter().map(|r| (r.id.0, t.get(&r.id).map(|p| p.0))).collect();
        assert_eq!(got, [(1, None), (2, None), (3, Some(2)), (4, None), (5, Some(3)), (6, Some(5)), (7, Some(5))]);
    }

    #[test]
    fn the_bundle_is_a_deterministic_collection_of_one_patients_file() {
        let mut p = patient_msg(1);
        p.decisions = vec![decision("telegram.staff", "allow", Some(2))];
        let mut reply = record(3, SenderV1::Staff { id: "s-1".into() }, Some("p-1"));
        reply.decisions = vec![decision("email.clinic", "allow", Some(4))];
        let mut other = patient_msg(5);
        other.patient_id = Some("p-2".into());
        let items = vec![
            (reply.clone(), vec![ev(20, attempt(4, 1, "sent"))]),
            (other, Vec::new()),
            (p.clone(), vec![ev(10, attempt(2, 1, "sent"))]),
        ];
        let b = bundle("p-1", &items, 1_704_164_645_006);
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "collection");
        assert_eq!(b["timestamp"], "2024-01-02T03:04:05.006Z");
        let entries = b["entry"].as_array().unwrap();
        let ids: Vec<&str> = entries.iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            ["rec-0000000001", "dlv-0000000002", "rec-0000000003", "dlv-0000000004"],
            "p-2's record left out"
        );
        assert_eq!(entries[2]["resource"]["inResponseTo"][0]["reference"], entries[0]["fullUrl"]);

        // Every in-bundle reference resolves to an entry; full URLs are unique UUID URNs.
        let urls: Vec<&str> = entries.iter().map(|e| e["fullUrl"].as_str().unwrap()).collect();
        let uuid = regex::Regex::new("^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
            .unwrap();
        assert!(urls.iter().all(|u| uuid.is_match(u)), "{urls:?}");
        let mut unique = urls.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), urls.len());
        for e in entries {
            for key in ["partOf", "inResponseTo"] {
                for r in e["resource"][key].as_array().into_iter().flatten() {
                    if let Some(u) = r["reference"].as_str() {
                        assert!(urls.contains(&u), "{u} does not resolve");
                    }
                }
            }
        }
        assert_no_empty_values(&b);

        // The same input, in any order, gives the same bytes.
        let mut shuffled = items.clone();
        shuffled.reverse();
        shuffled.push(items[0].clone());
        assert_eq!(bundle("p-1", &shuffled, 1_704_164_645_006).to_string(), b.to_string());
        let empty = bundle("p-9", &items, 1_704_164_645_006);
        assert!(empty.get("entry").is_none());
    }

    /// FHIR JSON has no empty strings, arrays or objects.
    fn assert_no_empty_values(v: &Value) {
        match v {
            Value::String(s) => assert!(!s.is_empty()),
            Value::Array(a) => {
                assert!(!a.is_empty());
                a.iter().for_each(assert_no_empty_values);
            }
            Value::Object(o) => {
                assert!(!o.is_empty());
                o.values().for_each(assert_no_empty_values);
            }
            _ => {}
        }
    }
}
