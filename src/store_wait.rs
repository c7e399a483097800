//! Starting while the store's database is unreachable (issue #18). An instance on a shared
//! PostgreSQL store must not need the database up to start: the supervisor would restart it in
//! a loop, and the load balancer would see its webhooks refuse connections. So when the first
//! open finds the database unreachable, the daemon stands in front of it: the ops endpoint
//! answers (`/healthz` 200, `/readyz` 503 naming the store's database), every webhook listener
//! answers 503 with `Retry-After` (senders keep their messages), pollers do not start (sources
//! keep theirs), and the open — migrations, key canary, id block — is tried again with backoff.
//! Once it succeeds the stand-ins stop and the daemon starts as usual.
//!
//! Only "unreachable" waits: a database that answers but is wrong (a newer schema, another key
//! file) is refused at once with its exit code, as before.

use crate::config::ValidConfig;
use crate::record::engine::EngineError;
use crate::record::{Store, StoreError};
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The first wait between tries, doubled up to [`MOST_BETWEEN_TRIES`].
const FIRST_WAIT: Duration = Duration::from_millis(250);
/// The longest wait between tries: how late, at most, the daemon starts after the database came.
const MOST_BETWEEN_TRIES: Duration = Duration::from_secs(5);
/// What the stand-in webhooks ask senders to wait.
const RETRY_AFTER_SECS: &str = "5";

/// Whether an open failed only because the database could not be reached.
fn unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<StoreError>(), Some(StoreError::Engine(EngineError::Unavailable(_))))
            || matches!(c.downcast_ref::<EngineError>(), Some(EngineError::Unavailable(_)))
    })
}

async fn open_once(config: &ValidConfig) -> anyhow::Result<Store> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || crate::record::open_configured(&config))
        .await
        .map_err(|e| anyhow::anyhow!("opening the record store did not finish: {e}"))?
}

/// Opens the config's store, waiting for its database (as the module docs say) if it is
/// unreachable. `None`: `shutdown` came first.
pub async fn open(
    config: &ValidConfig,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<Option<Store>> {
    let first = match open_once(config).await {
        Ok(store) => return Ok(Some(store)),
        Err(e) if unreachable(&e) => e,
        Err(e) => return Err(e),
    };
    warn!(error = %first, "The record store's database is unreachable; waiting for it (webhooks answer 503, pollers wait).");
    let stop = CancellationToken::new();
    let mut stand_ins = Vec::new();
    if let Some(ops) = &config.ops {
        stand_ins.push(
            stand_in(
                ops.listen,
                axum::Router::new()
                    .route("/healthz", axum::routing::get(healthz))
                    .route("/readyz", axum::routing::get(readyz))
                    .fallback(unavailable),
                &stop,
            )
            .await?,
        );
    }
    for account in config.accounts.values() {
        for (_, addr) in crate::assembly::listen_addrs(account) {
            stand_ins.push(stand_in(addr, axum::Router::new().fallback(unavailable), &stop).await?);
        }
    }
    let mut wait = FIRST_WAIT;
    let result = loop {
        tokio::select! {
            () = shutdown.as_mut() => break Ok(None),
            () = tokio::time::sleep(wait) => {}
        }
        match open_once(config).await {
            Ok(store) => {
                info!("The record store's database is reachable again; starting.");
                break Ok(Some(store));
            }
            Err(e) if unreachable(&e) => wait = (wait * 2).min(MOST_BETWEEN_TRIES),
            Err(e) => break Err(e),
        }
    };
    // The real listeners bind the same addresses next.
    stop.cancel();
    for t in stand_ins {
        let _ = t.await;
    }
    result
}

/// Serves `app` on `addr` until `stop` fires.
async fn stand_in(
    addr: SocketAddr,
    app: axum::Router,
    stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    Ok(tokio::spawn(carebridge_contract::http::serve(
        listener,
        app,
        carebridge_contract::http::Limits::OPERATOR,
        stop.clone(),
    )))
}

async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ok" }))).into_response()
}

async fn readyz() -> Response {
    let r = crate::ops::assess(Err("database unreachable"), &[]);
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::to_value(&r).unwrap_or_default())).into_response()
}

async fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(RETRY_AFTER, RETRY_AFTER_SECS)],
        "the record store's database is unreachable; try again later\n",
    )
        .into_response()
}
