//! Delivery: one worker per destination account, FIFO, with exponential backoff and jitter that
//! honours the remote's Retry-After, and a dead-letter after `max_attempts`. Every attempt's
//! outcome is appended to the record.
//!
//! A worker learns about rows only (a) by scanning the outbox at start-up, before the router
//! runs, and (b) from the [`Flusher`](crate::record::Flusher) after the rows are durable. So a
//! delivery is never sent before its record is on disk (record before forward).

use crate::config::OutboxConfig;
use crate::record::schema::{EventKind, OutboxItemV1};
use crate::record::{OutboxKey, Store, StoreError, now_ms};
use carebridge_contract::{AccountId, Outbound, SendError};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Hands durable outbox rows to the worker of their account.
#[derive(Clone, Debug, Default)]
pub struct Wakers {
    queues: BTreeMap<AccountId, mpsc::UnboundedSender<OutboxKey>>,
}

impl Wakers {
    /// Passes each key to its account's worker. Keys of accounts without a worker stay in the
    /// outbox (they are sent after a restart with that account configured).
    pub fn wake(&self, keys: Vec<OutboxKey>) {
        for k in keys {
            match self.queues.get(&k.account) {
                Some(q) => {
                    let _ = q.send(k);
                }
                None => {
                    warn!(account = %k.account, "Delivery queued for an account with no sender; it stays in the outbox.")
                }
            }
        }
    }
}

/// The backoff before attempt `attempt + 1`: doubling from `initial`, capped, with ±25 % jitter,
/// and never shorter than the remote asked for.
pub fn backoff(cfg: &OutboxConfig, attempt: u32, remote: Option<Duration>) -> Duration {
    let base = cfg.retry_initial_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
    let capped = base.min(cfg.retry_max_secs.saturating_mul(1000));
    let jitter = (capped / 4).max(1);
    let ms = capped - jitter + rand::random_range(0..=2 * jitter);
    let ms = ms.min(cfg.retry_max_secs.saturating_mul(1000));
    Duration::from_millis(ms).max(remote.unwrap_or_default())
}

/// One destination's worker and what it needs.
pub struct Worker {
    /// The account.
    pub account: AccountId,
    /// Its sender.
    pub sender: Arc<dyn Outbound>,
    /// The store.
    pub store: Store,
    /// Retry schedule.
    pub config: OutboxConfig,
    /// Pending count shared with the router.
    pub pending: Arc<AtomicU64>,
}

/// Creates the queues for every sending account and spawns their workers. Each worker first
/// loads its account's existing outbox rows (what was unsent at the last stop).
pub fn spawn_workers(
    workers: Vec<Worker>,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Result<Wakers, StoreError> {
    let mut wakers = Wakers::default();
    for w in workers {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog: VecDeque<OutboxKey> = w.store.outbox_keys(&w.account)?.into();
        w.pending.fetch_add(backlog.len() as u64, Ordering::Relaxed);
        if !backlog.is_empty() {
            info!(account = %w.account, pending = backlog.len(), "Resuming deliveries left in the outbox.");
        }
        wakers.queues.insert(w.account.clone(), tx);
        let stop = shutdown.clone();
        tracker.spawn(async move { w.run(backlog, rx, stop).await });
    }
    Ok(wakers)
}

impl Worker {
    async fn run(
        self,
        mut queue: VecDeque<OutboxKey>,
        mut rx: mpsc::UnboundedReceiver<OutboxKey>,
        stop: CancellationToken,
    ) {
        loop {
            while let Ok(k) = rx.try_recv() {
                queue.push_back(k);
            }
            let Some(key) = queue.front().cloned() else {
                tokio::select! {
                    k = rx.recv() => match k { Some(k) => { queue.push_back(k); continue } None => return },
                    _ = stop.cancelled() => return,
                }
            };
            if stop.is_cancelled() {
                return;
            }
            let item = match self.store.outbox_item(&key) {
                Ok(Some(i)) => i,
                Ok(None) => {
                    queue.pop_front();
                    continue;
                }
                Err(e) => {
                    error!(account = %self.account, error = %e, "Cannot read outbox row; retrying in 5 s.");
                    if sleep_or_stop(Duration::from_secs(5), &stop).await {
                        return;
                    }
                    continue;
                }
            };
            let wait = item.not_before_ms.saturating_sub(now_ms());
            if wait > 0 && sleep_or_stop(Duration::from_millis(wait), &stop).await {
                return;
            }
            match self.attempt(&key, item).await {
                Ok(()) => {
                    queue.pop_front();
                }
                Err(Retry) => {}
            }
        }
    }

    /// One attempt. `Ok` when the row left the outbox (sent, dead, held); `Err(Retry)` when it
    /// stays at the head of the queue with a later `not_before_ms`.
    async fn attempt(&self, key: &OutboxKey, mut item: OutboxItemV1) -> Result<(), Retry> {
        let d = item.delivery.id;
        let r = item.delivery.record_id;
        if item.requires_consent {
            let still = match &item.patient_id {
                Some(p) => self.store.consents(p, &self.account.to_string()).map(|c| !c.is_empty()).unwrap_or(false),
                None => false,
            };
            if !still {
                warn!(delivery_id = %d, record_id = %r, account = %self.account, rule = "builtin.consent.recheck", "Consent withdrawn since recording; delivery held for review.");
                return self.left(self.store.outbox_to_review(key, &item, "builtin.consent.recheck"));
            }
        }
        item.attempts += 1;
        let attempt = item.attempts;
        match self.sender.send(&item.delivery).await {
            Ok(sent) => {
                info!(delivery_id = %d, record_id = %r, account = %self.account, attempt, "Delivered.");
                let ev = EventKind::Attempt { delivery: d, attempt, outcome: "sent".into(), reason: None };
                self.left(self.store.outbox_sent(key, &item, &sent.native_ids, ev))
            }
            Err(SendError::Permanent { reason }) => {
                error!(delivery_id = %d, record_id = %r, account = %self.account, attempt, reason = %reason, "Delivery failed permanently; dead-lettered.");
                let evs = vec![
                    EventKind::Attempt {
                        delivery: d,
                        attempt,
                        outcome: "permanent".into(),
                        reason: Some(reason.clone()),
                    },
                    EventKind::DeadLettered { delivery: d, reason: reason.clone() },
                ];
                self.left(self.store.outbox_dead(key, &item, evs, &reason))
            }
            Err(SendError::Retry { after, reason }) => {
                let ev =
                    EventKind::Attempt { delivery: d, attempt, outcome: "retry".into(), reason: Some(reason.clone()) };
                if attempt >= self.config.max_attempts {
                    let why = format!("gave up after {attempt} attempts; last: {reason}");
                    error!(delivery_id = %d, record_id = %r, account = %self.account, attempt, reason = %reason, "Delivery failed too often; dead-lettered.");
                    let evs = vec![ev, EventKind::DeadLettered { delivery: d, reason: why.clone() }];
                    return self.left(self.store.outbox_dead(key, &item, evs, &why));
                }
                let delay = backoff(&self.config, attempt, after);
                warn!(delivery_id = %d, record_id = %r, account = %self.account, attempt, reason = %reason, retry_in_ms = delay.as_millis() as u64, "Delivery failed; will retry.");
                item.not_before_ms = now_ms() + delay.as_millis() as u64;
                if let Err(e) = self.store.outbox_retry(key, &item, ev) {
                    error!(delivery_id = %d, error = %e, "Could not record the failed attempt.");
                }
                Err(Retry)
            }
        }
    }

    fn left(&self, r: Result<(), StoreError>) -> Result<(), Retry> {
        match r {
            Ok(()) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // The send happened but we could not note it: keep the row; a resend is
                // recognisable by its delivery id (idempotency key / Message-ID).
                error!(account = %self.account, error = %e, "Could not update the outbox after an attempt.");
                Err(Retry)
            }
        }
    }
}

/// Marker: the row stays at the head of the queue.
struct Retry;

/// Sleeps; true if shutdown came first.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_the_remote() {
        let cfg = OutboxConfig { retry_initial_ms: 100, retry_max_secs: 2, max_attempts: 10 };
        let b1 = backoff(&cfg, 1, None).as_millis();
        assert!((75..=125).contains(&b1), "{b1}");
        let b3 = backoff(&cfg, 3, None).as_millis();
        assert!((300..=500).contains(&b3), "{b3}");
        assert!(backoff(&cfg, 30, None) <= Duration::from_secs(2));
        assert_eq!(backoff(&cfg, 1, Some(Duration::from_secs(7))), Duration::from_secs(7));
    }
}
