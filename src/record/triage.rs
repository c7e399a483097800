//! Records that have no patient yet: messages from senders nobody has linked (a new patient
//! writing in, a number the directory does not know). The administrator lists them while the
//! daemon runs (`carebridge records unassigned`) and attaches one to a patient's file
//! (`carebridge records assign`): an [`EventKind::Assigned`] chained into the patient's chain
//! (how `patient_records` finds it), and the conversation's patient set, so what follows in it
//! (a clinician's reply, the sender's next message) belongs to that file too. The record itself
//! is never rewritten; the sender is not linked (that takes a link code: identity, not triage).

use super::chain::{self, Kind};
use super::engine::TxError;
use super::schema::{ConversationV1, EventKind, RecordV1};
use super::{Store, StoreError, t, tx_store_err};
use carebridge_contract::RecordId;

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
    /// event and gives the record's conversation the patient if it had none.
    pub fn assign_record(&self, id: RecordId, patient_id: &str, by: &str) -> Result<(), AssignError> {
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
        self.transact(|tx| {
            let (events, conversations, journal, heads) =
                (&tx.on(&self.events), &tx.on(&self.conversations), &tx.on(&self.journal), &tx.on(&self.chain_heads));
            events.insert(ev.key.as_slice(), ev.body.as_slice())?;
            chain::append(&self.chain_key, journal, heads, ev.append())?;
            if let Some((token, v)) = &conv {
                conversations.insert(token.as_bytes(), v.as_slice())?;
            }
            Ok::<(), TxError<StoreError>>(())
        })
        .map_err(tx_store_err)?;
        Ok(())
    }
}
