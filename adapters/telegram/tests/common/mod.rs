//! Shared pieces of the adapter's integration tests: a config pointing at the fake Bot API, a
//! stand-in router that answers receipts by a script, and a log capture for the no-PHI checks.
#![allow(dead_code)]

use carebridge_contract::config::BuildContext;
use carebridge_contract::{AccountId, Receipt, RecordId, SourceKey, Submission, Submitter};
use carebridge_telegram::Config;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn account() -> AccountId {
    "telegram.desk".parse().expect("account id")
}

/// A fresh directory holding `token` (the fake's token), as a config directory.
pub fn config_dir(token: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cb-telegram-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("token"), format!("{token}\n")).expect("token file");
    std::fs::write(dir.join("hook-secret"), "hook_SECRET-123\n").expect("secret file");
    dir
}

/// `[telegram.desk]` pointing at `api_url`, plus `extra` TOML lines.
pub fn config(api_url: &str, extra: &str) -> Config {
    let text = format!("token_file = \"token\"\napi_url = \"{api_url}\"\npoll_timeout_secs = 1\n{extra}\n");
    let cfg: Config = toml::from_str(&text).expect("test config parses");
    let problems = cfg.validate("telegram.desk");
    assert!(problems.is_empty(), "test config invalid: {problems:?}");
    cfg
}

pub fn build_context(dir: PathBuf) -> BuildContext {
    BuildContext { account: account(), config_dir: dir }
}

/// What the stand-in router saw.
#[derive(Debug)]
pub struct Seen {
    pub submission: Submission,
    pub answer: Receipt,
}

/// How the stand-in router answers: `Unavailable` for the first `unavailable` submissions, then
/// like the real router (record once per source, then `Duplicate`; malformed input quarantined).
pub struct Router {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub submitter: Submitter,
    task: tokio::task::JoinHandle<()>,
}

impl Router {
    pub fn start(unavailable: usize) -> Router {
        let (submitter, mut rx) = Submitter::channel(4);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut recorded: HashMap<SourceKey, RecordId> = HashMap::new();
            let mut n = 0usize;
            while let Some(req) = rx.recv().await {
                n += 1;
                let answer = if n <= unavailable {
                    Receipt::Unavailable
                } else if let Some(r) = recorded.get(req.submission.source()) {
                    Receipt::Duplicate(*r)
                } else {
                    let id = RecordId(recorded.len() as u64 + 1);
                    recorded.insert(req.submission.source().clone(), id);
                    match &req.submission {
                        Submission::Message(_) => Receipt::Recorded(id),
                        Submission::Malformed { reason, .. } => Receipt::Quarantined { id, reason: reason.clone() },
                    }
                };
                let _ = req.reply.send(answer.clone());
                log.lock().expect("router log").push(Seen { submission: req.submission, answer });
            }
        });
        Router { seen, submitter, task }
    }

    pub fn len(&self) -> usize {
        self.seen.lock().expect("router log").len()
    }

    /// Waits (hang guard 30 s) until the router has seen at least `n` submissions.
    pub async fn wait_for(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.len() < n {
            assert!(tokio::time::Instant::now() < deadline, "router saw {} of {n} submissions", self.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs `f` on the submission number `i` (0-based).
    pub fn with<R>(&self, i: usize, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.seen.lock().expect("router log")[i])
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Log lines written while a [`LogCapture`] guard is alive on this thread.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Captures every log event of this thread (use a current-thread runtime) at TRACE level.
    pub fn install() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let cap = LogCapture::default();
        let writer = cap.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (cap, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}
