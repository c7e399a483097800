//! What a `fhir` account files for a delivery, read from the patient's file: the record, its
//! events, and the message it answers, mapped by [`super::fhir::filing`] (the export's mapping).
//! The outbox attaches the result to the delivery just before the send; nothing here is kept.

use super::schema::RecordV1;
use super::{Store, StoreError};
use carebridge_contract::{Delivery, Redacted};

impl Store {
    /// The Communications a `fhir` account files for `delivery` (JSON text, PHI), or `None` if
    /// its record is gone (purged since it was queued).
    pub fn filing(&self, delivery: &Delivery) -> Result<Option<Redacted<String>>, StoreError> {
        let Some(record) = self.record(delivery.record_id)? else { return Ok(None) };
        let events = self.events(record.id)?;
        let answers = match &record.patient_id {
            Some(p) => {
                // The conversation's earlier records, for threading (the patient's chain: no
                // other patient's record is read).
                let mut earlier: Vec<RecordV1> = self
                    .patient_records(p)?
                    .into_iter()
                    .filter(|r| r.conversation == record.conversation && r.id <= record.id)
                    .collect();
                earlier.sort_by_key(|r| r.id);
                super::fhir::in_response_to(&earlier).get(&record.id).copied()
            }
            None => None,
        };
        let filed = super::fhir::filing(&record, &events, answers, delivery);
        Ok(Some(Redacted::new(filed.to_string())))
    }
}
