//! The `[email.<name>]` table: the clinic mailbox, its IMAP side (`[email.<name>.imap]`, makes
//! the account receive) and its SMTP side (`[email.<name>.smtp]`, makes it send).
//!
//! [`Config::validate`] is pure: it reports every problem with its TOML path and does no I/O
//! (secrets and CA files are read at build time).

use carebridge_contract::config::{Problem, check_secret};
use serde::Deserialize;
use std::path::PathBuf;

/// Ten MiB: a phone photo or a scanned PDF fits, a video does not.
pub const DEFAULT_MAX_ATTACHMENT_BYTES: u64 = 10 * 1024 * 1024;
/// Fifty MiB: larger messages are quarantined with their headers only instead of being fetched.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 50 * 1024 * 1024;
/// IMAP servers may drop an IDLE after 30 minutes (RFC 2177); re-issue it well before.
pub const MAX_IDLE_RESYNC_SECS: u64 = 29 * 60;

/// One email account: the clinic mailbox carebridge reads (IMAP) and sends as (SMTP).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The clinic mailbox (`clinic@clinic.test`). Outgoing mail is sent from its plus-addressed
    /// form (`clinic+<token>@clinic.test`) so replies carry the conversation token back.
    pub address: String,
    /// Display name on outgoing mail (`Clinic (carebridge)`).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Default recipient of deliveries with no explicit address (patient messages forwarded to
    /// the clinic's staff inbox). Must differ from `address`, or forwards would come back in.
    #[serde(default)]
    pub forward_to: Option<String>,
    /// Subject of forwards to staff. PHI-free: never the patient's own subject.
    #[serde(default = "default_subject_forward")]
    pub subject_forward: String,
    /// Subject of clinicians' replies sent to patients.
    #[serde(default = "default_subject_reply")]
    pub subject_reply: String,
    /// Subject of carebridge's own notices.
    #[serde(default = "default_subject_notice")]
    pub subject_notice: String,
    /// Larger inbound attachments are dropped and replaced by a note in the body.
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: u64,
    /// Larger inbound messages are not downloaded: their headers are quarantined.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
    /// Present ⇒ the account receives.
    #[serde(default)]
    pub imap: Option<ImapConfig>,
    /// Present ⇒ the account sends.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
}

/// How a connection is secured. There is no silent fallback from one to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (IMAPS 993, SMTPS 465). The default.
    Implicit,
    /// Plain connection upgraded with STARTTLS before login; fails if the server cannot.
    Starttls,
    /// No encryption: only for loopback test servers or with `allow_plain = true`.
    Plain,
}

/// `[email.<name>.imap]`: where patient and clinician mail is read from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// Server host name or IP address.
    pub host: String,
    /// Port; defaults to 993 for implicit TLS, 143 otherwise.
    #[serde(default)]
    pub port: Option<u16>,
    /// `implicit` (default), `starttls` or `plain`.
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// The name the server certificate must carry, when it is not `host` (connecting to an IP).
    #[serde(default)]
    pub tls_name: Option<String>,
    /// Allows `tls = "plain"` to a non-loopback host. Passwords then cross the network in clear.
    #[serde(default)]
    pub allow_plain: bool,
    /// Login name.
    pub username: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (relative to the config file's directory).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The folder watched for new mail.
    #[serde(default = "default_folder")]
    pub folder: String,
    /// If set, acknowledged messages are moved here instead of being marked `\Seen`; then every
    /// message left in `folder` counts as not yet processed.
    #[serde(default)]
    pub processed_folder: Option<String>,
    /// Use IMAP IDLE when the server offers it (push); otherwise poll every `poll_secs`.
    #[serde(default = "default_true")]
    pub idle: bool,
    /// Polling interval when IDLE is off or unsupported.
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
    /// How often IDLE is ended for a full re-check (at most 29 minutes).
    #[serde(default = "default_idle_resync_secs")]
    pub idle_resync_secs: u64,
    /// Extra PEM CA certificates to trust besides the public web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Limit for connecting and for each IMAP command.
    #[serde(default = "default_imap_timeout_secs")]
    pub timeout_secs: u64,
    /// Longest wait between reconnection attempts (the backoff doubles from 1 s up to it).
    #[serde(default = "default_reconnect_max_secs")]
    pub reconnect_max_secs: u64,
}

/// `[email.<name>.smtp]`: the submission server outgoing mail goes through.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Server host name or IP address.
    pub host: String,
    /// Port; defaults to 465 for implicit TLS, 587 for STARTTLS, 25 for plain.
    #[serde(default)]
    pub port: Option<u16>,
    /// `implicit` (default), `starttls` or `plain`.
    #[serde(default = "default_tls")]
    pub tls: TlsMode,
    /// The name the server certificate must carry, when it is not `host`.
    #[serde(default)]
    pub tls_name: Option<String>,
    /// Allows `tls = "plain"` to a non-loopback host.
    #[serde(default)]
    pub allow_plain: bool,
    /// AUTH user name; without it no AUTH is attempted.
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the AUTH password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the AUTH password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Extra PEM CA certificates to trust besides the public web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Limit for each SMTP exchange; a timeout is retried later.
    #[serde(default = "default_smtp_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_subject_forward() -> String {
    "New patient message".into()
}
/// Not "secure": a reply goes by this account, and ordinary email is not (a reply that needs a
/// secure channel is rerouted, and only a notice comes this way).
fn default_subject_reply() -> String {
    "Reply from your clinic".into()
}
fn default_subject_notice() -> String {
    "Message from your clinic".into()
}
fn default_max_attachment_bytes() -> u64 {
    DEFAULT_MAX_ATTACHMENT_BYTES
}
fn default_max_message_bytes() -> u64 {
    DEFAULT_MAX_MESSAGE_BYTES
}
fn default_tls() -> TlsMode {
    TlsMode::Implicit
}
fn default_folder() -> String {
    "INBOX".into()
}
fn default_true() -> bool {
    true
}
fn default_poll_secs() -> u64 {
    60
}
fn default_idle_resync_secs() -> u64 {
    300
}
fn default_imap_timeout_secs() -> u64 {
    60
}
fn default_reconnect_max_secs() -> u64 {
    300
}
fn default_smtp_timeout_secs() -> u64 {
    30
}

impl ImapConfig {
    /// The configured port or the usual one for the TLS mode.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 993,
            TlsMode::Starttls | TlsMode::Plain => 143,
        })
    }
}

impl SmtpConfig {
    /// The configured port or the usual one for the TLS mode.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 465,
            TlsMode::Starttls => 587,
            TlsMode::Plain => 25,
        })
    }
}

/// An email address split at its last `@`, checked just enough to be usable in headers and as a
/// plus-address base. Not a full RFC 5322 parser on purpose: config addresses are simple.
pub(crate) fn split_address(addr: &str) -> Option<(&str, &str)> {
    let (local, domain) = addr.rsplit_once('@')?;
    let ok_local = !local.is_empty()
        && local.len() <= 64
        && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b));
    let ok_domain = !domain.is_empty()
        && domain.len() <= 253
        && !domain.starts_with(['.', '-'])
        && !domain.ends_with(['.', '-'])
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    (ok_local && ok_domain).then_some((local, domain))
}

/// True for names that certainly resolve to this machine; plain-text IMAP/SMTP is fine there.
pub(crate) fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

fn is_header_safe(s: &str) -> bool {
    !s.chars().any(|c| c.is_control())
}

fn check_host(path: &str, host: &str, problems: &mut Vec<Problem>) {
    if host.trim().is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        problems.push(Problem::new(format!("{path}.host"), "must be a host name or IP address"));
    }
}

fn check_tls(
    path: &str,
    host: &str,
    tls: TlsMode,
    tls_name: &Option<String>,
    ca_file: &Option<PathBuf>,
    allow_plain: bool,
    problems: &mut Vec<Problem>,
) {
    if tls == TlsMode::Plain && ca_file.is_some() {
        problems.push(Problem::new(format!("{path}.ca_file"), "has no effect with tls = \"plain\""));
    }
    if tls == TlsMode::Plain && !allow_plain && !is_loopback(host) {
        problems.push(Problem::new(
            format!("{path}.tls"),
            "\"plain\" sends the password and patient mail unencrypted; it is allowed only for a \
             loopback host (127.0.0.1, ::1, localhost) or with `allow_plain = true`",
        ));
    }
    if let Some(name) = tls_name {
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            problems.push(Problem::new(format!("{path}.tls_name"), "must be a DNS name or IP address"));
        } else if tls == TlsMode::Plain {
            problems.push(Problem::new(format!("{path}.tls_name"), "has no effect with tls = \"plain\""));
        }
    }
}

fn check_port(path: &str, port: Option<u16>, problems: &mut Vec<Problem>) {
    if port == Some(0) {
        problems.push(Problem::new(format!("{path}.port"), "must be 1-65535"));
    }
}

fn check_folder(path: &str, name: &str, problems: &mut Vec<Problem>) {
    if name.trim().is_empty() || !name.is_ascii() || name.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        problems.push(Problem::new(
            path,
            "must be a non-empty ASCII folder name without quotes, backslashes or control characters",
        ));
    }
}

fn check_range(path: &str, value: u64, min: u64, max: u64, problems: &mut Vec<Problem>) {
    if value < min || value > max {
        problems.push(Problem::new(path, format!("must be between {min} and {max}")));
    }
}

impl Config {
    /// Every problem in this table, each with its TOML path (`path` is the table's own path,
    /// `email.clinic`). Pure: no file or network access.
    pub fn validate(&self, path: &str) -> Vec<Problem> {
        let mut p = Vec::new();
        match split_address(&self.address) {
            None => {
                p.push(Problem::new(format!("{path}.address"), "must be a plain email address like clinic@example.org"))
            }
            Some((local, _)) if local.contains('+') => p.push(Problem::new(
                format!("{path}.address"),
                "must not contain `+`: carebridge adds `+<conversation token>` itself",
            )),
            Some(_) => {}
        }
        if let Some(fwd) = &self.forward_to {
            if split_address(fwd).is_none() {
                p.push(Problem::new(format!("{path}.forward_to"), "must be a plain email address"));
            } else if fwd.eq_ignore_ascii_case(&self.address) {
                p.push(Problem::new(
                    format!("{path}.forward_to"),
                    "must differ from `address`: forwards would land in the watched mailbox again",
                ));
            }
        }
        if let Some(name) = &self.display_name
            && (name.trim().is_empty() || !is_header_safe(name) || name.chars().count() > 100)
        {
            p.push(Problem::new(format!("{path}.display_name"), "must be 1-100 characters on one line"));
        }
        for (key, subject) in [
            ("subject_forward", &self.subject_forward),
            ("subject_reply", &self.subject_reply),
            ("subject_notice", &self.subject_notice),
        ] {
            if subject.trim().is_empty() || !is_header_safe(subject) || subject.chars().count() > 200 {
                p.push(Problem::new(format!("{path}.{key}"), "must be 1-200 characters on one line"));
            }
        }
        if self.max_attachment_bytes == 0 {
            p.push(Problem::new(format!("{path}.max_attachment_bytes"), "must be at least 1"));
        }
        if self.max_message_bytes < self.max_attachment_bytes {
            p.push(Problem::new(format!("{path}.max_message_bytes"), "must be at least `max_attachment_bytes`"));
        }
        if self.imap.is_none() && self.smtp.is_none() {
            p.push(Problem::new(path, "needs an `imap` table (to receive), an `smtp` table (to send), or both"));
        }
        if let Some(imap) = &self.imap {
            imap.validate(&format!("{path}.imap"), &mut p);
        }
        if let Some(smtp) = &self.smtp {
            smtp.validate(&format!("{path}.smtp"), &mut p);
        }
        p
    }
}

impl ImapConfig {
    fn validate(&self, path: &str, p: &mut Vec<Problem>) {
        check_host(path, &self.host, p);
        check_port(path, self.port, p);
        check_tls(path, &self.host, self.tls, &self.tls_name, &self.ca_file, self.allow_plain, p);
        if self.username.trim().is_empty() || self.username.chars().any(|c| c.is_control()) {
            p.push(Problem::new(format!("{path}.username"), "must be a non-empty login name"));
        }
        check_secret(path, "password", &self.password_env, &self.password_file, true, p);
        check_folder(&format!("{path}.folder"), &self.folder, p);
        if let Some(done) = &self.processed_folder {
            check_folder(&format!("{path}.processed_folder"), done, p);
            if done == &self.folder {
                p.push(Problem::new(format!("{path}.processed_folder"), "must differ from `folder`"));
            }
        }
        check_range(&format!("{path}.poll_secs"), self.poll_secs, 1, 86_400, p);
        check_range(&format!("{path}.idle_resync_secs"), self.idle_resync_secs, 1, MAX_IDLE_RESYNC_SECS, p);
        check_range(&format!("{path}.timeout_secs"), self.timeout_secs, 1, 3_600, p);
        check_range(&format!("{path}.reconnect_max_secs"), self.reconnect_max_secs, 1, 86_400, p);
    }
}

impl SmtpConfig {
    fn validate(&self, path: &str, p: &mut Vec<Problem>) {
        check_host(path, &self.host, p);
        check_port(path, self.port, p);
        check_tls(path, &self.host, self.tls, &self.tls_name, &self.ca_file, self.allow_plain, p);
        match &self.username {
            Some(u) => {
                if u.trim().is_empty() || u.chars().any(|c| c.is_control()) {
                    p.push(Problem::new(format!("{path}.username"), "must be a non-empty login name"));
                }
                check_secret(path, "password", &self.password_env, &self.password_file, true, p);
            }
            None => {
                if self.password_env.is_some() || self.password_file.is_some() {
                    p.push(Problem::new(format!("{path}.username"), "is required when a password is configured"));
                }
            }
        }
        check_range(&format!("{path}.timeout_secs"), self.timeout_secs, 1, 3_600, p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Config {
        toml::from_str(s).expect("test config parses")
    }

    const GOOD: &str = r#"
        address = "clinic@clinic.test"
        display_name = "Clinic (carebridge)"
        forward_to = "staff@clinic.test"
        [imap]
        host = "imap.clinic.test"
        username = "clinic@clinic.test"
        password_env = "CLINIC_IMAP_PASSWORD"
        processed_folder = "Archive"
        [smtp]
        host = "smtp.clinic.test"
        tls = "starttls"
        username = "clinic@clinic.test"
        password_file = "secrets/smtp"
    "#;

    #[test]
    fn a_good_config_has_no_problems_and_sensible_defaults() {
        let c = parse(GOOD);
        assert_eq!(c.validate("email.clinic"), vec![]);
        let imap = c.imap.as_ref().expect("imap");
        assert_eq!((imap.port(), imap.tls, imap.folder.as_str()), (993, TlsMode::Implicit, "INBOX"));
        assert_eq!((imap.idle, imap.idle_resync_secs), (true, 300));
        assert_eq!(c.smtp.as_ref().expect("smtp").port(), 587);
        assert_eq!(c.max_attachment_bytes, 10 * 1024 * 1024);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let c = parse(
            r#"
            address = "clinic+x@clinic.test"
            forward_to = "CLINIC+x@clinic.test"
            subject_reply = ""
            max_attachment_bytes = 0
            [imap]
            host = "imap.example.org"
            tls = "plain"
            username = ""
            folder = "In\"box"
            processed_folder = "In\"box"
            idle_resync_secs = 3600
            poll_secs = 0
            [smtp]
            host = "smtp example"
            port = 0
            password_env = "X"
            "#,
        );
        let paths: Vec<String> = c.validate("email.c").into_iter().map(|p| p.path).collect();
        for want in [
            "email.c.address",
            "email.c.forward_to",
            "email.c.subject_reply",
            "email.c.max_attachment_bytes",
            "email.c.imap.tls",
            "email.c.imap.username",
            "email.c.imap",
            "email.c.imap.folder",
            "email.c.imap.processed_folder",
            "email.c.imap.idle_resync_secs",
            "email.c.imap.poll_secs",
            "email.c.smtp.host",
            "email.c.smtp.port",
            "email.c.smtp.username",
        ] {
            assert!(paths.iter().any(|p| p == want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn plain_is_fine_on_loopback_or_when_allowed() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]"] {
            let c = parse(&format!("address = \"c@x.test\"\n[smtp]\nhost = \"{host}\"\ntls = \"plain\"\n"));
            assert_eq!(c.validate("email.c"), vec![], "{host}");
        }
        let c = parse("address = \"c@x.test\"\n[smtp]\nhost = \"mx.x.test\"\ntls = \"plain\"\nallow_plain = true\n");
        assert_eq!(c.validate("email.c"), vec![]);
        let c = parse("address = \"c@x.test\"\n[smtp]\nhost = \"mx.x.test\"\ntls = \"plain\"\n");
        assert_eq!(c.validate("email.c")[0].path, "email.c.smtp.tls");
    }

    #[test]
    fn an_account_needs_imap_or_smtp_and_unknown_keys_are_refused() {
        let c = parse("address = \"c@x.test\"\n");
        assert_eq!(c.validate("email.c")[0].path, "email.c");
        assert!(toml::from_str::<Config>("address = \"c@x.test\"\nsubject = \"x\"\n").is_err());
        assert!(
            toml::from_str::<Config>("address = \"c@x.test\"\n[imap]\nhost=\"h\"\nusername=\"u\"\npassword=\"p\"\n")
                .is_err()
        );
    }

    #[test]
    fn addresses_split_only_when_simple() {
        assert_eq!(split_address("clinic@clinic.test"), Some(("clinic", "clinic.test")));
        assert_eq!(split_address("a.b-c@x.test"), Some(("a.b-c", "x.test")));
        for bad in ["", "x", "@x.test", "x@", "a b@x.test", "x@-x.test", "x@x..test\n", "x@x test"] {
            assert_eq!(split_address(bad), None, "{bad:?}");
        }
    }
}
