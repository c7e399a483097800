//! Shared test support: the real Postfix + Dovecot started by `tests/mail-servers.sh`, a real
//! `Submitter::channel` whose router end the test answers, IMAP inspection helpers and a log
//! capture for the no-PHI checks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use async_imap::Session;
use async_imap::types::Flag;
use carebridge_contract::config::BuildContext;
use carebridge_contract::testkit::{Answers, FakeRouter, LogCapture};
use carebridge_contract::{AccountId, AdapterError, HealthReporter, InboundContext};
use carebridge_email::Config;
use futures::TryStreamExt;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous: waiting is not asserting. Mail arrives in well under a second normally.
pub const WAIT: Duration = Duration::from_secs(60);

// One reader of the mail servers' env file for the adapter's and the end-to-end tests.
pub use carebridge_fakes::mail_env::{MailEnv, mail_env, tag};

/// `let Some(env) = require_mail!() else { return };`
#[macro_export]
macro_rules! require_mail {
    () => {
        common::mail_env()
    };
}

/// What the tests do with the real mail servers: log in, deliver, inspect mailboxes. A trait
/// (in scope through `common::*`) because `MailEnv` lives in the shared `carebridge-fakes` crate.
#[allow(async_fn_in_trait)] // test code, awaited in place: no Send bound needed
pub trait MailServers {
    /// The servers' connection settings.
    fn env(&self) -> &MailEnv;
    fn password(&self, user: &str) -> String {
        self.env().users.get(user).cloned().unwrap_or_else(|| panic!("user {user} not configured by mail-servers.sh"))
    }

    /// A directory holding `<user>.pass` files, used as the config dir.
    fn secrets_dir(&self) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cb-email-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (user, pass) in &self.env().users {
            let mut f = std::fs::File::create(dir.join(format!("{user}.pass"))).unwrap();
            writeln!(f, "{pass}").unwrap();
        }
        dir
    }

    fn build_context(&self, account: &str) -> BuildContext {
        BuildContext { account: account.parse().unwrap(), config_dir: self.secrets_dir() }
    }

    /// Sends raw message bytes through Postfix (plain SMTP, no auth), like any outside sender.
    async fn smtp_send_raw(&self, from: &str, to: &[&str], raw: &[u8]) {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.env().host.clone())
            .port(self.env().smtp_port)
            .build();
        let envelope = lettre::address::Envelope::new(
            Some(from.parse().unwrap()),
            to.iter().map(|t| t.parse().unwrap()).collect(),
        )
        .unwrap();
        transport.send_raw(&envelope, raw).await.expect("Postfix accepts the test message");
    }

    /// A plain IMAP session for inspecting a mailbox (not the adapter's own connection).
    async fn imap(&self, user: &str) -> Session<TcpStream> {
        let tcp = TcpStream::connect((self.env().host.as_str(), self.env().imap_port)).await.unwrap();
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.unwrap();
        client.login(user, self.password(user)).await.map_err(|(e, _)| e).unwrap()
    }

    /// Appends raw bytes to a folder directly (bytes Postfix might have repaired).
    async fn append(&self, user: &str, folder: &str, raw: &[u8]) {
        let mut s = self.imap(user).await;
        s.append(folder, None, None, raw).await.unwrap();
        s.logout().await.ok();
    }

    /// The flags of the messages in `folder` whose Message-ID contains `id`; one entry per
    /// message found, `true` when `\Seen`.
    async fn seen_flags(&self, user: &str, folder: &str, id: &str) -> Vec<bool> {
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
    async fn search(&self, user: &str, folder: &str, query: &str) -> Vec<u32> {
        let mut s = self.imap(user).await;
        s.examine(folder).await.unwrap();
        let mut uids: Vec<u32> = s.uid_search(query).await.unwrap().into_iter().collect();
        uids.sort_unstable();
        s.logout().await.ok();
        uids
    }

    /// The full raw messages in `folder` whose Message-ID contains `id`.
    async fn fetch_by_message_id(&self, user: &str, folder: &str, id: &str) -> Vec<Vec<u8>> {
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
    async fn wait_for<F, Fut>(&self, what: &str, mut cond: F)
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
    async fn empty_mailbox(&self, user: &str) {
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

impl MailServers for MailEnv {
    fn env(&self) -> &MailEnv {
        self
    }
}

/// An email account config for a test mailbox, as TOML (what the daemon deserialises).
pub fn config(toml_text: &str) -> Config {
    let cfg: Config = toml::from_str(toml_text).unwrap_or_else(|e| panic!("test config: {e}\n{toml_text}"));
    let problems = cfg.validate("email.test");
    assert!(problems.is_empty(), "test config has problems: {problems:?}");
    cfg
}

/// A running inbound adapter.
pub struct Running {
    /// The router's end: the test takes each request and answers it.
    pub router: FakeRouter,
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
    let router = FakeRouter::start(Answers::ByTest);
    let submitter = router.submitter();
    let shutdown = CancellationToken::new();
    let account: AccountId = account.parse().unwrap();
    let health = HealthReporter::new();
    let cx = InboundContext { account, submitter, shutdown: shutdown.clone(), health: health.clone() };
    let task = tokio::spawn(inbound.run(cx));
    Running { router, shutdown, task, health }
}

/// The filter of this binary's log capture.
const LOGS: &str = "carebridge_email=debug";

/// Everything logged in this test binary (one global subscriber), for the no-PHI checks.
pub fn captured_logs() -> String {
    LogCapture::install_global(LOGS).text()
}

/// Installs the capturing subscriber once per test binary (debug level for this crate).
pub fn capture_logs() {
    LogCapture::install_global(LOGS);
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
