//! Resolving a held delivery: the store's half, one transaction. What a verdict queues is
//! decided outside the store (`crate::review`): on approval what the policy allows for the hop
//! now, on rejection the notice telling its author.

use super::chain;
use super::engine::TxError;
use super::schema::{EventKind, OutboxItemV1, ReviewItemV1};
use super::{OutboxKey, Store, StoreError, t, tx_err};
use carebridge_contract::DeliveryId;

impl Store {
    /// One held delivery, if it is still held.
    pub fn held_item(&self, delivery: DeliveryId) -> Result<Option<ReviewItemV1>, StoreError> {
        self.get_sealed(&self.review, &delivery.0.to_be_bytes())
    }

    /// Resolves a held delivery with `verdict` (`approved`, `rejected`) by queueing `queue` in
    /// its place. Appends the verdict and every notice queued to the record, in the same
    /// transaction. `None` if it is no longer held.
    pub fn resolve_held(
        &self,
        delivery: DeliveryId,
        verdict: &str,
        queue: Vec<OutboxItemV1>,
        by: &str,
    ) -> Result<Option<Vec<OutboxKey>>, StoreError> {
        let dkey = delivery.0.to_be_bytes();
        let Some(held) = self.held_item(delivery)? else { return Ok(None) };
        let mut rows = Vec::with_capacity(queue.len());
        for mut item in queue {
            item.not_before_ms = 0;
            let key = OutboxKey { account: item.delivery.account.clone(), seq: self.next_id()? };
            let k = key.encode();
            let v = self.seal(t::OUTBOX, &k, &item);
            rows.push((key, k, v, item));
        }
        let patient = held.item.patient_id.as_deref();
        let ev = self.prepare_event(
            held.item.delivery.record_id,
            patient,
            &EventKind::Reviewed { delivery, verdict: verdict.to_string(), by: by.to_string() },
        )?;
        let notices = self.prepare_notice_events(patient, rows.iter().map(|(_, _, _, i)| i))?;
        self.transact(|tx| {
            let (review, outbox, events, journal, heads) = (
                &tx.on(&self.review),
                &tx.on(&self.outbox),
                &tx.on(&self.events),
                &tx.on(&self.journal),
                &tx.on(&self.chain_heads),
            );
            review.remove(dkey)?;
            for (_, k, v, _) in &rows {
                outbox.insert(k.as_slice(), v.as_slice())?;
            }
            for e in std::iter::once(&ev).chain(&notices) {
                events.insert(e.key.as_slice(), e.body.as_slice())?;
                chain::append(&self.chain_key, journal, heads, e.append())?;
            }
            Ok::<(), TxError<()>>(())
        })
        .map_err(tx_err)?;
        Ok(Some(rows.into_iter().map(|(k, _, _, _)| k).collect()))
    }
}
