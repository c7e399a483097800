//! Group commit: the one task that makes the store durable.
//!
//! The router (and the outbox, the admin API) hand it *jobs*: receipts to send and outbox rows to
//! wake once what they refer to is on disk. The flusher, on its own thread, takes every job
//! waiting, persists the engine once for all of them ([`super::engine`]: one `fdatasync`), then
//! answers. Many messages share one fsync.
//!
//! A failed flush ends the daemon with [`EXIT_STORE_UNWRITABLE`]: fjall latches its first write
//! error (`ENOSPC`, `EIO`) for the life of the database handle ("poisoned": the journal may end
//! in a partial batch, and writing after it would bury it mid-journal), so every later
//! transaction and flush fails even once the disk has space again (tested:
//! `tests/e2e/disk_full.rs`), and only reopening the database clears it. A daemon that stayed up
//! would refuse every message forever (and resend its deliveries every few seconds, unable to
//! record them as sent). Stopping loses nothing: every acknowledgement waited for a successful
//! flush, and a send whose outcome was not recorded is resent with the same delivery id. The
//! supervisor (systemd, `Restart=on-failure`) starts carebridge again, which reopens the store.
//!
//! The flusher does not exit the process itself: from the failure on it answers every job
//! "unavailable", records why ([`Flusher::failure`]) and cancels the daemon's fatal token;
//! `daemon::run` shuts down in its usual order and returns the error, which `cli::main` turns
//! into the exit code.

use super::schema::OutboxItemV1;
use super::{OutboxKey, Store, now_ms};
use carebridge_contract::Receipt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// The exit code of a daemon whose record store stopped taking writes (sysexits' `EX_IOERR`):
/// distinct from 1 (failed to start, a receiver failed) and 2 (invalid config), so the operator
/// sees why in `systemctl status`.
pub const EXIT_STORE_UNWRITABLE: i32 = 74;

/// The exit code when the store failed because the process ran out of file descriptors
/// (sysexits' `EX_OSERR`): 74 would send the operator looking for a full disk that is not there.
pub const EXIT_NO_DESCRIPTORS: i32 = 71;

/// How long the flusher waits for work before it flushes anyway, so a store that stopped taking
/// writes while no message arrives (only the outbox's bookkeeping wrote) is noticed within this.
/// A flush with nothing new to write returns at once.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// An outbox row that a flush made durable, handed to its account's worker: its key and, when
/// the writer still had it in hand, the row itself. The router commits a delivery and its
/// worker sends it moments later; reading back (and unsealing, and decoding) what was just
/// written cost the outbox a store read and a hop to a blocking thread per message.
#[derive(Debug)]
pub struct Wake {
    /// The row's key.
    pub key: OutboxKey,
    /// The row as it was committed, if the writer had it (the worker reads it otherwise).
    pub row: Option<Box<OutboxItemV1>>,
}

impl From<OutboxKey> for Wake {
    fn from(key: OutboxKey) -> Wake {
        Wake { key, row: None }
    }
}

/// What to do once a flush has completed.
#[derive(Debug, Default)]
pub struct FlushJob {
    /// Receipts to send to adapters (they may ack their sources after this).
    pub receipts: Vec<(oneshot::Sender<Receipt>, Receipt)>,
    /// Outbox rows that may now be sent (record before forward).
    pub wake: Vec<Wake>,
    /// Someone waiting for durability (admin API, shutdown).
    pub done: Option<oneshot::Sender<bool>>,
}

/// Handle on the flusher thread.
#[derive(Clone, Debug)]
pub struct Flusher {
    tx: mpsc::Sender<FlushJob>,
    last: Arc<LastFlush>,
    failure: Arc<std::sync::OnceLock<Unwritable>>,
}

/// Why the store stopped taking writes, as the flusher saw it (PHI-free). Ends the daemon with
/// [`EXIT_STORE_UNWRITABLE`].
#[derive(Clone, Debug, thiserror::Error)]
#[error("the record store stopped taking writes: {reason}")]
pub struct Unwritable {
    /// What failed (PHI-free).
    pub reason: String,
    /// The exit code: [`EXIT_STORE_UNWRITABLE`], or [`EXIT_NO_DESCRIPTORS`].
    pub exit_code: i32,
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
    /// it never occupies an async worker). `wake` receives outbox rows once they are
    /// durable (with the rows the writers still had). The thread ends when every handle is dropped and the last jobs are done.
    /// `fatal` is cancelled when the store stops taking writes.
    pub fn spawn(
        store: Store,
        wake: impl Fn(Vec<Wake>) + Send + 'static,
        fatal: CancellationToken,
    ) -> std::io::Result<(Flusher, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<FlushJob>();
        let last = Arc::new(LastFlush::default());
        let seen = last.clone();
        let failure = Arc::new(std::sync::OnceLock::new());
        let failed_for_good = failure.clone();
        let handle = std::thread::Builder::new().name("carebridge-flusher".into()).spawn(move || {
            let mut jobs = Vec::new();
            let give_up = |e: &super::StoreError| {
                if failed_for_good.get().is_none() {
                    let exit_code = unwritable(e);
                    let _ = failed_for_good.set(Unwritable { reason: e.to_string(), exit_code });
                    fatal.cancel();
                }
            };
            loop {
                match rx.recv_timeout(PROBE_EVERY) {
                    Ok(first) => jobs.push(first),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if failed_for_good.get().is_none()
                            && let Err(e) = store.flush_blocking()
                        {
                            seen.failed_ms.store(now_ms().max(1), Ordering::Relaxed);
                            give_up(&e);
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                while let Ok(more) = rx.try_recv() {
                    jobs.push(more);
                }
                let started = std::time::Instant::now();
                // Once the store has failed, every later flush would too (see the module docs).
                let failed = match failed_for_good.get() {
                    Some(_) => Some(None),
                    None => store.flush_blocking().err().map(Some),
                };
                let ok = failed.is_none();
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
                if let Some(Some(e)) = failed {
                    give_up(&e);
                }
                if !wake_keys.is_empty() {
                    wake(wake_keys);
                }
            }
        })?;
        Ok((Flusher { tx, last, failure }, handle))
    }

    /// Queues a job for the next flush. If the flusher is gone the receipts drop, which
    /// adapters read as `Unavailable`: nothing is acked without a flush.
    pub fn submit(&self, job: FlushJob) {
        let _ = self.tx.send(job);
    }

    /// Why the store stopped taking writes, once it has.
    pub fn failure(&self) -> Option<Unwritable> {
        self.failure.get().cloned()
    }

    /// When flushes last succeeded and failed.
    pub fn last_flush(&self) -> FlushStatus {
        let at = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|&ms| ms > 0);
        FlushStatus { ok_ms: at(&self.last.ok_ms), failed_ms: at(&self.last.failed_ms) }
    }

    /// Waits until everything written before this call is durable (`false`: it will not be; the
    /// process is about to exit with [`EXIT_STORE_UNWRITABLE`]).
    pub async fn flush(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.submit(FlushJob { done: Some(tx), ..Default::default() });
        rx.await.unwrap_or(false)
    }
}

/// The store did not take a flush: it never will again in this process (see the module docs).
/// The waiting receipts were answered "unavailable" (503 + `Retry-After`; pollers do not ack);
/// the daemon now stops, and its exit code tells the supervisor to start it again. Returns that
/// code: 71 when the process ran out of file descriptors rather than the disk of space.
fn unwritable(e: &super::StoreError) -> i32 {
    // fjall reports a failure in its background workers (a new table or journal file that could
    // not be opened) only as "poisoned" on the next write: whether descriptors ran out is asked
    // of the process itself, now, while it still holds them.
    if e.is_fd_exhaustion() || out_of_descriptors() {
        error!(
            error = %e,
            exit_code = EXIT_NO_DESCRIPTORS,
            "Record store unwritable: the process has run out of file descriptors (too many open files), not disk space; stopping so the supervisor restarts carebridge. Raise LimitNOFILE or find what holds the descriptors. Nothing acknowledged is lost; unacknowledged messages are redelivered by their sources."
        );
        return EXIT_NO_DESCRIPTORS;
    }
    error!(
        error = %e,
        exit_code = EXIT_STORE_UNWRITABLE,
        "Record store unwritable (disk full or I/O error); stopping so the supervisor restarts carebridge once it can write. Nothing acknowledged is lost; unacknowledged messages are redelivered by their sources."
    );
    EXIT_STORE_UNWRITABLE
}

/// Whether opening one more file fails with "too many open files" right now.
fn out_of_descriptors() -> bool {
    match std::fs::File::open("/dev/null") {
        Ok(_) => false,
        Err(e) => super::engine::io_is_fd_exhaustion(&e),
    }
}
