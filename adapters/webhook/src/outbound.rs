//! Sending deliveries: one signed JSON POST per delivery, over one keep-alive client per
//! account, classified into "sent", "retry later" or "give up" for the outbox.
//!
//! Reasons handed back are PHI-free by construction: an HTTP status code or a transport error
//! kind, never the response body (a receiver may echo the message back in its error text).

use crate::signature::{SIGNATURE_HEADER, SigningKey, TIMESTAMP_HEADER, unix_now};
use crate::wire::{OutboundMessage, RemoteAck};
use carebridge_contract::config::ConfigError;
use carebridge_contract::{AccountId, AdapterError, Delivery, Outbound, SendError, Sent};
use futures::future::BoxFuture;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::debug;

/// The header carrying the delivery id, so a receiver can drop a resend it already processed.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The longest wait a `Retry-After` may impose: the account's delivery worker is FIFO, so a
/// remote asking for a day would stall every later delivery for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// At most this much of a 2xx answer is read looking for its `id`.
const MAX_ACK_BYTES: usize = 64 * 1024;
/// Longest native id accepted from a receiver.
const MAX_NATIVE_ID_LEN: usize = 998;
/// Bound on the health check's TCP connect.
const HEALTHCHECK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The outbound half of a webhook account: POSTs each delivery to `url`.
#[derive(Debug)]
pub struct WebhookOutbound {
    account: AccountId,
    url: Url,
    client: reqwest::Client,
    key: SigningKey,
    timeout: Duration,
}

impl WebhookOutbound {
    /// A sender for `url` (already validated: http or https) with a total per-request
    /// `timeout`. Redirects are not followed: a delivery carries PHI and goes only where the
    /// config says.
    pub fn new(account: AccountId, url: &str, timeout: Duration, key: SigningKey) -> Result<Self, AdapterError> {
        let url = crate::config::parse_url(url)
            .map_err(|e| ConfigError::Value { key: "url".into(), reason: e.to_string() })?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("carebridge-webhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::Setup { what: "HTTP client", reason: error_kind(&e).to_string() })?;
        Ok(Self { account, url, client, key, timeout })
    }

    async fn send_one(&self, delivery: &Delivery) -> Result<Sent, SendError> {
        let body = serde_json::to_vec(&OutboundMessage::from_delivery(delivery))
            .map_err(|_| SendError::permanent("delivery could not be encoded as JSON"))?;
        let timestamp = unix_now();
        let signature = self.key.sign(timestamp, &body);
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature)
            .header(IDEMPOTENCY_KEY_HEADER, delivery.id.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let reason = error_kind(&e);
                debug!(account = %self.account, delivery_id = %delivery.id, reason = %reason, "Webhook delivery failed.");
                SendError::retry(reason)
            })?;
        let status = response.status();
        debug!(account = %self.account, delivery_id = %delivery.id, status = status.as_u16(), "Webhook delivery answered.");
        if status.is_success() {
            return Ok(Sent { native_ids: read_native_id(response).await.into_iter().collect(), outcome: None });
        }
        Err(classify_status(status, response.headers(), SystemTime::now()))
    }
}

impl Outbound for WebhookOutbound {
    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(self.send_one(delivery))
    }

    /// Opens (and closes) a TCP connection to the URL's host and port: it catches DNS, routing
    /// and firewall mistakes without sending anything, so nothing is delivered, recorded or
    /// logged at the receiver by a check.
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), AdapterError>> {
        Box::pin(async move {
            let port = self.url.port_or_known_default().unwrap_or(80);
            let host = self.url.host_str().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let wait = self.timeout.min(HEALTHCHECK_CONNECT_TIMEOUT);
            match tokio::time::timeout(wait, tokio::net::TcpStream::connect((host, port))).await {
                Ok(Ok(_stream)) => Ok(()),
                Ok(Err(e)) => Err(AdapterError::Connection(format!("cannot connect to {host}:{port}: {e}"))),
                Err(_) => Err(AdapterError::Connection(format!("cannot connect to {host}:{port}: timed out"))),
            }
        })
    }
}

/// Maps a non-2xx status to what the outbox must do: 408, 429 and 5xx are worth retrying
/// (honouring `Retry-After`); anything else will fail the same way again.
fn classify_status(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> SendError {
    let code = status.as_u16();
    if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let after = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now));
        return SendError::Retry { after, reason: format!("HTTP {code}") };
    }
    if status.is_redirection() {
        return SendError::permanent(format!("HTTP {code} (redirects are not followed)"));
    }
    SendError::permanent(format!("HTTP {code}"))
}

/// Reads a 2xx body looking for a string `id`. Never fails: the receiver has accepted the
/// delivery, and an odd answer must not turn that into a resend.
async fn read_native_id(mut response: reqwest::Response) -> Option<String> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > MAX_ACK_BYTES {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    let ack: RemoteAck = serde_json::from_slice(&body).ok()?;
    match ack.id {
        Some(serde_json::Value::String(id))
            if !id.is_empty() && id.len() <= MAX_NATIVE_ID_LEN && !id.chars().any(char::is_control) =>
        {
            Some(id)
        }
        _ => None,
    }
}

/// A PHI-free description of a transport error: its class and, when there is one, the
/// underlying I/O error kind (reqwest's own Display includes the URL; we keep even that out).
fn error_kind(e: &reqwest::Error) -> String {
    let class = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_builder() {
        "request could not be built"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return format!("{class} ({:?})", io.kind());
        }
        source = err.source();
    }
    class.to_string()
}

/// Parses `Retry-After`: delay-seconds or an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`),
/// capped at [`MAX_RETRY_AFTER`]. A date in the past means "now" (zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(value.parse().unwrap_or(u64::MAX))
    } else {
        let at = UNIX_EPOCH + Duration::from_secs(parse_imf_fixdate(value)?);
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Parses RFC 9110's preferred HTTP date format into unix seconds (the obsolete RFC 850 and
/// asctime forms are not accepted; senders must not generate them).
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let mut parts = s.split(' ');
    let (_weekday, day, month, year, time, zone) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || zone != "GMT" || day.len() != 2 || year.len() != 4 {
        return None;
    }
    let day: u64 = day.parse().ok()?;
    let year: u64 = year.parse().ok()?;
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let mut hms = time.split(':').map(|p| if p.len() == 2 { p.parse::<u64>().ok() } else { None });
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        assert_eq!(parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_imf_fixdate("Tue, 29 Feb 2028 12:00:00 GMT"), Some(1_835_438_400));
        for bad in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "Sun, 06 Nov 1994 08:49:37 PST", ""] {
            assert_eq!(parse_imf_fixdate(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_is_seconds_or_a_date_and_capped() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_700);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(77)));
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn statuses_are_classified() {
        let now = SystemTime::now();
        let mut h = HeaderMap::new();
        let retry = |s: u16, h: &HeaderMap| classify_status(StatusCode::from_u16(s).unwrap(), h, now);
        assert_eq!(retry(500, &h), SendError::Retry { after: None, reason: "HTTP 500".into() });
        assert_eq!(retry(408, &h), SendError::Retry { after: None, reason: "HTTP 408".into() });
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry(429, &h), SendError::Retry { after: Some(Duration::from_secs(7)), reason: "HTTP 429".into() });
        assert_eq!(retry(400, &h), SendError::permanent("HTTP 400"));
        assert_eq!(retry(404, &h), SendError::permanent("HTTP 404"));
        assert_eq!(retry(302, &h), SendError::permanent("HTTP 302 (redirects are not followed)"));
    }
}
