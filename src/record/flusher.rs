//! Group commit: the one task that makes the store durable.
//!
//! The router (and the outbox, the admin API) hand it *jobs*: receipts to send and outbox rows to
//! wake once what they refer to is on disk. The flusher takes every job waiting, calls one
//! `flush` for all of them in a blocking thread, then answers. Many messages share one fsync, and
//! only one task ever flushes (sled's `flush_async` hangs when many tasks call it at once, sled
//! issue 1308).

use super::{OutboxKey, Store};
use carebridge_contract::Receipt;
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

/// Handle on the flusher task.
#[derive(Clone, Debug)]
pub struct Flusher {
    tx: mpsc::UnboundedSender<FlushJob>,
}

impl Flusher {
    /// Starts the flusher. `wake` receives outbox keys after their rows are durable. The task
    /// ends when every handle is dropped and the last jobs are done.
    pub fn spawn(
        store: Store,
        wake: impl Fn(Vec<OutboxKey>) + Send + 'static,
    ) -> (Flusher, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<FlushJob>();
        let handle = tokio::spawn(async move {
            let mut jobs = Vec::new();
            while rx.recv_many(&mut jobs, 4096).await > 0 {
                let started = std::time::Instant::now();
                let s = store.clone();
                let ok = match tokio::task::spawn_blocking(move || s.flush_blocking()).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        error!(error = %e, "Store flush failed; answering unavailable so sources redeliver.");
                        false
                    }
                    Err(e) => {
                        error!(error = %e, "Store flush task failed.");
                        false
                    }
                };
                let receipts: usize = jobs.iter().map(|j| j.receipts.len()).sum();
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
        });
        (Flusher { tx }, handle)
    }

    /// Queues a job for the next flush. If the flusher is gone the receipts drop, which
    /// adapters read as `Unavailable`: nothing is acked without a flush.
    pub fn submit(&self, job: FlushJob) {
        let _ = self.tx.send(job);
    }

    /// Waits until everything written before this call is durable.
    pub async fn flush(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.submit(FlushJob { done: Some(tx), ..Default::default() });
        rx.await.unwrap_or(false)
    }
}
