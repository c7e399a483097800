//! The running inbound tasks, one per receiving account: started with the daemon, and started,
//! stopped or restarted one by one when a reload changes the accounts.
//!
//! Every task gets the router's queue (a [`Submitter`]), a shutdown token of its own (a child of
//! the daemon's, so shutdown still stops them all at once) and a health reporter registered in
//! [`AdapterHealth`] (readiness, status line) for as long as it runs. A task that ends while nobody asked it to, or fails,
//! stops the daemon, as at start-up: a receiver that cannot run is an outage the supervisor
//! must see. [`Receivers`] holds one `Submitter` of its own so it can start tasks later;
//! [`Receivers::close`] drops it at shutdown so the router's queue closes once the tasks end.

use crate::ops::AdapterHealth;
use carebridge_contract::{AccountId, Inbound, InboundContext, Submitter};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// The running receivers.
pub struct Receivers {
    submitter: Option<Submitter>,
    /// Cancelling it stops every receiver (shutdown step 1).
    stop: CancellationToken,
    /// Cancelled when a receiver fails: the daemon stops.
    fatal: CancellationToken,
    tracker: TaskTracker,
    health: AdapterHealth,
    running: BTreeMap<AccountId, (CancellationToken, JoinHandle<()>)>,
}

impl Receivers {
    /// No receivers yet. `stop` stops them all; `fatal` is cancelled if one fails; `tracker`
    /// tracks them for the shutdown deadline; each receiver reports its health into `health`.
    pub fn new(
        submitter: Submitter,
        stop: CancellationToken,
        fatal: CancellationToken,
        tracker: TaskTracker,
        health: AdapterHealth,
    ) -> Self {
        Receivers { submitter: Some(submitter), stop, fatal, tracker, health, running: BTreeMap::new() }
    }

    /// The accounts with a running receiver.
    pub fn accounts(&self) -> Vec<AccountId> {
        self.running.keys().cloned().collect()
    }

    /// Starts `task` as the receiver of `account`. Does nothing after [`Receivers::close`].
    pub fn start(&mut self, account: AccountId, task: Box<dyn Inbound>) {
        let Some(submitter) = self.submitter.clone() else { return };
        let stopping = self.stop.child_token();
        let health = self.health.register(&account);
        let cx = InboundContext { account: account.clone(), submitter, shutdown: stopping.clone(), health };
        let fatal = self.fatal.clone();
        let handle = self.tracker.spawn({
            let stopping = stopping.clone();
            let account = account.clone();
            async move {
                match task.run(cx).await {
                    Ok(()) if stopping.is_cancelled() => info!(account = %account, "Receiver stopped."),
                    Ok(()) => {
                        error!(account = %account, "Receiver ended unexpectedly; stopping the daemon.");
                        fatal.cancel();
                    }
                    Err(e) => {
                        error!(account = %account, error = %e, "Receiver failed; stopping the daemon.");
                        fatal.cancel();
                    }
                }
            }
        });
        self.running.insert(account, (stopping, handle));
    }

    /// Stops the receiver of `account` gracefully (its shutdown token: it finishes the message
    /// in hand, HTTP stops accepting) and waits at most `within` for it to end. Returns false if
    /// it had not ended by then.
    pub async fn stop(&mut self, account: &AccountId, within: Duration) -> bool {
        self.health.remove(account);
        let Some((stop, mut handle)) = self.running.remove(account) else { return true };
        stop.cancel();
        if tokio::time::timeout(within, &mut handle).await.is_ok() {
            return true;
        }
        warn!(account = %account, "Receiver did not stop in time; it is abandoned.");
        handle.abort();
        false
    }

    /// Drops the receivers' own handle on the router's queue (shutdown, after the receivers
    /// were told to stop): the queue closes when the last task ends, and the router drains it.
    pub fn close(&mut self) {
        self.submitter = None;
    }
}
