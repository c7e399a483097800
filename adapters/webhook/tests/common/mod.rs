//! Test harness shared by the integration tests: a stand-in router that answers receipts over
//! the real `Submitter` channel (that channel *is* the contract), a listener on 127.0.0.1:0,
//! and a signing HTTP client.
#![allow(dead_code, clippy::unwrap_used)]

use carebridge_contract::{
    AccountId, Envelope, InboundContext, Receipt, RecordId, Submission, SubmitRequest, Submitter,
};
use carebridge_webhook::{Config, SigningKey, WebhookInbound, sign};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &[u8] = b"test-shared-secret";

/// What the stand-in router saw.
#[derive(Debug)]
pub enum Seen {
    Message(Box<Envelope>),
    Malformed { native_id: String, raw: Vec<u8>, reason: String },
}

/// How the stand-in router answers.
pub enum Behaviour {
    /// Record new source keys, answer `Duplicate` for known ones, quarantine malformed input.
    Answer,
    /// Take requests off the queue but never answer (keeps the reply senders alive).
    Hold,
    /// Like `Answer`, but each answer waits for one `()` on this channel.
    Gated(mpsc::UnboundedReceiver<()>),
}

/// Runs the stand-in router over `rx`, reporting each submission on the returned channel.
pub fn spawn_router(mut rx: mpsc::Receiver<SubmitRequest>, mut behaviour: Behaviour) -> mpsc::UnboundedReceiver<Seen> {
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut known: HashMap<String, RecordId> = HashMap::new();
        let mut held = Vec::new();
        let mut next = 1u64;
        while let Some(req) = rx.recv().await {
            let native_id = req.submission.source().native_id.clone();
            let receipt = match &req.submission {
                Submission::Message(_) => match known.get(&native_id) {
                    Some(id) => Receipt::Duplicate(*id),
                    None => Receipt::Recorded(RecordId(next)),
                },
                Submission::Malformed { reason, .. } => {
                    Receipt::Quarantined { id: RecordId(next), reason: reason.clone() }
                }
            };
            if matches!(receipt, Receipt::Recorded(_) | Receipt::Quarantined { .. }) {
                known.insert(native_id.clone(), RecordId(next));
                next += 1;
            }
            let _ = seen_tx.send(match req.submission {
                Submission::Message(e) => Seen::Message(Box::new(e)),
                Submission::Malformed { raw, reason, .. } => {
                    Seen::Malformed { native_id, raw: raw.into_inner(), reason }
                }
            });
            match &mut behaviour {
                Behaviour::Answer => {
                    let _ = req.reply.send(receipt);
                }
                Behaviour::Hold => held.push(req.reply),
                Behaviour::Gated(gate) => {
                    if gate.recv().await.is_some() {
                        let _ = req.reply.send(receipt);
                    }
                }
            }
        }
    });
    seen_rx
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

/// A running inbound listener with its stand-in router.
pub struct Server {
    pub addr: SocketAddr,
    pub url: String,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), carebridge_contract::AdapterError>>,
}

impl Server {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts a listener on 127.0.0.1:0 configured by `extra` TOML lines, with a router behaving as
/// `behaviour` behind a queue of `capacity`.
pub async fn start(extra: &str, behaviour: Behaviour) -> Server {
    let cfg = config(&format!("secret_env = \"UNUSED\"\nlisten = \"127.0.0.1:1\"\n{extra}"));
    let (submitter, rx) = Submitter::channel(16);
    let seen = spawn_router(rx, behaviour);
    start_with(cfg, submitter, seen).await
}

/// Starts a listener for `cfg` on 127.0.0.1:0 submitting to `submitter`.
pub async fn start_with(cfg: Config, submitter: Submitter, seen: mpsc::UnboundedReceiver<Seen>) -> Server {
    let inbound = WebhookInbound::new(&cfg, SigningKey::new(SECRET)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let cx = InboundContext { account: account(), submitter, shutdown: shutdown.clone(), health: Default::default() };
    let task = tokio::spawn(inbound.serve(listener, cx));
    Server { addr, url: format!("http://{addr}{}", cfg.path()), seen, shutdown, task }
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
