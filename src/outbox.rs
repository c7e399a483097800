//! Delivery: one worker per destination account, FIFO per recipient, with exponential backoff
//! and jitter that honours the remote's Retry-After, and a dead-letter after `max_attempts`.
//! Every attempt's outcome is appended to the record.
//!
//! A worker keeps up to `max_in_flight` sends going, but never two for the same recipient
//! ([`order_key`]): a recipient whose delivery is in backoff waits, in order, while other
//! recipients' deliveries go on (no head-of-line blocking across patients).
//!
//! A worker learns about rows only (a) by scanning the outbox at start-up, before the router
//! runs, and (b) from the [`Flusher`](crate::record::Flusher) after the rows are durable. So a
//! delivery is never sent before its record is on disk (record before forward).

use crate::config::OutboxConfig;
use crate::record::schema::{EventKind, OutboxItemV1};
use crate::record::{OutboxKey, OutboxUpdate, Store, StoreError, now_ms};
use carebridge_contract::{AccountId, Outbound, SendError};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
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
    /// Writes finished attempts (shared by all workers).
    pub books: Bookkeeper,
}

/// One request to the bookkeeper: updates to write, and where to hand them back with the result.
type BookRequest = (Vec<OutboxUpdate>, oneshot::Sender<(Vec<OutboxUpdate>, Result<(), String>)>);

/// Writes every worker's finished attempts on one thread, in one transaction for everything
/// waiting. sled transactions serialise on a global lock that also waits for flushes, so fewer,
/// larger transactions from one place beat one per worker (and keep the wait off the async
/// workers).
#[derive(Clone, Debug)]
pub struct Bookkeeper {
    tx: mpsc::UnboundedSender<BookRequest>,
}

impl Bookkeeper {
    /// Starts the thread; it ends when every handle is dropped.
    pub fn spawn(store: Store) -> std::io::Result<(Bookkeeper, std::thread::JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::unbounded_channel::<BookRequest>();
        let handle = std::thread::Builder::new().name("carebridge-outbox-books".into()).spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut requests = vec![first];
                while let Ok(more) = rx.try_recv() {
                    requests.push(more);
                }
                let mut all = Vec::new();
                let mut sizes = Vec::with_capacity(requests.len());
                let mut replies = Vec::with_capacity(requests.len());
                for (updates, reply) in requests {
                    sizes.push(updates.len());
                    all.extend(updates);
                    replies.push(reply);
                }
                let result = store.apply_outbox(&all).map_err(|e| e.to_string());
                let mut rest = all.into_iter();
                for (n, reply) in sizes.into_iter().zip(replies) {
                    let _ = reply.send((rest.by_ref().take(n).collect(), result.clone()));
                }
            }
        })?;
        Ok((Bookkeeper { tx }, handle))
    }

    /// Writes `updates`; hands them back with the outcome.
    async fn apply(&self, updates: Vec<OutboxUpdate>) -> (Vec<OutboxUpdate>, Result<(), String>) {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError((updates, _))) = self.tx.send((updates, reply)) {
            return (updates, Err("outbox bookkeeping stopped".into()));
        }
        rx.await.unwrap_or_else(|_| (Vec::new(), Err("outbox bookkeeping stopped".into())))
    }
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

/// The ordering key: deliveries with the same key are sent one at a time, in queue order.
/// Same recipient → same key (a patient never sees answers out of order). The account's default
/// destination is one chat or one inbox for Telegram and email, so it is one key (staff read
/// forwards in the order patients wrote them); for a webhook (an EHR or gateway API that sorts
/// by itself) it is ordered per conversation, so deliveries can go in parallel.
fn order_key(item: &OutboxItemV1) -> String {
    match (&item.delivery.to, item.delivery.account.kind()) {
        (Some(a), _) => a.key().into_inner(),
        (None, carebridge_contract::ChannelKind::Webhook) => {
            format!("conversation:{}", item.delivery.conversation.expose())
        }
        (None, _) => "default".to_string(),
    }
}

/// A queued row, its body loaded lazily.
struct Queued {
    key: OutboxKey,
    item: Option<OutboxItemV1>,
}

/// How far down the queue the scheduler looks for sendable rows (bounds the work per wake-up
/// when a recipient at the head is in backoff).
const SCAN_WINDOW: usize = 256;

impl Worker {
    async fn run(
        self,
        backlog: VecDeque<OutboxKey>,
        mut rx: mpsc::UnboundedReceiver<OutboxKey>,
        stop: CancellationToken,
    ) {
        let me = Arc::new(self);
        let mut queue: VecDeque<Queued> = backlog.into_iter().map(|key| Queued { key, item: None }).collect();
        let mut busy: HashSet<String> = HashSet::new();
        let mut running = FuturesUnordered::new();
        let limit = me.config.max_in_flight.max(1);
        let mut rx_open = true;
        loop {
            while let Ok(key) = rx.try_recv() {
                queue.push_back(Queued { key, item: None });
            }
            // Start what may start: not in backoff, recipient not busy, under the limit.
            let mut wake_at: Option<u64> = None;
            if !stop.is_cancelled() {
                let now = now_ms();
                let mut blocked: HashSet<String> = HashSet::new();
                let mut i = 0;
                while i < queue.len().min(SCAN_WINDOW) && running.len() < limit {
                    if queue[i].item.is_none() {
                        match me.store.outbox_item(&queue[i].key) {
                            Ok(Some(item)) => queue[i].item = Some(item),
                            Ok(None) => {
                                queue.remove(i);
                                continue;
                            }
                            Err(e) => {
                                error!(account = %me.account, error = %e, "Cannot read outbox row; retrying in 5 s.");
                                wake_at = Some(now + 5000);
                                break;
                            }
                        }
                    }
                    let Some(item) = queue[i].item.as_ref() else { break };
                    let ok = order_key(item);
                    if busy.contains(&ok) || blocked.contains(&ok) {
                        i += 1;
                        continue;
                    }
                    if item.not_before_ms > now {
                        wake_at = Some(wake_at.map_or(item.not_before_ms, |w: u64| w.min(item.not_before_ms)));
                        blocked.insert(ok);
                        i += 1;
                        continue;
                    }
                    let Some(q) = queue.remove(i) else { break };
                    let Some(item) = q.item else { continue };
                    busy.insert(ok.clone());
                    let w = me.clone();
                    running.push(async move { (ok, w.attempt(q.key, item).await) });
                }
            }
            if stop.is_cancelled() && running.is_empty() {
                return;
            }
            let sleep = wake_at.map(|w| Duration::from_millis(w.saturating_sub(now_ms()).max(1)));
            tokio::select! {
                Some(first) = running.next(), if !running.is_empty() => {
                    // Everything else that finished meanwhile goes into the same transaction.
                    let mut done = vec![first];
                    while let Some(Some(more)) = running.next().now_or_never() {
                        done.push(more);
                    }
                    let mut updates = Vec::with_capacity(done.len());
                    for (ok, update) in done {
                        busy.remove(&ok);
                        updates.push(update);
                    }
                    for (key, item) in me.record(updates).await.into_iter().rev() {
                        // Back to the front: it stays ahead of later rows for the same recipient.
                        queue.push_front(Queued { key, item: Some(item) });
                    }
                }
                k = rx.recv(), if rx_open && !stop.is_cancelled() => match k {
                    Some(key) => queue.push_back(Queued { key, item: None }),
                    None => rx_open = false,
                },
                _ = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))), if sleep.is_some() && !stop.is_cancelled() => {}
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
            }
        }
    }

    /// One attempt. It decides what the row becomes; the worker writes that, together with the
    /// other attempts that finished meanwhile, in one transaction ([`Store::apply_outbox`]).
    async fn attempt(&self, key: OutboxKey, mut item: OutboxItemV1) -> OutboxUpdate {
        let d = item.delivery.id;
        let r = item.delivery.record_id;
        if item.requires_consent {
            let still = match &item.patient_id {
                Some(p) => self.store.consents(p, &self.account.to_string()).map(|c| !c.is_empty()).unwrap_or(false),
                None => false,
            };
            if !still {
                warn!(delivery_id = %d, record_id = %r, account = %self.account, rule = "builtin.consent.recheck", "Consent withdrawn since recording; delivery held for review.");
                let events = vec![EventKind::ConsentWithdrawn { delivery: d }];
                return OutboxUpdate::Review { key, item, rule: "builtin.consent.recheck".into(), events };
            }
        }
        item.attempts += 1;
        let attempt = item.attempts;
        match self.sender.send(&item.delivery).await {
            Ok(sent) => {
                info!(delivery_id = %d, record_id = %r, account = %self.account, attempt, "Delivered.");
                let events = vec![EventKind::Attempt { delivery: d, attempt, outcome: "sent".into(), reason: None }];
                OutboxUpdate::Sent { key, item, native_ids: sent.native_ids, events }
            }
            Err(SendError::Permanent { reason }) => {
                error!(delivery_id = %d, record_id = %r, account = %self.account, attempt, reason = %reason, "Delivery failed permanently; dead-lettered.");
                let events = vec![
                    EventKind::Attempt {
                        delivery: d,
                        attempt,
                        outcome: "permanent".into(),
                        reason: Some(reason.clone()),
                    },
                    EventKind::DeadLettered { delivery: d, reason: reason.clone() },
                ];
                OutboxUpdate::Dead { key, item, reason, events }
            }
            Err(SendError::Retry { after, reason }) => {
                let ev =
                    EventKind::Attempt { delivery: d, attempt, outcome: "retry".into(), reason: Some(reason.clone()) };
                if attempt >= self.config.max_attempts {
                    let why = format!("gave up after {attempt} attempts; last: {reason}");
                    error!(delivery_id = %d, record_id = %r, account = %self.account, attempt, reason = %reason, "Delivery failed too often; dead-lettered.");
                    let events = vec![ev, EventKind::DeadLettered { delivery: d, reason: why.clone() }];
                    return OutboxUpdate::Dead { key, item, reason: why, events };
                }
                let delay = backoff(&self.config, attempt, after);
                warn!(delivery_id = %d, record_id = %r, account = %self.account, attempt, reason = %reason, retry_in_ms = delay.as_millis() as u64, "Delivery failed; will retry.");
                item.not_before_ms = now_ms() + delay.as_millis() as u64;
                OutboxUpdate::Retry { key, item, events: vec![ev] }
            }
        }
    }

    /// Writes a group of finished attempts and returns the rows that stay queued (retries, and
    /// everything if the write failed: the sends may have happened, but a resend carries the
    /// same delivery id, so the receiver can recognise it).
    async fn record(&self, updates: Vec<OutboxUpdate>) -> Vec<(OutboxKey, OutboxItemV1)> {
        let (updates, result) = self.books.apply(updates).await;
        match result {
            Ok(()) => {
                let mut again = Vec::new();
                for u in updates {
                    crate::ops::outbox_update(&self.account, &u);
                    match u {
                        OutboxUpdate::Retry { key, item, .. } => again.push((key, item)),
                        _ => {
                            self.pending.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
                again
            }
            Err(e) => {
                error!(account = %self.account, error = %e, "Could not update the outbox after attempts; retrying in 5 s.");
                let later = now_ms() + 5000;
                updates
                    .into_iter()
                    .map(|u| match u {
                        OutboxUpdate::Sent { key, mut item, .. }
                        | OutboxUpdate::Retry { key, mut item, .. }
                        | OutboxUpdate::Dead { key, mut item, .. }
                        | OutboxUpdate::Review { key, mut item, .. } => {
                            item.not_before_ms = later;
                            (key, item)
                        }
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_the_remote() {
        let cfg = OutboxConfig { retry_initial_ms: 100, retry_max_secs: 2, max_attempts: 10, max_in_flight: 1 };
        let b1 = backoff(&cfg, 1, None).as_millis();
        assert!((75..=125).contains(&b1), "{b1}");
        let b3 = backoff(&cfg, 3, None).as_millis();
        assert!((300..=500).contains(&b3), "{b3}");
        assert!(backoff(&cfg, 30, None) <= Duration::from_secs(2));
        assert_eq!(backoff(&cfg, 1, Some(Duration::from_secs(7))), Duration::from_secs(7));
    }
}
