//! Taking over deliveries when several instances share a store (issue #18). Each instance's
//! outbox workers send what that instance committed (woken by its flusher); when an instance
//! dies, the rows it had not sent yet would wait until it came back. So one instance per
//! destination account, the holder of that account's sweep lease ([`crate::lease`]), scans the
//! account's outbox every third of the take-over time and hands its own worker every row it saw
//! in two scans running: a row still there after a whole interval is one its instance is not
//! sending (dead, or in retry backoff). The worker ignores keys it already holds.
//!
//! Not exclusive claims: a row in retry backoff on a live instance can be attempted by both
//! instances. Receivers drop repeats by `Idempotency-Key` (the delivery id, unique across
//! instances), and the store never brings back a row another instance sent
//! (`Store::apply_outbox`), so a patient's message is delivered at least once, repeats carry
//! the same key, and nothing is lost.

use crate::lease::Leases;
use crate::record::{OutboxKey, Store};
use carebridge_contract::AccountId;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Sweeps `account`'s outbox into `queue` (its worker's) while this instance holds the
/// account's sweep lease; ends when `stop` fires.
pub async fn sweep(
    leases: Arc<Leases>,
    account: AccountId,
    store: Store,
    queue: mpsc::UnboundedSender<OutboxKey>,
    every: Duration,
    stop: CancellationToken,
) {
    let name = format!("outbox.{account}");
    loop {
        let Some(lease) = leases.acquire(&name, &stop).await else { return };
        let mut seen: HashSet<OutboxKey> = HashSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = lease.lost.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let (s, a) = (store.clone(), account.clone());
            let keys = match tokio::task::spawn_blocking(move || s.outbox_keys(&a)).await {
                Ok(Ok(keys)) => keys,
                Ok(Err(e)) => {
                    warn!(account = %account, error = %e, "Outbox sweep could not read the outbox; trying again.");
                    continue;
                }
                Err(_) => continue,
            };
            let now: HashSet<OutboxKey> = keys.into_iter().collect();
            let stale: Vec<&OutboxKey> = now.intersection(&seen).collect();
            if !stale.is_empty() {
                info!(account = %account, rows = stale.len(), "Taking over deliveries left waiting in the outbox.");
            }
            for key in stale {
                if queue.send(key.clone()).is_err() {
                    return;
                }
            }
            seen = now;
        }
    }
}
