//! Group commit: the one task that makes the store durable.
//!
//! The router (and the outbox, the admin API) hand it *jobs*: receipts to send and outbox rows to
//! wake once what they refer to is on disk. The flusher, on its own thread, takes every job
//! waiting, calls one `flush` for all of them, then answers. Many messages share one fsync, and
//! only one task ever flushes (sled's `flush_async` hangs when many tasks call it at once, sled
//! issue 1308).

use super::{OutboxKey, Store, now_ms};
use carebridge_contract::Receipt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error};

/// What to do once a flush has completed.
#[derive(Debug, Default)]
pub struct FlushJob {
    /// Receipts to send to adapters (they may ack their sources after this).
    pub receipts: Vec<(oneshot::Sender<Receipt>, Receipt)>,
    /// Outbox rows that may now be sent (record before forward).
    pub wake: Vec<OutboxKey>,
    /// Someone waiting for durability (admin API, shutdown).
    pub done: Option<oneshot::Sender<bool>>,
}

/// Handle on the flusher thread.
#[derive(Clone, Debug)]
pub struct Flusher {
    tx: mpsc::UnboundedSender<FlushJob>,
    last: Arc<LastFlush>,
}

/// When flushes last succeeded and failed (unix ms, 0 = never), so readiness can tell whether the
/// store takes writes without a flush of its own per probe.
#[derive(Debug, Default)]
struct LastFlush {
    ok_ms: AtomicU64,
    failed_ms: AtomicU64,
}

/// What [`Flusher::last_flush`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStatus {
    /// Unix ms of the last successful flush.
    pub ok_ms: Option<u64>,
    /// Unix ms of the last failed flush.
    pub failed_ms: Option<u64>,
}

impl Flusher {
    /// Starts the flusher on its own thread (it spends its life in fsync; on a thread of its own
    /// it never occupies an async worker). `wake` receives outbox keys after their rows are
    /// durable. The thread ends when every handle is dropped and the last jobs are done.
    pub fn spawn(
        store: Store,
        wake: impl Fn(Vec<OutboxKey>) + Send + 'static,
    ) -> std::io::Result<(Flusher, std::thread::JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::unbounded_channel::<FlushJob>();
        let last = Arc::new(LastFlush::default());
        let seen = last.clone();
        let handle = std::thread::Builder::new().name("carebridge-flusher".into()).spawn(move || {
            let mut jobs = Vec::new();
            while let Some(first) = rx.blocking_recv() {
                jobs.push(first);
                while let Ok(more) = rx.try_recv() {
                    jobs.push(more);
                }
                let started = std::time::Instant::now();
                let ok = match store.flush_blocking() {
                    Ok(()) => true,
                    Err(e) => {
                        error!(error = %e, "Store flush failed; answering unavailable so sources redeliver.");
                        false
                    }
                };
                let receipts: usize = jobs.iter().map(|j| j.receipts.len()).sum();
                (if ok { &seen.ok_ms } else { &seen.failed_ms }).store(now_ms().max(1), Ordering::Relaxed);
                crate::ops::flushed(ok, started.elapsed(), receipts);
                debug!(jobs = jobs.len(), receipts, flush_us = started.elapsed().as_micros() as u64, "Flushed.");
                let mut wake_keys = Vec::new();
                for job in jobs.drain(..) {
                    for (reply, receipt) in job.receipts {
                        let _ = reply.send(if ok { receipt } else { Receipt::Unavailable });
                    }
                    if ok {
                        wake_keys.extend(job.wake);
                    }
                    if let Some(d) = job.done {
                        let _ = d.send(ok);
                    }
                }
                if !wake_keys.is_empty() {
                    wake(wake_keys);
                }
            }
        })?;
        Ok((Flusher { tx, last }, handle))
    }

    /// Queues a job for the next flush. If the flusher is gone the receipts drop, which
    /// adapters read as `Unavailable`: nothing is acked without a flush.
    pub fn submit(&self, job: FlushJob) {
        let _ = self.tx.send(job);
    }

    /// When flushes last succeeded and failed.
    pub fn last_flush(&self) -> FlushStatus {
        let at = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|&ms| ms > 0);
        FlushStatus { ok_ms: at(&self.last.ok_ms), failed_ms: at(&self.last.failed_ms) }
    }

    /// Waits until everything written before this call is durable.
    pub async fn flush(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.submit(FlushJob { done: Some(tx), ..Default::default() });
        rx.await.unwrap_or(false)
    }
}
