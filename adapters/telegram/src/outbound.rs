//! The outbound side: one [`Delivery`] → sendMessage (split to fit) and sendDocument per
//! attachment, to `delivery.to` or, when it is `None`, to the staff chat.
//!
//! - Forwards to staff start with a short header (the patient id if known, never a name) and
//!   every message sent is reported in [`Sent::native_ids`] as `<chat_id>:<message_id>`, so a
//!   staff reply to any part maps back to the conversation.
//! - Replies thread under `delivery.in_reply_to` when it names a message in the same chat.
//! - Errors are classified for the outbox: 429 → `Retry { after: retry_after }`; network, 5xx,
//!   and a rejected token or URL (401/404/409, a configuration fault that must not dead-letter
//!   messages) → `Retry`; blocked bot, deactivated user, chat not found and every other 4xx →
//!   `Permanent` with a PHI-free reason.
//! - Telegram has no idempotency key. A delivery split into several messages remembers (in
//!   memory) which parts were already sent, so an outbox retry after a 429 in the middle resends
//!   only the rest. A crash between sending and recording can still duplicate a message.

use crate::api::{ApiError, BotApi, SentMessage};
use crate::config::ParseMode;
use crate::format;
use crate::ratelimit::RateLimiter;
use carebridge_contract::{
    AccountId, AdapterError, AddressKind, Attachment, Delivery, DeliveryId, DeliveryKind, Outbound, SendError, Sent,
};
use futures::future::BoxFuture;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tracing::{debug, warn};

/// Telegram's upload limit for sendDocument through the public Bot API.
const MAX_UPLOAD_BYTES: usize = 50 * 1024 * 1024;
/// How many partly sent deliveries are remembered.
const PROGRESS_CAPACITY: usize = 1024;

/// A Telegram account's sending side.
pub struct TelegramOutbound {
    pub(crate) account: AccountId,
    pub(crate) api: BotApi,
    pub(crate) staff_chat_id: Option<i64>,
    pub(crate) parse_mode: Option<ParseMode>,
    pub(crate) limiter: RateLimiter,
    pub(crate) progress: Mutex<Progress>,
}

/// Native ids of the parts already sent of deliveries that failed part-way.
#[derive(Default)]
pub(crate) struct Progress {
    sent: HashMap<DeliveryId, Vec<String>>,
    order: VecDeque<DeliveryId>,
}

enum Part<'a> {
    Text { text: String, reply_to: Option<i64> },
    Document { attachment: &'a Attachment, index: usize, reply_to: Option<i64> },
}

impl Outbound for TelegramOutbound {
    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(self.send_delivery(delivery))
    }

    fn healthcheck(&self) -> BoxFuture<'_, Result<(), AdapterError>> {
        Box::pin(async move {
            self.api
                .call::<serde_json::Value>("getMe", &serde_json::json!({}))
                .await
                .map(|_| ())
                .map_err(|e| AdapterError::Connection(format!("Telegram getMe failed: {e}")))
        })
    }
}

impl TelegramOutbound {
    async fn send_delivery(&self, delivery: &Delivery) -> Result<Sent, SendError> {
        let chat = self.destination(delivery)?;
        let parts = self.plan(delivery, chat);
        if parts.is_empty() {
            return Err(SendError::permanent("nothing to send: empty text and no attachments"));
        }
        let mut done = self.take_progress(delivery.id);
        for part in parts.iter().skip(done.len()) {
            match self.limiter.reserve(chat) {
                Ok(wait) if wait.is_zero() => {}
                Ok(wait) => tokio::time::sleep(wait).await,
                Err(wait) => {
                    debug!(account = %self.account, delivery_id = %delivery.id, wait_ms = wait.as_millis() as u64, "Rate limit: handing the wait back to the outbox.");
                    self.keep_progress(delivery.id, done);
                    return Err(SendError::Retry {
                        after: Some(wait),
                        reason: "waiting for Telegram's rate limit".to_string(),
                    });
                }
            }
            match self.send_part(chat, part).await {
                Ok(m) => done.push(format!("{chat}:{}", m.message_id)),
                Err(e) => {
                    let err = self.classify(e);
                    if matches!(err, SendError::Retry { .. }) {
                        self.keep_progress(delivery.id, done);
                    }
                    warn!(account = %self.account, delivery_id = %delivery.id, error = %err, "Telegram send failed.");
                    return Err(err);
                }
            }
        }
        debug!(account = %self.account, delivery_id = %delivery.id, messages = done.len(), "Delivery sent to Telegram.");
        Ok(Sent { native_ids: done, outcome: None })
    }

    fn destination(&self, d: &Delivery) -> Result<i64, SendError> {
        match &d.to {
            Some(a) if a.kind == AddressKind::Telegram => a
                .value
                .expose()
                .parse::<i64>()
                .map_err(|_| SendError::permanent("recipient is not a numeric Telegram chat id")),
            Some(_) => Err(SendError::permanent("recipient is not a Telegram address")),
            None => self
                .staff_chat_id
                .ok_or_else(|| SendError::permanent("no recipient and no staff_chat_id configured for this account")),
        }
    }

    /// The messages one delivery becomes, in order. Deterministic, so a retry can skip the parts
    /// already sent.
    fn plan<'a>(&self, d: &'a Delivery, chat: i64) -> Vec<Part<'a>> {
        let reply_to = d.in_reply_to.iter().find_map(|r| {
            let (c, m) = r.split_once(':')?;
            (c.parse::<i64>().ok()? == chat).then_some(m.parse::<i64>().ok()?)
        });
        let header = staff_header(d);
        let mut body = d.body.expose().clone();
        let oversized = d.attachments.iter().filter(|a| a.data.expose().len() > MAX_UPLOAD_BYTES).count();
        for _ in 0..oversized {
            if !body.is_empty() {
                body.push_str("\n\n");
            }
            body.push_str("[carebridge: an attachment larger than Telegram's 50 MB upload limit was not sent]");
        }
        let mut parts: Vec<Part<'a>> = format::compose(header.as_deref(), &body, self.parse_mode)
            .into_iter()
            .map(|text| Part::Text { text, reply_to: None })
            .collect();
        for (index, attachment) in d.attachments.iter().enumerate() {
            if attachment.data.expose().len() <= MAX_UPLOAD_BYTES {
                parts.push(Part::Document { attachment, index, reply_to: None });
            }
        }
        match parts.first_mut() {
            Some(Part::Text { reply_to: r, .. }) | Some(Part::Document { reply_to: r, .. }) => *r = reply_to,
            None => {}
        }
        parts
    }

    async fn send_part(&self, chat: i64, part: &Part<'_>) -> Result<SentMessage, ApiError> {
        match part {
            Part::Text { text, reply_to } => {
                let mut p = serde_json::json!({
                    "chat_id": chat,
                    "text": text,
                    "link_preview_options": {"is_disabled": true},
                });
                if let Some(mode) = self.parse_mode {
                    p["parse_mode"] = mode.as_str().into();
                }
                if let Some(r) = reply_to {
                    p["reply_parameters"] = reply_parameters(*r);
                }
                self.api.call("sendMessage", &p).await
            }
            Part::Document { attachment, index, reply_to } => {
                let name = attachment
                    .filename
                    .as_ref()
                    .map_or_else(|| format!("attachment-{}", index + 1), |n| n.expose().clone());
                let file = || reqwest::multipart::Part::bytes(attachment.data.expose().clone()).file_name(name.clone());
                // An odd declared type: upload without one (Telegram sniffs it).
                let file = file().mime_str(&attachment.content_type).unwrap_or_else(|_| file());
                let mut form = reqwest::multipart::Form::new().text("chat_id", chat.to_string()).part("document", file);
                if let Some(r) = reply_to {
                    form = form.text("reply_parameters", reply_parameters(*r).to_string());
                }
                self.api.call_multipart("sendDocument", form).await
            }
        }
    }

    /// Maps a Bot API failure to what the outbox must do, with a PHI-free reason.
    fn classify(&self, e: ApiError) -> SendError {
        let (code, description, retry_after, migrate) = match &e {
            ApiError::Network(_) | ApiError::BadResponse { .. } => {
                return SendError::retry(format!("Telegram unreachable: {e}"));
            }
            ApiError::Api { code, description, retry_after, migrate_to_chat_id } => {
                (*code, description.as_str(), *retry_after, *migrate_to_chat_id)
            }
        };
        let lower = description.to_ascii_lowercase();
        match code {
            429 => {
                let after = Duration::from_secs(retry_after.unwrap_or(1));
                self.limiter.pause(after);
                SendError::Retry {
                    after: Some(after),
                    reason: "Telegram rate limit (429 Too Many Requests)".to_string(),
                }
            }
            500.. => SendError::retry(format!("Telegram server error ({code})")),
            401 | 404 | 409 => SendError::retry(format!(
                "Telegram rejected the bot token or API URL ({code}); check token_env/token_file and api_url"
            )),
            403 if lower.contains("blocked by the user") => {
                SendError::permanent("Telegram: the bot was blocked by the user (403)")
            }
            403 if lower.contains("user is deactivated") => {
                SendError::permanent("Telegram: the user's account is deactivated (403)")
            }
            403 if lower.contains("kicked") || lower.contains("not a member") => {
                SendError::permanent("Telegram: the bot is not a member of the chat (403)")
            }
            403 => SendError::permanent(format!("Telegram refused the message (403): {description}")),
            400 if migrate.is_some() => SendError::permanent(format!(
                "Telegram: the group was upgraded to a supergroup; set staff_chat_id = {}",
                migrate.unwrap_or_default()
            )),
            400 if lower.contains("chat not found") => SendError::permanent(
                "Telegram: chat not found (400); the user never started the bot or the chat id is wrong",
            ),
            _ => SendError::permanent(format!("Telegram rejected the message ({code}): {description}")),
        }
    }

    fn take_progress(&self, id: DeliveryId) -> Vec<String> {
        let Ok(mut p) = self.progress.lock() else { return Vec::new() };
        p.order.retain(|d| *d != id);
        p.sent.remove(&id).unwrap_or_default()
    }

    fn keep_progress(&self, id: DeliveryId, done: Vec<String>) {
        if done.is_empty() {
            return;
        }
        let Ok(mut p) = self.progress.lock() else { return };
        while p.order.len() >= PROGRESS_CAPACITY {
            if let Some(old) = p.order.pop_front() {
                p.sent.remove(&old);
            }
        }
        p.order.push_back(id);
        p.sent.insert(id, done);
    }
}

fn reply_parameters(message_id: i64) -> serde_json::Value {
    serde_json::json!({"message_id": message_id, "allow_sending_without_reply": true})
}

/// The first lines of a forward to staff: what it is and which patient, never a name, an
/// address or a phone number (the staff chat is on Telegram's servers).
fn staff_header(d: &Delivery) -> Option<String> {
    if d.kind != DeliveryKind::Forward {
        return None;
    }
    let title = d.subject.as_deref().unwrap_or("New patient message");
    let who = match &d.patient_id {
        Some(p) => format!("Patient {}", p.expose()),
        None => "Sender not linked to a patient".to_string(),
    };
    Some(format!("{title}\n{who} · reply to this message to answer"))
}
