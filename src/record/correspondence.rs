//! Correspondence carebridge itself sends: every PHI-free notice queued with a record is also
//! appended to the record as a [`EventKind::Notice`] (its text and recipient), chained in the
//! same transaction as the delivery, so `records show`, the JSON lines export and the FHIR
//! export hold what the patient and the clinic were told, not only that something was sent.

use super::schema::{DeliveryKindV1, EventKind, OutboxItemV1};
use super::{PreparedEvent, Store, StoreError};

/// The event recording `item`, if it is a notice (not the filing of one in the EMR: that is a
/// copy of a notice already recorded, see `filing`).
pub(crate) fn notice_event(item: &OutboxItemV1) -> Option<EventKind> {
    let d = &item.delivery;
    (d.kind == DeliveryKindV1::Notice && d.files_notice.is_none()).then(|| EventKind::Notice {
        delivery: d.id,
        account: d.account.to_string(),
        to: d.to.clone(),
        text: d.body.expose().clone(),
    })
}

impl Store {
    /// The notice events of `items` (the outbox rows one exchange or one review queues), ready
    /// for the transaction that queues them, in the record's chain and its patient's.
    pub(crate) fn prepare_notice_events<'a>(
        &self,
        patient: Option<&str>,
        items: impl IntoIterator<Item = &'a OutboxItemV1>,
    ) -> Result<Vec<PreparedEvent>, StoreError> {
        items
            .into_iter()
            .filter_map(|i| notice_event(i).map(|e| (i.delivery.record_id, e)))
            .map(|(record, e)| self.prepare_event(record, patient, &e))
            .collect()
    }
}
