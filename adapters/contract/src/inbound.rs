//! The inbound half of the contract: an adapter turns what its channel delivers into a
//! [`Submission`], hands it to the router through its [`Submitter`] and acknowledges the message
//! to its source **only** if the [`Receipt`] it gets back says so ([`Receipt::may_ack`]).

use crate::{AccountId, AdapterError, Envelope, RecordId, Redacted, SourceKey};
use futures::future::BoxFuture;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What an adapter hands the router: a parsed message, or input it could not parse.
// The variants differ in size, but a submission is moved once into the router's queue and
// consumed there; boxing would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Submission {
    /// A message in the common shape.
    Message(Envelope),
    /// Input the adapter could not turn into an [`Envelope`]. The router stores it in quarantine
    /// (so nothing is lost and the privacy officer can see it) and the adapter acks it, so it is
    /// not fetched again in a loop.
    Malformed {
        /// Where it came from (dedup key, as for messages).
        source: SourceKey,
        /// The raw bytes as received. PHI.
        raw: Redacted<Vec<u8>>,
        /// What was wrong, PHI-free (it is logged and returned to HTTP clients).
        reason: String,
    },
}

impl Submission {
    /// The dedup key of either variant.
    pub fn source(&self) -> &SourceKey {
        match self {
            Submission::Message(e) => &e.source,
            Submission::Malformed { source, .. } => source,
        }
    }
}

/// The router's answer to one submission. Missing answers (router gone, channel closed) are
/// [`Receipt::Unavailable`], never "done": an ack is a value, not a side effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// Recorded durably (flushed to disk): the adapter may ack.
    Recorded(RecordId),
    /// Seen before and already recorded: the adapter may ack again.
    Duplicate(RecordId),
    /// Stored in quarantine durably: the adapter may ack (HTTP answers 400 with the reason).
    Quarantined {
        /// The quarantine entry's id.
        id: RecordId,
        /// What was wrong, PHI-free.
        reason: String,
    },
    /// Not recorded (saturated, shutting down, store failing): the adapter must **not** ack, so
    /// the source redelivers later (HTTP answers 503 with `Retry-After`).
    Unavailable,
}

impl Receipt {
    /// True when the message is durably in the store and the source may forget it.
    pub fn may_ack(&self) -> bool {
        !matches!(self, Receipt::Unavailable)
    }
}

/// One request on the router's queue: the submission and where to send the receipt.
#[derive(Debug)]
pub struct SubmitRequest {
    /// What to record.
    pub submission: Submission,
    /// Where the router answers. Dropping it answers [`Receipt::Unavailable`].
    pub reply: oneshot::Sender<Receipt>,
}

/// An adapter's handle on the router's bounded queue. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Submitter {
    tx: mpsc::Sender<SubmitRequest>,
}

impl Submitter {
    /// A bounded queue of `capacity` requests and the router's end of it. Bounded on purpose:
    /// a full queue makes adapters wait (backpressure), it never drops.
    pub fn channel(capacity: usize) -> (Submitter, mpsc::Receiver<SubmitRequest>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Submitter { tx }, rx)
    }

    /// Submits and waits for the receipt, however long the queue takes. Use from pull-based
    /// sources (IMAP, Telegram polling), whose messages simply wait at the source meanwhile.
    pub async fn submit(&self, submission: Submission) -> Receipt {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(SubmitRequest { submission, reply }).await.is_err() {
            return Receipt::Unavailable;
        }
        rx.await.unwrap_or(Receipt::Unavailable)
    }

    /// Submits, but gives up with [`Receipt::Unavailable`] if the queue has no room within
    /// `wait`. Use from push-based sources (HTTP) that must answer their client in time.
    pub async fn submit_within(&self, submission: Submission, wait: Duration) -> Receipt {
        let permit = match tokio::time::timeout(wait, self.tx.reserve()).await {
            Ok(Ok(permit)) => permit,
            _ => return Receipt::Unavailable,
        };
        let (reply, rx) = oneshot::channel();
        permit.send(SubmitRequest { submission, reply });
        rx.await.unwrap_or(Receipt::Unavailable)
    }

    /// True once the router has stopped taking submissions.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Whether an inbound adapter can receive right now, as it last said. The daemon's readiness
/// check (`/readyz`) and its `Status.` line read it, so an operator sees a mailbox that cannot
/// be reached without reading the adapter's logs.
///
/// PHI-free by construction: the reason is a static tag (`"connect"`, `"login"`, `"timeout"`),
/// never server text, an address or a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Health {
    /// The task has not connected yet.
    #[default]
    Starting,
    /// Connected or listening: messages can arrive.
    Up,
    /// Not connected; the adapter is retrying.
    Down {
        /// What failed, as a short static tag.
        reason: &'static str,
    },
}

impl Health {
    /// True when messages can arrive.
    pub fn is_up(&self) -> bool {
        matches!(self, Health::Up)
    }

    /// `starting`, `up` or `down`, for JSON and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Up => "up",
            Health::Down { .. } => "down",
        }
    }
}

/// `up`, `starting`, or `down(reason)`: the form the status line prints.
impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Down { reason } => write!(f, "down({reason})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The adapter's end of [`Health`]: the adapter reports, the daemon reads the same shared
/// value. Cheap to clone; reporting never blocks on I/O.
#[derive(Clone, Debug, Default)]
pub struct HealthReporter {
    state: Arc<Mutex<Health>>,
}

impl HealthReporter {
    /// A reporter in [`Health::Starting`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Connected (IMAP logged in, getUpdates answered, listener bound).
    pub fn up(&self) {
        self.set(Health::Up);
    }

    /// Not connected; `reason` is a static, PHI-free tag of what failed.
    pub fn down(&self, reason: &'static str) {
        self.set(Health::Down { reason });
    }

    /// The last report.
    pub fn get(&self) -> Health {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, h: Health) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = h;
    }
}

/// Everything an inbound task may touch: no globals (Vector's `SourceContext`).
#[derive(Clone, Debug)]
pub struct InboundContext {
    /// The account this task serves (`webhook.forms`).
    pub account: AccountId,
    /// The router's queue.
    pub submitter: Submitter,
    /// Fires when the daemon stops: finish the message in hand, then return.
    pub shutdown: CancellationToken,
    /// Where the task says whether it is connected: [`HealthReporter::up`] once it can receive,
    /// [`HealthReporter::down`] while it cannot (readiness, status line).
    pub health: HealthReporter,
}

/// A running adapter task (Vector's `Source` shape).
pub type Task = BoxFuture<'static, Result<(), AdapterError>>;

/// An inbound adapter: a task that runs until `cx.shutdown` fires.
pub trait Inbound: Send {
    /// Runs the adapter. It must never ack a message to its source before `submit` returned a
    /// receipt with [`Receipt::may_ack`], and must return soon after `cx.shutdown` fires.
    fn run(self: Box<Self>, cx: InboundContext) -> Task;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Address, AddressKind};

    fn sample() -> Submission {
        let source = SourceKey { account: "webhook.t".parse().unwrap(), native_id: "1".into() };
        Submission::Message(Envelope::new(source, Address::new(AddressKind::Opaque, "u"), "hi"))
    }

    #[tokio::test]
    async fn a_dropped_router_means_unavailable() {
        let (s, rx) = Submitter::channel(1);
        drop(rx);
        assert_eq!(s.submit(sample()).await, Receipt::Unavailable);
    }

    #[tokio::test]
    async fn a_full_queue_times_out_as_unavailable() {
        let (s, mut rx) = Submitter::channel(1);
        let s2 = s.clone();
        // Fill the single slot; nobody reads it yet.
        let first = tokio::spawn(async move { s2.submit(sample()).await });
        tokio::task::yield_now().await;
        let r = s.submit_within(sample(), Duration::from_millis(20)).await;
        assert_eq!(r, Receipt::Unavailable);
        let req = rx.recv().await.unwrap();
        req.reply.send(Receipt::Recorded(RecordId(7))).unwrap();
        assert_eq!(first.await.unwrap(), Receipt::Recorded(RecordId(7)));
        assert!(Receipt::Duplicate(RecordId(1)).may_ack());
        assert!(!Receipt::Unavailable.may_ack());
    }

    #[test]
    fn health_reports_are_shared_between_clones() {
        let adapter = HealthReporter::new();
        let daemon = adapter.clone();
        assert_eq!(daemon.get(), Health::Starting);
        assert!(!daemon.get().is_up());
        adapter.up();
        assert!(daemon.get().is_up());
        assert_eq!(daemon.get().to_string(), "up");
        adapter.down("connect");
        assert_eq!(daemon.get(), Health::Down { reason: "connect" });
        assert_eq!(daemon.get().to_string(), "down(connect)");
        assert_eq!(daemon.get().as_str(), "down");
    }
}
