//! The HTTP listener: verifies each signed POST, submits it to the router and answers only once
//! the router's receipt is in hand (a 2xx means "durably recorded").
//!
//! Order of checks, cheapest and least trusting first: body size (413), signature and timestamp
//! (401: unauthenticated input is never stored), then parsing (400 after quarantine: authenticated
//! but malformed input is kept for the privacy officer, and the client learns exactly what was
//! wrong). A missing receipt (queue saturated, router stopping) is 503 with `Retry-After`, so the
//! client sends again and the router's de-duplication makes the retry safe.

use crate::config::{Config, FromKind, HEALTH_PATH};
use crate::signature::{SIGNATURE_HEADER, SigningKey, TIMESTAMP_HEADER, unix_now};
use crate::wire::{ErrorBody, InboundMessage, describe_json_error};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use carebridge_contract::config::ConfigError;
use carebridge_contract::http::{Limits, is_body_timeout};
use carebridge_contract::{
    AccountId, AdapterError, Address, Envelope, Inbound, InboundContext, Receipt, RecordId, Redacted, SourceKey,
    Submission, Submitter, Task,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// What `Retry-After` says on 503: long enough for a saturated queue to drain.
const RETRY_AFTER_SECS: &str = "5";
/// How long in-flight requests may take to finish after shutdown fires before the listener
/// gives up on them (their clients get no answer and will retry, which is safe).
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Longest accepted message id, conversation token and reference.
const MAX_ID_LEN: usize = 200;
const MAX_REFERENCE_LEN: usize = 998;
const MAX_REFERENCES: usize = 100;
const MAX_FROM_LEN: usize = 512;

/// The inbound half of a webhook account: an HTTP listener on `listen`.
#[derive(Debug)]
pub struct WebhookInbound {
    listen: SocketAddr,
    settings: Settings,
}

/// The per-account settings every request reads.
#[derive(Clone, Debug)]
struct Settings {
    key: SigningKey,
    path: String,
    max_body_bytes: usize,
    max_skew: Duration,
    submit_timeout: Duration,
    from_kind: FromKind,
}

/// What each request handler shares: settings plus the router's queue.
#[derive(Debug)]
struct Shared {
    account: AccountId,
    submitter: Submitter,
    settings: Settings,
}

impl WebhookInbound {
    /// An inbound listener for a validated config whose `listen` is set; `None` otherwise.
    /// `key` is the account's shared secret, already loaded.
    pub fn new(cfg: &Config, key: SigningKey) -> Option<Self> {
        let listen = cfg.listen?;
        Some(Self {
            listen,
            settings: Settings {
                key,
                path: cfg.path().to_string(),
                max_body_bytes: cfg.max_body_bytes(),
                max_skew: cfg.max_skew(),
                submit_timeout: cfg.submit_timeout(),
                from_kind: cfg.from_kind(),
            },
        })
    }

    /// The configured listen address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Binds the configured address. A failure is a configuration error naming the address
    /// (in use, not local, no permission).
    pub async fn bind(&self) -> Result<TcpListener, AdapterError> {
        TcpListener::bind(self.listen)
            .await
            .map_err(|e| ConfigError::Listen { addr: self.listen.to_string(), reason: e.to_string() }.into())
    }

    /// Serves on an already bound listener until `cx.shutdown` fires, then stops accepting and
    /// lets in-flight requests finish (for at most a few seconds). [`Inbound::run`] is
    /// [`bind`](Self::bind) then this; tests that bind port 0 themselves call it directly.
    pub async fn serve(self, listener: TcpListener, cx: InboundContext) -> Result<(), AdapterError> {
        let local =
            listener.local_addr().map_err(|e| ConfigError::Setup { what: "listener", reason: e.to_string() })?;
        let account = cx.account.clone();
        let shutdown = cx.shutdown.clone();
        let health = cx.health.clone();
        let app = router(Arc::new(Shared { account: cx.account, submitter: cx.submitter, settings: self.settings }));
        info!(account = %account, listen = %local, "Webhook listening.");
        health.up();
        // Bounded: a connection cap and header/body timeouts, so a flood or slow clients cannot
        // exhaust the daemon's descriptors (carebridge_contract::http).
        let server = carebridge_contract::http::serve(listener, app, Limits::MESSAGES, shutdown.clone());
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_DEADLINE).await;
        };
        tokio::select! {
            () = server => {
                info!(account = %account, "Webhook listener stopped.");
            }
            () = drain_deadline => {
                warn!(account = %account, "Webhook listener stopped with requests still in flight; their clients will retry.");
            }
        }
        Ok(())
    }
}

impl Inbound for WebhookInbound {
    fn run(self: Box<Self>, cx: InboundContext) -> Task {
        Box::pin(async move {
            let listener = self.bind().await?;
            self.serve(listener, cx).await
        })
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.settings.max_body_bytes;
    Router::new()
        .route(&shared.settings.path, post(receive))
        .route(HEALTH_PATH, get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// The two signature headers, taken from the request without cloning the whole header map.
struct SignatureHeaders {
    timestamp: Option<HeaderValue>,
    signature: Option<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for SignatureHeaders {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            timestamp: parts.headers.get(TIMESTAMP_HEADER).cloned(),
            signature: parts.headers.get(SIGNATURE_HEADER).cloned(),
        })
    }
}

/// A header's text; a value with non-visible bytes reads as empty, which then fails the format
/// check with a clear message.
fn header_text(v: &Option<HeaderValue>) -> Option<&str> {
    v.as_ref().map(|v| v.to_str().unwrap_or(""))
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: SignatureHeaders,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let account = &shared.account;
    let settings = &shared.settings;
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            debug!(account = %account, limit = settings.max_body_bytes, "Webhook request refused: body too large.");
            let message = format!("body is larger than {} bytes", settings.max_body_bytes);
            return error(StatusCode::PAYLOAD_TOO_LARGE, message, None);
        }
        Err(rejection) if is_body_timeout(&rejection) => {
            debug!(account = %account, "Webhook request refused: body not received in time.");
            return error(StatusCode::REQUEST_TIMEOUT, "body not received in time".into(), None);
        }
        Err(rejection) => {
            debug!(account = %account, status = %rejection.status(), "Webhook request body could not be read.");
            return error(StatusCode::BAD_REQUEST, "body could not be read".into(), None);
        }
    };
    let verified = settings.key.verify(
        header_text(&headers.timestamp),
        header_text(&headers.signature),
        &body,
        unix_now(),
        settings.max_skew,
    );
    if let Err(e) = verified {
        warn!(account = %account, reason = %e, "Webhook request refused: not authenticated.");
        return error(StatusCode::UNAUTHORIZED, e.to_string(), None);
    }
    match parse(&body, account, settings.from_kind) {
        Ok(envelope) => submit_message(&shared, envelope).await,
        Err(reason) => submit_malformed(&shared, body, reason).await,
    }
}

/// Hands a message to the router and turns the receipt into the answer.
async fn submit_message(shared: &Shared, envelope: Envelope) -> Response {
    let account = &shared.account;
    match submit(shared, Submission::Message(envelope)).await {
        Receipt::Recorded(id) => {
            debug!(account = %account, record_id = %id, "Webhook message recorded.");
            accepted("recorded", id)
        }
        Receipt::Duplicate(id) => {
            debug!(account = %account, record_id = %id, "Webhook message was a duplicate.");
            accepted("duplicate", id)
        }
        Receipt::Quarantined { id, reason } => {
            info!(account = %account, record_id = %id, reason = %reason, "Webhook message quarantined by the router.");
            error(StatusCode::BAD_REQUEST, reason, Some(id))
        }
        Receipt::Unavailable => unavailable(account),
    }
}

/// Quarantines authenticated input that could not be parsed, then answers 400 with the reason.
async fn submit_malformed(shared: &Shared, body: Bytes, reason: String) -> Response {
    let account = &shared.account;
    let native_id = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    let submission = Submission::Malformed {
        source: SourceKey { account: account.clone(), native_id },
        raw: Redacted::new(Vec::from(body)),
        reason: reason.clone(),
    };
    match submit(shared, submission).await {
        Receipt::Quarantined { id, .. } | Receipt::Recorded(id) | Receipt::Duplicate(id) => {
            info!(account = %account, record_id = %id, reason = %reason, "Malformed webhook request quarantined.");
            error(StatusCode::BAD_REQUEST, reason, Some(id))
        }
        Receipt::Unavailable => unavailable(account),
    }
}

/// Submits with one deadline covering both the wait for queue room and the wait for the
/// receipt: an HTTP client cannot wait forever. A receipt that comes after the deadline is
/// lost to this request, but the record is not: the client's retry is answered `duplicate`.
async fn submit(shared: &Shared, submission: Submission) -> Receipt {
    let wait = shared.settings.submit_timeout;
    tokio::time::timeout(wait, shared.submitter.submit_within(submission, wait)).await.unwrap_or(Receipt::Unavailable)
}

/// Parses and checks a request body into an envelope, or says (PHI-free) what is wrong.
///
/// Public for fuzzing (`fuzz/fuzz_targets/webhook_body.rs`): the listener calls it on every
/// authenticated body, so it must be total on any bytes.
pub fn parse(body: &[u8], account: &AccountId, from_kind: FromKind) -> Result<Envelope, String> {
    let text = std::str::from_utf8(body)
        .map_err(|e| format!("body is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()))?;
    let msg: InboundMessage<'_> = serde_json::from_str(text).map_err(|e| describe_json_error(&e))?;
    to_envelope(msg, account, from_kind)
}

fn to_envelope(msg: InboundMessage<'_>, account: &AccountId, from_kind: FromKind) -> Result<Envelope, String> {
    if !is_token(&msg.id, |b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) {
        return Err(format!("field `id` must be 1-{MAX_ID_LEN} characters of A-Z, a-z, 0-9, `.`, `_`, `:`, `-`"));
    }
    if msg.from.len() > MAX_FROM_LEN {
        return Err(format!("field `from` is longer than {MAX_FROM_LEN} bytes"));
    }
    let from = Address::new(from_kind.address_kind(), msg.from);
    if !address_is_plausible(from_kind, from.value.expose()) {
        return Err(match from_kind {
            FromKind::Phone => "field `from` must be a phone number (digits, optionally with a leading +)".into(),
            FromKind::Email => "field `from` must be an email address".into(),
            FromKind::Opaque => "field `from` is empty".into(),
        });
    }
    if let Some(c) = &msg.conversation
        && !is_token(c, |b| b.is_ascii_graphic())
    {
        return Err(format!("field `conversation` must be 1-{MAX_ID_LEN} visible ASCII characters"));
    }
    let references = msg.in_reply_to.unwrap_or_default();
    if references.len() > MAX_REFERENCES {
        return Err(format!("field `in_reply_to` has more than {MAX_REFERENCES} entries"));
    }
    if let Some(i) =
        references.iter().position(|r| r.is_empty() || r.len() > MAX_REFERENCE_LEN || r.chars().any(char::is_control))
    {
        return Err(format!("in_reply_to[{i}] must be 1-{MAX_REFERENCE_LEN} bytes without control characters"));
    }
    let attachments = msg
        .attachments
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.decode(i))
        .collect::<Result<Vec<_>, _>>()?;
    if msg.text.trim().is_empty() && attachments.is_empty() {
        return Err("message has neither text nor attachments".into());
    }
    let source = SourceKey { account: account.clone(), native_id: msg.id.clone() };
    let mut envelope = Envelope::new(source, from, msg.text);
    envelope.display_name = msg.display_name.filter(|n| !n.trim().is_empty()).map(Redacted::new);
    envelope.attachments = attachments;
    envelope.native_message_id = Some(msg.id);
    envelope.references = references;
    envelope.conversation_token = msg.conversation;
    Ok(envelope)
}

/// 1..=MAX_ID_LEN bytes, all allowed by `allowed`.
fn is_token(s: &str, allowed: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(allowed)
}

/// A cheap sanity check of a normalised address, so garbage in `from` is refused up front rather
/// than recorded under an address nobody can match.
fn address_is_plausible(kind: FromKind, value: &str) -> bool {
    match kind {
        FromKind::Phone => {
            let digits = value.strip_prefix('+').unwrap_or(value);
            digits.len() >= 3 && digits.bytes().all(|b| b.is_ascii_digit())
        }
        FromKind::Email => match value.split_once('@') {
            Some((local, domain)) => !local.is_empty() && !domain.is_empty() && !value.contains(char::is_whitespace),
            None => false,
        },
        FromKind::Opaque => !value.is_empty(),
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    if shared.submitter.is_closed() {
        json(StatusCode::SERVICE_UNAVAILABLE, &Status { status: "router unavailable" })
    } else {
        json(StatusCode::OK, &Status { status: "ok" })
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found".into(), None)
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into(), None)
}

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

/// The hot path's answer, written directly: both values are fixed ASCII (`recorded`,
/// `rec-0000000042`), so there is nothing to escape and one small buffer is all it costs.
fn accepted(status: &'static str, id: RecordId) -> Response {
    let body = format!(r#"{{"status":"{status}","record_id":"{id}"}}"#);
    (StatusCode::ACCEPTED, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

fn unavailable(account: &AccountId) -> Response {
    warn!(account = %account, "Webhook request not recorded: router unavailable; client told to retry.");
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "not recorded, try again later".into(), None);
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    response
}

fn error(status: StatusCode, error: String, quarantine_id: Option<RecordId>) -> Response {
    json(status, &ErrorBody { error, quarantine_id: quarantine_id.map(|id| id.to_string()) })
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    // Serializing these small structs of strings cannot fail; the fallback keeps the answer JSON.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (status, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn account() -> AccountId {
        "webhook.forms".parse().unwrap()
    }

    #[tokio::test]
    async fn the_fast_accepted_answer_is_the_wire_shape() {
        let response = accepted("duplicate", RecordId(42));
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        let parsed: crate::wire::Accepted = serde_json::from_slice(&body).unwrap();
        assert_eq!((parsed.status.as_str(), parsed.record_id.as_str()), ("duplicate", "rec-0000000042"));
    }

    #[test]
    fn a_full_message_maps_to_an_envelope() {
        let body = br#"{"id":"m-1","from":"+1 (416) 555-0199","text":"hello","display_name":"Ann",
            "conversation":"tok_123","in_reply_to":["dlv-1"],
            "attachments":[{"filename":"a.txt","content_type":"text/plain","data_base64":"aGk="}]}"#;
        let e = parse(body, &account(), FromKind::Phone).unwrap();
        assert_eq!(e.source.native_id, "m-1");
        assert_eq!(e.native_message_id.as_deref(), Some("m-1"));
        assert_eq!(e.from.key().expose(), "phone:+14165550199");
        assert_eq!(e.body.expose(), "hello");
        assert_eq!(e.display_name.unwrap().expose(), "Ann");
        assert_eq!(e.conversation_token.as_deref(), Some("tok_123"));
        assert_eq!(e.references, ["dlv-1"]);
        assert_eq!(e.attachments[0].data.expose(), b"hi");
        assert_eq!(e.attachments[0].filename.as_ref().unwrap().expose(), "a.txt");
    }

    #[test]
    fn bad_fields_are_named_without_their_values() {
        let cases: &[(&[u8], FromKind, &str)] = &[
            (br#"{"id":"has space","from":"x","text":"t"}"#, FromKind::Opaque, "field `id`"),
            (br#"{"id":"","from":"x","text":"t"}"#, FromKind::Opaque, "field `id`"),
            (br#"{"id":"a","from":"Ann Example","text":"t"}"#, FromKind::Phone, "phone number"),
            (br#"{"id":"a","from":"Ann Example","text":"t"}"#, FromKind::Email, "email address"),
            (br#"{"id":"a","from":"  ","text":"t"}"#, FromKind::Opaque, "`from` is empty"),
            (br#"{"id":"a","from":"x","text":" "}"#, FromKind::Opaque, "neither text nor attachments"),
            (br#"{"id":"a","from":"x","text":"t","conversation":"a b"}"#, FromKind::Opaque, "`conversation`"),
            (br#"{"id":"a","from":"x","text":"t","in_reply_to":[""]}"#, FromKind::Opaque, "in_reply_to[0]"),
            (
                b"{\"id\":\"a\",\"from\":\"x\",\"text\":\"\xff\"}",
                FromKind::Opaque,
                "not valid UTF-8 (invalid byte at offset 29)",
            ),
        ];
        for (body, kind, expected) in cases {
            let reason = parse(body, &account(), *kind).unwrap_err();
            assert!(reason.contains(expected), "{reason:?} lacks {expected:?}");
            assert!(!reason.contains("Ann"), "{reason:?}");
        }
    }
}
