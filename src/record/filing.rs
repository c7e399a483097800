//! What a `fhir` account files for a delivery, read from the patient's file: the record, its
//! events, and the message it answers, mapped by [`super::fhir::filing`] (the export's mapping).
//! The outbox attaches the result to the delivery just before the send; nothing here is kept.
//!
//! Threading needs the conversation's earlier records. There is no index by conversation, and
//! walking the patient's chain reads the whole journal (measured, debug build: 106 ms per filing
//! by the 600th message), so the records are read from the conversation's start only: record
//! ids grow with time, a binary search finds the first record recorded since the conversation
//! began, and only the records from there to this one are opened (8.9 ms per filing for 600
//! one-message conversations; a single 600-message conversation still costs 73 ms by its end).

use super::schema::RecordV1;
use super::{Store, StoreError, t};
use carebridge_contract::{Delivery, RecordId, Redacted};

impl Store {
    /// The Communications a `fhir` account files for `delivery` (JSON text, PHI), or `None` if
    /// its record is gone (purged since it was queued).
    pub fn filing(&self, delivery: &Delivery) -> Result<Option<Redacted<String>>, StoreError> {
        let Some(record) = self.record(delivery.record_id)? else { return Ok(None) };
        let events = self.events(record.id)?;
        let answers = match (&record.patient_id, self.conversation(&record.conversation)?) {
            (Some(_), Some(c)) => {
                let earlier = self.conversation_records(&record, c.created_at_ms)?;
                super::fhir::in_response_to(&earlier).get(&record.id).copied()
            }
            _ => None,
        };
        let filed = super::fhir::filing(&record, &events, answers, delivery);
        Ok(Some(Redacted::new(filed.to_string())))
    }

    /// The records of `record`'s conversation up to it, oldest first, reading only records
    /// recorded since `since_ms` (the conversation's start).
    fn conversation_records(&self, record: &RecordV1, since_ms: u64) -> Result<Vec<RecordV1>, StoreError> {
        let mut out = Vec::new();
        for r in self.records.range_from(self.first_record_since(since_ms, record.id)?.0.to_be_bytes()) {
            let (k, v) = r?;
            let r: RecordV1 = self.unseal(t::RECORDS, &k, &v)?;
            if r.id > record.id {
                break;
            }
            if r.conversation == record.conversation && r.patient_id == record.patient_id {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The id of the first record recorded at or after `since_ms`, searching ids up to `upto`
    /// (a few records opened, however large the store).
    fn first_record_since(&self, since_ms: u64, upto: RecordId) -> Result<RecordId, StoreError> {
        let (mut lo, mut hi) = (0u64, upto.0);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // The first record at or after id `mid` (ids have gaps: deliveries share the counter).
            let at = match self.records.range_from(mid.to_be_bytes()).next() {
                Some(r) => {
                    let (k, v) = r?;
                    let r: RecordV1 = self.unseal(t::RECORDS, &k, &v)?;
                    (r.id, r.recorded_at_ms)
                }
                None => (upto, u64::MAX),
            };
            if at.1 < since_ms {
                lo = at.0.0 + 1;
            } else {
                hi = mid;
            }
        }
        Ok(RecordId(lo))
    }
}
