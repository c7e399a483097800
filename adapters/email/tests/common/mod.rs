//! Shared test support: the real Postfix + Dovecot started by `tests/mail-servers.sh`, a real
//! `Submitter::channel` whose router end the test answers, IMAP inspection helpers and a log
//! capture for the no-PHI checks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use async_imap::Session;
use async_imap::types::Flag;
use carebridge_contract::config::BuildContext;
use carebridge_contract::{AccountId, AdapterError, HealthReporter, InboundContext, SubmitRequest, Submitter};
use carebridge_email::Config;
use futures::TryStreamExt;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous: waiting is not asserting. Mail arrives in well under a second normally.
pub const WAIT: Duration = Duration::from_secs(60);

// One reader of the mail servers' env file for the adapter's and the end-to-end tests.
#[path = "../../../../tests/support/mail_env.rs"]
mod mail_env;
pub use mail_env::{MailEnv, mail_env, tag};

/// `let Some(env) = require_mail!() else { return };`
#[macro_export]
macro_rules! require_mail {
    () => {
        common::mail_env()
    };
}

impl MailEnv {
    pub fn password(&self, user: &str) -> String {
        self.users.get(user).cloned().unwrap_or_else(|| panic!("user {user} not configured by mail-servers.sh"))
    }

    /// A directory holding `<user>.pass` files, used as the config dir.
    pub fn secrets_dir(&self) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cb-email-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (user, pass) in &self.users {
            let mut f = std::fs::File::create(dir.join(format!("{user}.pass"))).unwrap();
            writeln!(f, "{pass}").unwrap();
        }
        dir
    }

    pub fn build_context(&self, account: &str) -> BuildContext {
        BuildContext { account: account.parse().unwrap(), config_dir: self.secrets_dir() }
    }

    /// Sends raw message bytes through Postfix (plain SMTP, no auth), like any outside sender.
    pub async fn smtp_send_raw(&self, from: &str, to: &[&str], raw: &[u8]) {
        let transport =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.host.clone()).port(self.smtp_port).build();
        let envelope = lettre::address::Envelope::new(
            Some(from.parse().unwrap()),
            to.iter().map(|t| t.parse().unwrap()).collect(),
        )
        .unwrap();
        transport.send_raw(&envelope, raw).await.expect("Postfix accepts the test message");
    }

    /// A plain IMAP session for inspecting a mailbox (not the adapter's own connection).
    pub async fn imap(&self, user: &str) -> Session<TcpStream> {
        let tcp = TcpStream::connect((self.host.as_str(), self.imap_port)).await.unwrap();
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.unwrap();
        client.login(user, self.password(user)).await.map_err(|(e, _)| e).unwrap()
    }

    /// Appends raw bytes to a folder directly (bytes Postfix might have repaired).
    pub async fn append(&self, user: &str, folder: &str, raw: &[u8]) {
        let mut s = self.imap(user).await;
        s.append(folder, None, None, raw).await.unwrap();
        s.logout().await.ok();
    }

    /// The flags of the messages in `folder` whose Message-ID contains `id`; one entry per
    /// message found, `true` when `\Seen`.
    pub async fn seen_flags(&self, user: &str, folder: &str, id: &str) -> Vec<bool> {
        let mut s = self.imap(user).await;
        s.examine(folder).await.unwrap();
        let uids = s.uid_search(format!("HEADER Message-ID \"{id}\"")).await.unwrap();
        let mut out = Vec::new();
        if !uids.is_empty() {
            let set: Vec<String> = uids.iter().map(u32::to_string).collect();
            let fetches: Vec<_> = s.uid_fetch(set.join(","), "(UID FLAGS)").await.unwrap().try_collect().await.unwrap();
            for f in &fetches {
                out.push(f.flags().any(|fl| fl == Flag::Seen));
            }
        }
        s.logout().await.ok();
        out
    }

    /// The UIDs in `folder` matching an IMAP search.
    pub async fn search(&self, user: &str, folder: &str, query: &str) -> Vec<u32> {
        let mut s = self.imap(user).await;
        s.examine(folder).await.unwrap();
        let mut uids: Vec<u32> = s.uid_search(query).await.unwrap().into_iter().collect();
        uids.sort_unstable();
        s.logout().await.ok();
        uids
    }

    /// The full raw messages in `folder` whose Message-ID contains `id`.
    pub async fn fetch_by_message_id(&self, user: &str, folder: &str, id: &str) -> Vec<Vec<u8>> {
        let mut s = self.imap(user).await;
        s.examine(folder).await.unwrap();
        let uids = s.uid_search(format!("HEADER Message-ID \"{id}\"")).await.unwrap();
        let mut out = Vec::new();
        if !uids.is_empty() {
            let set: Vec<String> = uids.iter().map(u32::to_string).collect();
            let fetches: Vec<_> =
                s.uid_fetch(set.join(","), "(UID BODY.PEEK[])").await.unwrap().try_collect().await.unwrap();
            out.extend(fetches.iter().filter_map(|f| f.body().map(<[u8]>::to_vec)));
        }
        s.logout().await.ok();
        out
    }

    /// Waits until `cond` holds (polling); panics with `what` after [`WAIT`].
    pub async fn wait_for<F, Fut>(&self, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !cond().await {
            assert!(start.elapsed() < WAIT, "gave up waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An empty folder for each mailbox a test consumes: marks everything there `\Seen` and
    /// `\Deleted` and expunges it, so leftovers of an earlier run are not picked up.
    pub async fn empty_mailbox(&self, user: &str) {
        let mut s = self.imap(user).await;
        for folder in ["INBOX", "Archive"] {
            if s.select(folder).await.is_ok_and(|m| m.exists > 0) {
                let _: Vec<_> =
                    s.store("1:*", "+FLAGS.SILENT (\\Deleted)").await.unwrap().try_collect().await.unwrap_or_default();
                let _: Vec<_> = s.expunge().await.unwrap().try_collect().await.unwrap_or_default();
            }
        }
        s.logout().await.ok();
    }
}

/// An email account config for a test mailbox, as TOML (what the daemon deserialises).
pub fn config(toml_text: &str) -> Config {
    let cfg: Config = toml::from_str(toml_text).unwrap_or_else(|e| panic!("test config: {e}\n{toml_text}"));
    let problems = cfg.validate("email.test");
    assert!(problems.is_empty(), "test config has problems: {problems:?}");
    cfg
}

/// The router end of a real `Submitter::channel`: the test reads each request and answers it.
pub struct TestRouter {
    rx: mpsc::Receiver<SubmitRequest>,
}

impl TestRouter {
    /// The next submission; panics after [`WAIT`].
    pub async fn next(&mut self, what: &str) -> SubmitRequest {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(req)) => req,
            Ok(None) => panic!("submitter closed while waiting for {what}"),
            Err(_) => panic!("no submission arrived: {what}"),
        }
    }

    /// True if nothing arrives within `d` (used after everything was answered).
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.rx.recv()).await.is_err()
    }
}

/// A running inbound adapter.
pub struct Running {
    pub router: TestRouter,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), AdapterError>>,
    /// What the reader reports about its connection.
    pub health: HealthReporter,
}

impl Running {
    /// Fires shutdown and waits for the task to end.
    pub async fn stop(self) -> Result<(), AdapterError> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task).await.expect("adapter stops after shutdown").expect("task did not panic")
    }
}

/// Builds the inbound adapter from `cfg` and runs it with a real submitter channel.
pub fn start_inbound(env: &MailEnv, account: &str, cfg: &Config) -> Running {
    let build = env.build_context(account);
    let inbound = carebridge_email::build_inbound(cfg, &build).expect("build_inbound").expect("imap configured");
    let (submitter, rx) = Submitter::channel(4);
    let shutdown = CancellationToken::new();
    let account: AccountId = account.parse().unwrap();
    let health = HealthReporter::new();
    let cx = InboundContext { account, submitter, shutdown: shutdown.clone(), health: health.clone() };
    let task = tokio::spawn(inbound.run(cx));
    Running { router: TestRouter { rx }, shutdown, task, health }
}

/// Everything logged in this test binary (one global subscriber), for the no-PHI checks.
pub fn captured_logs() -> String {
    let buf = log_buffer();
    let bytes = buf.lock().unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn log_buffer() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new()))).clone()
}

#[derive(Clone)]
struct BufWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        std::io::stderr().write_all(data).ok();
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber once per test binary (debug level for this crate).
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let buf = log_buffer();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("carebridge_email=debug"))
            .with_writer(move || BufWriter(buf.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).ok();
    });
}

/// Asserts the captured logs contain no email address and none of the given secrets (subjects,
/// body text, names).
pub fn assert_no_phi(secrets: &[&str]) {
    let logs = captured_logs();
    assert!(!logs.contains('@'), "an email address reached the logs:\n{logs}");
    for s in secrets {
        assert!(!logs.contains(s), "PHI {s:?} reached the logs:\n{logs}");
    }
}

/// A simple RFC 5322 message with CRLF line ends.
pub fn message(from: &str, to: &str, message_id: &str, subject: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    let body = body.replace("\r\n", "\n").replace('\n', "\r\n");
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\
         Date: Mon, 3 Feb 2025 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n{extra_headers}\r\n{body}\r\n"
    )
    .into_bytes()
}
