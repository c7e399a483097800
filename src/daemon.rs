//! Starts the daemon's fixed parts (store, flusher, router thread, bookkeeping, listeners),
//! applies the config to them as a reload would ([`crate::assembly`]), runs, and owns the
//! shutdown order:
//!
//! 1. inbound adapters stop taking messages (HTTP stops accepting, polls stop);
//! 2. their `Submitter`s drop, so the router's queue closes; the router drains it;
//! 3. a final group flush answers the last receipts;
//! 4. the outbox workers finish the send in hand and stop; what is unsent stays in the outbox
//!    and goes out after the next start;
//! 5. a last flush, then `Shutdown complete.`
//!
//! Each step is bounded by `shutdown_timeout_secs` in total; stragglers are named in the log.
//!
//! SIGHUP reloads the config file ([`crate::reload`]): accounts start and stop one by one, the
//! router takes the new routes and policy between batches, and the order above applies to
//! whatever runs when the daemon stops.

use crate::admin;
use crate::assembly::{self, Running};
use crate::config::ValidConfig;
use crate::outbox::{Bookkeeper, Workers};
use crate::receivers::Receivers;
use crate::record::Flusher;
use crate::reload::{Hangups, Live};
use crate::router::Router;
use anyhow::{Context, Result, anyhow};
use carebridge_contract::Submitter;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Runs the daemon until `shutdown` resolves (a signal) or an adapter fails fatally; SIGHUP
/// meanwhile reloads the config file.
pub async fn run(config: ValidConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    // First, so a SIGHUP during start-up waits for `ready` instead of killing the process.
    let mut hangups = Hangups::new();
    if config.ops.is_some() {
        crate::ops::install_metrics(); // before any worker runs, so no count is missed
    }
    let data_dir = config.daemon.data_dir.clone();
    tokio::pin!(shutdown);
    // A shared store's database may be down at start: the daemon waits for it, answering 503.
    let Some(store) = crate::store_wait::open(&config, &mut shutdown).await? else {
        info!("Shutdown complete.");
        return Ok(());
    };
    // Everything the config names is built before anything starts (a bad secret stops us
    // before we listen), by the code a reload uses (crate::assembly).
    let blueprint = assembly::draw(config, None).map_err(crate::config::ConfigErrors)?;
    let config = blueprint.config.clone();

    let pending = Arc::new(AtomicU64::new(0));
    let (books, books_thread) = Bookkeeper::spawn(store.clone()).context("starting the outbox bookkeeping thread")?;
    let outbox_stop = CancellationToken::new();
    let outbox_tasks = TaskTracker::new();
    let mut workers = Workers::new(
        store.clone(),
        pending.clone(),
        books,
        config.outbox.clone(),
        outbox_stop.clone(),
        outbox_tasks.clone(),
    );
    workers.set_leases(config.store.leases(&config.config_dir)?);
    let wakers = workers.wakers();
    let wake = wakers.clone();
    // Cancelled by a receiver that fails for good, or by the flusher when the store stops taking
    // writes: either way the daemon stops in its usual order and says why in its exit code.
    let fatal = CancellationToken::new();
    let (flusher, flusher_thread) = Flusher::spawn(store.clone(), move |keys| wake.wake(keys), fatal.clone())
        .context("starting the flusher thread")?;
    workers.set_flusher(flusher.clone());

    let (submitter, rx) = Submitter::channel(config.daemon.queue_capacity);
    let (planners, planner_updates) = std::sync::mpsc::channel();
    let router = Router { flusher: flusher.clone(), outbox_pending: pending.clone(), updates: planner_updates };
    let router_thread = std::thread::Builder::new()
        .name("carebridge-router".into())
        .spawn(move || router.run(rx))
        .context("starting the router thread")?;

    let adapter_health = crate::ops::AdapterHealth::default();
    let ops_stop = CancellationToken::new();
    let ops_task = crate::ops::start(
        config.ops.as_ref(),
        store.clone(),
        flusher.clone(),
        pending.clone(),
        adapter_health.clone(),
        ops_stop.clone(),
    )
    .await?;
    let inbound_stop = CancellationToken::new();
    let inbound_tasks = TaskTracker::new();
    let mut receivers =
        Receivers::new(submitter, inbound_stop.clone(), fatal.clone(), inbound_tasks.clone(), adapter_health.clone());
    receivers.set_leases(config.store.leases(&config.config_dir)?);

    let live = Live::new(config.clone());
    let admin_stop = CancellationToken::new();
    let admin_task = match config.admin.listen {
        Some(addr) => {
            let token = carebridge_contract::config::load_secret(
                &config.admin.token_env,
                &config.admin.token_file,
                &config.config_dir,
            )
            .map_err(|e| crate::exit::ConfigFailure(format!("admin: {e}")))?
            .ok_or_else(|| crate::exit::ConfigFailure("admin: a token is required".into()))?;
            let state = admin::State {
                store: store.clone(),
                flusher: flusher.clone(),
                wakers,
                pending: pending.clone(),
                token,
                config: live.clone(),
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("admin API: cannot listen on {addr}"))?;
            info!(listen = %addr, "Admin API listening.");
            let stop = admin_stop.clone();
            // Bounded like every listener (carebridge_contract::http).
            Some(tokio::spawn(carebridge_contract::http::serve(
                listener,
                admin::router(state),
                carebridge_contract::http::Limits::OPERATOR,
                stop,
            )))
        }
        None => None,
    };

    let status_store = store.clone();
    let status_pending = pending.clone();
    let status_adapters = adapter_health.clone();
    let interval = Duration::from_secs(config.daemon.status_interval_secs);
    let status_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let s = tokio::task::spawn_blocking({
                let st = status_store.clone();
                move || st.stats()
            })
            .await
            .unwrap_or_default();
            info!(
                records = s.records,
                outbox_pending = s.outbox_pending,
                outbox_pending_live = status_pending.load(std::sync::atomic::Ordering::Relaxed),
                dead_letters = s.dead,
                quarantined = s.quarantined,
                held_for_review = s.held,
                adapters = %status_adapters,
                chain_seq = s.chain_seq,
                chain_head = %s.chain_head,
                "Status."
            );
        }
    });

    // Start-up is a reload from nothing: the same apply, in the same order.
    let mut running = Running { current: live, store: store.clone(), receivers, workers, planners };
    if let Some((id, e)) = running.apply(blueprint).await.into_iter().next() {
        return Err(anyhow::Error::new(e).context(format!("loading the outbox of {id}")));
    }
    info!(accounts = config.accounts.len(), routes = config.routes.len(), data_dir = %data_dir.display(), "carebridge ready.");
    let failed = loop {
        tokio::select! {
            _ = &mut shutdown => break false,
            _ = fatal.cancelled() => break true,
            _ = hangups.recv() => running.reload().await,
        }
    };

    // The shutdown order from the module docs, under one deadline, for the accounts running now.
    let started = Instant::now();
    let deadline = Duration::from_secs(running.current.get().daemon.shutdown_timeout_secs);
    let left = || deadline.saturating_sub(started.elapsed());
    info!(timeout_secs = deadline.as_secs(), "Shutting down: stopping receivers.");
    inbound_stop.cancel();
    admin_stop.cancel();
    ops_stop.cancel();
    status_task.abort();
    inbound_tasks.close();
    if tokio::time::timeout(left(), inbound_tasks.wait()).await.is_err() {
        warn!(remaining = inbound_tasks.len(), "Receivers did not stop in time; abandoning them.");
    }
    running.receivers.close();
    if tokio::time::timeout(left(), join(router_thread)).await.is_err() {
        warn!("Router did not drain in time; unacknowledged messages will be redelivered by their sources.");
    }
    if let Some(t) = admin_task {
        let _ = tokio::time::timeout(left(), t).await;
    }
    if let Some(t) = ops_task {
        let _ = tokio::time::timeout(left(), t).await;
    }
    let _ = tokio::time::timeout(left(), flusher.flush()).await;
    info!("Receivers stopped and records flushed; finishing deliveries in flight.");
    outbox_stop.cancel();
    outbox_tasks.close();
    if tokio::time::timeout(left(), outbox_tasks.wait()).await.is_err() {
        warn!(
            remaining = outbox_tasks.len(),
            "Deliveries still in flight at the deadline; they stay in the outbox and are resent after restart."
        );
    }
    let store_failure = flusher.failure();
    drop(flusher);
    drop(running); // the workers' handle on the bookkeeping thread
    let _ = tokio::time::timeout(left(), join(flusher_thread)).await;
    let _ = tokio::time::timeout(left(), join(books_thread)).await;
    let s = store.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.close()).await {
        tracing::error!(error = %e, "The last flush of the record store failed; the next start recovers what was acknowledged.");
    }
    info!("Shutdown complete.");
    match store_failure {
        Some(e) => Err(e.into()),
        None if failed => Err(anyhow!("a receiver failed; see the log above")),
        None => Ok(()),
    }
}

/// Waits for a thread without blocking the async workers.
async fn join(t: std::thread::JoinHandle<()>) {
    let _ = tokio::task::spawn_blocking(move || t.join()).await;
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "Signal received."),
            _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "Signal received."),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
