//! The running inbound tasks, one per receiving account: started with the daemon, and started,
//! stopped or restarted one by one when a reload changes the accounts.
//!
//! Every task gets the router's queue (a [`Submitter`]), a shutdown token of its own (a child of
//! the daemon's, so shutdown still stops them all at once) and a health reporter registered in
//! [`AdapterHealth`] (readiness, status line) for as long as it runs. A task that ends while nobody asked it to, or fails,
//! stops the daemon, as at start-up: a receiver that cannot run is an outage the supervisor
//! must see. [`Receivers`] holds one `Submitter` of its own so it can start tasks later;
//! [`Receivers::close`] drops it at shutdown so the router's queue closes once the tasks end.
//!
//! On a store several instances share, a polling receiver (IMAP IDLE, Telegram `getUpdates`)
//! first waits for its account's lease ([`crate::lease`]): one instance polls, the others stand
//! by. A receiver that loses its lease stops (it finishes the message in hand, so nothing is
//! acknowledged that was not recorded), leaves readiness, and stands by again; when it takes the
//! lease back it runs anew, built from its account's config ([`Rebuild`]). The rest of the
//! daemon, webhooks included, runs on. Webhook listeners take no lease.

use crate::lease::Leases;
use crate::ops::AdapterHealth;
use carebridge_contract::{AccountId, ChannelKind, Inbound, InboundContext, Submitter};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// Builds a receiver anew (from its account's config, as the blueprint did).
pub type Rebuild = Arc<dyn Fn() -> Result<Box<dyn Inbound>, String> + Send + Sync>;

/// A polling receiver's next run, after it lost its lease and took it again.
fn rebuilt(account: &AccountId, rebuild: Option<&Rebuild>) -> Option<Box<dyn Inbound>> {
    match rebuild.map(|r| r()) {
        Some(Ok(task)) => Some(task),
        Some(Err(e)) => {
            error!(account = %account, error = %e, "Receiver cannot be built again; stopping the daemon.");
            None
        }
        None => {
            error!(account = %account, "Receiver cannot be built again; stopping the daemon.");
            None
        }
    }
}

/// What a receiver's end means: nothing if it was told to stop, else the daemon stops.
fn ended(
    account: &AccountId,
    result: Result<(), carebridge_contract::AdapterError>,
    stopping: &CancellationToken,
    fatal: &CancellationToken,
) {
    match result {
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
    /// Set when several instances share the store: polling receivers run under a lease.
    leases: Option<Arc<Leases>>,
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
        Receivers { submitter: Some(submitter), stop, fatal, tracker, health, running: BTreeMap::new(), leases: None }
    }

    /// Runs every polling receiver started from now on under its account's lease.
    pub fn set_leases(&mut self, leases: Option<Leases>) {
        self.leases = leases.map(Arc::new);
    }

    /// The accounts with a running receiver.
    pub fn accounts(&self) -> Vec<AccountId> {
        self.running.keys().cloned().collect()
    }

    /// Starts `task` as the receiver of `account`. Does nothing after [`Receivers::close`].
    /// `rebuild` makes the receiver anew for a polling receiver that lost its lease and takes it
    /// again (a task is used up when it ends); without it, such a receiver stops the daemon.
    pub fn start(&mut self, account: AccountId, task: Box<dyn Inbound>, rebuild: Option<Rebuild>) {
        let Some(submitter) = self.submitter.clone() else { return };
        let stopping = self.stop.child_token();
        let fatal = self.fatal.clone();
        let leases = self.leases.clone().filter(|_| account.kind() != ChannelKind::Webhook);
        let registry = self.health.clone();
        let health = leases.is_none().then(|| self.health.register(&account));
        let handle = self.tracker.spawn({
            let stopping = stopping.clone();
            let account = account.clone();
            async move {
                let Some(leases) = leases else {
                    let health = health.unwrap_or_else(|| registry.register(&account));
                    let cx = InboundContext { account: account.clone(), submitter, shutdown: stopping.clone(), health };
                    ended(&account, task.run(cx).await, &stopping, &fatal);
                    return;
                };
                let mut task = Some(task);
                loop {
                    // Standing by is not in readiness (a standby instance is ready for its
                    // webhooks); the receiver registers once it runs.
                    let held = leases.acquire(&account.to_string(), &stopping).await;
                    let Some(held) = held.filter(|_| !stopping.is_cancelled()) else {
                        info!(account = %account, "Receiver stopped while standing by.");
                        return;
                    };
                    let Some(run) = task.take().or_else(|| rebuilt(&account, rebuild.as_ref())) else {
                        fatal.cancel();
                        return;
                    };
                    // The receiver's own stop: the daemon's, or the lease lost.
                    let tenure = stopping.child_token();
                    let cx = InboundContext {
                        account: account.clone(),
                        submitter: submitter.clone(),
                        shutdown: tenure.clone(),
                        health: registry.register(&account),
                    };
                    let receive = async {
                        let result = run.run(cx).await;
                        tenure.cancel();
                        result
                    };
                    let watch = async {
                        tokio::select! {
                            () = held.lost.cancelled() => {
                                tenure.cancel();
                                true
                            }
                            () = tenure.cancelled() => false,
                        }
                    };
                    let (result, lost) = tokio::join!(receive, watch);
                    drop(held);
                    if lost && !stopping.is_cancelled() {
                        // It finished the message in hand (acknowledged only once recorded);
                        // the source keeps the rest for whoever holds the lease now.
                        registry.remove(&account);
                        warn!(account = %account, "Lease lost: the receiver stopped and stands by to take it again.");
                        continue;
                    }
                    ended(&account, result, &stopping, &fatal);
                    return;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::record::pg_backend::testing;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in adapter that counts how many copies of it are running (the thing under test
    /// is the lease gating around it, not an adapter).
    struct Counted(Arc<AtomicUsize>);

    impl Inbound for Counted {
        fn run(self: Box<Self>, cx: InboundContext) -> carebridge_contract::Task {
            Box::pin(async move {
                self.0.fetch_add(1, Ordering::SeqCst);
                cx.health.up();
                cx.shutdown.cancelled().await;
                self.0.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        // A guard against a hang, not a timing assertion.
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(tokio::time::Instant::now() < end, "{what} never happened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poller_runs_on_one_instance_at_a_time_and_a_standby_takes_it_over() {
        let Some(dsn) = testing::dsn() else {
            eprintln!("skipping: {} is not set", testing::DSN_VAR);
            return;
        };
        let settings = testing::database(&dsn, "cb_receivers_lease").unwrap();
        let (submitter, _queue) = Submitter::channel(8);
        let fatal = CancellationToken::new();
        let instance = || {
            let health = AdapterHealth::default();
            let mut r = Receivers::new(
                submitter.clone(),
                CancellationToken::new(),
                fatal.clone(),
                TaskTracker::new(),
                health.clone(),
            );
            r.set_leases(Some(Leases::new(&settings, Duration::from_secs(3)).unwrap()));
            (r, health)
        };
        let (mut a, _) = instance();
        let (mut b, b_health) = instance();
        let poller: AccountId = "email.front-desk".parse().unwrap();
        let (on_a, on_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        a.start(poller.clone(), Box::new(Counted(on_a.clone())), None);
        until("the first instance polling", || on_a.load(Ordering::SeqCst) == 1).await;
        b.start(poller.clone(), Box::new(Counted(on_b.clone())), None);
        // Webhooks take no lease: both instances listen.
        let forms: AccountId = "webhook.forms".parse().unwrap();
        let (wa, wb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        a.start(forms.clone(), Box::new(Counted(wa.clone())), None);
        b.start(forms.clone(), Box::new(Counted(wb.clone())), None);
        until("both webhook listeners running", || wa.load(Ordering::SeqCst) == 1 && wb.load(Ordering::SeqCst) == 1)
            .await;
        assert_eq!(on_b.load(Ordering::SeqCst), 0, "the standby does not poll while the lease is held");
        assert!(
            !b_health.states().iter().any(|(acc, _)| *acc == poller),
            "a poller standing by is not in its instance's readiness"
        );
        // The holder stops (as when it is shut down or dies): the standby takes over.
        assert!(a.stop(&poller, Duration::from_secs(5)).await);
        until("the standby polling", || on_b.load(Ordering::SeqCst) == 1).await;
        assert!(b_health.states().iter().any(|(acc, _)| *acc == poller));
        assert!(!fatal.is_cancelled());
        b.stop(&poller, Duration::from_secs(5)).await;
        b.stop(&forms, Duration::from_secs(5)).await;
        a.stop(&forms, Duration::from_secs(5)).await;
    }

    /// [`Counted`] that also counts its runs (a receiver runs once: each run after a lost lease
    /// is one built anew).
    struct Runs(Arc<AtomicUsize>, Arc<AtomicUsize>);

    impl Inbound for Runs {
        fn run(self: Box<Self>, cx: InboundContext) -> carebridge_contract::Task {
            self.1.fetch_add(1, Ordering::SeqCst);
            Box::new(Counted(self.0)).run(cx)
        }
    }

    /// A receiver and how to build it again.
    fn counted_anew(running: &Arc<AtomicUsize>, runs: &Arc<AtomicUsize>) -> (Box<dyn Inbound>, Rebuild) {
        let (running, runs) = (running.clone(), runs.clone());
        let build = move || -> Box<dyn Inbound> { Box::new(Runs(running.clone(), runs.clone())) };
        (build(), Arc::new(move || Ok(build())))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poller_that_loses_its_lease_stops_alone_and_stands_by_to_take_it_again() {
        let Some(dsn) = testing::dsn() else {
            eprintln!("skipping: {} is not set", testing::DSN_VAR);
            return;
        };
        let settings = testing::database(&dsn, "cb_receivers_lease_lost").unwrap();
        let (submitter, _queue) = Submitter::channel(8);
        let fatal = CancellationToken::new();
        let instance = || {
            let health = AdapterHealth::default();
            let mut r = Receivers::new(
                submitter.clone(),
                CancellationToken::new(),
                fatal.clone(),
                TaskTracker::new(),
                health.clone(),
            );
            r.set_leases(Some(Leases::new(&settings, Duration::from_secs(3)).unwrap()));
            (r, health)
        };
        let (mut a, a_health) = instance();
        let (mut b, b_health) = instance();
        let poller: AccountId = "telegram.front".parse().unwrap();
        let counters = || (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let ((on_a, runs_a), (on_b, runs_b)) = (counters(), counters());
        let (task, rebuild) = counted_anew(&on_a, &runs_a);
        a.start(poller.clone(), task, Some(rebuild));
        until("the first instance polling", || on_a.load(Ordering::SeqCst) == 1).await;
        let (task, rebuild) = counted_anew(&on_b, &runs_b);
        b.start(poller.clone(), task, Some(rebuild));
        let forms: AccountId = "webhook.forms".parse().unwrap();
        let webhook = Arc::new(AtomicUsize::new(0));
        a.start(forms.clone(), Box::new(Counted(webhook.clone())), None);
        until("the webhook listening", || webhook.load(Ordering::SeqCst) == 1).await;

        // The holder's lease connection is cut (as by a network fault, or an administrator).
        testing::execute(
            &settings,
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 \
             AND classid = 25442 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .unwrap();
        // Its poller stops and the poller runs again, on one instance: the standby, or the same
        // instance with a receiver built anew, whichever asked first.
        until("the poller running again", || {
            on_a.load(Ordering::SeqCst) + on_b.load(Ordering::SeqCst) == 1
                && runs_a.load(Ordering::SeqCst) + runs_b.load(Ordering::SeqCst) == 2
        })
        .await;
        assert!(!fatal.is_cancelled(), "losing a lease stops no daemon");
        assert_eq!(webhook.load(Ordering::SeqCst), 1, "the instance's webhook runs on");
        // Whoever holds it now gives it up: the other instance, standing by, takes it.
        let (now, now_health, other, other_on, other_health) = if on_b.load(Ordering::SeqCst) == 1 {
            (&mut b, &b_health, &mut a, &on_a, &a_health)
        } else {
            (&mut a, &a_health, &mut b, &on_b, &b_health)
        };
        assert!(now_health.states().iter().any(|(acc, _)| *acc == poller));
        assert!(!other_health.states().iter().any(|(acc, _)| *acc == poller), "a standby is not in readiness");
        assert!(now.stop(&poller, Duration::from_secs(5)).await);
        until("the other instance polling", || other_on.load(Ordering::SeqCst) == 1).await;
        assert!(other_health.states().iter().any(|(acc, _)| *acc == poller));
        assert_eq!(runs_a.load(Ordering::SeqCst) + runs_b.load(Ordering::SeqCst), 3);
        assert!(!fatal.is_cancelled());
        other.stop(&poller, Duration::from_secs(5)).await;
        a.stop(&forms, Duration::from_secs(5)).await;
    }
}
