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

use super::schema::{DeliveryKindV1, DeliveryV1, EventKind, EventV1, OutboxItemV1, RecordV1};
use super::{Store, StoreError, t};
use carebridge_contract::{AccountId, Delivery, DeliveryId, RecordId, Redacted};

impl Store {
    /// The Communications a `fhir` account files for `delivery` (JSON text, PHI), or `None` if
    /// its record is gone (purged since it was queued). `stored` is the delivery as queued: a
    /// filing of one notice ([`DeliveryV1::files_notice`]) files that notice alone.
    pub fn filing(&self, stored: &DeliveryV1, delivery: &Delivery) -> Result<Option<Redacted<String>>, StoreError> {
        let Some(record) = self.record(delivery.record_id)? else { return Ok(None) };
        let events = self.events(record.id)?;
        let record = with_assigned_patient(record, &events);
        if let Some(notice) = stored.files_notice {
            return Ok(super::fhir::notice_filing(&record, &events, notice).map(|v| Redacted::new(v.to_string())));
        }
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

    /// The deliveries filing `notices` (the notices one transaction queues, of `patient`'s
    /// file) in each of `accounts` (`fhir` accounts), to be queued in that same transaction: a
    /// notice sent after its message was filed reaches the EMR too, and nothing waits for a
    /// later scan. The caller leaves out an account that a filing of the notice's message in the
    /// same transaction reaches (it carries the record's notices, [`super::fhir::filing`]).
    pub fn notice_filings<'a>(
        &self,
        notices: impl IntoIterator<Item = &'a OutboxItemV1>,
        accounts: &[AccountId],
        patient: &str,
    ) -> Result<Vec<OutboxItemV1>, StoreError> {
        let mut out = Vec::new();
        for n in notices {
            let d = &n.delivery;
            if d.kind != DeliveryKindV1::Notice || d.files_notice.is_some() {
                continue;
            }
            for account in accounts {
                let delivery = DeliveryV1 {
                    id: DeliveryId(self.next_id()?),
                    record_id: d.record_id,
                    account: account.clone(),
                    kind: DeliveryKindV1::Notice,
                    to: None,
                    conversation: d.conversation.clone(),
                    patient_id: Some(Redacted::new(patient.to_string())),
                    sender_label: None,
                    subject: None,
                    // What was said (PHI-free); the filing itself is mapped from the notice's event.
                    body: d.body.clone(),
                    attachments: Vec::new(),
                    in_reply_to: Vec::new(),
                    rerouted_from: None,
                    files_notice: Some(d.id),
                };
                out.push(OutboxItemV1 {
                    v: 1,
                    delivery,
                    attempts: 0,
                    not_before_ms: 0,
                    patient_id: Some(patient.to_string()),
                    requires_consent: false,
                });
            }
        }
        Ok(out)
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

/// `record` as its patient's file sees it: a record written without a patient (an unverified
/// sender) and attached to one later (`records assign`) is filed under that patient.
fn with_assigned_patient(mut record: RecordV1, events: &[EventV1]) -> RecordV1 {
    if record.patient_id.is_none() {
        record.patient_id = events.iter().find_map(|e| match &e.kind {
            EventKind::Assigned { patient, .. } => Some(patient.clone()),
            _ => None,
        });
    }
    record
}
