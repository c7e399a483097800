//! carebridge's webhook channel: signed JSON over HTTP, in (web forms, SMS gateways, an EHR
//! posting clinicians' replies) and out (the EHR, an SMS gateway's send API).
//!
//! # Configuration
//!
//! One account is one `[webhook.<name>]` table ([`Config`]). It receives when `listen` is set
//! and sends when `url` is set; both may be.
//!
//! ```toml
//! [webhook.forms]
//! secret_file = "secrets/webhook-forms.secret"   # or secret_env = "CAREBRIDGE_FORMS_SECRET"
//! # receiving
//! listen = "127.0.0.1:8181"
//! path = "/v1/messages"            # default
//! max_body_bytes = 1048576         # default (1 MiB); larger requests get 413
//! max_skew_secs = 300              # default; older or future timestamps get 401
//! submit_timeout_ms = 2000         # default; no receipt in time gets 503 + Retry-After
//! from_kind = "phone"              # "phone" | "email" | "opaque" (default)
//! # sending
//! url = "https://ehr.example.test/carebridge/inbox"
//! timeout_ms = 10000               # default
//! ```
//!
//! # Signature scheme
//!
//! Both directions sign every request with the account's shared secret:
//!
//! ```text
//! X-Carebridge-Timestamp: <unix seconds>
//! X-Carebridge-Signature: v1=<hex(HMAC-SHA256(secret, "<timestamp>.<raw body>"))>
//! ```
//!
//! - The secret is used as the bytes of the configured string (not hex- or base64-decoded).
//! - The signed string is the timestamp header's exact text, one `.`, then the raw body bytes
//!   exactly as sent (sign after serializing; do not re-serialize).
//! - The hex digest is lower-case, 64 digits. The receiver compares in constant time.
//! - The receiver refuses timestamps more than `max_skew_secs` (default 300) from its own clock
//!   in either direction, which bounds replays of a captured request; the message `id`
//!   de-duplication covers replays within the window.
//! - During a secret rotation a sender may send several signatures separated by commas
//!   (`v1=<old>,v1=<new>`); one matching is enough.
//!
//! [`sign`] and [`verify`] implement it.
//!
//! # Receiving: `POST {path}`
//!
//! ```json
//! {
//!   "id": "form-2024-000123",
//!   "from": "+1 416 555 0199",
//!   "text": "Hello, I would like to renew my prescription.",
//!   "display_name": "Ann Example",
//!   "conversation": "<token from an earlier delivery>",
//!   "in_reply_to": ["<id of an earlier message>"],
//!   "attachments": [{"filename": "form.pdf", "content_type": "application/pdf", "data_base64": "JVBERi0x..."}]
//! }
//! ```
//!
//! - `id` (required): the client's unique id for the message, 1-200 characters of
//!   `A-Za-z0-9._:-`. It is the de-duplication key: sending the same id again is answered
//!   `duplicate` with the first record's id, so retrying is always safe. Do not put personal
//!   data (phone numbers, names) in it: ids are logged.
//! - `from` (required): the sender, read as `from_kind` says (a phone number loses spaces,
//!   dashes and brackets; an email address is lower-cased).
//! - `text` (required; may be empty only if there are attachments).
//! - `display_name`, `conversation` (the token carebridge sent out with an earlier delivery,
//!   to continue that conversation), `in_reply_to`, `attachments` (standard base64 with
//!   padding): optional. Unknown fields are refused, so a misspelt field is not silently
//!   ignored. The `Content-Type` is not checked; the body must be UTF-8 JSON.
//!
//! Every answer is JSON:
//!
//! | status | body | meaning |
//! | --- | --- | --- |
//! | 202 | `{"status":"recorded","record_id":"rec-0000000042"}` | durably recorded; forget it |
//! | 202 | `{"status":"duplicate","record_id":"rec-0000000042"}` | this `id` was recorded before |
//! | 400 | `{"error":"body is not valid JSON: expected value at line 1 column 1","quarantine_id":"rec-…"}` | signed but malformed: kept in quarantine, do not resend as is |
//! | 401 | `{"error":"signature does not match"}` | missing/bad signature or timestamp out of range; nothing stored |
//! | 413 | `{"error":"body is larger than 1048576 bytes"}` | over `max_body_bytes`; nothing stored |
//! | 408 | `{"error":"body not received in time"}` | body slower than 30 s after the headers; nothing stored, connection closed |
//! | 503 | `{"error":"not recorded, try again later"}` + `Retry-After: 5` | carebridge is busy or stopping; resend the same request later |
//! | 404 / 405 | `{"error":"not found"}` / `{"error":"method not allowed"}` | wrong path / method |
//!
//! A 2xx is sent only after the record is on disk, never before. Error texts never quote the
//! request. `GET /healthz` answers `{"status":"ok"}` (503 once the router has stopped).
//!
//! # Sending
//!
//! Each delivery is one `POST url`, signed as above, with `Content-Type: application/json` and
//! `Idempotency-Key: <delivery id>` (`dlv-0000000042`, the same on every retry of that
//! delivery, so the receiver can drop repeats):
//!
//! ```json
//! {
//!   "delivery_id": "dlv-0000000042",
//!   "record_id": "rec-0000000017",
//!   "kind": "forward",
//!   "conversation": "<token: send it back as `conversation` to answer>",
//!   "to": null,
//!   "patient_id": "P-1001",
//!   "sender": "Ann Example",
//!   "subject": null,
//!   "text": "Hello, I would like to renew my prescription.",
//!   "attachments": [{"filename": "form.pdf", "content_type": "application/pdf", "data_base64": "JVBERi0x..."}],
//!   "in_reply_to": []
//! }
//! ```
//!
//! `kind` is `forward` (a patient's message to the clinic side; `to` is `null`, meaning the
//! receiver's own inbox), `reply` (a clinician's answer to a patient; `to` is
//! `{"kind":"phone","value":"+14165550199"}`, kinds `phone`, `email`, `telegram`, `opaque`) or
//! `notice` (a content-free notice from carebridge).
//!
//! A delivery the privacy policy rerouted to this account (a secure portal) instead of the one
//! it was meant for also carries `"rerouted_from": "webhook.sms"`: the account it was meant to go
//! by, so the portal can tell the patient wrote by SMS (and that only a PHI-free notice went
//! there). The field is absent on every other delivery.
//!
//! The receiver's answer decides what happens next:
//! - 2xx: sent. If the body is JSON with a string `"id"`, that id is remembered, so a later
//!   message whose `in_reply_to` names it joins the conversation. Any other body is fine.
//! - 408, 429, 5xx, timeouts and connection errors: retried later, no sooner than `Retry-After`
//!   (seconds or an HTTP date; capped at one hour).
//! - Any other status (other 4xx, 3xx: redirects are not followed): given up and dead-lettered.
//!
//! The account's health check only opens a TCP connection to the URL's host and port; it sends
//! nothing.
//!
//! # Example: sending a signed message with bash, openssl and curl
//!
//! ```bash
#![doc = include_str!("../docs/send-signed.sh")]
//! ```
//!
//! # Deployment
//!
//! The listener speaks plain HTTP: it does not terminate TLS. Bind it to loopback (the default
//! examples do) or a private interface, and put a TLS reverse proxy (nginx, Caddy) in front of
//! it when clients are on other machines. The signature authenticates requests but does not
//! hide their content. Outbound URLs should be `https://` unless the receiver is on the same
//! host.
//!
//! # Privacy
//!
//! Logs carry the account, record ids, delivery ids, status codes and error kinds; never the
//! body, addresses, names, file names, conversation tokens or the response bodies of receivers.
#![deny(missing_docs)]

pub mod config;
pub mod inbound;
pub mod outbound;
pub mod signature;
pub mod wire;

pub use config::{Config, FromKind};
pub use inbound::WebhookInbound;
pub use outbound::{IDEMPOTENCY_KEY_HEADER, WebhookOutbound};
pub use signature::{SIGNATURE_HEADER, SignatureError, SigningKey, TIMESTAMP_HEADER, sign, verify};

use carebridge_contract::config::ConfigError;
use carebridge_contract::config::{BuildContext, load_secret};
use carebridge_contract::{AdapterError, Inbound, Outbound};
use std::sync::Arc;

/// Builds the account's HTTP listener, or `None` when `listen` is not set. Loads the secret
/// (a missing one is a configuration error); binding happens when the task runs.
pub fn build_inbound(cfg: &Config, cx: &BuildContext) -> Result<Option<Box<dyn Inbound>>, AdapterError> {
    if cfg.listen.is_none() {
        return Ok(None);
    }
    check(cfg, cx)?;
    let key = load_key(cfg, cx)?;
    Ok(WebhookInbound::new(cfg, key).map(|i| Box::new(i) as Box<dyn Inbound>))
}

/// Builds the account's sender, or `None` when `url` is not set.
pub fn build_outbound(cfg: &Config, cx: &BuildContext) -> Result<Option<Arc<dyn Outbound>>, AdapterError> {
    let Some(url) = &cfg.url else { return Ok(None) };
    check(cfg, cx)?;
    let key = load_key(cfg, cx)?;
    let outbound = WebhookOutbound::new(cx.account.clone(), url, cfg.timeout(), key)?;
    Ok(Some(Arc::new(outbound)))
}

/// Refuses to build from a config that does not validate (the daemon validates first; this
/// keeps a skipped validation from turning into a panic in the HTTP router).
fn check(cfg: &Config, cx: &BuildContext) -> Result<(), AdapterError> {
    carebridge_contract::config::ensure_valid(cfg.validate(&cx.account.to_string()))
}

fn load_key(cfg: &Config, cx: &BuildContext) -> Result<SigningKey, AdapterError> {
    match load_secret(&cfg.secret_env, &cfg.secret_file, &cx.config_dir)? {
        Some(secret) => Ok(SigningKey::new(secret.expose().as_bytes())),
        None => Err(ConfigError::Missing { what: format!("{}: `secret_env` or `secret_file`", cx.account) }.into()),
    }
}
