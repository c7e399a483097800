//! The audit trail of reads and exports, and per-patient access to the file.
//!
//! Every read of a patient's records through carebridge (`records list|show|export`, the admin
//! API behind them) appends an [`AuditV1`] in the same chain as the records; the privacy
//! officer reads the trail with `records audit` (itself audited).

use super::chain::{self, Append, Kind};
use super::engine::TxError;
use super::schema::{AuditV1, RecordV1};
use super::{Store, StoreError, now_ms, t};
use carebridge_contract::RecordId;

/// Who is reading, through what.
#[derive(Clone, Debug)]
pub struct Actor {
    /// Their name.
    pub name: String,
    /// `cli` or `admin-api`.
    pub via: &'static str,
}

impl Store {
    /// Appends an audit entry (sealed, chained into the patient's chain if it names one).
    /// Durable after the next flush; callers that answer a request flush first.
    pub fn audit(
        &self,
        actor: &Actor,
        action: &str,
        patient_id: Option<&str>,
        records: Vec<RecordId>,
        detail: Option<String>,
    ) -> Result<u64, StoreError> {
        let id = self.next_id()?;
        let at_ms = now_ms();
        let entry = AuditV1 {
            v: 1,
            id,
            at_ms,
            actor: actor.name.clone(),
            via: actor.via.to_string(),
            action: action.to_string(),
            patient_id: patient_id.map(str::to_string),
            records,
            detail,
        };
        let key = id.to_be_bytes();
        let body = self.seal(t::AUDIT, &key, &entry);
        let patient = patient_id.map(|p| self.patient_key(p));
        self.transact(|tx| {
            let (audit, journal, heads) = (&tx.on(&self.audit), &tx.on(&self.journal), &tx.on(&self.chain_heads));
            audit.insert(key, body.as_slice())?;
            chain::append(
                &self.chain_key,
                journal,
                heads,
                Append { kind: Kind::Audit, key: &key, sealed: &body, patient: patient.as_deref(), at_ms },
            )?;
            Ok::<(), TxError<()>>(())
        })
        .map_err(super::tx_err)?;
        Ok(id)
    }

    /// The audit trail, oldest first; one patient's if `patient_id` is given.
    pub fn audit_entries(&self, patient_id: Option<&str>) -> Result<Vec<AuditV1>, StoreError> {
        let all: Vec<AuditV1> = self.all_sealed(&self.audit)?;
        Ok(match patient_id {
            Some(p) => all.into_iter().filter(|a| a.patient_id.as_deref() == Some(p)).collect(),
            None => all,
        })
    }

    /// One patient's records, oldest first, found through their chain in the journal (no record
    /// is decrypted that is not theirs). Purged records are absent.
    pub fn patient_records(&self, patient_id: &str) -> Result<Vec<RecordV1>, StoreError> {
        let blind = self.patient_key(patient_id);
        let want: [u8; 32] = blind[1..].try_into().unwrap_or([0; 32]);
        let mut out = Vec::new();
        let mut assigned = Vec::new();
        for e in chain::entries(&self.journal) {
            let e = e?.map_err(|seq| StoreError::Decode {
                tree: "journal",
                reason: format!("entry {seq} is not decodable"),
            })?;
            if e.kind == Kind::Record && e.patient == Some(want) {
                let id = RecordId(e.key.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0));
                if let Some(r) = self.record(id)? {
                    out.push(r);
                }
            } else if e.kind == Kind::Event && e.patient == Some(want) {
                // An event in this patient's chain on a record without a patient: the record
                // was attached to them later (`records assign`, `super::triage`).
                let id = RecordId(e.key.get(..8).and_then(|k| k.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0));
                if !assigned.contains(&id) && !out.iter().any(|r: &RecordV1| r.id == id) {
                    assigned.push(id);
                }
            }
        }
        for id in assigned {
            if let Some(r) = self.assigned_record(id, patient_id)? {
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.id);
        Ok(out)
    }
}
