//! A real HTTP endpoint standing in for the EHR / SMS gateway: it verifies carebridge's
//! signature on every request, records what it got, and answers what the test tells it to.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use std::sync::{Arc, Mutex};

/// One request the sink accepted.
#[derive(Clone, Debug)]
pub struct Received {
    /// The JSON body.
    pub body: serde_json::Value,
    /// The Idempotency-Key header.
    pub idempotency_key: String,
    /// Whether the signature verified.
    pub signature_ok: bool,
}

/// How the sink answers.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// 200 always.
    Accept,
    /// This status for the next `n` requests, then 200.
    FailFirst(u16, usize),
    /// This status always.
    Always(u16),
    /// 200, but only after this many milliseconds (a slow receiver).
    Slow(u64),
}

#[derive(Clone)]
struct Shared {
    got: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<usize>>,
    mode: Arc<Mutex<Mode>>,
    key: carebridge_webhook::SigningKey,
}

/// A running sink.
pub struct Sink {
    /// Its port on 127.0.0.1.
    pub port: u16,
    shared: Shared,
}

impl Sink {
    /// Starts a sink on a free port.
    pub async fn start(mode: Mode) -> Sink {
        let shared = Shared {
            got: Arc::default(),
            attempts: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
            key: carebridge_webhook::SigningKey::new(super::SECRET.as_bytes()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route("/hook", axum::routing::post(handle)).with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Sink { port, shared }
    }

    /// The URL to configure as a webhook account's `url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Accepted (2xx-answered) requests so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.got.lock().unwrap().clone()
    }

    /// Every request so far, accepted or not.
    pub fn attempts(&self) -> usize {
        *self.shared.attempts.lock().unwrap()
    }

    /// Changes how it answers.
    pub fn set_mode(&self, m: Mode) {
        *self.shared.mode.lock().unwrap() = m;
    }

    /// Waits until at least `n` requests were accepted.
    pub async fn wait_for(&self, n: usize, timeout: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if self.received().len() >= n {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }
}

async fn handle(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    *s.attempts.lock().unwrap() += 1;
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let signature_ok = s
        .key
        .verify(
            h(carebridge_webhook::TIMESTAMP_HEADER).as_deref(),
            h(carebridge_webhook::SIGNATURE_HEADER).as_deref(),
            &body,
            now,
            std::time::Duration::from_secs(300),
        )
        .is_ok();
    let mode = *s.mode.lock().unwrap();
    if let Mode::Slow(ms) = mode {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let status = {
        let mut m = s.mode.lock().unwrap();
        match *m {
            Mode::Accept | Mode::Slow(_) => 200,
            Mode::Always(c) => c,
            Mode::FailFirst(c, n) => {
                if n == 0 {
                    *m = Mode::Accept;
                    200
                } else {
                    *m = Mode::FailFirst(c, n - 1);
                    c
                }
            }
        }
    };
    if status < 300 {
        s.got.lock().unwrap().push(Received {
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            idempotency_key: h(carebridge_webhook::IDEMPOTENCY_KEY_HEADER).unwrap_or_default(),
            signature_ok,
        });
    }
    (StatusCode::from_u16(status).unwrap(), "{}")
}
