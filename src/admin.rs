//! The admin API: a small loopback HTTP interface the CLI uses while the daemon runs (the
//! daemon holds the store's lock). Bearer-token protected; every change is flushed before the
//! answer and appended to the affected record.
//!
//! Routes: `GET /admin/status`, `GET /admin/review`, `GET /admin/review/{delivery}`,
//! `POST /admin/review/{delivery}/approve|reject`, `POST /admin/link-codes`,
//! `POST /admin/consents`, `GET /admin/outbox/dead`, `POST /admin/outbox/dead/{delivery}/retry|drop`.

use crate::config::{Config, ValidConfig};
use crate::outbox::Wakers;
use crate::policy::ConsentGrant;
use crate::record::schema::LinkCodeV1;
use crate::record::{Flusher, OutboxKey, Store, StoreError, now_ms};
use crate::reload::Live;
use crate::router::plan::{LINK_CODE_TTL_MS, link_code_hash};
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use carebridge_contract::{AccountId, DeliveryId, Redacted};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::info;

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

/// One held delivery, as listed (no PHI: ids, account, rules, time).
#[derive(Debug, Serialize, Deserialize)]
pub struct HeldSummary {
    /// Delivery id.
    pub delivery: String,
    /// Record id.
    pub record: String,
    /// Destination account.
    pub account: String,
    /// Rules that held it.
    pub rules: Vec<String>,
    /// Unix milliseconds held.
    pub held_at_ms: u64,
}

/// One dead letter, as listed (no PHI: ids, account, kind, the PHI-free reason, counts, time).
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadSummary {
    /// Delivery id.
    pub delivery: String,
    /// Record id.
    pub record: String,
    /// Destination account.
    pub account: String,
    /// `forward`, `reply` or `notice`.
    pub kind: carebridge_contract::DeliveryKind,
    /// Why it was given up (PHI-free, as the adapter reported it).
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// Unix milliseconds dead-lettered.
    pub dead_at_ms: u64,
}

/// Lists dead letters, oldest first.
pub fn dead_list(store: &Store) -> Result<Vec<DeadSummary>, StoreError> {
    Ok(store
        .dead_letters()?
        .into_iter()
        .map(|d| DeadSummary {
            delivery: d.item.delivery.id.to_string(),
            record: d.item.delivery.record_id.to_string(),
            account: d.item.delivery.account.to_string(),
            kind: d.item.delivery.kind.into(),
            reason: d.reason,
            attempts: d.item.attempts,
            dead_at_ms: d.at_ms,
        })
        .collect())
}

/// Lists held deliveries.
pub fn review_list(store: &Store) -> Result<Vec<HeldSummary>, StoreError> {
    Ok(store
        .held()?
        .into_iter()
        .map(|h| HeldSummary {
            delivery: h.item.delivery.id.to_string(),
            record: h.item.delivery.record_id.to_string(),
            account: h.item.delivery.account.to_string(),
            rules: h.rules,
            held_at_ms: h.at_ms,
        })
        .collect())
}

/// Query of `GET /admin/review/{delivery}`: who is reading.
#[derive(Debug, Deserialize)]
pub struct ShowQuery {
    /// Recorded in the audit trail.
    #[serde(default = "unnamed")]
    pub actor: String,
}

/// A missing actor is empty, and refused by the handlers: the audit trail never says "unnamed".
fn unnamed() -> String {
    String::new()
}

/// Checks that a link or consent request names a patient of the directory and a configured
/// account, with a did-you-mean for near misses; for a link (`linking`), also that the account
/// links chats by code: only Telegram does (`/start CODE`); email and webhook senders are matched
/// by their address in the directory, so a code for them could never be used. Before, a
/// misspelt account ("ok") or an unknown patient was recorded as given and silently did nothing.
pub fn check_request(config: &Config, patient_id: &str, account: &str, linking: bool) -> Result<AccountId, String> {
    let names: Vec<String> = config.accounts.keys().map(ToString::to_string).collect();
    let hint = |word: &str, candidates: &[String]| {
        crate::config::did_you_mean(word, candidates).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default()
    };
    let id = account
        .parse::<AccountId>()
        .ok()
        .filter(|id| config.accounts.contains_key(id))
        .ok_or_else(|| format!("unknown account `{account}`{}", hint(account, &names)))?;
    if linking && id.kind() != carebridge_contract::ChannelKind::Telegram {
        return Err(format!(
            "`{id}` is a {} account: link codes are for Telegram (`/start CODE`); {} senders are \
             recognised by their address in the directory",
            id.kind().as_str(),
            id.kind().as_str()
        ));
    }
    if !config.directory.patient.iter().any(|p| p.id == patient_id) {
        let ids: Vec<String> = config.directory.patient.iter().map(|p| p.id.clone()).collect();
        return Err(format!(
            "unknown patient id `{patient_id}`{} (add the patient to the directory first)",
            hint(patient_id, &ids)
        ));
    }
    Ok(id)
}

/// Creates a one-time link code for a patient on an account. Only the code's hash is stored.
pub fn create_link_code(
    store: &Store,
    patient_id: &str,
    account: &AccountId,
    purpose: &str,
) -> Result<String, StoreError> {
    // 10 characters from an alphabet without look-alikes: ~50 bits, single use, expires.
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let code: String = (0..10).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect();
    store.put_link_code(
        &link_code_hash(&code),
        &LinkCodeV1 {
            v: 1,
            patient_id: patient_id.to_string(),
            account: account.to_string(),
            purpose: purpose.to_string(),
            expires_at_ms: now_ms() + LINK_CODE_TTL_MS,
        },
    )?;
    Ok(code)
}

/// Request body of `POST /admin/link-codes`.
#[derive(Debug, Deserialize, Serialize)]
pub struct LinkRequest {
    /// Directory id.
    pub patient_id: String,
    /// Account id (`telegram.front_desk`).
    pub account: String,
    /// Consent purpose the link grants.
    #[serde(default = "default_purpose")]
    pub purpose: String,
}

/// Request body of `POST /admin/consents`.
#[derive(Debug, Deserialize, Serialize)]
pub struct ConsentRequest {
    /// Directory id.
    pub patient_id: String,
    /// Account id.
    pub account: String,
    /// Purpose.
    #[serde(default = "default_purpose")]
    pub purpose: String,
    /// Grant (true) or withdraw (false).
    pub grant: bool,
    /// Where the consent came from (`paper-form`, `phone`), for the record.
    #[serde(default = "default_source")]
    pub source: String,
    /// Who recorded it (the audit trail's actor).
    #[serde(default = "unnamed")]
    pub actor: String,
}

/// Request body of review decisions.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ReviewRequest {
    /// Who decided (staff id).
    #[serde(default)]
    pub by: Option<String>,
}

fn default_purpose() -> String {
    "clinical".into()
}
fn default_source() -> String {
    "admin".into()
}

/// Applies a consent request.
pub fn apply_consent(store: &Store, r: &ConsentRequest, via: &'static str) -> Result<(), StoreError> {
    // A change to what may be sent where, for whom: in the patient's chain like a read.
    let actor = crate::record::Actor { name: r.actor.clone(), via };
    let action = if r.grant { "consent.grant" } else { "consent.withdraw" };
    let detail = format!("account={} purpose={} source={}", r.account, r.purpose, r.source);
    store.audit(&actor, action, Some(&r.patient_id), vec![], Some(detail))?;
    if r.grant {
        store.grant_consent(
            &r.patient_id,
            ConsentGrant {
                account: r.account.clone(),
                purpose: r.purpose.clone(),
                source: r.source.clone(),
                granted_at: now_ms() / 1000,
            },
        )
    } else {
        store.withdraw_consent(&r.patient_id, &r.account).map(|_| ())
    }
}

/// The axum router.
pub fn router(state: State) -> Router {
    Router::new()
        .route("/admin/status", get(status))
        .route("/admin/review", get(list))
        .route("/admin/review/{delivery}", get(show))
        .route("/admin/review/{delivery}/{verdict}", post(decide))
        .route("/admin/link-codes", post(link))
        .route("/admin/consents", post(consent))
        .route("/admin/outbox/dead", get(dead))
        .route("/admin/outbox/dead/{delivery}/{action}", post(dead_action))
        .merge(crate::records::http::routes())
        .with_state(state)
}

pub(crate) fn authorised(state: &State, headers: &HeaderMap) -> bool {
    let want = format!("Bearer {}", state.token.expose());
    let got = headers.get("authorization").map(|v| v.as_bytes()).unwrap_or_default();
    // Constant-time compare of equal-length strings.
    got.len() == want.len() && got.iter().zip(want.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

pub(crate) fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

pub(crate) fn store_err(e: StoreError) -> Response {
    err(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

async fn status(AxState(s): AxState<State>, h: HeaderMap) -> Response {
    if !authorised(&s, &h) {
        return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let st = s.store.stats();
    Json(json!({
        "records": st.records, "outbox_pending": st.outbox_pending, "dead_letters": st.dead,
        "quarantined": st.quarantined, "held_for_review": st.held,
    }))
    .into_response()
}

async fn list(AxState(s): AxState<State>, h: HeaderMap) -> Response {
    if !authorised(&s, &h) {
        return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    match review_list(&s.store) {
        Ok(l) => Json(l).into_response(),
        Err(e) => store_err(e),
    }
}

async fn show(
    AxState(s): AxState<State>,
    h: HeaderMap,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<ShowQuery>,
) -> Response {
    if !authorised(&s, &h) {
        return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let Ok(id) = id.parse::<DeliveryId>() else { return err(StatusCode::BAD_REQUEST, "not a delivery id") };
    if q.actor.trim().is_empty() {
        return err(StatusCode::BAD_REQUEST, "`actor` is required: who reads the held message");
    }
    let actor = crate::record::Actor { name: q.actor, via: "admin-api" };
    match crate::review::show(&s.store, &s.config.get(), id, &actor) {
        Ok(Some(v)) => {
            s.flusher.flush().await;
            Json(v).into_response()
        }
        Ok(None) => err(StatusCode::NOT_FOUND, "no such held delivery"),
        Err(e) => review_err(e),
    }
}

async fn decide(
    AxState(s): AxState<State>,
    h: HeaderMap,
    Path((id, verdict)): Path<(String, String)>,
    body: Option<Json<ReviewRequest>>,
) -> Response {
    if !authorised(&s, &h) {
        return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let Ok(id) = id.parse::<DeliveryId>() else { return err(StatusCode::BAD_REQUEST, "not a delivery id") };
    let approve = match verdict.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return err(StatusCode::NOT_FOUND, "use approve or reject"),
    };
    // The decision is in the patient's file: it names who made it, never a placeholder.
    let Some(by) = body.and_then(|b| b.0.by).filter(|b| !b.trim().is_empty()) else {
        return err(StatusCode::BAD_REQUEST, "`by` is required: who decided");
    };
    // Approval asks the policy again for the hop (`crate::review`); rejection does not need to.
    let done = if approve {
        crate::review::approve(&s.store, &s.config.get(), id, &by).map(|r| r.map(|(o, keys)| (Some(o), keys)))
    } else {
        s.store.resolve_review(id, false, &by).map(|r| r.map(|keys| (None, keys))).map_err(Into::into)
    };
    match done {
        Ok(Some((outcome, keys))) => {
            let rerouted = match &outcome {
                Some(crate::review::OnApproval::Reroute(to)) => Some(to.to_string()),
                _ => None,
            };
            info!(delivery_id = %id, verdict = if approve { "approved" } else { "rejected" }, rerouted_to = ?rerouted, "Held delivery reviewed.");
            durable_then_wake(&s, keys).await;
            Json(json!({
                "delivery": id.to_string(),
                "verdict": if approve { "approved" } else { "rejected" },
                "rerouted_to": rerouted,
            }))
            .into_response()
        }
        Ok(None) => err(StatusCode::NOT_FOUND, "no such held delivery"),
        Err(e) => review_err(e),
    }
}

fn review_err(e: crate::review::ReviewError) -> Response {
    match e {
        crate::review::ReviewError::Store(e) => store_err(e),
        crate::review::ReviewError::Refused(why) => err(StatusCode::CONFLICT, why),
    }
}

async fn link(AxState(s): AxState<State>, h: HeaderMap, Json(r): Json<LinkRequest>) -> Response {
    if !authorised(&s, &h) {
        return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let account = match check_request(&s.config.get(), &r.patient_id, &r.account, true) {
        Ok(a) => a,
        Err(e) => return err(StatusCode::BAD_REQUEST, e),
    };
    match create_link_code(&s.store, &r.patient_id, &account, &r.purpose) {
        Ok(code) => {
            s.flusher.flush().await;
            info!(account = %account, patient = %s.store.patient_ref(&r.patient_id), "Link code issued.");
            Json(json!({ "code": code, "expires_in_secs": LINK_CODE_TTL_MS / 1000 })).into_response()
        }
        Err(e) => store_err(e),
    }
}

async fn consent(AxState(s): AxState<State>, h: HeaderMap, Json(r): Json<ConsentRequest>) -> Response {
    if !authorised(&s, &h) {
        return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    if let Err(e) = check_request(&s.config.get(), &r.patient_id, &r.account, false) {
        return err(StatusCode::BAD_REQUEST, e);
    }
    if r.actor.trim().is_empty() {
        return err(StatusCode::BAD_REQUEST, "`actor` is required: who records the consent");
    }
    match apply_consent(&s.store, &r, "admin-api") {
        Ok(()) => {
            s.flusher.flush().await;
            info!(account = %r.account, patient = %s.store.patient_ref(&r.patient_id), granted = r.grant, "Consent updated.");
            Json(json!({ "ok": true })).into_response()
        }
        Err(e) => store_err(e),
    }
}

async fn dead(AxState(s): AxState<State>, h: HeaderMap) -> Response {
    if !authorised(&s, &h) {
        return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    match dead_list(&s.store) {
        Ok(l) => Json(l).into_response(),
        Err(e) => store_err(e),
    }
}

async fn dead_action(
    AxState(s): AxState<State>,
    h: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Option<Json<ReviewRequest>>,
) -> Response {
    if !authorised(&s, &h) {
        return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let Ok(id) = id.parse::<DeliveryId>() else { return err(StatusCode::BAD_REQUEST, "not a delivery id") };
    let Some(by) = body.and_then(|b| b.0.by).filter(|b| !b.trim().is_empty()) else {
        return err(StatusCode::BAD_REQUEST, "`by` is required: who decided");
    };
    let done = match action.as_str() {
        "retry" => s.store.retry_dead(id, &by).map(|key| {
            key.map(|k| {
                info!(delivery_id = %id, account = %k.account, "Dead letter requeued.");
                vec![k]
            })
        }),
        "drop" => s.store.drop_dead(id, &by).map(|record| {
            record.map(|r| {
                info!(delivery_id = %id, record_id = %r, "Dead letter dropped.");
                Vec::new()
            })
        }),
        _ => return err(StatusCode::NOT_FOUND, "use retry or drop"),
    };
    match done {
        Ok(Some(keys)) => {
            durable_then_wake(&s, keys).await;
            let outcome = if action == "retry" { "requeued" } else { "dropped" };
            Json(json!({ "delivery": id.to_string(), "outcome": outcome })).into_response()
        }
        Ok(None) => err(StatusCode::NOT_FOUND, "no such dead letter"),
        Err(e) => store_err(e),
    }
}

async fn durable_then_wake(s: &State, keys: Vec<OutboxKey>) {
    if s.flusher.flush().await {
        s.pending.fetch_add(keys.len() as u64, Ordering::Relaxed);
        s.wakers.wake(keys);
    }
}
