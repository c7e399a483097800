//! The router's side of the contract, for adapters' own tests (feature `testkit`, dev-only).
//!
//! An adapter is tested against the real [`Submitter`] channel — that channel *is* the
//! contract — with a [`FakeRouter`] at its other end that answers the way the daemon's router
//! does, or holds its answers until the test releases them, or hands each request to the test.
//! [`LogCapture`] collects what the adapter logs for the no-PHI checks, and [`delivery`] builds
//! the [`Delivery`] an outbound test sends. Before this module each adapter's tests wrote their
//! own fake router, slightly differently.

use crate::{
    AccountId, Address, Delivery, DeliveryId, DeliveryKind, Receipt, RecordId, Redacted, SourceKey, Submission,
    SubmitRequest, Submitter,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the waits of this module give an adapter before failing the test (a hang guard,
/// not a timing assertion).
pub const WAIT: Duration = Duration::from_secs(60);

/// How a [`FakeRouter`] answers.
#[derive(Clone, Copy, Debug)]
pub enum Answers {
    /// Like the daemon's router: `Unavailable` to the first `unavailable` submissions, then each
    /// new source is recorded once (`Recorded`, or `Quarantined` for malformed input) and a
    /// repeat is a `Duplicate` of the first record.
    Router {
        /// Submissions answered `Unavailable` first (a store that is briefly down).
        unavailable: usize,
    },
    /// Takes the submissions but never answers (the reply senders stay alive: the adapter
    /// waits, as it would on a router that is stuck).
    Never,
    /// Like `Router { unavailable: 0 }`, but each answer waits until the test calls
    /// [`FakeRouter::release`]: receipts on demand.
    OnDemand,
    /// Every request goes to the test as it is ([`FakeRouter::next_request`]), which answers it.
    ByTest,
}

/// One submission the fake router took, and what it decided to answer (sent at once for
/// [`Answers::Router`], when released for [`Answers::OnDemand`], never for [`Answers::Never`]).
#[derive(Debug)]
pub struct Seen {
    /// The submission.
    pub submission: Submission,
    /// The receipt decided for it.
    pub answer: Receipt,
}

/// The router's end of a real `Submitter::channel`.
pub struct FakeRouter {
    submitter: Submitter,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: mpsc::UnboundedSender<()>,
    requests: Option<mpsc::Receiver<SubmitRequest>>,
    arrivals: Option<mpsc::UnboundedReceiver<usize>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeRouter {
    /// Starts answering as `answers` says. Must be called inside a tokio runtime.
    pub fn start(answers: Answers) -> FakeRouter {
        let (submitter, mut rx) = Submitter::channel(4);
        let (release, mut released) = mpsc::unbounded_channel::<()>();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
        let (arrived, arrivals) = mpsc::unbounded_channel();
        if let Answers::ByTest = answers {
            return FakeRouter { submitter, seen, release, requests: Some(rx), arrivals: Some(arrivals), task: None };
        }
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut recorded: HashMap<SourceKey, RecordId> = HashMap::new();
            let mut held = Vec::new();
            let mut n = 0usize;
            while let Some(req) = rx.recv().await {
                n += 1;
                let unavailable = matches!(answers, Answers::Router { unavailable } if n <= unavailable);
                let answer = if unavailable {
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
                let index = {
                    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                    log.push(Seen { submission: req.submission, answer: answer.clone() });
                    log.len() - 1
                };
                let _ = arrived.send(index);
                match answers {
                    Answers::Never => held.push(req.reply),
                    Answers::OnDemand => {
                        if released.recv().await.is_some() {
                            let _ = req.reply.send(answer);
                        }
                    }
                    _ => {
                        let _ = req.reply.send(answer);
                    }
                }
            }
        });
        FakeRouter { submitter, seen, release, requests: None, arrivals: Some(arrivals), task: Some(task) }
    }

    /// A submitter for the adapter under test.
    pub fn submitter(&self) -> Submitter {
        self.submitter.clone()
    }

    /// How many submissions arrived so far.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether none arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least `n` submissions arrived; fails the test after [`WAIT`].
    pub async fn wait_for(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.len() < n {
            assert!(tokio::time::Instant::now() < deadline, "the router saw {} of {n} submissions", self.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs `f` on submission number `i` (0-based, in arrival order).
    pub fn with<R>(&self, i: usize, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.seen.lock().unwrap_or_else(PoisonError::into_inner)[i])
    }

    /// The index of the next submission to arrive (for tests that follow submissions one by
    /// one); `None` if it did not arrive within `within`.
    pub async fn next_arrival(&mut self, within: Duration) -> Option<usize> {
        let arrivals = self.arrivals.as_mut()?;
        tokio::time::timeout(within, arrivals.recv()).await.ok().flatten()
    }

    /// [`Answers::OnDemand`]: lets the next `n` answers go.
    pub fn release(&self, n: usize) {
        for _ in 0..n {
            let _ = self.release.send(());
        }
    }

    /// [`Answers::ByTest`]: the next request, for the test to answer; `None` if none arrived
    /// within `within`. Panics if the submitters are gone (the adapter stopped early).
    pub async fn next_request(&mut self, within: Duration) -> Option<SubmitRequest> {
        let rx = self.requests.as_mut().expect("next_request needs Answers::ByTest");
        match tokio::time::timeout(within, rx.recv()).await {
            Ok(Some(req)) => Some(req),
            Ok(None) => panic!("every submitter was dropped while the test waited for a submission"),
            Err(_) => None,
        }
    }
}

impl FakeRouter {
    /// [`Answers::ByTest`]: the next request; fails the test, naming `what` was awaited, if
    /// none arrives within [`WAIT`].
    pub async fn expect_request(&mut self, what: &str) -> SubmitRequest {
        match self.next_request(WAIT).await {
            Some(req) => req,
            None => panic!("no submission arrived: {what}"),
        }
    }

    /// [`Answers::ByTest`]: true if no request arrives within `within` (after everything was
    /// answered: nothing comes back).
    pub async fn quiet_for(&mut self, within: Duration) -> bool {
        self.next_request(within).await.is_none()
    }
}

impl Drop for FakeRouter {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Log lines written while the guard of [`LogCapture::install`] is alive on this thread, or
/// everywhere after [`LogCapture::install_global`].
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Captures every event of this thread (use a current-thread runtime) at TRACE level.
    pub fn install() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let cap = LogCapture::default();
        let guard = tracing::subscriber::set_default(cap.subscriber("trace"));
        (cap, guard)
    }

    /// Captures every event of the process that `filter` (an `EnvFilter` directive such as
    /// `carebridge_email=debug`) lets through; the first call installs it, later ones return
    /// the same capture.
    pub fn install_global(filter: &str) -> LogCapture {
        static GLOBAL: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let cap = LogCapture::default();
                let _ = tracing::subscriber::set_global_default(cap.subscriber(filter));
                cap
            })
            .clone()
    }

    fn subscriber(&self, filter: &str) -> impl tracing::Subscriber + Send + Sync + use<> {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

/// A delivery for an outbound test: `body` to `to` (or the account's default destination) on
/// `account`, as the router would queue it. Change the fields a test needs.
pub fn delivery(account: &AccountId, id: u64, kind: DeliveryKind, to: Option<Address>, body: &str) -> Delivery {
    Delivery {
        id: DeliveryId(id),
        record_id: RecordId(id),
        account: account.clone(),
        kind,
        to,
        conversation: Redacted::new(format!("conversation-{id}")),
        patient_id: None,
        sender_label: None,
        subject: None,
        body: Redacted::new(body.to_string()),
        attachments: Vec::new(),
        in_reply_to: Vec::new(),
        rerouted_from: None,
        filed_as: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AddressKind, Envelope};

    fn source(n: &str) -> SourceKey {
        SourceKey { account: "webhook.forms".parse().unwrap(), native_id: n.to_string() }
    }

    fn message(n: &str) -> Submission {
        Submission::Message(Envelope::new(source(n), Address::new(AddressKind::Phone, "+15550100"), "hello"))
    }

    #[tokio::test]
    async fn answers_like_the_router_after_the_unavailable_ones() {
        let router = FakeRouter::start(Answers::Router { unavailable: 1 });
        let s = router.submitter();
        assert_eq!(s.submit(message("a")).await, Receipt::Unavailable);
        assert_eq!(s.submit(message("a")).await, Receipt::Recorded(RecordId(1)));
        assert_eq!(s.submit(message("a")).await, Receipt::Duplicate(RecordId(1)));
        let malformed =
            Submission::Malformed { source: source("c"), raw: Redacted::new(b"{".to_vec()), reason: "x".into() };
        assert_eq!(s.submit(malformed).await, Receipt::Quarantined { id: RecordId(2), reason: "x".into() });
        assert_eq!(router.len(), 4);
        assert!(router.with(3, |seen| seen.submission.source().native_id == "c"));
    }

    #[tokio::test]
    async fn on_demand_answers_wait_for_release() {
        let mut router = FakeRouter::start(Answers::OnDemand);
        let s = router.submitter();
        let pending = tokio::spawn(async move { s.submit(message("a")).await });
        assert_eq!(router.next_arrival(WAIT).await, Some(0));
        assert!(!pending.is_finished());
        router.release(1);
        assert_eq!(pending.await.unwrap(), Receipt::Recorded(RecordId(1)));
    }
}
