//! Load for the reliability tests: concurrent clients that post signed messages with unique ids
//! to a daemon's webhook listener and behave like a real SMS gateway. A message counts as
//! accepted once it got a 2xx; anything else (another status, a reset connection, a refused
//! connection while the daemon is down, a timeout) means "not accepted", and the client sends
//! the same id again a little later, until it is accepted.
//!
//! The clients retry sooner than the daemon's `Retry-After` asks (a fraction of a second, not
//! five seconds) so the tests stay short; de-duplication by id makes early resends as safe as
//! late ones.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The fake sender every load message comes from (555-01xx numbers are fictional).
pub const LOAD_PHONE: &str = "+1 416 555 0142";

/// The text of a load message: obviously fake, and it names its id so a delivery can be
/// traced back to the message.
pub fn load_text(id: &str) -> String {
    format!("load test message {id}")
}

/// The id a delivered text was made from (inverse of [`load_text`]).
pub fn id_of_text(text: &str) -> Option<&str> {
    text.strip_prefix("load test message ")
}

/// How the clients behave.
#[derive(Clone, Copy, Debug)]
pub struct LoadConfig {
    /// Concurrent clients; each has one request in flight at a time.
    pub clients: usize,
    /// New messages per client at most (bounds the test's volume).
    pub max_per_client: usize,
    /// Pause between two new messages of one client.
    pub pause: Duration,
    /// Per-request timeout (a request that hangs is "not accepted").
    pub request_timeout: Duration,
}

/// Counters the clients share.
#[derive(Debug, Default)]
struct Counters {
    attempts: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
}

/// What the clients did, once they finished.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Every id that got a 2xx, with the `status` of its first 2xx (`recorded` or `duplicate`).
    pub accepted: BTreeMap<String, String>,
    /// Ids sent at least once but never accepted before the deadline.
    pub unaccepted: Vec<String>,
    /// Requests sent in all.
    pub attempts: u64,
    /// Requests answered with a status other than 2xx.
    pub refused: u64,
    /// Requests that got no answer (connection refused or reset, timeout).
    pub errors: u64,
}

/// Running clients.
pub struct Load {
    accepted: Arc<Mutex<BTreeMap<String, String>>>,
    counters: Arc<Counters>,
    stop_new: Arc<AtomicBool>,
    give_up: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    /// Starts `cfg.clients` clients posting to the webhook listener on `port`. Client `c`'s
    /// message ids are `{prefix}{c}-{n}`.
    pub fn start(port: u16, prefix: &str, cfg: LoadConfig) -> Load {
        let accepted: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let counters: Arc<Counters> = Arc::default();
        let stop_new = Arc::new(AtomicBool::new(false));
        let give_up = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..cfg.clients {
            let client = reqwest::Client::builder().timeout(cfg.request_timeout).build().unwrap();
            let (accepted, counters, stop_new, give_up) =
                (accepted.clone(), counters.clone(), stop_new.clone(), give_up.clone());
            let prefix = format!("{prefix}{c}-");
            tasks.push(tokio::spawn(async move {
                let mut retry: VecDeque<(Instant, String)> = VecDeque::new();
                let mut next = 0usize;
                loop {
                    if give_up.load(Ordering::Relaxed) {
                        return retry.into_iter().map(|(_, id)| id).collect();
                    }
                    let now = Instant::now();
                    let id = match retry.front() {
                        Some((due, _)) if *due <= now => retry.pop_front().map(|(_, id)| id),
                        _ if !stop_new.load(Ordering::Relaxed) && next < cfg.max_per_client => {
                            next += 1;
                            Some(format!("{prefix}{}", next - 1))
                        }
                        Some((due, _)) => {
                            tokio::time::sleep(due.saturating_duration_since(now)).await;
                            continue;
                        }
                        None => return Vec::new(),
                    };
                    let Some(id) = id else { continue };
                    let body = super::message(&id, LOAD_PHONE, &load_text(&id));
                    counters.attempts.fetch_add(1, Ordering::Relaxed);
                    match send(&client, port, &body).await {
                        Ok((status, answer)) if (200..300).contains(&status) => {
                            let how = answer["status"].as_str().unwrap_or("?").to_string();
                            accepted.lock().unwrap().entry(id).or_insert(how);
                            if !cfg.pause.is_zero() {
                                tokio::time::sleep(cfg.pause).await;
                            }
                        }
                        Ok(_) => {
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                            let wait = Duration::from_millis(rand::random_range(50..250));
                            retry.push_back((Instant::now() + wait, id));
                        }
                        Err(()) => {
                            // The daemon is down or restarting: back off a little before the
                            // next request (new messages keep arriving meanwhile, as they do
                            // at a real gateway; they queue behind this one).
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                            let wait = Duration::from_millis(rand::random_range(20..100));
                            retry.push_front((Instant::now() + wait, id));
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }));
        }
        Load { accepted, counters, stop_new, give_up, tasks }
    }

    /// Ids accepted so far.
    pub fn accepted_count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Requests sent so far.
    pub fn attempts(&self) -> u64 {
        self.counters.attempts.load(Ordering::Relaxed)
    }

    /// Stops new messages; each client then resends what is still unaccepted until it is
    /// accepted or `deadline` passes (an upper bound against hanging, not a timed assertion).
    pub async fn finish(self, deadline: Duration) -> LoadReport {
        self.stop_new.store(true, Ordering::Relaxed);
        let give_up = self.give_up.clone();
        let guard = tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            give_up.store(true, Ordering::Relaxed);
        });
        let mut unaccepted = Vec::new();
        for t in self.tasks {
            unaccepted.extend(t.await.unwrap());
        }
        guard.abort();
        LoadReport {
            accepted: self.accepted.lock().unwrap().clone(),
            unaccepted,
            attempts: self.counters.attempts.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
        }
    }
}

/// One signed POST; `Err(())` when there is no HTTP answer at all.
async fn send(client: &reqwest::Client, port: u16, body: &[u8]) -> Result<(u16, serde_json::Value), ()> {
    let r = super::signed_post(client, port, body).send().await.map_err(|_| ())?;
    let status = r.status().as_u16();
    // A gateway acts on the status; the body (cut off if the daemon dies right after answering)
    // is only informative.
    let v = r.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, v))
}

/// What a receiver that honours `Idempotency-Key` keeps of what it was sent: the first request
/// per key, in arrival order, and how many repeats it dropped. A repeat must carry the same
/// body as the first request with its key (it is a resend of the same delivery, not a new one).
pub fn by_idempotency_key(received: &[super::sink::Received]) -> (Vec<super::sink::Received>, usize) {
    let mut first: BTreeMap<&str, &super::sink::Received> = BTreeMap::new();
    let mut kept = Vec::new();
    let mut repeats = 0;
    for r in received {
        assert!(!r.idempotency_key.is_empty(), "every delivery carries an Idempotency-Key");
        match first.get(r.idempotency_key.as_str()) {
            Some(f) => {
                assert_eq!(f.body, r.body, "a resend under key {} changed its body", r.idempotency_key);
                repeats += 1;
            }
            None => {
                first.insert(&r.idempotency_key, r);
                kept.push(r.clone());
            }
        }
    }
    (kept, repeats)
}
