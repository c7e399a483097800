//! Webhook mode: our own axum server receives Telegram's POSTs.
//!
//! - The request must carry `X-Telegram-Bot-Api-Secret-Token` equal to the configured secret
//!   (compared in constant time): missing → 401, wrong → 403. The secret is never part of the
//!   URL, and the bot token is never involved. It is checked before a byte of the body is read,
//!   so an unauthenticated client cannot make us buffer anything (it gets 401, not 413).
//! - An authenticated body larger than [`MAX_UPDATE_BYTES`] is refused with 413.
//! - The answer is 200 only after the update's receipt says it may be acked (recorded,
//!   duplicate, quarantined or deliberately ignored); otherwise 503 with `Retry-After`, and
//!   Telegram delivers the update again.
//! - At start, if `webhook_url` is configured, setWebhook registers it with the secret and
//!   `max_connections = 1`, so Telegram sends one update at a time, in order.

use crate::api::BotApi;
use crate::inbound::sleep_or_shutdown;
use crate::intake::{Intake, Outcome, Wait};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use carebridge_contract::http::{Limits, is_body_timeout};
use carebridge_contract::{AccountId, AdapterError, InboundContext, Redacted, Submitter};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// The header Telegram sets to the `secret_token` given to setWebhook.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// How long a webhook request waits for room in the router's queue before answering 503.
const SUBMIT_WAIT: Duration = Duration::from_secs(10);

/// The largest update body read (after the secret matched). An update is one message's JSON:
/// text is at most 4096 characters and files come by reference, so this is generous.
pub const MAX_UPDATE_BYTES: usize = 2 * 1024 * 1024;

/// The webhook server of one account, before it runs.
pub(crate) struct WebhookServer {
    pub(crate) listen: SocketAddr,
    pub(crate) path: String,
    pub(crate) secret: Redacted<String>,
    pub(crate) url: Option<String>,
    pub(crate) listener: Option<TcpListener>,
}

struct HookState {
    account: AccountId,
    intake: Arc<Intake>,
    submitter: Submitter,
    secret: Redacted<String>,
}

impl WebhookServer {
    /// Binds the listening socket (once) and returns its address.
    pub(crate) async fn bind(&mut self) -> Result<SocketAddr, AdapterError> {
        if self.listener.is_none() {
            let l = TcpListener::bind(self.listen)
                .await
                .map_err(|e| AdapterError::Connection(format!("cannot listen on {}: {}", self.listen, e.kind())))?;
            self.listener = Some(l);
        }
        match &self.listener {
            Some(l) => l.local_addr().map_err(|e| AdapterError::Connection(format!("listener address: {}", e.kind()))),
            None => Err(AdapterError::Connection("listener vanished".to_string())),
        }
    }

    /// Serves until shutdown, registering the webhook meanwhile if configured.
    pub(crate) async fn run(
        mut self,
        api: BotApi,
        intake: Arc<Intake>,
        cx: InboundContext,
    ) -> Result<(), AdapterError> {
        let addr = self.bind().await?;
        let Some(listener) = self.listener.take() else {
            return Err(AdapterError::Connection("listener vanished".to_string()));
        };
        let state = Arc::new(HookState {
            account: cx.account.clone(),
            intake,
            submitter: cx.submitter.clone(),
            secret: self.secret.clone(),
        });
        let app = Router::new()
            .route(&self.path, post(receive))
            .layer(DefaultBodyLimit::max(MAX_UPDATE_BYTES))
            .with_state(state);
        info!(account = %cx.account, listen = %addr, "Webhook server listening.");
        cx.health.up();
        let shutdown = cx.shutdown.clone();
        let serve = async {
            // Bounded: a connection cap and header/body timeouts (carebridge_contract::http).
            carebridge_contract::http::serve(listener, app, Limits::MESSAGES, shutdown).await;
            Ok::<(), AdapterError>(())
        };
        let register = register(&api, &cx, self.url.as_deref(), &self.secret);
        let (served, ()) = tokio::join!(serve, register);
        info!(account = %cx.account, "Webhook server stopped.");
        served
    }
}

/// Calls setWebhook until it succeeds or shutdown fires (Telegram may be briefly unreachable).
async fn register(api: &BotApi, cx: &InboundContext, url: Option<&str>, secret: &Redacted<String>) {
    let Some(url) = url else { return };
    let params = serde_json::json!({
        "url": url,
        "secret_token": secret.expose(),
        "allowed_updates": ["message", "edited_message"],
        "max_connections": 1,
        "drop_pending_updates": false,
    });
    let mut wait = Duration::from_secs(1);
    loop {
        match api.call::<bool>("setWebhook", &params).await {
            Ok(_) => {
                info!(account = %cx.account, "Webhook registered with Telegram.");
                return;
            }
            Err(e) => {
                warn!(account = %cx.account, error = %e, "setWebhook failed; retrying.");
                if !sleep_or_shutdown(e.retry_after().unwrap_or(wait).max(wait), &cx.shutdown).await {
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Takes the request with its body unread (not `Bytes`, which axum would read before calling
/// us): the secret is checked on the headers first, and only an authenticated request's body is
/// read, within [`MAX_UPDATE_BYTES`].
async fn receive(State(st): State<Arc<HookState>>, request: Request) -> Response {
    let headers = request.headers();
    let Some(given) = headers.get(SECRET_HEADER) else {
        warn!(account = %st.account, "Webhook request without the secret header; rejected.");
        return StatusCode::UNAUTHORIZED.into_response();
    };
    if !constant_time_eq(given.as_bytes(), st.secret.expose().as_bytes()) {
        warn!(account = %st.account, "Webhook request with a wrong secret; rejected.");
        return StatusCode::FORBIDDEN.into_response();
    }
    // Extracted only now, so nothing unauthenticated is buffered; the limit is the router's
    // `DefaultBodyLimit` layer, which the extractor enforces (413 from the rejection).
    let body = match Bytes::from_request(request, &()).await {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            warn!(account = %st.account, limit = MAX_UPDATE_BYTES, "Webhook update larger than the limit; refused.");
            return StatusCode::PAYLOAD_TOO_LARGE.into_response();
        }
        Err(rejection) if is_body_timeout(&rejection) => {
            warn!(account = %st.account, "Webhook update not received in time; refused.");
            return StatusCode::REQUEST_TIMEOUT.into_response();
        }
        Err(_) => {
            warn!(account = %st.account, "Webhook request body could not be read.");
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    match st.intake.handle(&body, &st.submitter, Wait::AtMost(SUBMIT_WAIT)).await {
        Outcome::Ack => StatusCode::OK.into_response(),
        Outcome::Retry => {
            let mut r = StatusCode::SERVICE_UNAVAILABLE.into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

/// Compares two secrets without an early exit: both are hashed first, so neither the position
/// of the first difference nor the length leaks through timing.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.iter().zip(hb.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret-longer"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
