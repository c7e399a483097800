//! The connection settings `tests/mail-servers.sh start` writes to its env file, read in one
//! place for every email test (the adapter's and the end-to-end ones). Std only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Connection settings written by `tests/mail-servers.sh start`.
#[derive(Clone, Debug)]
pub struct MailEnv {
    /// The servers' state directory.
    pub dir: PathBuf,
    /// Host (127.0.0.1).
    pub host: String,
    /// The name on the server certificate.
    pub tls_name: String,
    /// The test CA that signed it.
    pub ca: PathBuf,
    /// SMTP, plain or STARTTLS.
    pub smtp_port: u16,
    /// SMTP over implicit TLS.
    pub smtps_port: u16,
    /// IMAP, plain or STARTTLS.
    pub imap_port: u16,
    /// IMAP over implicit TLS.
    pub imaps_port: u16,
    /// Address → password.
    pub users: HashMap<String, String>,
}

/// The mail servers' settings, or `None` (after a loud message) when they are not running and
/// the run does not require them. With `CAREBRIDGE_REQUIRE_MAIL` set (CI), a missing env file
/// fails the test.
pub fn mail_env() -> Option<MailEnv> {
    let path = std::env::var("CAREBRIDGE_MAIL_ENV").unwrap_or_else(|_| "/tmp/carebridge-mail/env".into());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            if std::env::var_os("CAREBRIDGE_REQUIRE_MAIL").is_some() {
                panic!("mail servers required (CAREBRIDGE_REQUIRE_MAIL is set) but {path} is unreadable: {e}");
            }
            eprintln!(
                "\n\n*** SKIPPED: real mail servers not running ({path} missing). ***\n\
                 *** Start them with `bash tests/mail-servers.sh start` (as root). ***\n"
            );
            return None;
        }
    };
    let vars: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect();
    let get = |k: &str| vars.get(k).cloned().unwrap_or_else(|| panic!("{k} missing from {path}"));
    let port = |k: &str| get(k).parse::<u16>().unwrap_or_else(|_| panic!("{k} is not a port"));
    Some(MailEnv {
        dir: PathBuf::from(get("MAIL_DIR")),
        host: get("MAIL_HOST"),
        tls_name: get("MAIL_TLS_NAME"),
        ca: PathBuf::from(get("MAIL_TLS_CA")),
        smtp_port: port("MAIL_SMTP_PORT"),
        smtps_port: port("MAIL_SMTPS_PORT"),
        imap_port: port("MAIL_IMAP_PORT"),
        imaps_port: port("MAIL_IMAPS_PORT"),
        users: get("MAIL_USERS")
            .split_whitespace()
            .filter_map(|u| u.split_once(':'))
            .map(|(a, p)| (a.to_string(), p.to_string()))
            .collect(),
    })
}

/// A tag unique to this run and test, for Message-IDs and subjects.
pub fn tag(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{name}-{}-{nanos}", std::process::id())
}
