//! Records that have no patient yet: messages from senders nobody has linked (a new patient
//! writing in, a number the directory does not know). The administrator lists them while the
//! daemon runs (`carebridge records unassigned`) and attaches one to a patient's file
//! (`carebridge records assign`): an [`EventKind::Assigned`] chained into the patient's chain
//! (how `patient_records` finds it), and the conversation's patient set, so what follows in it
//! (a clinician's reply, the sender's next message) belongs to that file too. The record itself
//! is never rewritten; the sender is not linked (that takes a link code: identity, not triage).
//!
//! A `fhir` account's filing of such a record gave up (nothing to file it under: a dead
//! letter). Assigning it puts those filings back in the outbox in the same transaction, so the
//! record reaches the EMR under the patient now known (`filing` reads the assignment).

use super::chain::{self, Kind};
use super::engine::TxError;
use super::schema::{ConversationV1, DeadLetterV1, EventKind, RecordV1};
use super::{OutboxKey, Store, StoreError, t, tx_store_err};
use carebridge_contract::{ChannelKind, DeliveryId, RecordId};

/// A dead letter going back to the outbox: its delivery, its new row (key, encoded key,
/// sealed value) and its `requeued` event.
type Requeue = (DeliveryId, OutboxKey, Vec<u8>, Vec<u8>, super::PreparedEvent);

/// Why a record could not be assigned.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such record.
    #[error("no such record")]
    NotFound,
    /// It already belongs to a patient's file.
    #[error("{0} already belongs to a patient's file")]
    Assigned(RecordId),
}

impl Store {
    /// Records with no patient (and not assigned since), oldest first, found through the
    /// PHI-free journal (records written without a patient, minus those assigned later).
    pub fn unassigned_records(&self) -> Result<Vec<RecordV1>, StoreError> {
        let mut ids: Vec<RecordId> = Vec::new();
        let mut seen: std::collections::HashSet<RecordId> = std::collections::HashSet::new();
        let mut assigned: std::collections::HashSet<RecordId> = std::collections::HashSet::new();
        for e in chain::entries(&self.journal) {
            let e = e?.map_err(|seq| StoreError::Decode {
                tree: "journal",
                reason: format!("entry {seq} is not decodable"),
            })?;
            let id = RecordId(e.key.get(..8).and_then(|k| k.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0));
            match (e.kind, e.patient) {
                (Kind::Record, None) => {
                    ids.push(id);
                    seen.insert(id);
                }
                (Kind::Event, Some(_)) if seen.contains(&id) => {
                    assigned.insert(id);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for id in ids.into_iter().filter(|i| !assigned.contains(i)) {
            if let Some(r) = self.record(id)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The record `id` as it belongs to `patient_id`'s file if it was assigned to them (its
    /// `patient_id` filled in, as the file sees it), else `None`.
    pub(crate) fn assigned_record(&self, id: RecordId, patient_id: &str) -> Result<Option<RecordV1>, StoreError> {
        let Some(mut r) = self.record(id)? else { return Ok(None) };
        if r.patient_id.is_some() {
            return Ok(None);
        }
        let to_them = self
            .events(id)?
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Assigned { patient, .. } if patient == patient_id));
        if !to_them {
            return Ok(None);
        }
        r.patient_id = Some(patient_id.to_string());
        Ok(Some(r))
    }

    /// Attaches a record without a patient to `patient_id`'s file (the caller checked the
    /// patient is in the directory and audits the change): one transaction writes the chained
    /// event, gives the record's conversation the patient if it had none, and requeues the
    /// record's `fhir` filings that gave up (each with a `requeued` event by `by`). Answers the
    /// outbox rows to wake.
    pub fn assign_record(&self, id: RecordId, patient_id: &str, by: &str) -> Result<Vec<OutboxKey>, AssignError> {
        let Some(r) = self.record(id)? else { return Err(AssignError::NotFound) };
        let already =
            r.patient_id.is_some() || self.events(id)?.iter().any(|e| matches!(e.kind, EventKind::Assigned { .. }));
        if already {
            return Err(AssignError::Assigned(id));
        }
        let kind = EventKind::Assigned { patient: patient_id.to_string(), by: by.to_string() };
        let ev = self.prepare_event(id, Some(patient_id), &kind)?;
        let conversation: Option<ConversationV1> = self.conversation(&r.conversation)?;
        let conv = conversation.filter(|c| c.patient_id.is_none()).map(|mut c| {
            c.patient_id = Some(patient_id.to_string());
            let v = self.seal(t::CONVERSATIONS, c.token.as_bytes(), &c);
            (c.token, v)
        });
        let mut requeue: Vec<Requeue> = Vec::new();
        for delivery in r.decisions.iter().filter_map(|d| d.delivery) {
            let dead: Option<DeadLetterV1> = self.dead_letter(delivery)?;
            let Some(dead) = dead.filter(|d| d.item.delivery.account.kind() == ChannelKind::Fhir) else { continue };
            if requeue.iter().any(|(seen, ..)| *seen == delivery) {
                continue; // two destinations sharing one delivery
            }
            let mut item = dead.item;
            item.attempts = 0;
            item.not_before_ms = 0;
            item.patient_id = Some(patient_id.to_string());
            let key = OutboxKey { account: item.delivery.account.clone(), seq: self.next_id()? };
            let okey = key.encode();
            let row = self.seal(t::OUTBOX, &okey, &item);
            let kind = EventKind::Requeued { delivery, by: by.to_string() };
            let event = self.prepare_event(id, Some(patient_id), &kind)?;
            requeue.push((delivery, key, okey, row, event));
        }
        self.transact(|tx| {
            let (events, conversations, journal, heads) =
                (&tx.on(&self.events), &tx.on(&self.conversations), &tx.on(&self.journal), &tx.on(&self.chain_heads));
            events.insert(ev.key.as_slice(), ev.body.as_slice())?;
            chain::append(&self.chain_key, journal, heads, ev.append())?;
            if let Some((token, v)) = &conv {
                conversations.insert(token.as_bytes(), v.as_slice())?;
            }
            for (delivery, _, okey, row, event) in &requeue {
                tx.on(&self.dead).remove(delivery.0.to_be_bytes())?;
                tx.on(&self.outbox).insert(okey.as_slice(), row.as_slice())?;
                events.insert(event.key.as_slice(), event.body.as_slice())?;
                chain::append(&self.chain_key, journal, heads, event.append())?;
            }
            Ok::<(), TxError<StoreError>>(())
        })
        .map_err(tx_store_err)?;
        Ok(requeue.into_iter().map(|(_, key, ..)| key).collect())
    }
}
