//! Test harness shared by the integration tests: a listener on 127.0.0.1:0 with the contract's
//! fake router (`carebridge_contract::testkit`) at the other end of the real `Submitter`
//! channel, and a signing HTTP client.
#![allow(dead_code, clippy::unwrap_used)]

pub use carebridge_contract::testkit::{Answers, FakeRouter, WAIT};
use carebridge_contract::{AccountId, Envelope, InboundContext, Submission, Submitter};
use carebridge_webhook::{Config, SigningKey, WebhookInbound, sign};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &[u8] = b"test-shared-secret";

/// What the fake router saw, in the shape these tests match on.
#[derive(Debug)]
pub enum Seen {
    Message(Box<Envelope>),
    Malformed { native_id: String, raw: Vec<u8>, reason: String },
}

/// A unique scratch directory for config files and secrets.
pub fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "carebridge-webhook-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Parses a TOML account table (as the daemon would).
pub fn config(toml_text: &str) -> Config {
    let cfg: Config = toml::from_str(toml_text).unwrap();
    let problems = cfg.validate("webhook.test");
    assert!(problems.is_empty(), "{problems:?}");
    cfg
}

/// A running inbound listener with the contract's fake router behind it.
pub struct Server {
    pub addr: SocketAddr,
    pub url: String,
    pub router: Option<FakeRouter>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), carebridge_contract::AdapterError>>,
}

impl Server {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next submission the router took (hang guard: the testkit's `WAIT`).
    pub async fn next_seen(&mut self) -> Option<Seen> {
        let router = self.router.as_mut()?;
        let i = router.next_arrival(WAIT).await?;
        Some(router.with(i, |s| seen(&s.submission)))
    }

    /// `Answers::OnDemand`: lets the router answer one more submission.
    pub fn release(&self) {
        if let Some(r) = &self.router {
            r.release(1);
        }
    }
}

/// A submission as these tests match on it.
pub fn seen(submission: &Submission) -> Seen {
    match submission {
        Submission::Message(e) => Seen::Message(Box::new(e.clone())),
        Submission::Malformed { source, raw, reason } => {
            Seen::Malformed { native_id: source.native_id.clone(), raw: raw.expose().clone(), reason: reason.clone() }
        }
    }
}

/// Starts a listener on 127.0.0.1:0 configured by `extra` TOML lines, with a fake router that
/// answers as `answers` says.
pub async fn start(extra: &str, answers: Answers) -> Server {
    let cfg = config(&format!("secret_env = \"UNUSED\"\nlisten = \"127.0.0.1:1\"\n{extra}"));
    let router = FakeRouter::start(answers);
    start_with(cfg, router.submitter(), Some(router)).await
}

/// Starts a listener for `cfg` on 127.0.0.1:0 submitting to `submitter` (whose router, if the
/// test has one, is `router`).
pub async fn start_with(cfg: Config, submitter: Submitter, router: Option<FakeRouter>) -> Server {
    let inbound = WebhookInbound::new(&cfg, SigningKey::new(SECRET)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let cx = InboundContext { account: account(), submitter, shutdown: shutdown.clone(), health: Default::default() };
    let task = tokio::spawn(inbound.serve(listener, cx));
    Server { addr, url: format!("http://{addr}{}", cfg.path()), router, shutdown, task }
}

pub fn account() -> AccountId {
    "webhook.test".parse().unwrap()
}

/// The current time in unix seconds.
pub fn now() -> i64 {
    carebridge_webhook::signature::unix_now()
}

/// POSTs `body` signed with `secret` at `ts`.
pub async fn post_signed(
    client: &reqwest::Client,
    url: &str,
    secret: &[u8],
    ts: i64,
    body: impl Into<Vec<u8>>,
) -> reqwest::Response {
    let body = body.into();
    client
        .post(url)
        .header("content-type", "application/json")
        .header("x-carebridge-timestamp", ts.to_string())
        .header("x-carebridge-signature", sign(secret, ts, &body))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// POSTs `body` correctly signed now.
pub async fn post(client: &reqwest::Client, url: &str, body: impl Into<Vec<u8>>) -> reqwest::Response {
    post_signed(client, url, SECRET, now(), body).await
}

/// Status and parsed JSON body of an answer (every answer must be JSON).
pub async fn answer(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let content_type = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(content_type.as_deref(), Some("application/json"), "status {status}");
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, json)
}
