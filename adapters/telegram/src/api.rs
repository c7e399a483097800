//! A thin Bot API client over reqwest: `{api_url}/bot<token>/<method>` with JSON or multipart in,
//! Telegram's `{"ok":…}` envelope out.
//!
//! Why not teloxide-core's `Bot`? We keep teloxide's *types* (`Update` is parsed with them in
//! [`crate::parse`]) but do the HTTP ourselves, because the adapter needs things the typed client
//! hides:
//! - the raw text of every update of a getUpdates batch, so a malformed one can be quarantined
//!   byte for byte (teloxide turns it into `UpdateKind::Error` and drops the bytes);
//! - the HTTP status and `error_code` of every failure, so 5xx means *retry* and 4xx means *give
//!   up* (teloxide maps a JSON 5xx to `ApiError::Unknown` and first sleeps 10 s on any 5xx);
//! - a streaming download that stops at `max_attachment_bytes`.
//!
//! The token is part of every URL, so no URL ever reaches an error or a log:
//! [`reqwest::Error::without_url`] strips it before anything is formatted.

use carebridge_contract::Redacted;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::time::Duration;

/// How long an ordinary call (sendMessage, getFile, …) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a file download may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed Bot API call, classified so callers can decide between retrying and giving up.
/// Carries no URL and no message content.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ApiError {
    /// The request did not complete (connect failure, timeout, reset).
    #[error("network error: {0}")]
    Network(String),
    /// Telegram answered with its error envelope.
    #[error("Bot API error {code}: {description}")]
    Api {
        /// `error_code` (equal to the HTTP status on the real Bot API).
        code: i64,
        /// Telegram's fixed error description ("Forbidden: bot was blocked by the user").
        description: String,
        /// `parameters.retry_after` on 429.
        retry_after: Option<u64>,
        /// `parameters.migrate_to_chat_id` when a group became a supergroup.
        migrate_to_chat_id: Option<i64>,
    },
    /// The answer was not the Bot API's envelope (a proxy error page, garbage).
    #[error("unexpected response (HTTP {status})")]
    BadResponse {
        /// The HTTP status of that answer.
        status: u16,
    },
}

impl ApiError {
    /// True for failures that may go away by themselves (network, 429, 5xx, odd answers).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            ApiError::Network(_) | ApiError::BadResponse { .. } => true,
            ApiError::Api { code, .. } => *code == 429 || *code >= 500,
        }
    }

    /// A short, PHI-free tag of what failed, for the account's health report.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ApiError::Network(_) => "network",
            ApiError::Api { code: 401 | 404, .. } => "unauthorized",
            ApiError::Api { code: 429, .. } => "rate_limited",
            ApiError::Api { code, .. } if *code >= 500 => "server_error",
            ApiError::Api { .. } => "refused",
            ApiError::BadResponse { .. } => "bad_response",
        }
    }

    /// Telegram's own minimum wait, if it gave one.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Api { retry_after: Some(s), .. } => Some(Duration::from_secs(*s)),
            _ => None,
        }
    }

    fn from_reqwest(e: reqwest::Error) -> Self {
        let e = e.without_url();
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else if e.is_body() || e.is_decode() {
            "response body failed"
        } else {
            "request failed"
        };
        ApiError::Network(kind.to_string())
    }
}

/// The Bot API's response envelope.
#[derive(Deserialize)]
struct Envelope<T> {
    ok: bool,
    result: Option<T>,
    error_code: Option<i64>,
    description: Option<String>,
    parameters: Option<ResponseParameters>,
}

#[derive(Deserialize)]
struct ResponseParameters {
    retry_after: Option<u64>,
    migrate_to_chat_id: Option<i64>,
}

/// The part of a sent `Message` we need back.
#[derive(Deserialize)]
pub(crate) struct SentMessage {
    pub(crate) message_id: i64,
}

/// getFile's answer.
#[derive(Deserialize)]
pub(crate) struct FileInfo {
    pub(crate) file_size: Option<u64>,
    pub(crate) file_path: Option<String>,
}

/// The result of a size-capped download.
pub(crate) enum Download {
    /// The whole file, within the limit.
    Complete(Vec<u8>),
    /// The file is larger than the limit; nothing was kept.
    TooLarge,
}

/// A Bot API endpoint plus the bot's token. Cheap to clone.
#[derive(Clone)]
pub(crate) struct BotApi {
    http: reqwest::Client,
    base: String,
    token: Redacted<String>,
}

impl BotApi {
    /// A client for `base` (no trailing slash) and `token`.
    pub(crate) fn new(base: String, token: Redacted<String>) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .map_err(ApiError::from_reqwest)?;
        Ok(Self { http, base, token })
    }

    fn method_url(&self, method: &str) -> String {
        format!("{}/bot{}/{}", self.base, self.token.expose(), method)
    }

    /// Calls `method` with JSON parameters and decodes `result`.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: &serde_json::Value,
    ) -> Result<T, ApiError> {
        self.call_with_timeout(method, params, CALL_TIMEOUT).await
    }

    async fn call_with_timeout<T: DeserializeOwned>(
        &self,
        method: &str,
        params: &serde_json::Value,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        let resp = self
            .http
            .post(self.method_url(method))
            .json(params)
            .timeout(timeout)
            .send()
            .await
            .map_err(ApiError::from_reqwest)?;
        decode(resp).await
    }

    /// Calls `method` with a multipart form (file uploads).
    pub(crate) async fn call_multipart<T: DeserializeOwned>(
        &self,
        method: &str,
        form: reqwest::multipart::Form,
    ) -> Result<T, ApiError> {
        let resp = self
            .http
            .post(self.method_url(method))
            .multipart(form)
            .timeout(DOWNLOAD_TIMEOUT)
            .send()
            .await
            .map_err(ApiError::from_reqwest)?;
        decode(resp).await
    }

    /// getUpdates, returning each update's raw JSON text. `offset: None` asks for the earliest
    /// unconfirmed update (Telegram remembers what earlier calls confirmed).
    pub(crate) async fn get_updates(
        &self,
        offset: Option<i64>,
        timeout_secs: u64,
        limit: u32,
    ) -> Result<Vec<Box<RawValue>>, ApiError> {
        let mut params = serde_json::json!({
            "timeout": timeout_secs,
            "limit": limit,
            "allowed_updates": ["message", "edited_message"],
        });
        if let Some(o) = offset {
            params["offset"] = o.into();
        }
        // The HTTP timeout must outlast Telegram's long poll.
        let http_timeout = Duration::from_secs(timeout_secs + 15);
        self.call_with_timeout("getUpdates", &params, http_timeout).await
    }

    /// Downloads `{api_url}/file/bot<token>/<file_path>`, stopping as soon as it passes `limit`.
    pub(crate) async fn download(&self, file_path: &str, limit: u64) -> Result<Download, ApiError> {
        let url = format!("{}/file/bot{}/{}", self.base, self.token.expose(), file_path);
        let mut resp = self.http.get(url).timeout(DOWNLOAD_TIMEOUT).send().await.map_err(ApiError::from_reqwest)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ApiError::Api {
                code: i64::from(status.as_u16()),
                description: "file download failed".to_string(),
                retry_after: None,
                migrate_to_chat_id: None,
            });
        }
        if resp.content_length().is_some_and(|n| n > limit) {
            return Ok(Download::TooLarge);
        }
        let mut data = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(ApiError::from_reqwest)? {
            if (data.len() + chunk.len()) as u64 > limit {
                return Ok(Download::TooLarge);
            }
            data.extend_from_slice(&chunk);
        }
        Ok(Download::Complete(data))
    }
}

/// Decodes the Bot API envelope of `resp`, classifying every failure.
async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ApiError> {
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(ApiError::from_reqwest)?;
    let env: Envelope<T> = match serde_json::from_slice(&body) {
        Ok(env) => env,
        // A 200 whose result does not have the expected shape, or a proxy's HTML error page.
        Err(_) => return Err(ApiError::BadResponse { status }),
    };
    match (env.ok, env.result) {
        (true, Some(result)) => Ok(result),
        (true, None) => Err(ApiError::BadResponse { status }),
        (false, _) => {
            let params = env.parameters;
            Err(ApiError::Api {
                code: env.error_code.unwrap_or(i64::from(status)),
                description: sanitise_description(env.description.as_deref().unwrap_or("")),
                retry_after: params.as_ref().and_then(|p| p.retry_after),
                migrate_to_chat_id: params.as_ref().and_then(|p| p.migrate_to_chat_id),
            })
        }
    }
}

/// Telegram's descriptions are fixed English strings, but they are bounded and stripped of
/// control characters before they travel into logs and dead-letter reasons.
fn sanitise_description(d: &str) -> String {
    d.chars().filter(|c| !c.is_control()).take(200).collect()
}
