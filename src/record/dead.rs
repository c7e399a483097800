//! Dead letters, in the operator's hands (`carebridge outbox list|retry|drop`, the admin API):
//! send one again, or drop it. Each change is one transaction together with the event it
//! appends (and chains) to the record, in the style of [`Store::resolve_held`].

use super::chain;
use super::engine::{Tx, TxError};
use super::schema::{DeadLetterV1, EventKind};
use super::{OutboxKey, PreparedEvent, Store, StoreError, abort, t};
use carebridge_contract::{DeliveryId, RecordId};

impl Store {
    /// One dead letter.
    pub fn dead_letter(&self, delivery: DeliveryId) -> Result<Option<DeadLetterV1>, StoreError> {
        self.get_sealed(&self.dead, &delivery.0.to_be_bytes())
    }

    /// Puts a dead letter back in the outbox with its attempts reset and no backoff, and appends
    /// [`EventKind::Requeued`] to its record. It keeps its delivery id (the receiver's idempotency
    /// key), so a receiver that did get an earlier attempt can recognise it. Returns the new
    /// outbox key to wake, or `None` if there is no such dead letter (or someone else just
    /// handled it). Durable after the next flush.
    pub fn retry_dead(&self, delivery: DeliveryId, by: &str) -> Result<Option<OutboxKey>, StoreError> {
        let Some(dead) = self.dead_letter(delivery)? else { return Ok(None) };
        let mut item = dead.item;
        item.attempts = 0;
        item.not_before_ms = 0;
        let key = OutboxKey { account: item.delivery.account.clone(), seq: self.next_id()? };
        let okey = key.encode();
        let row = self.seal(t::OUTBOX, &okey, &item);
        let kind = EventKind::Requeued { delivery, by: by.to_string() };
        let event = self.prepare_event(item.delivery.record_id, item.patient_id.as_deref(), &kind)?;
        let r = self.transact(|tx| {
            if tx.on(&self.dead).remove(delivery.0.to_be_bytes())?.is_none() {
                return Err(abort(()));
            }
            tx.on(&self.outbox).insert(okey.as_slice(), row.as_slice())?;
            self.append_dead_event(&event, tx)
        });
        settle(r).map(|done| done.then_some(key))
    }

    /// Removes a dead letter for good and appends [`EventKind::Dropped`] to its record. Returns
    /// the record it belonged to, or `None` if there is no such dead letter. Durable after the
    /// next flush.
    pub fn drop_dead(&self, delivery: DeliveryId, by: &str) -> Result<Option<RecordId>, StoreError> {
        let Some(dead) = self.dead_letter(delivery)? else { return Ok(None) };
        let record = dead.item.delivery.record_id;
        let kind = EventKind::Dropped { delivery, by: by.to_string() };
        let event = self.prepare_event(record, dead.item.patient_id.as_deref(), &kind)?;
        let r = self.transact(|tx| {
            if tx.on(&self.dead).remove(delivery.0.to_be_bytes())?.is_none() {
                return Err(abort(()));
            }
            self.append_dead_event(&event, tx)
        });
        settle(r).map(|done| done.then_some(record))
    }

    /// Dead letters waiting for an operator (a gauge; cheap while the list is short, as it
    /// should be).
    pub fn dead_count(&self) -> usize {
        self.dead.len().unwrap_or(0)
    }

    /// Deliveries held for review (a gauge).
    pub fn held_count(&self) -> usize {
        self.review.len().unwrap_or(0)
    }

    /// Writes a prepared event and links it into the chain, inside a transaction.
    fn append_dead_event(&self, ev: &PreparedEvent, tx: &Tx<'_>) -> Result<(), TxError<()>> {
        tx.on(&self.events).insert(ev.key.as_slice(), ev.body.as_slice())?;
        chain::append(&self.chain_key, &tx.on(&self.journal), &tx.on(&self.chain_heads), ev.append())?;
        Ok(())
    }
}

/// `true` if the transaction ran, `false` if it found the dead letter gone.
fn settle(r: Result<(), TxError<()>>) -> Result<bool, StoreError> {
    match r {
        Ok(()) => Ok(true),
        Err(TxError::Abort(())) => Ok(false),
        Err(TxError::Storage(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::OutboxUpdate;
    use crate::record::schema::OutboxItemV1;
    use carebridge_contract::{Delivery, DeliveryKind, Redacted};

    fn test_store(dir: &std::path::Path) -> Store {
        let keys = crate::record::Keyring::generate(&dir.join("store.key")).unwrap();
        Store::open(&dir.join("data"), keys).unwrap()
    }

    fn dead_letter(store: &Store, id: u64, record: u64) -> OutboxKey {
        let delivery = Delivery {
            id: DeliveryId(id),
            record_id: RecordId(record),
            account: "webhook.out".parse().unwrap(),
            kind: DeliveryKind::Forward,
            to: None,
            conversation: Redacted::new("c-1".into()),
            patient_id: None,
            sender_label: None,
            subject: None,
            body: Redacted::new("dead letter body".into()),
            attachments: Vec::new(),
            in_reply_to: Vec::new(),
            rerouted_from: None,
            filed_as: None,
        };
        let item = OutboxItemV1 {
            v: 1,
            delivery: delivery.into(),
            attempts: 5,
            not_before_ms: 99,
            patient_id: None,
            requires_consent: false,
        };
        let key = OutboxKey { account: item.delivery.account.clone(), seq: store.next_id().unwrap() };
        // Queued first, as the worker's rows are: only a row still in the outbox moves.
        let row = store.seal(super::super::t::OUTBOX, &key.encode(), &item);
        store
            .transact(|tx| {
                tx.on(&store.outbox).insert(key.encode(), row.as_slice())?;
                Ok::<(), crate::record::engine::TxError<()>>(())
            })
            .unwrap();
        store
            .apply_outbox(&[OutboxUpdate::Dead { key: key.clone(), item, reason: "HTTP 400".into(), events: vec![] }])
            .unwrap();
        store.flush_blocking().unwrap();
        key
    }

    #[test]
    fn retry_requeues_with_attempts_reset_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path());
        dead_letter(&store, 7, 70);
        assert_eq!(store.dead_count(), 1);
        let key = store.retry_dead(DeliveryId(7), "ops-1").unwrap().expect("requeued");
        store.flush_blocking().unwrap();
        assert_eq!(store.dead_count(), 0);
        let row = store.outbox_item(&key).unwrap().expect("back in the outbox");
        assert_eq!((row.attempts, row.not_before_ms, row.delivery.id), (0, 0, DeliveryId(7)));
        assert!(store.retry_dead(DeliveryId(7), "ops-1").unwrap().is_none(), "a second retry finds nothing");
        let events = store.events(RecordId(70)).unwrap();
        assert!(
            matches!(&events[..], [e] if matches!(&e.kind, EventKind::Requeued { delivery, by } if *delivery == DeliveryId(7) && by == "ops-1")),
            "{events:?}"
        );
    }

    #[test]
    fn drop_removes_and_records_who() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path());
        dead_letter(&store, 8, 80);
        assert_eq!(store.drop_dead(DeliveryId(8), "ops-2").unwrap(), Some(RecordId(80)));
        store.flush_blocking().unwrap();
        assert!(store.dead_letters().unwrap().is_empty());
        assert!(store.drop_dead(DeliveryId(8), "ops-2").unwrap().is_none());
        assert!(store.retry_dead(DeliveryId(8), "ops-2").unwrap().is_none(), "a dropped letter cannot come back");
        let events = store.events(RecordId(80)).unwrap();
        assert!(matches!(&events[..], [e] if matches!(&e.kind, EventKind::Dropped { by, .. } if by == "ops-2")));
    }
}
