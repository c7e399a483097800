//! The `[telegram.<name>]` table: what an administrator writes, and the pure check of it.
//!
//! Validation reports every problem at once with its TOML path and never touches the network,
//! the environment or the file system; the bot token and the webhook secret are loaded at build
//! time (see [`crate::build_inbound`]).

use carebridge_contract::config::{Problem, check_secret};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Telegram's public Bot API; tests and local Bot API servers override it with `api_url`.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";

/// The largest file the public Bot API lets a bot download with getFile (20 MB).
pub const BOT_API_DOWNLOAD_LIMIT: u64 = 20 * 1024 * 1024;

/// One Telegram bot account. Unknown keys are rejected so a typo cannot silently fall back to a
/// default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Environment variable holding the bot token (from @BotFather).
    pub token_env: Option<String>,
    /// File holding the bot token, relative to the config file's directory.
    pub token_file: Option<PathBuf>,
    /// Base URL of the Bot API, without a trailing `/bot…` part. Tests point it at a fake.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// How updates arrive: `polling` (getUpdates, the default; no inbound port) or `webhook`.
    #[serde(default)]
    pub mode: Mode,
    /// Long-poll timeout passed to getUpdates. Telegram holds an empty poll this long.
    #[serde(default = "default_poll_timeout_secs")]
    pub poll_timeout_secs: u64,
    /// Webhook mode: the address our HTTP server listens on (`127.0.0.1:8443` behind a proxy).
    pub webhook_listen: Option<String>,
    /// Webhook mode: the request path Telegram posts to.
    #[serde(default = "default_webhook_path")]
    pub webhook_path: String,
    /// Webhook mode: environment variable holding the secret Telegram echoes in
    /// `X-Telegram-Bot-Api-Secret-Token` (1-256 characters of `A-Z a-z 0-9 _ -`).
    pub webhook_secret_env: Option<String>,
    /// Webhook mode: file holding that secret.
    pub webhook_secret_file: Option<PathBuf>,
    /// Webhook mode: the public HTTPS URL to register with setWebhook at start. Leave it out if
    /// the webhook is registered by other means.
    pub webhook_url: Option<String>,
    /// The staff group's chat id: forwards (`to = None`) go there, and it is the only group whose
    /// messages are accepted. Without it the account only talks to patients in private chats.
    pub staff_chat_id: Option<i64>,
    /// Files larger than this are not downloaded; a PHI-free note in the body says so.
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: u64,
    /// `MarkdownV2` or `HTML`: outgoing text is escaped for it and the staff header is bold.
    /// Unset (the default) sends plain text.
    pub parse_mode: Option<ParseMode>,
    /// Minimum spacing between two messages to the same chat (Telegram: about one a second).
    #[serde(default = "default_min_interval_per_chat_ms")]
    pub min_interval_per_chat_ms: u64,
    /// Upper bound on messages per second across all chats (Telegram: about 30).
    #[serde(default = "default_max_messages_per_sec")]
    pub max_messages_per_sec: u32,
}

/// How updates reach the adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The adapter long-polls getUpdates. Needs no inbound port.
    #[default]
    Polling,
    /// Telegram posts updates to our HTTP server.
    Webhook,
}

/// Telegram's formatting modes we know how to escape for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ParseMode {
    /// `parse_mode = "MarkdownV2"`.
    MarkdownV2,
    /// `parse_mode = "HTML"`.
    #[serde(rename = "HTML")]
    Html,
}

impl ParseMode {
    /// The value Telegram expects in the `parse_mode` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseMode::MarkdownV2 => "MarkdownV2",
            ParseMode::Html => "HTML",
        }
    }
}

fn default_api_url() -> String {
    DEFAULT_API_URL.to_string()
}
fn default_poll_timeout_secs() -> u64 {
    25
}
fn default_webhook_path() -> String {
    "/telegram".to_string()
}
fn default_max_attachment_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_min_interval_per_chat_ms() -> u64 {
    1000
}
fn default_max_messages_per_sec() -> u32 {
    30
}

impl Config {
    /// Checks the table without I/O and returns every problem, each with its TOML path
    /// (`path` is the table's own path, e.g. `telegram.front_desk`).
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let at = |key: &str| format!("{path}.{key}");

        check_secret(path, "token", &self.token_env, &self.token_file, true, &mut problems);

        match reqwest::Url::parse(&self.api_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if u.query().is_some() || u.fragment().is_some() {
                    problems.push(Problem::new(at("api_url"), "must not have a query or fragment"));
                }
                if u.path().contains("/bot") {
                    problems.push(Problem::new(
                        at("api_url"),
                        "give only the base URL (e.g. https://api.telegram.org); the token comes from token_env/token_file",
                    ));
                }
            }
            _ => problems.push(Problem::new(at("api_url"), "must be an http(s) URL such as https://api.telegram.org")),
        }

        if !(1..=50).contains(&self.poll_timeout_secs) {
            problems.push(Problem::new(at("poll_timeout_secs"), "must be between 1 and 50 seconds"));
        }

        match self.mode {
            Mode::Webhook => self.validate_webhook(path, &mut problems),
            Mode::Polling => {
                let webhook_keys = [
                    ("webhook_listen", self.webhook_listen.is_some()),
                    ("webhook_secret_env", self.webhook_secret_env.is_some()),
                    ("webhook_secret_file", self.webhook_secret_file.is_some()),
                    ("webhook_url", self.webhook_url.is_some()),
                    ("webhook_path", self.webhook_path != default_webhook_path()),
                ];
                for (key, set) in webhook_keys {
                    if set {
                        problems.push(Problem::new(
                            at(key),
                            "only used when mode = \"webhook\"; remove it or set the mode",
                        ));
                    }
                }
            }
        }

        if self.staff_chat_id == Some(0) {
            problems.push(Problem::new(at("staff_chat_id"), "0 is not a Telegram chat id"));
        }
        if self.max_attachment_bytes == 0 || self.max_attachment_bytes > BOT_API_DOWNLOAD_LIMIT {
            problems.push(Problem::new(
                at("max_attachment_bytes"),
                format!("must be between 1 and {BOT_API_DOWNLOAD_LIMIT} (the Bot API cannot download larger files)"),
            ));
        }
        if self.min_interval_per_chat_ms > 60_000 {
            problems.push(Problem::new(at("min_interval_per_chat_ms"), "must be at most 60000"));
        }
        if !(1..=1000).contains(&self.max_messages_per_sec) {
            problems.push(Problem::new(at("max_messages_per_sec"), "must be between 1 and 1000"));
        }
        problems
    }

    fn validate_webhook(&self, path: &str, problems: &mut Vec<Problem>) {
        let at = |key: &str| format!("{path}.{key}");
        match &self.webhook_listen {
            None => problems.push(Problem::new(
                path,
                "`webhook_listen` is required when mode = \"webhook\" (e.g. \"127.0.0.1:8443\")",
            )),
            Some(l) if l.parse::<SocketAddr>().is_err() => problems
                .push(Problem::new(at("webhook_listen"), "must be an IP address and port such as \"127.0.0.1:8443\"")),
            Some(_) => {}
        }
        if !self.webhook_path.starts_with('/')
            || self.webhook_path.contains(['?', '#', ' '])
            || self.webhook_path.len() > 200
        {
            problems
                .push(Problem::new(at("webhook_path"), "must be a URL path starting with `/` (no query, no spaces)"));
        }
        check_secret(path, "webhook_secret", &self.webhook_secret_env, &self.webhook_secret_file, true, problems);
        if let Some(url) = &self.webhook_url {
            match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "https" => {}
                Ok(u) if u.scheme() == "http" && is_loopback_host(&u) => {}
                _ => problems.push(Problem::new(
                    at("webhook_url"),
                    "must be an https:// URL (Telegram only posts to HTTPS; http is allowed for loopback tests)",
                )),
            }
        }
    }

    /// The API base without a trailing slash, so `{base}/bot{token}/{method}` is well formed.
    pub(crate) fn api_base(&self) -> String {
        self.api_url.trim_end_matches('/').to_string()
    }
}

fn is_loopback_host(u: &reqwest::Url) -> bool {
    match u.host_str() {
        Some("localhost") => true,
        Some(h) => h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// True if `s` is a secret Telegram accepts as `secret_token`: 1-256 of `A-Z a-z 0-9 _ -`.
pub(crate) fn is_valid_webhook_secret(s: &str) -> bool {
    (1..=256).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Config {
        toml::from_str(s).expect("config parses")
    }

    #[test]
    fn minimal_polling_config_is_valid() {
        let c = parse("token_env = \"TG_TOKEN\"\nstaff_chat_id = -1001\n");
        assert_eq!(c.mode, Mode::Polling);
        assert_eq!(c.poll_timeout_secs, 25);
        assert_eq!(c.api_base(), "https://api.telegram.org");
        assert!(c.validate("telegram.desk").is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let c = parse(
            r#"
            api_url = "ftp://x/bot1"
            poll_timeout_secs = 0
            mode = "webhook"
            webhook_listen = "not-an-addr"
            webhook_path = "tg"
            webhook_url = "http://example.com/tg"
            staff_chat_id = 0
            max_attachment_bytes = 999999999
            "#,
        );
        let paths: Vec<String> = c.validate("telegram.desk").into_iter().map(|p| p.path).collect();
        for want in [
            "telegram.desk",
            "telegram.desk.api_url",
            "telegram.desk.poll_timeout_secs",
            "telegram.desk.webhook_listen",
            "telegram.desk.webhook_path",
            "telegram.desk.webhook_url",
            "telegram.desk.staff_chat_id",
            "telegram.desk.max_attachment_bytes",
        ] {
            assert!(paths.iter().any(|p| p == want), "missing {want} in {paths:?}");
        }
        // Both the token and the webhook secret are missing: two problems at the table itself.
        assert_eq!(paths.iter().filter(|p| *p == "telegram.desk").count(), 2, "{paths:?}");
    }

    #[test]
    fn webhook_keys_in_polling_mode_are_flagged() {
        let c = parse("token_env = \"T\"\nwebhook_listen = \"127.0.0.1:1\"\n");
        let p = c.validate("telegram.x");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "telegram.x.webhook_listen");
    }

    #[test]
    fn unknown_keys_and_modes_are_rejected() {
        assert!(toml::from_str::<Config>("token_env = \"T\"\ntoken = \"inline\"\n").is_err());
        assert!(toml::from_str::<Config>("token_env = \"T\"\nmode = \"push\"\n").is_err());
        assert!(toml::from_str::<Config>("token_env = \"T\"\nparse_mode = \"Markdown\"\n").is_err());
        let c = parse("token_env = \"T\"\nparse_mode = \"HTML\"\n");
        assert_eq!(c.parse_mode, Some(ParseMode::Html));
    }

    #[test]
    fn webhook_secrets_follow_telegram_rules() {
        assert!(is_valid_webhook_secret("abc_DEF-123"));
        assert!(!is_valid_webhook_secret(""));
        assert!(!is_valid_webhook_secret("has space"));
        assert!(!is_valid_webhook_secret(&"a".repeat(257)));
    }
}
