//! Reading the clinic mailbox over IMAP, and acknowledging a message only once it is recorded.
//!
//! The loop, per connection: connect (implicit TLS, STARTTLS or loopback plain) → log in →
//! select the folder → **sync** (every unprocessed message: fetch with `BODY.PEEK[]` so the
//! fetch itself does not mark it read, parse, submit, and on a receipt with `may_ack()` mark it
//! `\Seen` or move it to `processed_folder`) → **wait** (IDLE until the server reports a change
//! or `idle_resync_secs` pass; or sleep `poll_secs` where IDLE is off or unsupported) → sync …
//!
//! Any failure drops the connection and reconnects with exponential backoff (1 s doubling up to
//! `reconnect_max_secs`), forever. A message whose receipt is `Unavailable` stays unread at the
//! source and is retried after a backoff; the router de-duplicates by `<uidvalidity>:<uid>`, so
//! a message recorded but not yet acked when a connection dropped is simply acked next time.
//!
//! Logs carry the account, ids and error kinds only: never addresses, subjects or text.

use crate::config::{ImapConfig, TlsMode};
use crate::parse::{self, ParseOptions};
use async_imap::imap_proto::{Response, Status};
use async_imap::{Client, Session};
use carebridge_contract::config::ConfigError;
use carebridge_contract::{
    AccountId, AdapterError, Inbound, InboundContext, Receipt, Redacted, SourceKey, Submission, Task,
};
use futures::TryStreamExt;
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::{debug, error, info, warn};

/// How long a receipt is still awaited after shutdown fired, so the message in hand is finished.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The first reconnection / retry delay; it doubles up to the configured maximum.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Cap on the wait before retrying a message the router could not take.
const MAX_UNAVAILABLE_BACKOFF: Duration = Duration::from_secs(60);

/// The IMAP side of one email account.
pub struct ImapInbound {
    host: String,
    port: u16,
    tls: TlsMode,
    server_name: ServerName<'static>,
    tls_config: Arc<rustls::ClientConfig>,
    username: String,
    password: Redacted<String>,
    folder: String,
    processed_folder: Option<String>,
    idle: bool,
    poll: Duration,
    idle_resync: Duration,
    timeout: Duration,
    reconnect_max: Duration,
    max_message_bytes: u64,
    parse: ParseOptions,
}

impl std::fmt::Debug for ImapInbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapInbound").field("port", &self.port).field("tls", &self.tls).finish_non_exhaustive()
    }
}

impl ImapInbound {
    /// Resolves the config: reads the password and CA file (I/O), builds the TLS config. Does
    /// not connect.
    pub(crate) fn new(
        cfg: &crate::Config,
        imap: &ImapConfig,
        config_dir: &std::path::Path,
    ) -> Result<Self, AdapterError> {
        let password = carebridge_contract::config::load_secret(&imap.password_env, &imap.password_file, config_dir)?
            .ok_or_else(|| ConfigError::Missing { what: "imap password_env or password_file".into() })?;
        let extra_roots = match &imap.ca_file {
            Some(path) => crate::tls::read_ca_file(&config_dir.join(path))?,
            None => Vec::new(),
        };
        let tls_config = crate::tls::client_config(&extra_roots)?;
        let server_name = crate::tls::server_name(imap.tls_name.as_deref().unwrap_or(&imap.host))?;
        let max_attachment = usize::try_from(cfg.max_attachment_bytes).unwrap_or(usize::MAX);
        Ok(Self {
            host: imap.host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port: imap.port(),
            tls: imap.tls,
            server_name,
            tls_config,
            username: imap.username.clone(),
            password,
            folder: imap.folder.clone(),
            processed_folder: imap.processed_folder.clone(),
            idle: imap.idle,
            poll: Duration::from_secs(imap.poll_secs.max(1)),
            idle_resync: Duration::from_secs(imap.idle_resync_secs.clamp(1, crate::config::MAX_IDLE_RESYNC_SECS)),
            timeout: Duration::from_secs(imap.timeout_secs.max(1)),
            reconnect_max: Duration::from_secs(imap.reconnect_max_secs.max(1)),
            max_message_bytes: cfg.max_message_bytes,
            parse: ParseOptions::new(&cfg.address, max_attachment),
        })
    }
}

impl ImapInbound {
    /// Connects, logs in and logs out once: the environment check of `carebridge check-config`,
    /// so a wrong password, a closed port or a certificate the CA file does not vouch for is
    /// reported before the daemon starts (where the reader would only retry and log). The error
    /// says what failed (connect, tls, login, …), never the password.
    pub async fn check_login(self, account: AccountId) -> Result<(), AdapterError> {
        let (submitter, _router) = carebridge_contract::Submitter::channel(1);
        let (host, port) = (self.host.clone(), self.port);
        let runner = Runner {
            cfg: self,
            cx: InboundContext {
                account,
                submitter,
                shutdown: tokio_util::sync::CancellationToken::new(),
                health: carebridge_contract::HealthReporter::new(),
            },
        };
        match runner.connect().await {
            Ok((mut session, _)) => {
                runner.logout(&mut session).await;
                Ok(())
            }
            Err(e) => Err(AdapterError::Connection(format!("IMAP {host}:{port}: {e}"))),
        }
    }
}

impl Inbound for ImapInbound {
    fn run(self: Box<Self>, cx: InboundContext) -> Task {
        Box::pin(async move { Runner { cfg: *self, cx }.run().await })
    }
}

/// A TCP connection, with or without TLS, as one type for async-imap.
#[derive(Debug)]
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a connection ended. Each variant's text is PHI-free (server text and data are not kept).
#[derive(Debug, thiserror::Error)]
enum ImapError {
    #[error("cannot connect ({0:?})")]
    Connect(io::ErrorKind),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("server greeting was not OK")]
    Greeting,
    #[error("login rejected")]
    Login,
    #[error("server refused {0}")]
    Refused(&'static str),
    #[error("timed out during {0}")]
    Timeout(&'static str),
    #[error("connection lost")]
    Lost,
    #[error("unexpected server response during {0}")]
    Protocol(&'static str),
    #[error("i/o error ({0:?})")]
    Io(io::ErrorKind),
}

impl ImapError {
    /// A short tag for logs and metrics.
    fn kind(&self) -> &'static str {
        match self {
            ImapError::Connect(_) => "connect",
            ImapError::Tls(_) => "tls",
            ImapError::Greeting => "greeting",
            ImapError::Login => "login",
            ImapError::Refused(_) => "refused",
            ImapError::Timeout(_) => "timeout",
            ImapError::Lost => "connection_lost",
            ImapError::Protocol(_) => "protocol",
            ImapError::Io(_) => "io",
        }
    }

    fn from_imap(op: &'static str, e: async_imap::error::Error) -> Self {
        use async_imap::error::Error as E;
        match e {
            E::Io(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                ImapError::Lost
            }
            E::Io(io) => ImapError::Io(io.kind()),
            E::Bad(_) | E::No(_) => ImapError::Refused(op),
            E::ConnectionLost => ImapError::Lost,
            _ => ImapError::Protocol(op),
        }
    }
}

/// Drains the responses the server sent outside any command's own answer and says whether one
/// announced new mail (EXISTS or RECENT). Flag updates and the like are dropped, as before.
fn mailbox_grew(session: &mut ImapSession) -> bool {
    let mut grew = false;
    while let Ok(r) = session.unsolicited_responses.try_recv() {
        grew |= matches!(
            r,
            async_imap::types::UnsolicitedResponse::Exists(_) | async_imap::types::UnsolicitedResponse::Recent(_)
        );
    }
    grew
}

/// Doubling delays with a cap.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self { next: FIRST_BACKOFF.min(max), max }
    }
    fn reset(&mut self) {
        self.next = FIRST_BACKOFF.min(self.max);
    }
    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// What the server offers that changes how we work.
#[derive(Clone, Copy, Debug)]
struct Caps {
    idle: bool,
    mv: bool,
    uidplus: bool,
}

/// Why a connection's life ended without an error.
enum Stop {
    Shutdown,
    RouterClosed,
}

/// The outcome of one pass over the folder.
enum Sync {
    Done,
    Unavailable,
    Stop(Stop),
}

type ImapSession = Session<Conn>;

struct Runner {
    cfg: ImapInbound,
    cx: InboundContext,
}

impl Runner {
    fn account(&self) -> &AccountId {
        &self.cx.account
    }

    async fn run(self) -> Result<(), AdapterError> {
        let mut backoff = Backoff::new(self.cfg.reconnect_max);
        loop {
            if self.cx.shutdown.is_cancelled() {
                break;
            }
            match self.connection(&mut backoff).await {
                Ok(Stop::Shutdown) => break,
                Ok(Stop::RouterClosed) => {
                    info!(account = %self.account(), "Router closed; IMAP reader stopping.");
                    return Err(AdapterError::RouterClosed);
                }
                Err(e) => {
                    self.cx.health.down(e.kind());
                    let wait = backoff.next_delay();
                    if matches!(e, ImapError::Login) {
                        error!(account = %self.account(), error_kind = e.kind(), error = %e, retry_in_secs = wait.as_secs(), "IMAP login rejected; check the credentials. Reconnecting.");
                    } else {
                        warn!(account = %self.account(), error_kind = e.kind(), error = %e, retry_in_secs = wait.as_secs(), "IMAP connection failed; reconnecting.");
                    }
                    if self.sleep(wait).await {
                        break;
                    }
                }
            }
        }
        info!(account = %self.account(), "IMAP reader stopped.");
        Ok(())
    }

    /// Sleeps unless shutdown fires first; returns true on shutdown.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.cx.shutdown.cancelled() => true,
        }
    }

    /// Runs `fut` with the per-command timeout.
    async fn op<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, async_imap::error::Error>>,
    ) -> Result<T, ImapError> {
        match tokio::time::timeout(self.cfg.timeout, fut).await {
            Err(_) => Err(ImapError::Timeout(what)),
            Ok(r) => r.map_err(|e| ImapError::from_imap(what, e)),
        }
    }

    /// One connection's life: connect, then sync and wait until shutdown or an error.
    async fn connection(&self, backoff: &mut Backoff) -> Result<Stop, ImapError> {
        let connected = tokio::select! {
            r = self.connect() => r?,
            _ = self.cx.shutdown.cancelled() => return Ok(Stop::Shutdown),
        };
        let (mut session, caps) = connected;
        let mailbox = self.op("select", session.select(&self.cfg.folder)).await?;
        let uidvalidity = mailbox.uid_validity.ok_or(ImapError::Protocol("select (no UIDVALIDITY)"))?;
        if let Some(dest) = &self.cfg.processed_folder {
            // Create it if missing; "already exists" is the usual answer and fine.
            let _ = self.op("create", session.create(dest)).await;
        }
        let use_idle = self.cfg.idle && caps.idle;
        info!(
            account = %self.account(),
            uidvalidity,
            idle = use_idle,
            move_supported = caps.mv,
            "IMAP connected."
        );
        self.cx.health.up();
        let mut unavailable = Backoff::new(MAX_UNAVAILABLE_BACKOFF);
        let mut first_wait = true;
        loop {
            while session.unsolicited_responses.try_recv().is_ok() {}
            match self.sync(&mut session, uidvalidity, caps).await? {
                Sync::Done => {
                    backoff.reset();
                    unavailable.reset();
                    // Mail that arrived after the SEARCH was announced (`* n EXISTS`) during one
                    // of the sync's own commands (a FETCH, the acknowledging STORE), and the server
                    // announces a change once: an IDLE now would not hear of it and the message
                    // would wait for `idle_resync_secs`. Look again at once instead.
                    if mailbox_grew(&mut session) {
                        debug!(account = %self.account(), "IMAP mail arrived during the sync; looking again.");
                        continue;
                    }
                }
                Sync::Unavailable => {
                    let wait = unavailable.next_delay();
                    warn!(account = %self.account(), retry_in_secs = wait.as_secs(), "Router unavailable; message left unread at the source for a retry.");
                    if self.sleep(wait).await {
                        self.logout(&mut session).await;
                        return Ok(Stop::Shutdown);
                    }
                    continue;
                }
                Sync::Stop(stop) => {
                    self.logout(&mut session).await;
                    return Ok(stop);
                }
            }
            if use_idle {
                if first_wait {
                    info!(account = %self.account(), resync_secs = self.cfg.idle_resync.as_secs(), "IMAP idle, waiting for new mail.");
                } else {
                    debug!(account = %self.account(), "IMAP idle.");
                }
                let (s, shutdown) = self.idle(session).await?;
                session = s;
                if shutdown {
                    self.logout(&mut session).await;
                    return Ok(Stop::Shutdown);
                }
            } else {
                if first_wait {
                    info!(account = %self.account(), poll_secs = self.cfg.poll.as_secs(), "IMAP polling for new mail.");
                }
                if self.sleep(self.cfg.poll).await {
                    self.logout(&mut session).await;
                    return Ok(Stop::Shutdown);
                }
            }
            first_wait = false;
        }
    }

    async fn logout(&self, session: &mut ImapSession) {
        let _ = self.op("logout", session.logout()).await;
    }

    async fn connect(&self) -> Result<(ImapSession, Caps), ImapError> {
        let tcp = tokio::time::timeout(self.cfg.timeout, TcpStream::connect((self.cfg.host.as_str(), self.cfg.port)))
            .await
            .map_err(|_| ImapError::Timeout("connect"))?
            .map_err(|e| ImapError::Connect(e.kind()))?;
        let _ = tcp.set_nodelay(true);
        let client = match self.cfg.tls {
            TlsMode::Implicit => {
                let tls = self.tls_handshake(tcp).await?;
                let mut client = Client::new(Conn::Tls(Box::new(tls)));
                self.greeting(&mut client).await?;
                client
            }
            TlsMode::Starttls => {
                let mut client = Client::new(Conn::Plain(tcp));
                self.greeting(&mut client).await?;
                self.op("starttls", client.run_command_and_check_ok("STARTTLS", None)).await?;
                let Conn::Plain(tcp) = client.into_inner() else {
                    return Err(ImapError::Protocol("starttls"));
                };
                let tls = self.tls_handshake(tcp).await?;
                Client::new(Conn::Tls(Box::new(tls)))
            }
            TlsMode::Plain => {
                let mut client = Client::new(Conn::Plain(tcp));
                self.greeting(&mut client).await?;
                client
            }
        };
        let mut session =
            match tokio::time::timeout(self.cfg.timeout, client.login(&self.cfg.username, self.cfg.password.expose()))
                .await
            {
                Err(_) => return Err(ImapError::Timeout("login")),
                Ok(Err((async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_), _))) => {
                    return Err(ImapError::Login);
                }
                Ok(Err((e, _))) => return Err(ImapError::from_imap("login", e)),
                Ok(Ok(s)) => s,
            };
        let caps = self.op("capability", session.capabilities()).await?;
        let caps = Caps { idle: caps.has_str("IDLE"), mv: caps.has_str("MOVE"), uidplus: caps.has_str("UIDPLUS") };
        Ok((session, caps))
    }

    async fn tls_handshake(&self, tcp: TcpStream) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ImapError> {
        let connector = tokio_rustls::TlsConnector::from(self.cfg.tls_config.clone());
        tokio::time::timeout(self.cfg.timeout, connector.connect(self.cfg.server_name.clone(), tcp))
            .await
            .map_err(|_| ImapError::Timeout("tls handshake"))?
            .map_err(|e| ImapError::Tls(e.to_string()))
    }

    async fn greeting(&self, client: &mut Client<Conn>) -> Result<(), ImapError> {
        let greeting = tokio::time::timeout(self.cfg.timeout, client.read_response())
            .await
            .map_err(|_| ImapError::Timeout("greeting"))?
            .map_err(|e| ImapError::Io(e.kind()))?
            .ok_or(ImapError::Lost)?;
        match greeting.parsed() {
            Response::Data { status: Status::Ok, .. } => Ok(()),
            _ => Err(ImapError::Greeting),
        }
    }

    /// Processes every message not yet acknowledged, oldest first.
    async fn sync(&self, session: &mut ImapSession, uidvalidity: u32, caps: Caps) -> Result<Sync, ImapError> {
        let query = if self.cfg.processed_folder.is_some() { "UNDELETED" } else { "UNSEEN UNDELETED" };
        let mut uids: Vec<u32> = self.op("search", session.uid_search(query)).await?.into_iter().collect();
        uids.sort_unstable();
        if !uids.is_empty() {
            debug!(account = %self.account(), pending = uids.len(), "IMAP messages to process.");
        }
        for uid in uids {
            if self.cx.shutdown.is_cancelled() {
                return Ok(Sync::Stop(Stop::Shutdown));
            }
            let source = SourceKey { account: self.account().clone(), native_id: format!("{uidvalidity}:{uid}") };
            let Some(submission) = self.fetch(session, uid, source).await? else {
                continue; // expunged meanwhile by someone else
            };
            let submission = keyed_by_content(submission);
            let source = submission.source().clone();
            let malformed = matches!(submission, Submission::Malformed { .. });
            let receipt = self.submit(submission).await;
            if !receipt.may_ack() {
                if self.cx.submitter.is_closed() {
                    return Ok(Sync::Stop(Stop::RouterClosed));
                }
                return Ok(Sync::Unavailable);
            }
            self.ack(session, uid, caps).await?;
            match &receipt {
                Receipt::Recorded(id) => {
                    info!(account = %self.account(), source = %source.native_id, record_id = %id, "Message recorded; acknowledged at the source.")
                }
                Receipt::Duplicate(id) => {
                    info!(account = %self.account(), source = %source.native_id, record_id = %id, "Message already recorded; acknowledged at the source.")
                }
                Receipt::Quarantined { id, reason } => {
                    warn!(account = %self.account(), source = %source.native_id, record_id = %id, reason = %reason, malformed, "Message quarantined; acknowledged at the source.")
                }
                Receipt::Unavailable => {}
            }
        }
        Ok(Sync::Done)
    }

    /// Fetches one message without setting `\Seen`, and parses it. `None` if it is gone.
    async fn fetch(
        &self,
        session: &mut ImapSession,
        uid: u32,
        source: SourceKey,
    ) -> Result<Option<Submission>, ImapError> {
        let set = uid.to_string();
        let sizes = self
            .op("fetch", async {
                let stream = session.uid_fetch(&set, "(UID RFC822.SIZE)").await?;
                stream.try_collect::<Vec<_>>().await
            })
            .await?;
        let Some(size) = sizes.iter().find(|f| f.uid == Some(uid)).and_then(|f| f.size) else {
            return Ok(None);
        };
        if u64::from(size) > self.cfg.max_message_bytes {
            let fetched = self
                .op("fetch", async {
                    let stream = session.uid_fetch(&set, "(UID BODY.PEEK[HEADER])").await?;
                    stream.try_collect::<Vec<_>>().await
                })
                .await?;
            let headers = fetched.iter().find(|f| f.uid == Some(uid)).and_then(|f| f.header()).unwrap_or_default();
            warn!(account = %self.account(), source = %source.native_id, size, "Message over the size limit; quarantining its headers only.");
            return Ok(Some(parse::oversized_message(
                source,
                headers.to_vec(),
                u64::from(size),
                self.cfg.max_message_bytes,
            )));
        }
        let fetched = self
            .op("fetch", async {
                let stream = session.uid_fetch(&set, "(UID BODY.PEEK[])").await?;
                stream.try_collect::<Vec<_>>().await
            })
            .await?;
        let Some(raw) = fetched.iter().find(|f| f.uid == Some(uid)).and_then(|f| f.body()) else {
            return Ok(None);
        };
        Ok(Some(parse::parse_message(source, raw.to_vec(), &self.cfg.parse)))
    }

    /// Submits and waits for the receipt; after shutdown fired, waits a little longer so the
    /// message in hand is finished rather than abandoned.
    async fn submit(&self, submission: Submission) -> Receipt {
        let fut = self.cx.submitter.submit(submission);
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => r,
            _ = self.cx.shutdown.cancelled() => {
                tokio::time::timeout(SHUTDOWN_GRACE, fut).await.unwrap_or(Receipt::Unavailable)
            }
        }
    }

    /// Acknowledges one recorded message: `\Seen`, then a move when a processed folder is set.
    async fn ack(&self, session: &mut ImapSession, uid: u32, caps: Caps) -> Result<(), ImapError> {
        let set = uid.to_string();
        self.store(session, &set, "+FLAGS.SILENT (\\Seen)").await?;
        let Some(dest) = &self.cfg.processed_folder else {
            return Ok(());
        };
        if caps.mv {
            return self.op("move", session.uid_mv(&set, dest)).await;
        }
        self.op("copy", session.uid_copy(&set, dest)).await?;
        self.store(session, &set, "+FLAGS.SILENT (\\Deleted)").await?;
        if caps.uidplus {
            self.op("expunge", async {
                let stream = session.uid_expunge(&set).await?;
                stream.try_collect::<Vec<_>>().await
            })
            .await?;
        } else {
            self.op("expunge", async {
                let stream = session.expunge().await?;
                stream.try_collect::<Vec<_>>().await
            })
            .await?;
        }
        Ok(())
    }

    async fn store(&self, session: &mut ImapSession, set: &str, flags: &str) -> Result<(), ImapError> {
        self.op("store", async {
            let stream = session.uid_store(set, flags).await?;
            stream.try_collect::<Vec<_>>().await
        })
        .await
        .map(|_| ())
    }

    /// IDLE until the server reports a change, `idle_resync` passes or shutdown fires. Returns
    /// the session and whether shutdown fired.
    async fn idle(&self, session: ImapSession) -> Result<(ImapSession, bool), ImapError> {
        let mut handle = session.idle();
        self.op("idle", handle.init()).await?;
        let outcome = {
            let (wait, _interrupt) = handle.wait_with_timeout(self.cfg.idle_resync);
            tokio::select! {
                r = wait => Some(r),
                _ = self.cx.shutdown.cancelled() => None,
            }
        };
        if let Some(Err(e)) = outcome {
            return Err(ImapError::from_imap("idle", e));
        }
        let session = self.op("idle done", handle.done()).await?;
        Ok((session, outcome.is_none()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn errors_have_phi_free_kinds() {
        let e = ImapError::from_imap("fetch", async_imap::error::Error::No("some server text".into()));
        assert_eq!(e.kind(), "refused");
        assert_eq!(e.to_string(), "server refused fetch");
        let lost = ImapError::from_imap("idle", async_imap::error::Error::Io(io::ErrorKind::UnexpectedEof.into()));
        assert_eq!(lost.kind(), "connection_lost");
    }
}

/// Gives a parsed message a source key of its own identity instead of its place in the mailbox,
/// so that a copy the mail system delivered twice is recorded once: Postfix retries an LMTP
/// delivery whose answer was lost (Dovecot restarting answers `421` after it stored the
/// message), and the mailbox then holds two copies under two UIDs. The key is a digest of the
/// Message-ID with what the message says (subject, text, attachments): a redelivered copy has
/// the same, while two different messages that reuse a Message-ID (some clients do) differ and
/// are both recorded. Without a Message-ID, and for malformed input, the UID key stays.
fn keyed_by_content(submission: Submission) -> Submission {
    let Submission::Message(mut env) = submission else { return submission };
    let Some(message_id) = env.native_message_id.as_deref().filter(|m| !m.is_empty()) else {
        return Submission::Message(env);
    };
    let mut digest = Sha256::new();
    let mut field = |bytes: &[u8]| {
        digest.update((bytes.len() as u64).to_be_bytes());
        digest.update(bytes);
    };
    field(message_id.as_bytes());
    field(env.subject.as_ref().map(|s| s.expose().as_bytes()).unwrap_or_default());
    field(env.body.expose().as_bytes());
    for a in &env.attachments {
        field(a.filename.as_ref().map(|f| f.expose().as_bytes()).unwrap_or_default());
        field(a.content_type.as_bytes());
        field(a.data.expose());
    }
    let hash = digest.finalize();
    // 128 bits of the digest: PHI-free (it is logged), and collision-free in practice.
    env.source.native_id = format!("m:{}", hex::encode(&hash[..16]));
    Submission::Message(env)
}

#[cfg(test)]
mod key_tests {
    use super::*;
    use carebridge_contract::{Address, AddressKind, Envelope};

    fn copy(uid: u32, message_id: Option<&str>, body: &str) -> Submission {
        let source = SourceKey { account: "email.clinic".parse().unwrap(), native_id: format!("7:{uid}") };
        let mut env = Envelope::new(source, Address::new(AddressKind::Email, "ann@patients.test"), body);
        env.native_message_id = message_id.map(str::to_string);
        Submission::Message(env)
    }

    #[test]
    fn a_copy_delivered_twice_has_one_key_and_a_reused_message_id_does_not_merge_two_messages() {
        let first = keyed_by_content(copy(41, Some("abc@patients.test"), "my appointment"));
        let again = keyed_by_content(copy(42, Some("abc@patients.test"), "my appointment"));
        assert_eq!(first.source(), again.source(), "two UIDs, one message");
        assert!(first.source().native_id.starts_with("m:") && !first.source().native_id.contains("patients"));
        let other = keyed_by_content(copy(43, Some("abc@patients.test"), "a different message"));
        assert_ne!(first.source(), other.source());
        let no_id = keyed_by_content(copy(44, None, "my appointment"));
        assert_eq!(no_id.source().native_id, "7:44");
    }
}
