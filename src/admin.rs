//! The admin API: a small loopback HTTP interface to the officer's operations while the daemon
//! runs (the daemon holds the store's lock). Every route is a [`crate::officer::Request`],
//! carried out by the same code the CLI uses on a stopped daemon's store, off the async workers;
//! every change is flushed before the answer. The bearer token is checked once, by a middleware
//! in front of every route.
//!
//! Routes: `POST /admin/request` (a `Request` as JSON: what the CLI sends), and the documented
//! REST forms of the same requests: `GET /admin/status`, `GET /admin/review`,
//! `GET /admin/review/{delivery}?actor=`, `POST /admin/review/{delivery}/approve|reject`,
//! `POST /admin/link-codes`, `POST /admin/consents`, `GET /admin/outbox/dead`,
//! `POST /admin/outbox/dead/{delivery}/retry|drop`, and under `/admin/records` (docs/records.md)
//! list, show, export, audit, unassigned, assign, verify and purge.

use crate::config::ValidConfig;
use crate::officer::{DeadAction, OfficerError, Request, Verdict};
use crate::outbox::Wakers;
use crate::record::{Flusher, Store};
use crate::records::Format;
use crate::reload::Live;
use axum::extract::{Path, Query, Request as HttpRequest, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use carebridge_contract::Redacted;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the handlers share.
#[derive(Clone)]
pub struct State {
    /// The store.
    pub store: Store,
    /// For durability before answering.
    pub flusher: Flusher,
    /// To wake outbox workers after approving (follows the workers a reload starts and stops).
    pub wakers: Wakers,
    /// Pending count shared with the router.
    pub pending: Arc<AtomicU64>,
    /// Bearer token.
    pub token: Redacted<String>,
    /// The config in force (to check account ids and patients); a reload replaces it.
    pub config: Live<ValidConfig>,
}

/// Query of the reading routes: who reads, whose file, which format.
#[derive(Debug, Default, Deserialize)]
pub struct ReadQuery {
    /// Who reads (required by the operations that audit; refused when empty).
    #[serde(default)]
    pub actor: String,
    /// Whose file.
    pub patient: Option<String>,
    /// Export format (default `jsonl`).
    pub format: Option<Format>,
}

/// Body of the decisions (review, dead letters): who decided.
#[derive(Debug, Default, Deserialize)]
pub struct DecisionBody {
    /// Who decided (staff id); refused when missing or empty.
    #[serde(default)]
    pub by: Option<String>,
}

/// Body of `POST /admin/records/{id}/assign`.
#[derive(Debug, Deserialize)]
pub struct AssignBody {
    /// Who assigns.
    pub actor: String,
    /// The patient's directory id.
    pub patient: String,
}

/// Body of `POST /admin/records/purge`.
#[derive(Debug, Deserialize)]
pub struct PurgeBody {
    /// Who purges.
    pub actor: String,
    /// Only entries older than this many days (never inside retention).
    pub older_than_days: Option<u32>,
    /// Count only.
    #[serde(default)]
    pub dry_run: bool,
}

/// The axum router: every route behind the bearer-token check.
pub fn router(state: State) -> Router {
    Router::new()
        .route("/admin/request", post(|s: AxState<State>, Json(r): Json<Request>| answer(s, Ok(r))))
        .route("/admin/status", get(|s: AxState<State>| answer(s, Ok(Request::Status))))
        .route("/admin/review", get(|s: AxState<State>| answer(s, Ok(Request::ReviewList))))
        .route(
            "/admin/review/{delivery}",
            get(|s: AxState<State>, Path(delivery): Path<String>, Query(q): Query<ReadQuery>| {
                answer(s, Ok(Request::ReviewShow { delivery, actor: q.actor }))
            }),
        )
        .route(
            "/admin/review/{delivery}/{verdict}",
            post(
                |s: AxState<State>,
                 Path((delivery, verdict)): Path<(String, String)>,
                 body: Option<Json<DecisionBody>>| {
                    let verdict = match verdict.as_str() {
                        "approve" => Ok(Verdict::Approve),
                        "reject" => Ok(Verdict::Reject),
                        _ => Err(OfficerError::NotFound("use approve or reject".into())),
                    };
                    answer(s, verdict.map(|verdict| Request::ReviewDecide { delivery, verdict, by: by(body) }))
                },
            ),
        )
        .route("/admin/link-codes", post(|s: AxState<State>, Json(b): Json<LinkBody>| answer(s, Ok(b.into()))))
        .route("/admin/consents", post(|s: AxState<State>, Json(b): Json<ConsentBody>| answer(s, Ok(b.into()))))
        .route("/admin/outbox/dead", get(|s: AxState<State>| answer(s, Ok(Request::DeadList))))
        .route(
            "/admin/outbox/dead/{delivery}/{action}",
            post(
                |s: AxState<State>,
                 Path((delivery, action)): Path<(String, String)>,
                 body: Option<Json<DecisionBody>>| {
                    let action = match action.as_str() {
                        "retry" => Ok(DeadAction::Retry),
                        "drop" => Ok(DeadAction::Drop),
                        _ => Err(OfficerError::NotFound("use retry or drop".into())),
                    };
                    answer(s, action.map(|action| Request::DeadAction { delivery, action, by: by(body) }))
                },
            ),
        )
        .route(
            "/admin/records",
            get(|s: AxState<State>, Query(q): Query<ReadQuery>| {
                let r = q.patient.ok_or_else(|| OfficerError::Invalid("patient is required".into()));
                answer(s, r.map(|patient| Request::RecordsList { actor: q.actor, patient }))
            }),
        )
        .route(
            "/admin/records/export",
            get(|s: AxState<State>, Query(q): Query<ReadQuery>| {
                let r = q.patient.ok_or_else(|| OfficerError::Invalid("patient is required".into()));
                let format = q.format.unwrap_or(Format::Jsonl);
                answer(s, r.map(|patient| Request::RecordsExport { actor: q.actor, patient, format }))
            }),
        )
        .route(
            "/admin/records/audit",
            get(|s: AxState<State>, Query(q): Query<ReadQuery>| {
                answer(s, Ok(Request::RecordsAudit { actor: q.actor, patient: q.patient }))
            }),
        )
        .route("/admin/records/verify", post(|s: AxState<State>| answer(s, Ok(Request::RecordsVerify))))
        .route(
            "/admin/records/purge",
            post(|s: AxState<State>, Json(b): Json<PurgeBody>| {
                answer(
                    s,
                    Ok(Request::RecordsPurge {
                        actor: b.actor,
                        older_than_days: b.older_than_days,
                        dry_run: b.dry_run,
                    }),
                )
            }),
        )
        .route(
            "/admin/records/unassigned",
            get(|s: AxState<State>, Query(q): Query<ReadQuery>| {
                answer(s, Ok(Request::RecordsUnassigned { actor: q.actor }))
            }),
        )
        .route(
            "/admin/records/{id}",
            get(|s: AxState<State>, Path(id): Path<String>, Query(q): Query<ReadQuery>| {
                answer(s, Ok(Request::RecordsShow { actor: q.actor, id }))
            }),
        )
        .route(
            "/admin/records/{id}/assign",
            post(|s: AxState<State>, Path(id): Path<String>, Json(b): Json<AssignBody>| {
                answer(s, Ok(Request::RecordsAssign { actor: b.actor, id, patient: b.patient }))
            }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Body of `POST /admin/link-codes`.
#[derive(Debug, Deserialize)]
pub struct LinkBody {
    /// Directory id.
    pub patient_id: String,
    /// Account id (`telegram.front_desk`).
    pub account: String,
    /// Consent purpose the link grants (default `clinical`).
    #[serde(default = "crate::officer::default_purpose")]
    pub purpose: String,
}

impl From<LinkBody> for Request {
    fn from(b: LinkBody) -> Request {
        Request::LinkCode { patient_id: b.patient_id, account: b.account, purpose: b.purpose }
    }
}

/// Body of `POST /admin/consents`.
#[derive(Debug, Deserialize)]
pub struct ConsentBody {
    /// Directory id.
    pub patient_id: String,
    /// Account id.
    pub account: String,
    /// Purpose (default `clinical`).
    #[serde(default = "crate::officer::default_purpose")]
    pub purpose: String,
    /// Grant (true) or withdraw (false).
    pub grant: bool,
    /// Where the consent came from (default `admin`).
    #[serde(default = "crate::officer::default_source")]
    pub source: String,
    /// Who recorded it (required).
    #[serde(default)]
    pub actor: String,
}

impl From<ConsentBody> for Request {
    fn from(b: ConsentBody) -> Request {
        Request::Consent {
            patient_id: b.patient_id,
            account: b.account,
            purpose: b.purpose,
            grant: b.grant,
            source: b.source,
            actor: b.actor,
        }
    }
}

fn by(body: Option<Json<DecisionBody>>) -> String {
    body.and_then(|b| b.0.by).unwrap_or_default()
}

/// The bearer-token check in front of every route.
async fn require_token(AxState(s): AxState<State>, headers: HeaderMap, request: HttpRequest, next: Next) -> Response {
    if authorised(&s, &headers) {
        next.run(request).await
    } else {
        err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
    }
}

fn authorised(state: &State, headers: &HeaderMap) -> bool {
    let want = format!("Bearer {}", state.token.expose());
    let got = headers.get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
    // Constant-time compare of equal-length strings.
    got.len() == want.len() && got.iter().zip(want.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// Carries out a request off the async workers (the store's reads and writes block), makes it
/// durable, wakes what it queued, and answers.
async fn answer(AxState(s): AxState<State>, request: Result<Request, OfficerError>) -> Response {
    let request = match request {
        Ok(r) => r,
        Err(e) => return refusal(e),
    };
    let (store, config) = (s.store.clone(), s.config.get());
    let done =
        tokio::task::spawn_blocking(move || crate::officer::execute(&store, &config, "admin-api", request)).await;
    match done {
        Ok(Ok(a)) => {
            // The audit entry or the change must be durable before the answer (or the data) leaves.
            if !s.flusher.flush().await {
                return err(StatusCode::SERVICE_UNAVAILABLE, "the record store could not be flushed");
            }
            s.pending.fetch_add(a.queued.len() as u64, Ordering::Relaxed);
            s.wakers.wake(a.queued.into_iter().map(crate::record::flusher::Wake::from));
            Json(a.value).into_response()
        }
        Ok(Err(e)) => refusal(e),
        Err(_) => err(StatusCode::INTERNAL_SERVER_ERROR, "the request failed"),
    }
}

fn refusal(e: OfficerError) -> Response {
    let status = match &e {
        OfficerError::Invalid(_) => StatusCode::BAD_REQUEST,
        OfficerError::NotFound(_) => StatusCode::NOT_FOUND,
        OfficerError::Refused(_) => StatusCode::CONFLICT,
        OfficerError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    err(status, e.to_string())
}
