//! Deliveries when several instances share a store (issue #18): one instance at a time sends an
//! account's outbox, and sends it in the order its rows were committed.
//!
//! Each instance runs a worker per sending account, but the worker sends only while its
//! instance holds the account's delivery lease (`outbox.<account>`, a [`crate::lease`] like the
//! pollers'). The holder reads the account's outbox in the one order of commits across every
//! instance ([`Store::outbox_keys_after`]): all of it when it takes the lease, then what was
//! committed since, at once when its own flusher wakes it and every [`POLL_EVERY`] for rows other
//! instances recorded. Its worker keeps the order per recipient as on one machine (one send at a
//! time per recipient, a row in backoff holding back the later ones), so a recipient's rows go
//! out in the order they were recorded, whichever instance recorded them and across a take-over.
//! The other instances stand by, discarding their flusher's wakes (the rows are in the store).
//!
//! A holder killed frees its lease at once; a standby takes it within a sixth of the take-over
//! time and reads the outbox from the start, each row with the attempts and backoff the store
//! holds. A live holder whose lease connection fails stops starting sends when its watcher sees
//! it (within a sixth of the take-over time), finishes those in flight and stands by again: in
//! that window two instances may attempt one row. Receivers drop such repeats by
//! `Idempotency-Key` (the delivery id, unique across instances), and the store never brings back
//! or dead-letters a row another instance sent (`Store::apply_outbox`).

use crate::lease::Leases;
use crate::record::Store;
use crate::record::flusher::Wake;
use carebridge_contract::AccountId;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the holder reads what other instances committed to its account's outbox (its own
/// rows wake it at once): the most a row recorded on another instance waits before it is sent.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// The router counted each row it committed as pending; a standby does not send it, and the
/// holder counts what it reads itself.
fn uncount(pending: &AtomicU64, n: usize) {
    let _ = pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(p.saturating_sub(n as u64)));
}

/// Runs `account`'s deliveries under its delivery lease until `stop` fires: stands by while
/// another instance holds it; while this one does, feeds `send` (the account's worker, given
/// its queue and a token that fires when the lease is lost) in commit order. `wakes` carries
/// the flusher's keys of rows this instance recorded.
#[allow(clippy::too_many_arguments)]
pub async fn deliver<F, Fut>(
    leases: Arc<Leases>,
    account: AccountId,
    store: Store,
    mut wakes: mpsc::UnboundedReceiver<Wake>,
    pending: Arc<AtomicU64>,
    stop: CancellationToken,
    mut send: F,
) where
    F: FnMut(mpsc::UnboundedReceiver<Wake>, CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let name = format!("outbox.{account}");
    loop {
        let lease = tokio::select! {
            lease = leases.acquire(&name, &stop) => lease,
            () = discard(&mut wakes, &pending) => None,
        };
        let Some(lease) = lease else { return };
        let tenure = stop.child_token();
        let (queue, rx) = mpsc::unbounded_channel();
        let watch = async {
            tokio::select! {
                () = lease.lost.cancelled() => tenure.cancel(),
                () = tenure.cancelled() => {}
            }
        };
        tokio::join!(feed(&store, &account, &mut wakes, queue, &pending, &tenure), send(rx, tenure.clone()), watch);
        drop(lease);
        if stop.is_cancelled() || wakes.is_closed() {
            return;
        }
        info!(account = %account, "Delivery lease lost; this instance stands by for the account's outbox.");
    }
}

/// While standing by: the wakes go nowhere (another instance sends the rows). Ends only when
/// the channel closes (the worker was stopped or replaced).
async fn discard(wakes: &mut mpsc::UnboundedReceiver<Wake>, pending: &AtomicU64) {
    while wakes.recv().await.is_some() {
        uncount(pending, 1);
    }
}

/// While holding the lease: hands the worker every row of the account's outbox once, in
/// commit order, until `tenure` fires (or the wakes' channel closes, which ends the tenure).
async fn feed(
    store: &Store,
    account: &AccountId,
    wakes: &mut mpsc::UnboundedReceiver<Wake>,
    queue: mpsc::UnboundedSender<Wake>,
    pending: &AtomicU64,
    tenure: &CancellationToken,
) {
    // However it ends, the tenure ends with it (the worker stops after its sends in hand).
    let _end = tenure.clone().drop_guard();
    let mut after = 0;
    let mut first = true;
    loop {
        let (s, a) = (store.clone(), account.clone());
        match tokio::task::spawn_blocking(move || s.outbox_keys_after(&a, after)).await {
            Ok(Ok((keys, last))) => {
                if first && !keys.is_empty() {
                    info!(account = %account, pending = keys.len(), "Delivery lease taken: sending the outbox.");
                }
                first = false;
                pending.fetch_add(keys.len() as u64, Ordering::Relaxed);
                for key in keys {
                    if queue.send(Wake::from(key)).is_err() {
                        return;
                    }
                }
                after = last;
            }
            Ok(Err(e)) => warn!(account = %account, error = %e, "Cannot read the outbox; trying again."),
            Err(_) => {}
        }
        tokio::select! {
            () = tenure.cancelled() => return,
            woke = wakes.recv() => match woke {
                Some(_) => {
                    let mut n = 1;
                    while wakes.try_recv().is_ok() {
                        n += 1;
                    }
                    uncount(pending, n);
                }
                None => return,
            },
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
}
