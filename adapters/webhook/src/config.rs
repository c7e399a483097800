//! The `[webhook.<name>]` table: one shared secret, an optional HTTP listener (inbound) and an
//! optional URL to POST deliveries to (outbound).
//!
//! Inbound-only keys are `Option`s rather than serde defaults so that validation can tell an
//! administrator that, say, `path` is set but `listen` is not (the account would silently not
//! listen). The accessors ([`Config::path`], [`Config::max_body_bytes`], …) apply the defaults.

use carebridge_contract::AddressKind;
use carebridge_contract::config::{Problem, check_secret};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default URL path inbound messages are POSTed to.
pub const DEFAULT_PATH: &str = "/v1/messages";
/// Default largest accepted request body: 1 MiB (attachments travel base64-encoded inside it).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default tolerated clock difference between the client's signed timestamp and ours.
pub const DEFAULT_MAX_SKEW_SECS: u64 = 300;
/// Default time an HTTP request may wait for the router's receipt before we answer 503.
pub const DEFAULT_SUBMIT_TIMEOUT_MS: u64 = 2000;
/// Default total time for one outbound POST (connect, send, response headers and body).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The health-check path served next to the message path; the message path may not take it.
pub const HEALTH_PATH: &str = "/healthz";

/// Upper bounds that catch typos (an extra zero or three) rather than express policy.
const MAX_BODY_BYTES_LIMIT: usize = 64 * 1024 * 1024;
const MAX_SKEW_SECS_LIMIT: u64 = 24 * 3600;
const MAX_SUBMIT_TIMEOUT_MS: u64 = 60_000;
const MAX_TIMEOUT_MS: u64 = 600_000;

/// How the inbound `from` field is interpreted, so the directory can match it with the same
/// normalisation as other channels (`phone:+14165550199`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FromKind {
    /// An E.164 phone number (SMS gateways); spaces, dashes and brackets are dropped.
    Phone,
    /// An email address (web forms that ask for one); lower-cased.
    Email,
    /// The client's own user id, matched as is.
    #[default]
    Opaque,
}

impl FromKind {
    /// The contract's address kind for this setting.
    pub fn address_kind(self) -> AddressKind {
        match self {
            FromKind::Phone => AddressKind::Phone,
            FromKind::Email => AddressKind::Email,
            FromKind::Opaque => AddressKind::Opaque,
        }
    }
}

/// One webhook account, `[webhook.<name>]` in the config file. See the crate docs for an
/// example.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Environment variable holding the HMAC-SHA256 shared secret (one of `secret_env` /
    /// `secret_file` is required; secrets are never written inline).
    pub secret_env: Option<String>,
    /// File holding the shared secret (relative paths are resolved against the config file's
    /// directory; trailing newlines are dropped).
    pub secret_file: Option<PathBuf>,

    /// Address to listen on for inbound messages. The account receives iff this is set.
    pub listen: Option<SocketAddr>,
    /// URL path inbound messages are POSTed to (default [`DEFAULT_PATH`]).
    pub path: Option<String>,
    /// Largest accepted request body in bytes (default [`DEFAULT_MAX_BODY_BYTES`]); larger
    /// requests get 413.
    pub max_body_bytes: Option<usize>,
    /// Largest accepted difference between `X-Carebridge-Timestamp` and our clock, in seconds
    /// (default [`DEFAULT_MAX_SKEW_SECS`]); bounds how long a captured request can be replayed.
    pub max_skew_secs: Option<u64>,
    /// How long a request may wait for the router's receipt before it is answered 503 with
    /// `Retry-After` (default [`DEFAULT_SUBMIT_TIMEOUT_MS`]).
    pub submit_timeout_ms: Option<u64>,
    /// How the `from` field is interpreted (default `opaque`).
    pub from_kind: Option<FromKind>,

    /// URL deliveries are POSTed to (http or https). The account sends iff this is set.
    pub url: Option<String>,
    /// Total time for one outbound request, in milliseconds (default [`DEFAULT_TIMEOUT_MS`]).
    pub timeout_ms: Option<u64>,
}

impl Config {
    /// The inbound message path, defaulted.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_PATH)
    }

    /// The body limit, defaulted.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES)
    }

    /// The tolerated clock skew, defaulted.
    pub fn max_skew(&self) -> Duration {
        Duration::from_secs(self.max_skew_secs.unwrap_or(DEFAULT_MAX_SKEW_SECS))
    }

    /// The receipt deadline for one request, defaulted.
    pub fn submit_timeout(&self) -> Duration {
        Duration::from_millis(self.submit_timeout_ms.unwrap_or(DEFAULT_SUBMIT_TIMEOUT_MS))
    }

    /// How `from` is interpreted, defaulted.
    pub fn from_kind(&self) -> FromKind {
        self.from_kind.unwrap_or_default()
    }

    /// The outbound request timeout, defaulted.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
    }

    /// Checks everything that can be checked without I/O and reports every problem with its
    /// TOML path (`path` is this table's path, e.g. `webhook.forms`), so the administrator fixes
    /// the file in one pass.
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        check_secret(path, "secret", &self.secret_env, &self.secret_file, true, &mut problems);
        if self.listen.is_none() && self.url.is_none() {
            problems.push(Problem::new(path, "set `listen` (to receive messages), `url` (to send them), or both"));
        }
        self.validate_inbound(path, &mut problems);
        self.validate_outbound(path, &mut problems);
        problems
    }

    fn validate_inbound(&self, table: &str, problems: &mut Vec<Problem>) {
        let inbound_only = [
            ("path", self.path.is_some()),
            ("max_body_bytes", self.max_body_bytes.is_some()),
            ("max_skew_secs", self.max_skew_secs.is_some()),
            ("submit_timeout_ms", self.submit_timeout_ms.is_some()),
            ("from_kind", self.from_kind.is_some()),
        ];
        if self.listen.is_none() {
            for (key, set) in inbound_only {
                if set {
                    problems.push(Problem::new(
                        format!("{table}.{key}"),
                        "only applies to receiving: set `listen` too, or remove it",
                    ));
                }
            }
        }
        if let Some(p) = &self.path
            && let Some(message) = path_problem(p)
        {
            problems.push(Problem::new(format!("{table}.path"), message));
        }
        check_range(
            problems,
            format!("{table}.max_body_bytes"),
            self.max_body_bytes.map(|v| v as u64),
            MAX_BODY_BYTES_LIMIT as u64,
            "bytes",
        );
        check_range(problems, format!("{table}.max_skew_secs"), self.max_skew_secs, MAX_SKEW_SECS_LIMIT, "seconds");
        check_range(
            problems,
            format!("{table}.submit_timeout_ms"),
            self.submit_timeout_ms,
            MAX_SUBMIT_TIMEOUT_MS,
            "milliseconds",
        );
    }

    fn validate_outbound(&self, table: &str, problems: &mut Vec<Problem>) {
        if let Some(url) = &self.url {
            if let Err(message) = parse_url(url) {
                problems.push(Problem::new(format!("{table}.url"), message));
            }
        } else if self.timeout_ms.is_some() {
            problems.push(Problem::new(
                format!("{table}.timeout_ms"),
                "only applies to sending: set `url` too, or remove it",
            ));
        }
        check_range(problems, format!("{table}.timeout_ms"), self.timeout_ms, MAX_TIMEOUT_MS, "milliseconds");
    }
}

/// Why an inbound path cannot be used, if it cannot.
fn path_problem(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return Some("must start with `/` (for example \"/v1/messages\")".into());
    }
    if p == HEALTH_PATH {
        return Some(format!("`{HEALTH_PATH}` is reserved for the health check"));
    }
    if p.len() > 1 && p.ends_with('/') {
        return Some("must not end with `/`".into());
    }
    let ok = p.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
    if !ok || p.contains("//") {
        return Some("may only contain letters, digits, `-`, `.`, `_`, `~` and single `/`".into());
    }
    None
}

/// Checks that a set numeric key is in `1..=max`.
fn check_range(problems: &mut Vec<Problem>, path: String, value: Option<u64>, max: u64, unit: &str) {
    match value {
        Some(0) => problems.push(Problem::new(path, "must be greater than 0")),
        Some(v) if v > max => problems.push(Problem::new(path, format!("must be at most {max} {unit} (got {v})"))),
        _ => {}
    }
}

/// Parses and checks the outbound URL: http or https, with a host, without credentials (secrets
/// are never written inline) and without a fragment.
pub(crate) fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("must be an http or https URL (got scheme `{}`)", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain credentials (the request is signed with the shared secret)".into());
    }
    if parsed.fragment().is_some() {
        return Err("must not contain a `#fragment`".into());
    }
    Ok(parsed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Config {
        match toml::from_str(toml_text) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn a_complete_config_is_valid_and_defaults_apply() {
        let c = parse(
            r#"
            secret_env = "S"
            listen = "127.0.0.1:8181"
            url = "https://ehr.test/in"
            "#,
        );
        assert!(c.validate("webhook.forms").is_empty(), "{:?}", c.validate("webhook.forms"));
        assert_eq!(c.path(), "/v1/messages");
        assert_eq!(c.max_body_bytes(), 1024 * 1024);
        assert_eq!(c.max_skew(), Duration::from_secs(300));
        assert_eq!(c.submit_timeout(), Duration::from_millis(2000));
        assert_eq!(c.timeout(), Duration::from_millis(10_000));
        assert_eq!(c.from_kind().address_kind(), AddressKind::Opaque);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let c = parse(
            r#"
            secret_env = "S"
            secret_file = "f"
            path = "v1//x"
            max_body_bytes = 0
            max_skew_secs = 0
            submit_timeout_ms = 999999
            timeout_ms = 0
            from_kind = "phone"
            "#,
        );
        let problems = c.validate("webhook.sms");
        let p = paths(&problems);
        for expected in [
            "webhook.sms.secret_env",
            "webhook.sms",
            "webhook.sms.path",
            "webhook.sms.max_body_bytes",
            "webhook.sms.max_skew_secs",
            "webhook.sms.submit_timeout_ms",
            "webhook.sms.timeout_ms",
            "webhook.sms.from_kind",
        ] {
            assert!(p.contains(&expected), "{expected} missing from {problems:?}");
        }
    }

    #[test]
    fn the_secret_is_required() {
        let c = parse(r#"url = "http://127.0.0.1:9/x""#);
        assert_eq!(paths(&c.validate("webhook.ehr")), ["webhook.ehr"]);
    }

    #[test]
    fn urls_must_be_plain_http_or_https() {
        for bad in ["ftp://h/x", "not a url", "https://user:pw@h/x", "http://h/x#frag", "mailto:a@b.test"] {
            let c = Config { secret_env: Some("S".into()), url: Some(bad.into()), ..Config::default() };
            assert_eq!(paths(&c.validate("webhook.ehr")), ["webhook.ehr.url"], "{bad}");
        }
        let ok =
            Config { secret_env: Some("S".into()), url: Some("http://[::1]:8080/in?x=1".into()), ..Config::default() };
        assert!(ok.validate("webhook.ehr").is_empty());
    }

    #[test]
    fn paths_are_checked() {
        assert!(path_problem("/v1/messages").is_none());
        assert!(path_problem("/").is_none());
        for bad in ["v1", "/healthz", "/v1/", "/v1/{id}", "/a b", "/a//b", "/*x"] {
            assert!(path_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected_by_serde() {
        let de = |s: &str| toml::from_str::<Config>(s).map_err(|e| e.to_string());
        assert!(de("secret_env = \"S\"\nsecret = \"x\"").unwrap_err().contains("unknown field"));
        assert!(de("secret_env = \"S\"\nlisten = \"localhost\"").is_err());
        assert!(de("secret_env = \"S\"\nfrom_kind = \"telegram\"").is_err());
    }
}
