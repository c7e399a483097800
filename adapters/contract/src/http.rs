//! The one way carebridge serves HTTP: every listener (webhook accounts, the Telegram webhook,
//! `[ops]`, `[admin]`) goes through [`serve`], which bounds what a client can hold.
//!
//! `axum::serve` accepts every connection and waits for ever on each: 1,100 idle or half-sent
//! connections exhausted systemd's default 1024 file descriptors, and the next store write failed
//! with "Too many open files" (exit 74). Here:
//!
//! - at most [`Limits::max_connections`] connections are open at once per listener; further
//!   clients wait in the kernel's accept backlog (costing us no descriptor) until one closes, so
//!   the total is bounded by the sum of the caps and the store keeps its descriptors;
//! - a request's head must arrive within [`Limits::header_timeout`] (hyper's header read timeout,
//!   which also closes a keep-alive connection left idle that long), and its body within
//!   [`Limits::body_timeout`] of the head; a slow-loris client is dropped instead of holding a slot;
//! - an accept error (EMFILE, ENFILE, ENOBUFS) pauses accepting briefly and never ends the
//!   listener: a flood must not take the daemon down with it.
//!
//! Only HTTP/1.1 is served: every client of these listeners (form backends, gateways, Telegram,
//! Prometheus, the CLI) speaks it over plain TCP, behind a TLS proxy where needed.

use axum::Router;
use axum::body::Body;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// How long accepting pauses after an accept error (typically EMFILE: no descriptor free).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one listener lets its clients hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// Time for a request's head (request line and headers) to arrive, counted from the
    /// connection's start or the end of the previous response; also the keep-alive idle limit.
    pub header_timeout: Duration,
    /// Time for a request's body to arrive, counted from the end of its head.
    pub body_timeout: Duration,
}

impl Limits {
    /// For listeners that take messages (webhook accounts, the Telegram webhook): room for many
    /// concurrent senders; 10 s for a head and 30 s for a body (1 MiB at 35 KB/s).
    pub const MESSAGES: Limits =
        Limits { max_connections: 256, header_timeout: Duration::from_secs(10), body_timeout: Duration::from_secs(30) };
    /// For the operator's listeners (`[ops]`, `[admin]`): a monitoring host and a few CLI calls.
    pub const OPERATOR: Limits =
        Limits { max_connections: 32, header_timeout: Duration::from_secs(10), body_timeout: Duration::from_secs(10) };
}

impl Default for Limits {
    fn default() -> Self {
        Self::MESSAGES
    }
}

/// The error a request body yields once [`Limits::body_timeout`] has passed: the handler's body
/// read fails (its extractor answers 4xx) and the connection is closed, since the rest of that
/// body will not be read. [`is_body_timeout`] recognises it in an error chain.
#[derive(Debug, thiserror::Error)]
#[error("request body not received in time")]
pub struct BodyTimedOut;

/// Whether `e` or one of its sources is [`BodyTimedOut`] (for a handler that wants to answer 408).
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| e.is::<BodyTimedOut>())
}

/// Serves `app` on `listener` within `limits` until `shutdown` fires, then stops accepting, lets
/// each open connection finish its request in flight (idle ones close at once) and returns when
/// all are closed. Callers that must not wait for ever on a stuck client bound this themselves.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // The slot goes back; a flood of errors is logged once per pause, PHI-free.
                    warn!(error_kind = ?e.kind(), "Cannot accept a connection; pausing briefly.");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Answers are small single writes; Nagle would only add latency on keep-alive.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            serve_connection(stream, app, limits, shutdown).await;
        });
    }
    connections.close();
    connections.wait().await;
}

async fn serve_connection(stream: tokio::net::TcpStream, app: Router, limits: Limits, shutdown: CancellationToken) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let deadline = Instant::now() + limits.body_timeout;
        let request = request
            .map(|body| Body::new(TimedBody { inner: body, deadline: Box::pin(tokio::time::sleep_until(deadline)) }));
        // axum's own glue (readiness, then the call), as `axum::serve` uses it.
        hyper::service::Service::call(&TowerToHyperService::new(app.clone()), request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let finished = tokio::select! {
        finished = connection.as_mut() => finished,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = finished {
        // Timeouts and resets are routine on an open port; nothing here names the client.
        debug!(timeout = e.is_timeout(), incomplete = e.is_incomplete_message(), "Connection ended with an error.");
    }
}

/// A request body that fails with [`BodyTimedOut`] once its deadline passes. Size hint and end of
/// stream are the inner body's, so axum's body limit still refuses an oversized
/// `Content-Length` before reading it.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
