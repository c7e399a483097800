//! The inbound task: long polling with raw getUpdates (or, in webhook mode, the server in
//! [`crate::webhook`]).
//!
//! # Ack = the getUpdates offset
//! Telegram forgets an update once a getUpdates call carries an `offset` greater than its id. We
//! process the updates of a batch one at a time, in order, and move our offset past an update
//! only once its receipt says [`Receipt::may_ack`](carebridge_contract::Receipt::may_ack) (or it
//! was deliberately ignored). On `Unavailable` the rest of the batch is dropped and the next poll,
//! after a back-off, starts again from that update.
//!
//! The offset is sent only while a confirmation is pending; once a call carrying it has been
//! answered, Telegram has recorded it and later polls leave `offset` out ("earliest unconfirmed
//! update"). So a restart needs no stored offset, and when Telegram restarts its update ids at a
//! random value (after a week without updates) a stale offset cannot swallow new updates.

use crate::api::BotApi;
use crate::intake::{Intake, Outcome, Wait};
use crate::webhook::WebhookServer;
use carebridge_contract::{AdapterError, Inbound, InboundContext, Task};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Updates per getUpdates call (Telegram's maximum is 100).
const BATCH_LIMIT: u32 = 100;
/// First and largest pause after a failed or stalled poll.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A Telegram account's inbound side, in polling or webhook mode.
pub struct TelegramInbound {
    pub(crate) api: BotApi,
    pub(crate) intake: Arc<Intake>,
    pub(crate) mode: InboundMode,
}

pub(crate) enum InboundMode {
    Polling { timeout_secs: u64 },
    Webhook(WebhookServer),
}

impl TelegramInbound {
    /// Webhook mode: binds the listening socket now and returns its address (useful with port 0
    /// and to fail early on a taken port). Polling mode: `Ok(None)`. [`Inbound::run`] binds
    /// by itself if this was not called.
    pub async fn bind(&mut self) -> Result<Option<SocketAddr>, AdapterError> {
        match &mut self.mode {
            InboundMode::Polling { .. } => Ok(None),
            InboundMode::Webhook(server) => server.bind().await.map(Some),
        }
    }
}

impl Inbound for TelegramInbound {
    fn run(self: Box<Self>, cx: InboundContext) -> Task {
        Box::pin(async move {
            let TelegramInbound { api, intake, mode } = *self;
            match mode {
                InboundMode::Polling { timeout_secs } => {
                    poll(api, intake, cx, timeout_secs).await;
                    Ok(())
                }
                InboundMode::Webhook(server) => server.run(api, intake, cx).await,
            }
        })
    }
}

/// Sleeps for `d` unless shutdown fires first; false if it did.
pub(crate) async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Exponential back-off between `BACKOFF_MIN` and `BACKOFF_MAX`.
struct Backoff(Duration);

impl Backoff {
    fn next(&mut self, at_least: Option<Duration>) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        at_least.map_or(d, |a| a.max(d))
    }
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

async fn poll(api: BotApi, intake: Arc<Intake>, cx: InboundContext, timeout_secs: u64) {
    let account = cx.account.clone();
    // getUpdates answers 409 while a webhook is set (say, after switching modes).
    match api.call::<bool>("deleteWebhook", &serde_json::json!({"drop_pending_updates": false})).await {
        Ok(_) => {
            // The API answered: the poller is ready, though its first long poll may be held for
            // the whole timeout when nothing is waiting (25 s by default); readiness must not
            // wait for it (issue #15, item 7).
            cx.health.up();
            debug!(account = %account, "Webhook cleared for long polling.");
        }
        Err(e) => {
            cx.health.down(e.kind());
            warn!(account = %account, error = %e, "deleteWebhook failed; polling anyway.");
        }
    }
    info!(account = %account, timeout_secs, "Long polling started.");

    // The offset still to confirm to Telegram, if any (see the module docs).
    let mut pending_offset: Option<i64> = None;
    let mut backoff = Backoff(BACKOFF_MIN);
    while !cx.shutdown.is_cancelled() {
        let sent_offset = pending_offset;
        let batch = tokio::select! {
            _ = cx.shutdown.cancelled() => break,
            r = api.get_updates(sent_offset, timeout_secs, BATCH_LIMIT) => r,
        };
        let batch = match batch {
            Ok(b) => {
                cx.health.up();
                b
            }
            Err(e) => {
                cx.health.down(e.kind());
                let wait = backoff.next(e.retry_after());
                warn!(account = %account, error = %e, wait_ms = wait.as_millis() as u64, "getUpdates failed; retrying.");
                if !sleep_or_shutdown(wait, &cx.shutdown).await {
                    break;
                }
                continue;
            }
        };
        // Telegram has seen `sent_offset` (it answered the call carrying it): no need to repeat it.
        pending_offset = None;
        let mut progressed = batch.is_empty();
        let mut stalled = false;
        for raw in &batch {
            let text = raw.get();
            let id = crate::parse::update_id(text);
            match intake.handle(text.as_bytes(), &cx.submitter, Wait::Forever).await {
                Outcome::Ack => {
                    if let Some(id) = id {
                        pending_offset = Some(id + 1);
                        progressed = true;
                    }
                }
                Outcome::Retry => {
                    stalled = true;
                    break;
                }
            }
            if cx.shutdown.is_cancelled() {
                break;
            }
        }
        if stalled || !progressed {
            // The router is unavailable, a file is unreachable, or the batch had nothing we can
            // confirm: do not spin on the same updates.
            if !sleep_or_shutdown(backoff.next(None), &cx.shutdown).await {
                break;
            }
        } else {
            backoff.reset();
        }
    }

    // Confirm what was recorded, so a restart does not fetch it again (it would be a harmless
    // duplicate). `limit = 1, timeout = 0` returns at once; what it returns stays unconfirmed.
    if let Some(offset) = pending_offset {
        let confirm = api.get_updates(Some(offset), 0, 1);
        match tokio::time::timeout(Duration::from_secs(5), confirm).await {
            Ok(Ok(_)) => debug!(account = %account, "Offset confirmed at shutdown."),
            _ => debug!(account = %account, "Offset not confirmed at shutdown; updates will be deduplicated."),
        }
    }
    info!(account = %account, "Long polling stopped.");
}
