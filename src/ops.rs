//! The operations endpoint on `[ops] listen`: liveness, readiness and Prometheus metrics for
//! systemd, a load balancer or a monitoring host.
//!
//! - `GET /healthz`: 200 while the process serves requests (liveness).
//! - `GET /readyz`: 200 when the store takes writes and every inbound account reports
//!   [`Health::Up`]; otherwise 503 naming the failed checks. The store check reads the
//!   flusher's last result ([`Flusher::last_flush`]); only when no flush happened for
//!   [`FLUSH_FRESH`] does it ask for one, which concurrent probes share, so probes never cost an
//!   fsync each.
//! - `GET /metrics`: Prometheus text from the process-wide `metrics` recorder
//!   ([`install_metrics`]); gauges are refreshed at each scrape.
//!
//! There is no authentication, so nothing here may carry PHI: only account ids, channel kinds,
//! policy actions, states and counts (bounded label sets). Config validation refuses a
//! non-loopback address unless `allow_non_loopback = true`.
//!
//! The functions at the end ([`received`], [`decisions`], [`delivery`], [`flushed`]) are the one
//! place metric names and labels are spelled, so instrumented code stays one line.

use crate::config::OpsConfig;
use crate::record::schema::RecordV1;
use crate::record::{Flusher, OutboxUpdate, Store, now_ms};
use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use carebridge_contract::http::Limits;
use carebridge_contract::{AccountId, Health, HealthReporter, Receipt};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Messages the router answered, by account, channel and outcome
/// (`recorded|duplicate|quarantined|unavailable`).
pub const MESSAGES_RECEIVED: &str = "carebridge_messages_received_total";
/// Finished send attempts, by account and outcome (`sent|retry|dead|held`).
pub const DELIVERIES: &str = "carebridge_deliveries_total";
/// Attempts a delivery took when it was sent or dead-lettered, by account.
pub const DELIVERY_ATTEMPTS: &str = "carebridge_delivery_attempts";
/// Per-destination policy decisions of recorded messages, by action.
pub const DECISIONS: &str = "carebridge_decisions_total";
/// Outbox rows waiting to be sent.
pub const OUTBOX_PENDING: &str = "carebridge_outbox_pending";
/// Dead letters waiting for an operator.
pub const DEAD_LETTERS: &str = "carebridge_dead_letters";
/// Deliveries held for clinician review.
pub const HELD_FOR_REVIEW: &str = "carebridge_held_for_review";
/// 1 while an inbound account reports itself up, by account.
pub const INBOUND_UP: &str = "carebridge_inbound_up";
/// Duration of each group-commit flush, in seconds.
pub const FLUSH_SECONDS: &str = "carebridge_flush_duration_seconds";
/// Messages answered per flush (flushes that answered at least one).
pub const FLUSH_MESSAGES: &str = "carebridge_flush_messages";
/// Flushes that failed (the store did not take the write).
pub const FLUSH_FAILURES: &str = "carebridge_flush_failures_total";

/// A successful flush younger than this proves the store writable; older, `/readyz` asks for one.
pub const FLUSH_FRESH: Duration = Duration::from_secs(30);
/// How long `/readyz` waits for the flush it asked for.
const FLUSH_WAIT: Duration = Duration::from_secs(5);
/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The recorder with carebridge's histogram buckets, not installed anywhere (tests use it with
/// `metrics::with_local_recorder`).
pub fn build_recorder() -> PrometheusRecorder {
    let seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
    let messages = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 512.0, 1024.0];
    let attempts = [1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0];
    let with_buckets = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(FLUSH_SECONDS.into()), &seconds)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FLUSH_MESSAGES.into()), &messages))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(DELIVERY_ATTEMPTS.into()), &attempts));
    // Only empty bucket lists fail, and these are constants; summaries would do if they ever did.
    with_buckets.unwrap_or_else(|_| PrometheusBuilder::new()).build_recorder()
}

/// Installs the process-wide recorder once and returns its handle (later calls, e.g. from a
/// test or a second daemon run in one process, get the same handle).
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                warn!("Another metrics recorder is installed; /metrics will stay empty.");
            }
            describe();
            handle
        })
        .clone()
}

/// HELP lines for every metric.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(MESSAGES_RECEIVED, "Inbound messages answered by the router, by outcome.");
    describe_counter!(DELIVERIES, "Finished send attempts, by outcome (sent, retry, dead, held).");
    describe_histogram!(DELIVERY_ATTEMPTS, "Attempts a delivery took until it was sent or dead-lettered.");
    describe_counter!(DECISIONS, "Per-destination policy decisions of recorded messages.");
    describe_gauge!(OUTBOX_PENDING, "Outbox rows waiting to be sent.");
    describe_gauge!(DEAD_LETTERS, "Dead letters waiting for an operator (carebridge outbox list).");
    describe_gauge!(HELD_FOR_REVIEW, "Deliveries held for clinician review.");
    describe_gauge!(INBOUND_UP, "1 while the inbound account reports itself connected.");
    describe_histogram!(FLUSH_SECONDS, Unit::Seconds, "Duration of each group-commit flush.");
    describe_histogram!(FLUSH_MESSAGES, "Messages answered by one flush.");
    describe_counter!(FLUSH_FAILURES, "Flushes that failed.");
    // Registered at 0 now, not at the first failure: docs/operations.md tells the administrator
    // to alert on it, and an alert on `increase(...) > 0` never fires for a series that is absent
    // until the disk is already full (a first sample of 1 has no earlier one to increase from).
    metrics::counter!(FLUSH_FAILURES).increment(0);
}

/// Every inbound account's [`HealthReporter`], by account. Clones share one registry, so a
/// reload that restarts an account re-registers it and `/readyz` sees the new task.
#[derive(Clone, Debug, Default)]
pub struct AdapterHealth {
    accounts: Arc<Mutex<BTreeMap<AccountId, HealthReporter>>>,
}

impl AdapterHealth {
    /// A fresh reporter for `account`'s task (replacing any earlier one), to put in its
    /// `InboundContext`.
    pub fn register(&self, account: &AccountId) -> HealthReporter {
        let reporter = HealthReporter::new();
        self.lock().insert(account.clone(), reporter.clone());
        reporter
    }

    /// Forgets an account whose receiver was removed.
    pub fn remove(&self, account: &AccountId) {
        self.lock().remove(account);
    }

    /// Each account's last report, in account order.
    pub fn states(&self) -> Vec<(AccountId, Health)> {
        self.lock().iter().map(|(a, h)| (a.clone(), h.get())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<AccountId, HealthReporter>> {
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `email.clinic=up webhook.in=down(connect)`, or `none`: the status line's `adapters` field.
impl fmt::Display for AdapterHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let states = self.states();
        if states.is_empty() {
            return f.write_str("none");
        }
        for (i, (account, health)) in states.iter().enumerate() {
            write!(f, "{}{account}={health}", if i == 0 { "" } else { " " })?;
        }
        Ok(())
    }
}

/// One inbound account in the `/readyz` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InboundCheck {
    /// Account id.
    pub account: String,
    /// `starting`, `up` or `down`.
    pub state: &'static str,
    /// What failed, for `down`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// The `/readyz` answer (PHI-free: ids, states, static reasons).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Every check passed.
    pub ready: bool,
    /// `ok`, or why the store is not taking writes.
    pub store: &'static str,
    /// Each inbound account.
    pub inbound: Vec<InboundCheck>,
    /// The failed checks: `store` and/or account ids.
    pub failed: Vec<String>,
}

/// Combines the store check and the adapters' reports.
pub fn assess(store: Result<(), &'static str>, inbound: &[(AccountId, Health)]) -> Readiness {
    let mut failed = Vec::new();
    if store.is_err() {
        failed.push("store".to_string());
    }
    let inbound: Vec<InboundCheck> = inbound
        .iter()
        .map(|(account, health)| {
            if !health.is_up() {
                failed.push(account.to_string());
            }
            InboundCheck {
                account: account.to_string(),
                state: health.as_str(),
                reason: match health {
                    Health::Down { reason } => Some(*reason),
                    _ => None,
                },
            }
        })
        .collect();
    Readiness { ready: failed.is_empty(), store: store.err().unwrap_or("ok"), inbound, failed }
}

/// Whether the store takes writes: the last flush's result if it is recent and no failure
/// followed it, else the result of one flush asked for now.
pub async fn check_store(flusher: &Flusher) -> Result<(), &'static str> {
    let last = flusher.last_flush();
    let failed_after = match (last.ok_ms, last.failed_ms) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(ok), Some(failed)) => failed >= ok,
    };
    if failed_after {
        return Err("last flush failed");
    }
    let fresh = last.ok_ms.is_some_and(|ok| now_ms().saturating_sub(ok) < FLUSH_FRESH.as_millis() as u64);
    if fresh {
        return Ok(());
    }
    match tokio::time::timeout(FLUSH_WAIT, flusher.flush()).await {
        Ok(true) => Ok(()),
        Ok(false) => Err("flush failed"),
        Err(_) => Err("flush timed out"),
    }
}

/// Whether the store's database answers (PostgreSQL: its outage shows in no flush, since commits
/// are durable when they return). The embedded store always answers.
pub async fn probe_database(store: &Store) -> Result<(), &'static str> {
    let store = store.clone();
    match tokio::time::timeout(FLUSH_WAIT, tokio::task::spawn_blocking(move || store.probe())).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(_) => Err("database unreachable"),
        Err(_) => Err("database timed out"),
    }
}

/// What the ops handlers read.
#[derive(Clone)]
pub struct State {
    /// For the dead-letter and review gauges.
    pub store: Store,
    /// For the store check.
    pub flusher: Flusher,
    /// Outbox rows pending (shared with the router and the workers).
    pub pending: Arc<AtomicU64>,
    /// The inbound accounts' reports.
    pub adapters: AdapterHealth,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

/// The routes.
pub fn router(state: State) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// Binds `[ops] listen` and serves until `stop` fires; `Ok(None)` when `[ops]` is absent.
/// Installs the metrics recorder if it is not yet.
pub async fn start(
    config: Option<&OpsConfig>,
    store: Store,
    flusher: Flusher,
    pending: Arc<AtomicU64>,
    adapters: AdapterHealth,
    stop: CancellationToken,
) -> Result<Option<JoinHandle<()>>> {
    let Some(config) = config else { return Ok(None) };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("ops endpoint: cannot listen on {}", config.listen))?;
    info!(listen = %config.listen, "Ops endpoint listening.");
    let state = State { store, flusher, pending, adapters, metrics: install_metrics() };
    Ok(Some(tokio::spawn(serve(listener, state, stop))))
}

/// Serves on a bound listener until `stop` fires, folding histogram samples meanwhile.
pub async fn serve(listener: TcpListener, state: State, stop: CancellationToken) {
    let handle = state.metrics.clone();
    let upkeep_stop = stop.clone();
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                _ = upkeep_stop.cancelled() => return,
            }
        }
    });
    // Bounded like every listener (carebridge_contract::http): a scraper flood cannot take
    // descriptors from the store.
    carebridge_contract::http::serve(listener, router(state), Limits::OPERATOR, stop).await;
    upkeep.abort();
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({ "status": "ok" }))
}

async fn readyz(AxState(s): AxState<State>) -> Response {
    let store = match check_store(&s.flusher).await {
        Ok(()) => probe_database(&s.store).await,
        failed => failed,
    };
    let r = assess(store, &s.adapters.states());
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_response(status, serde_json::to_value(&r).unwrap_or_default())
}

async fn metrics_text(AxState(s): AxState<State>) -> Response {
    let store = s.store.clone();
    let counts = tokio::task::spawn_blocking(move || (store.dead_count(), store.held_count())).await;
    refresh_gauges(s.pending.load(Ordering::Relaxed), counts.ok(), &s.adapters.states());
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
        .into_response()
}

/// Sets the gauges that are read, not counted: outbox depth, dead letters, held, adapters up.
pub fn refresh_gauges(pending: u64, dead_and_held: Option<(usize, usize)>, inbound: &[(AccountId, Health)]) {
    metrics::gauge!(OUTBOX_PENDING).set(pending as f64);
    if let Some((dead, held)) = dead_and_held {
        metrics::gauge!(DEAD_LETTERS).set(dead as f64);
        metrics::gauge!(HELD_FOR_REVIEW).set(held as f64);
    }
    for (account, health) in inbound {
        metrics::gauge!(INBOUND_UP, "account" => account.to_string()).set(if health.is_up() { 1.0 } else { 0.0 });
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Counts one message the router answered.
pub fn received(account: &AccountId, receipt: &Receipt) {
    let outcome = match receipt {
        Receipt::Recorded(_) => "recorded",
        Receipt::Duplicate(_) => "duplicate",
        Receipt::Quarantined { .. } => "quarantined",
        Receipt::Unavailable => "unavailable",
    };
    metrics::counter!(
        MESSAGES_RECEIVED,
        "account" => account.to_string(),
        "channel" => account.kind().as_str(),
        "outcome" => outcome
    )
    .increment(1);
}

/// Counts the per-destination decisions of a newly recorded message.
pub fn decisions(record: &RecordV1) {
    for d in &record.decisions {
        // The schema's fixed set; anything else is counted as `other`, never as free text.
        let action = match d.action.as_str() {
            "allow" => "allow",
            "redact" => "redact",
            "reroute" => "reroute",
            "hold" => "hold",
            "block" => "block",
            "skip" => "skip",
            _ => "other",
        };
        metrics::counter!(DECISIONS, "action" => action).increment(1);
    }
}

/// Counts one finished attempt once the outbox has written its outcome.
pub fn outbox_update(account: &AccountId, update: &OutboxUpdate) {
    match update {
        OutboxUpdate::Sent { item, .. } => delivery(account, "sent", item.attempts),
        OutboxUpdate::Retry { item, .. } => delivery(account, "retry", item.attempts),
        OutboxUpdate::Dead { item, .. } => delivery(account, "dead", item.attempts),
        OutboxUpdate::Review { item, .. } => delivery(account, "held", item.attempts),
    }
}

/// Counts one finished send attempt: `sent`, `retry`, `dead` or `held` (consent withdrawn).
/// `attempt` is the attempt's number; it is recorded for deliveries that are done (sent, dead).
pub fn delivery(account: &AccountId, outcome: &'static str, attempt: u32) {
    metrics::counter!(DELIVERIES, "account" => account.to_string(), "outcome" => outcome).increment(1);
    if matches!(outcome, "sent" | "dead") {
        metrics::histogram!(DELIVERY_ATTEMPTS, "account" => account.to_string()).record(f64::from(attempt));
    }
}

/// Records one group-commit flush.
pub fn flushed(ok: bool, took: Duration, messages: usize) {
    metrics::histogram!(FLUSH_SECONDS).record(took.as_secs_f64());
    if messages > 0 {
        metrics::histogram!(FLUSH_MESSAGES).record(messages as f64);
    }
    if !ok {
        metrics::counter!(FLUSH_FAILURES).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carebridge_contract::RecordId;

    fn id(s: &str) -> AccountId {
        s.parse().unwrap()
    }

    /// The value of the sample of `name` whose labels include every `label`.
    fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .find(|l| labels.iter().all(|want| l.contains(want)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_and_histograms_render_with_bounded_labels() {
        let recorder = build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let a = id("webhook.in");
            for _ in 0..3 {
                received(&a, &Receipt::Recorded(RecordId(1)));
            }
            received(&a, &Receipt::Unavailable);
            delivery(&id("webhook.out"), "retry", 1);
            delivery(&id("webhook.out"), "sent", 2);
            flushed(true, Duration::from_millis(3), 4);
            flushed(false, Duration::from_millis(1), 0);
            refresh_gauges(5, Some((2, 1)), &[(a.clone(), Health::Up), (id("email.x"), Health::Starting)]);
        });
        let text = handle.render();
        let recorded = ["account=\"webhook.in\"", "channel=\"webhook\"", "outcome=\"recorded\""];
        assert_eq!(sample(&text, MESSAGES_RECEIVED, &recorded), Some(3.0), "{text}");
        assert_eq!(sample(&text, MESSAGES_RECEIVED, &["outcome=\"unavailable\""]), Some(1.0));
        assert_eq!(sample(&text, DELIVERIES, &["account=\"webhook.out\"", "outcome=\"sent\""]), Some(1.0));
        assert_eq!(sample(&text, DELIVERIES, &["outcome=\"retry\""]), Some(1.0));
        assert_eq!(sample(&text, "carebridge_delivery_attempts_bucket", &["le=\"2\""]), Some(1.0), "{text}");
        assert_eq!(sample(&text, "carebridge_flush_duration_seconds_count", &[]), Some(2.0), "{text}");
        assert_eq!(sample(&text, "carebridge_flush_messages_sum", &[]), Some(4.0));
        assert_eq!(sample(&text, FLUSH_FAILURES, &[]), Some(1.0));
        assert_eq!(sample(&text, OUTBOX_PENDING, &[]), Some(5.0));
        assert_eq!(sample(&text, DEAD_LETTERS, &[]), Some(2.0));
        assert_eq!(sample(&text, HELD_FOR_REVIEW, &[]), Some(1.0));
        assert_eq!(sample(&text, INBOUND_UP, &["account=\"webhook.in\""]), Some(1.0));
        assert_eq!(sample(&text, INBOUND_UP, &["account=\"email.x\""]), Some(0.0));
        assert!(text.contains("# HELP carebridge_messages_received_total"), "{text}");
    }

    #[test]
    fn flush_failures_are_exported_from_the_start_at_zero() {
        let recorder = build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, describe);
        let text = handle.render();
        assert_eq!(sample(&text, FLUSH_FAILURES, &[]), Some(0.0), "{text}");
        assert!(text.contains("# HELP carebridge_flush_failures_total"), "{text}");
    }

    #[test]
    fn readiness_names_every_failed_check() {
        let ok = assess(Ok(()), &[(id("webhook.in"), Health::Up)]);
        assert!(ok.ready);
        assert_eq!(ok.store, "ok");
        assert!(ok.failed.is_empty());

        let states = [
            (id("email.clinic"), Health::Down { reason: "connect" }),
            (id("telegram.desk"), Health::Starting),
            (id("webhook.in"), Health::Up),
        ];
        let r = assess(Err("last flush failed"), &states);
        assert!(!r.ready);
        assert_eq!(r.failed, ["store", "email.clinic", "telegram.desk"]);
        assert_eq!(r.store, "last flush failed");
        assert_eq!(
            r.inbound[0],
            InboundCheck { account: "email.clinic".into(), state: "down", reason: Some("connect") }
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["inbound"][1], json!({ "account": "telegram.desk", "state": "starting" }));
    }

    #[test]
    fn the_status_summary_lists_accounts_and_states() {
        let all = AdapterHealth::default();
        assert_eq!(all.to_string(), "none");
        let web = all.register(&id("webhook.in"));
        let mail = all.register(&id("email.clinic"));
        web.up();
        mail.down("login");
        assert_eq!(all.to_string(), "email.clinic=down(login) webhook.in=up");
        // A restarted receiver replaces its reporter; a removed one disappears.
        let again = all.register(&id("webhook.in"));
        assert_eq!(again.get(), Health::Starting);
        assert_eq!(all.to_string(), "email.clinic=down(login) webhook.in=starting");
        all.remove(&id("email.clinic"));
        assert_eq!(all.to_string(), "webhook.in=starting");
    }

    #[tokio::test]
    async fn the_endpoint_answers_over_http() {
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::record::Keyring::generate(&dir.path().join("store.key")).unwrap();
        let store = Store::open(&dir.path().join("data"), keys).unwrap();
        let (flusher, _thread) = Flusher::spawn(store.clone(), |_| {}, Default::default()).unwrap();
        let adapters = AdapterHealth::default();
        let reporter = adapters.register(&id("email.ops_unit"));
        let state = State {
            store,
            flusher: flusher.clone(),
            pending: Arc::new(AtomicU64::new(4)),
            adapters,
            metrics: install_metrics(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, state, stop.clone()));
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("{base}{path}")).send();

        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        // Not connected yet: 503, naming the account; the store check asked for a flush.
        let r = get("/readyz").await.unwrap();
        assert_eq!(r.status(), 503);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["failed"], json!(["email.ops_unit"]), "{body}");
        assert_eq!(body["store"], "ok");
        assert!(flusher.last_flush().ok_ms.is_some(), "readiness flushed once");
        reporter.up();
        let r = get("/readyz").await.unwrap();
        assert_eq!(r.status(), 200);
        reporter.down("timeout");
        let body: serde_json::Value = get("/readyz").await.unwrap().json().await.unwrap();
        assert_eq!(body["inbound"][0]["reason"], "timeout");

        let r = get("/metrics").await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
        let text = r.text().await.unwrap();
        assert_eq!(sample(&text, INBOUND_UP, &["account=\"email.ops_unit\""]), Some(0.0), "{text}");
        assert!(sample(&text, DEAD_LETTERS, &[]).is_some(), "{text}");
        assert!(sample(&text, FLUSH_FAILURES, &[]).is_some(), "exported before any failure: {text}");
        stop.cancel();
        server.await.unwrap();
    }
}
