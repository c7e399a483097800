//! Delivery: one worker per destination account, FIFO per recipient, with exponential backoff
//! and jitter that honours the remote's Retry-After, and a dead-letter after `max_attempts`.
//! Every attempt's outcome is appended to the record.
//!
//! A worker keeps up to `max_in_flight` sends going, but never two for the same recipient
//! (`order_key`): a recipient whose delivery is in backoff waits, in order, while other
//! recipients' deliveries go on (no head-of-line blocking across patients).
//!
//! A worker learns about rows only (a) by scanning its account's outbox when it starts (when a
//! reload starts it while the router runs, after a flush, since the scan can see rows committed
//! but not yet flushed), and (b) from the [`crate::record::Flusher`] after the rows are
//! durable. So a delivery is never sent before its record is on disk (record before forward).
//!
//! The set of workers follows the config ([`Workers`]): a reload starts the worker of an added
//! account, stops a removed account's worker after the sends in hand (its unsent rows stay in
//! the store for a later config), and restarts a changed one. A worker registers its queue
//! *before* it scans, so a row committed meanwhile is both woken and scanned: the worker ignores
//! a key it already holds, so nothing is sent twice and nothing is missed. The retry settings
//! (`[outbox]`) are read at each use, so a reload changes them for every worker in place.
//!
//! On a store several instances share, a worker sends only while its instance holds the
//! account's delivery lease, and learns its rows from the store in commit order instead of (a)
//! and (b) ([`crate::outbox_lease`]).

use crate::config::OutboxConfig;
use crate::record::flusher::Wake;
use crate::record::schema::{EventKind, OutboxItemV1};
use crate::record::{Flusher, OutboxKey, OutboxUpdate, Store, StoreError, now_ms};
use carebridge_contract::{AccountId, ChannelKind, Outbound, SendError};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// Hands durable outbox rows to the worker of their account. Clones share one registry, so the
/// flusher and the admin API see workers that a reload starts or stops.
#[derive(Clone, Debug, Default)]
pub struct Wakers {
    queues: Arc<RwLock<BTreeMap<AccountId, mpsc::UnboundedSender<Wake>>>>,
}

impl Wakers {
    /// Passes each durable row to its account's worker. Rows of accounts without a worker stay
    /// in the outbox (they are sent after a restart or reload with that account configured).
    pub fn wake(&self, rows: impl IntoIterator<Item = Wake>) {
        let queues = self.queues.read().unwrap_or_else(PoisonError::into_inner);
        for w in rows {
            match queues.get(&w.key.account) {
                Some(q) => {
                    let _ = q.send(w);
                }
                None => {
                    warn!(account = %w.key.account, "Delivery queued for an account with no sender; it stays in the outbox.")
                }
            }
        }
    }

    /// The accounts that have a worker now.
    pub fn accounts(&self) -> Vec<AccountId> {
        self.queues.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    fn register(&self, account: AccountId, queue: mpsc::UnboundedSender<Wake>) {
        self.queues.write().unwrap_or_else(PoisonError::into_inner).insert(account, queue);
    }

    fn unregister(&self, account: &AccountId) {
        self.queues.write().unwrap_or_else(PoisonError::into_inner).remove(account);
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

/// One destination's worker and what it needs (cloned for each tenure of a delivery lease).
#[derive(Clone)]
struct Worker {
    account: AccountId,
    sender: Arc<dyn Outbound>,
    store: Store,
    /// Retry schedule and concurrency, as the config now says (a reload updates it in place).
    config: watch::Receiver<OutboxConfig>,
    /// Pending count shared with the router.
    pending: Arc<AtomicU64>,
    /// Writes finished attempts (shared by all workers).
    books: Bookkeeper,
}

/// The running outbox workers, one per sending account, and what starting one needs. The
/// daemon starts the workers of the config it starts with; a reload starts, stops and restarts
/// them per account.
pub struct Workers {
    wakers: Wakers,
    store: Store,
    pending: Arc<AtomicU64>,
    books: Bookkeeper,
    settings: watch::Sender<OutboxConfig>,
    /// Cancelling it stops every worker (shutdown); each worker has a child token of its own.
    stop: CancellationToken,
    tracker: TaskTracker,
    running: BTreeMap<AccountId, (CancellationToken, JoinHandle<()>)>,
    /// Workers told to stop that had sends in flight at the deadline.
    stopping: BTreeMap<AccountId, JoinHandle<()>>,
    /// Set once the router runs: a worker started then scans rows the router may have
    /// committed but not flushed yet, and must not send them before they are durable.
    flusher: Option<Flusher>,
    /// Set when several instances share the store: each worker sends only while its instance
    /// holds the account's delivery lease ([`crate::outbox_lease`]).
    leases: Option<Arc<crate::lease::Leases>>,
}

impl Workers {
    /// No workers yet. `stop` stops them all (after the sends in hand); `tracker` tracks them
    /// for the shutdown deadline.
    pub fn new(
        store: Store,
        pending: Arc<AtomicU64>,
        books: Bookkeeper,
        settings: OutboxConfig,
        stop: CancellationToken,
        tracker: TaskTracker,
    ) -> Workers {
        Workers {
            wakers: Wakers::default(),
            store,
            pending,
            books,
            settings: watch::Sender::new(settings),
            stop,
            tracker,
            running: BTreeMap::new(),
            stopping: BTreeMap::new(),
            flusher: None,
            leases: None,
        }
    }

    /// From now on, every worker started sends only while this instance holds its account's
    /// delivery lease, in the order the rows were committed across instances.
    pub fn set_leases(&mut self, leases: Option<crate::lease::Leases>) {
        self.leases = leases.map(Arc::new);
    }

    /// From now on, a worker that starts waits for a flush after its scan (record before
    /// forward while the router commits concurrently).
    pub fn set_flusher(&mut self, flusher: Flusher) {
        self.flusher = Some(flusher);
    }

    /// The registry the flusher and the admin API wake workers through.
    pub fn wakers(&self) -> Wakers {
        self.wakers.clone()
    }

    /// The accounts with a running worker.
    pub fn accounts(&self) -> Vec<AccountId> {
        self.running.keys().cloned().collect()
    }

    /// New retry settings for every worker, effective at their next decision.
    pub fn set_settings(&self, settings: OutboxConfig) {
        self.settings.send_replace(settings);
    }

    /// Starts the worker of `account`: registers its queue, then loads the account's outbox
    /// rows (what was unsent at the last stop or reload). If the account already has a worker
    /// (a restart), that one first finishes the sends in hand, so no row is in two workers.
    pub async fn start(&mut self, account: AccountId, sender: Arc<dyn Outbound>) -> Result<(), StoreError> {
        if let Some((stop, handle)) = self.running.remove(&account) {
            stop.cancel();
            let _ = handle.await;
        }
        if let Some(handle) = self.stopping.remove(&account) {
            let _ = handle.await;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        // Registered first: a row committed during the scan is woken as well as scanned, and
        // the worker ignores the second copy. (Wakes while an old worker stopped reached its
        // queue or none; those rows are durable, so the scan finds them.)
        self.wakers.register(account.clone(), tx);
        let w = Worker {
            account: account.clone(),
            sender,
            store: self.store.clone(),
            config: self.settings.subscribe(),
            pending: self.pending.clone(),
            books: self.books.clone(),
        };
        let stop = self.stop.child_token();
        if let Some(leases) = &self.leases {
            // A shared store: the worker sends while this instance holds the account's delivery
            // lease, fed in commit order (`outbox_lease`), which also reads the outbox.
            let handle = self.tracker.spawn(crate::outbox_lease::deliver(
                leases.clone(),
                account.clone(),
                self.store.clone(),
                rx,
                self.pending.clone(),
                stop.clone(),
                move |queue, tenure| w.clone().run(VecDeque::new(), queue, tenure),
            ));
            self.running.insert(account, (stop, handle));
            return Ok(());
        }
        let mut backlog: VecDeque<OutboxKey> = match self.store.outbox_keys(&account) {
            Ok(keys) => keys.into(),
            Err(e) => {
                self.wakers.unregister(&account);
                return Err(e);
            }
        };
        // Rows the router committed just now are on disk only after the next flush.
        if let Some(f) = &self.flusher
            && !backlog.is_empty()
            && !f.flush().await
        {
            warn!(account = %account, "Store flush failed; the account's waiting deliveries go out after the next start.");
            backlog.clear();
        }
        self.pending.fetch_add(backlog.len() as u64, Ordering::Relaxed);
        if !backlog.is_empty() {
            info!(account = %account, pending = backlog.len(), "Resuming deliveries left in the outbox.");
        }
        let handle = self.tracker.spawn({
            let stop = stop.clone();
            async move { w.run(backlog, rx, stop).await }
        });
        self.running.insert(account, (stop, handle));
        Ok(())
    }

    /// Stops the worker of `account` after the sends in hand and unregisters it; its unsent
    /// rows stay in the store. Waits at most `within`; returns false if sends were still in
    /// flight then (the worker ends after them; a later start of the account waits for it).
    pub async fn stop(&mut self, account: &AccountId, within: Duration) -> bool {
        self.wakers.unregister(account);
        let Some((stop, mut handle)) = self.running.remove(account) else { return true };
        stop.cancel();
        if tokio::time::timeout(within, &mut handle).await.is_ok() {
            return true;
        }
        warn!(account = %account, "Deliveries still in flight; the worker stops after them.");
        self.stopping.insert(account.clone(), handle);
        false
    }
}

/// Why finished attempts could not be written.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BooksError {
    /// The store refused the write (shared: one write serves every worker waiting on it).
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The bookkeeping thread has ended (the daemon is stopping).
    #[error("outbox bookkeeping stopped")]
    Stopped,
}

/// One request to the bookkeeper: updates to write, and where to hand them back with the result.
type BookRequest = (Vec<OutboxUpdate>, oneshot::Sender<(Vec<OutboxUpdate>, Result<(), BooksError>)>);

/// Writes every worker's finished attempts on one thread, in one transaction for everything
/// waiting. The store's writers take turns (one single-writer transaction at a time), so fewer,
/// larger transactions from one place beat one per worker, and the blocking write stays off the
/// async workers.
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
                let result = store.apply_outbox(&all).map_err(|e| BooksError::Store(Arc::new(e)));
                let mut rest = all.into_iter();
                for (n, reply) in sizes.into_iter().zip(replies) {
                    let _ = reply.send((rest.by_ref().take(n).collect(), result.clone()));
                }
            }
        })?;
        Ok((Bookkeeper { tx }, handle))
    }

    /// Writes `updates`; hands them back with the outcome.
    async fn apply(&self, updates: Vec<OutboxUpdate>) -> (Vec<OutboxUpdate>, Result<(), BooksError>) {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError((updates, _))) = self.tx.send((updates, reply)) {
            return (updates, Err(BooksError::Stopped));
        }
        rx.await.unwrap_or_else(|_| (Vec::new(), Err(BooksError::Stopped)))
    }
}

/// The ordering key: deliveries with the same key are sent one at a time, in queue order.
/// Same recipient → same key (a patient never sees answers out of order). The account's default
/// destination is one chat or one inbox for Telegram and email, so it is one key (staff read
/// forwards in the order patients wrote them); for a webhook (an EHR or gateway API that sorts
/// by itself) it is ordered per conversation, so deliveries can go in parallel.
fn order_key(item: &OutboxItemV1) -> String {
    match (&item.delivery.to, item.delivery.account.kind()) {
        (Some(a), _) => a.key().into_inner(),
        (None, ChannelKind::Webhook | ChannelKind::Fhir) => {
            format!("conversation:{}", item.delivery.conversation.expose())
        }
        (None, _) => "default".to_string(),
    }
}

/// A queued row, its body loaded lazily.
///
/// Every row of the account's backlog has one, so it is kept small: the account is the worker's
/// (only the sequence number is held) and the row, held only within the scan window (handed
/// over by the router, or read), is boxed. A
/// backlog of 100k rows (a destination down for an hour) then holds about 2 MB, not 13.
struct Queued {
    seq: u64,
    item: Option<Box<OutboxItemV1>>,
}

/// How far down the queue the scheduler looks for sendable rows (bounds the work per wake-up
/// when a recipient at the head is in backoff).
const SCAN_WINDOW: usize = 256;

/// Gives back what a drained backlog held: a queue and a set never shrink by themselves, so one
/// burst (an outage's backlog) would otherwise keep its peak for the life of the worker.
fn shrink_when_drained(queue: &mut VecDeque<Queued>, known: &mut HashSet<u64>) {
    const KEEP: usize = 1024;
    if queue.capacity() > KEEP && queue.len() < queue.capacity() / 4 {
        queue.shrink_to(KEEP.max(queue.len() * 2));
    }
    if known.capacity() > KEEP && known.len() < known.capacity() / 4 {
        known.shrink_to(KEEP.max(known.len() * 2));
    }
}

/// Queues a woken row once (a key woken twice, registered before the scan or a stale wake, is
/// held once). The row the writer handed over is kept only while the queue is within the scan
/// window: a backlog (a destination down for an hour) holds sequence numbers, not bodies, and
/// its rows are read when the window reaches them.
fn enqueue(queue: &mut VecDeque<Queued>, known: &mut HashSet<u64>, woken: Wake) {
    if known.insert(woken.key.seq) {
        let item = woken.row.filter(|_| queue.len() < SCAN_WINDOW);
        queue.push_back(Queued { seq: woken.key.seq, item });
    }
}

impl Worker {
    async fn run(self, backlog: VecDeque<OutboxKey>, mut rx: mpsc::UnboundedReceiver<Wake>, stop: CancellationToken) {
        let me = Arc::new(self);
        // Every key queued or in flight: a key woken twice (registered before the scan, or a
        // stale wake) is held once.
        let mut known: HashSet<u64> = backlog.iter().map(|k| k.seq).collect();
        let mut queue: VecDeque<Queued> = backlog.into_iter().map(|k| Queued { seq: k.seq, item: None }).collect();
        let mut busy: HashSet<String> = HashSet::new();
        let mut running = FuturesUnordered::new();
        let mut rx_open = true;
        loop {
            while let Ok(woken) = rx.try_recv() {
                enqueue(&mut queue, &mut known, woken);
            }
            shrink_when_drained(&mut queue, &mut known);
            let limit = me.config.borrow().max_in_flight.max(1);
            // The rows this round may look at, read from the store in one go on a blocking
            // thread (a read may wait for the disk; the async workers must not).
            let unread: Vec<OutboxKey> =
                queue.iter().take(SCAN_WINDOW).filter(|q| q.item.is_none()).map(|q| me.key(q.seq)).collect();
            let mut read = if unread.is_empty() || stop.is_cancelled() {
                std::collections::HashMap::new()
            } else {
                let store = me.store.clone();
                tokio::task::spawn_blocking(move || {
                    unread
                        .into_iter()
                        .map(|k| (k.clone(), store.outbox_item(&k)))
                        .collect::<std::collections::HashMap<_, _>>()
                })
                .await
                .unwrap_or_default()
            };
            // Start what may start: not in backoff, recipient not busy, under the limit.
            // Every row read goes into its entry now, not only those the loop below reaches: it
            // stops at the in-flight limit, and rows read but left behind would be read again
            // next round (with a backlog, up to a window's worth of reads per send).
            let mut read_failed = false;
            let mut i = 0;
            while i < queue.len().min(SCAN_WINDOW) && !read.is_empty() {
                if queue[i].item.is_none() {
                    match read.remove(&me.key(queue[i].seq)) {
                        Some(Ok(Some(item))) => queue[i].item = Some(Box::new(item)),
                        Some(Ok(None)) => {
                            // Gone meanwhile (sent by an earlier worker, or purged).
                            if let Some(gone) = queue.remove(i) {
                                known.remove(&gone.seq);
                            }
                            continue;
                        }
                        Some(Err(e)) => {
                            if !read_failed {
                                error!(account = %me.account, error = %e, "Cannot read outbox row; retrying in 5 s.");
                            }
                            read_failed = true;
                        }
                        None => {}
                    }
                }
                i += 1;
            }
            let mut wake_at: Option<u64> = None;
            if !stop.is_cancelled() {
                let now = now_ms();
                let mut blocked: HashSet<String> = HashSet::new();
                let mut i = 0;
                while i < queue.len().min(SCAN_WINDOW) && running.len() < limit {
                    if queue[i].item.is_none() {
                        // Not read (the window moved on, or the read failed): read next round.
                        wake_at = Some(if read_failed { now + 5000 } else { now });
                        break;
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
                    let key = me.key(q.seq);
                    running.push(async move { (ok, key.clone(), w.attempt(key, *item).await) });
                }
            }
            if stop.is_cancelled() && running.is_empty() {
                // What stays unsent is no longer this process's to send (a reload may have
                // removed the account; the next worker for it counts it again when it scans).
                while let Ok(woken) = rx.try_recv() {
                    known.insert(woken.key.seq);
                }
                let left = known.len() as u64;
                let _ = me.pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(p.saturating_sub(left)));
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
                    let mut finished = Vec::with_capacity(done.len());
                    for (ok, key, update) in done {
                        busy.remove(&ok);
                        finished.push(key);
                        updates.push(update);
                    }
                    let again = me.record(updates).await;
                    for key in finished {
                        if !again.iter().any(|(k, _)| *k == key) {
                            known.remove(&key.seq);
                        }
                    }
                    for (key, item) in again.into_iter().rev() {
                        // Back to the front: it stays ahead of later rows for the same recipient.
                        queue.push_front(Queued { seq: key.seq, item: Some(Box::new(item)) });
                    }
                }
                k = rx.recv(), if rx_open && !stop.is_cancelled() => match k {
                    Some(woken) => enqueue(&mut queue, &mut known, woken),
                    None => rx_open = false,
                },
                _ = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))), if sleep.is_some() && !stop.is_cancelled() => {}
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
            }
        }
    }

    /// The key of this worker's row `seq`.
    fn key(&self, seq: u64) -> OutboxKey {
        OutboxKey { account: self.account.clone(), seq }
    }

    /// One attempt. It decides what the row becomes; the worker writes that, together with the
    /// other attempts that finished meanwhile, in one transaction ([`Store::apply_outbox`]).
    async fn attempt(&self, key: OutboxKey, mut item: OutboxItemV1) -> OutboxUpdate {
        let d = item.delivery.id;
        let r = item.delivery.record_id;
        // What the send needs from the store (the consent in force, the attachments' bytes), read
        // on a blocking thread; most deliveries need neither.
        // A `fhir` account files the record itself (the export's mapping), read here too.
        let files_record = self.account.kind() == ChannelKind::Fhir;
        let needs_store = item.requires_consent || !item.delivery.attachments.is_empty() || files_record;
        let (still, delivery) = if needs_store {
            let (store, account, patient, stored) =
                (self.store.clone(), self.account.to_string(), item.patient_id.clone(), item.delivery.clone());
            let check = item.requires_consent;
            match tokio::task::spawn_blocking(move || {
                let still = !check
                    || patient.is_some_and(|p| store.consents(&p, &account).map(|c| !c.is_empty()).unwrap_or(false));
                let delivery = store.delivery_to_send(&stored).and_then(|mut d| {
                    if files_record {
                        d.filed_as = store.filing(&stored, &d)?;
                    }
                    Ok(d)
                });
                (still, delivery)
            })
            .await
            {
                Ok(read) => read,
                Err(_) => (true, Err(StoreError::Aborted("the store read for this delivery did not finish"))),
            }
        } else {
            (true, Ok(item.delivery.to_contract(Vec::new())))
        };
        if !still {
            warn!(delivery_id = %d, record_id = %r, account = %self.account, rule = "builtin.consent.recheck", "Consent withdrawn since recording; delivery held for review.");
            let events = vec![EventKind::ConsentWithdrawn { delivery: d }];
            return OutboxUpdate::Review { key, item, rule: "builtin.consent.recheck".into(), events };
        }
        item.attempts += 1;
        let attempt = item.attempts;
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(e) => {
                // Damage, not a passing condition: a dead letter the administrator sees, with
                // the reason, rather than a retry loop.
                let reason = format!("an attachment cannot be read from the record store: {e}");
                error!(delivery_id = %d, record_id = %r, account = %self.account, error = %e, "Delivery's attachment unreadable; dead-lettered.");
                let events = vec![
                    EventKind::Attempt {
                        delivery: d,
                        attempt,
                        outcome: "permanent".into(),
                        reason: Some(reason.clone()),
                    },
                    EventKind::DeadLettered { delivery: d, reason: reason.clone() },
                ];
                return OutboxUpdate::Dead { key, item, reason, events };
            }
        };
        match self.sender.send(&delivery).await {
            Ok(sent) => {
                info!(delivery_id = %d, record_id = %r, account = %self.account, attempt, "Delivered.");
                // The channel's word on how it went (a FHIR server's `already there`), if any.
                let events =
                    vec![EventKind::Attempt { delivery: d, attempt, outcome: "sent".into(), reason: sent.outcome }];
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
            Err(SendError::Hold { rule, reason }) => {
                warn!(delivery_id = %d, record_id = %r, account = %self.account, attempt, rule = %rule, reason = %reason, "Delivery needs a person on the other side; held for review.");
                let events =
                    vec![EventKind::Attempt { delivery: d, attempt, outcome: "held".into(), reason: Some(reason) }];
                OutboxUpdate::Review { key, item, rule, events }
            }
            Err(SendError::Retry { after, reason }) => {
                let ev =
                    EventKind::Attempt { delivery: d, attempt, outcome: "retry".into(), reason: Some(reason.clone()) };
                let config = self.config.borrow().clone();
                if attempt >= config.max_attempts {
                    let why = format!("gave up after {attempt} attempts; last: {reason}");
                    error!(delivery_id = %d, record_id = %r, account = %self.account, attempt, reason = %reason, "Delivery failed too often; dead-lettered.");
                    let events = vec![ev, EventKind::DeadLettered { delivery: d, reason: why.clone() }];
                    return OutboxUpdate::Dead { key, item, reason: why, events };
                }
                let delay = backoff(&config, attempt, after);
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
                            let _ = self
                                .pending
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(p.saturating_sub(1)));
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

    fn row(seq: u64) -> Box<OutboxItemV1> {
        use carebridge_contract::{Delivery, DeliveryId, DeliveryKind, RecordId, Redacted};
        let delivery = Delivery {
            id: DeliveryId(seq),
            record_id: RecordId(seq),
            account: "webhook.ehr".parse().unwrap(),
            kind: DeliveryKind::Forward,
            to: None,
            conversation: Redacted::new("0011".into()),
            patient_id: None,
            sender_label: None,
            subject: None,
            body: Redacted::new("Synthetic text.".into()),
            attachments: Vec::new(),
            in_reply_to: Vec::new(),
            rerouted_from: None,
            filed_as: None,
        };
        Box::new(OutboxItemV1 {
            v: 1,
            delivery: delivery.into(),
            attempts: 0,
            not_before_ms: 0,
            patient_id: None,
            requires_consent: false,
        })
    }

    fn woken(seq: u64, with_row: bool) -> Wake {
        let key = OutboxKey { account: "webhook.ehr".parse().unwrap(), seq };
        Wake { key, row: with_row.then(|| row(seq)) }
    }

    #[test]
    fn a_woken_row_is_kept_within_the_scan_window_and_read_back_beyond_it() {
        let (mut queue, mut known) = (VecDeque::new(), HashSet::new());
        for seq in 0..SCAN_WINDOW as u64 + 10 {
            enqueue(&mut queue, &mut known, woken(seq, true));
        }
        // Woken again (a stale wake, or registered before the start's scan): held once.
        enqueue(&mut queue, &mut known, woken(3, false));
        assert_eq!(queue.len(), SCAN_WINDOW + 10);
        assert!(queue.iter().take(SCAN_WINDOW).all(|q| q.item.as_ref().is_some_and(|i| i.delivery.id.0 == q.seq)));
        // A backlog holds sequence numbers only; those rows are read when the window reaches them.
        assert!(queue.iter().skip(SCAN_WINDOW).all(|q| q.item.is_none()));
        // A key woken without its row (the admin API, a shared store's feed) is read back.
        enqueue(&mut queue, &mut known, woken(10_000, false));
        assert!(queue.back().is_some_and(|q| q.seq == 10_000 && q.item.is_none()));
    }
}
