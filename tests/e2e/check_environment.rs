//! `carebridge check-config` with its environment checks, through the real binary: it finishes
//! (exit 0, or 2 with every problem, each once) and catches what would otherwise fail only at
//! run time: a wrong IMAP password, a closed port, a missing CA file, a missing or world-readable
//! store key file. Before, an `[email.*.smtp]` table made it panic ("there is no reactor
//! running") and these problems passed (issue 15, items 1 and 2).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::path::Path;
use std::process::Command;
use support::daemon::bin;
use support::mail_env::mail_env;

fn check(config: &Path) -> (i32, String) {
    let out = Command::new(bin()).arg("check-config").arg(config).env("EHR_SECRET", "s3cret").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An email account (IMAP and SMTP), a webhook sink on `sink_port` and the store's key file.
fn config(imap: (u16, &str), smtp: (u16, &str), ca: &str, sink_port: u16, user: &str) -> String {
    let ca = if ca.is_empty() { String::new() } else { format!("ca_file = \"{ca}\"") };
    format!(
        r#"
[daemon]
data_dir = "data"

[store]
key_file = "store.key"

[email.clinic]
address = "{user}"

[email.clinic.imap]
host = "127.0.0.1"
port = {imap_port}
tls = "{imap_tls}"
{imap_name}
username = "{user}"
password_file = "mail.pass"

[email.clinic.smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "{smtp_tls}"
{smtp_name}
username = "{user}"
password_file = "mail.pass"

[webhook.ehr]
url = "http://127.0.0.1:{sink_port}/inbox"
secret_env = "EHR_SECRET"

[[route]]
name = "mail-to-ehr"
from = ["email.clinic"]
to = ["webhook.ehr"]

[policy.channels]
"webhook.ehr" = "secure"
"#,
        imap_name = tls_keys(imap.1, &ca),
        smtp_name = tls_keys(smtp.1, &ca),
        imap_port = imap.0,
        imap_tls = imap.1,
        smtp_port = smtp.0,
        smtp_tls = smtp.1,
    )
}

/// The TLS keys of one side: none for plain (where they are refused), else name and CA file.
fn tls_keys(tls: &str, ca: &str) -> String {
    if tls == "plain" { "allow_plain = true".to_string() } else { format!("tls_name = \"localhost\"\n{ca}") }
}

fn generate_key(dir: &Path) {
    let out = Command::new(bin()).args(["keys", "generate", "--file"]).arg(dir.join("store.key")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_environment_problem_is_reported_once_and_nothing_panics() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mail.pass"), "pw\n").unwrap();
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let file = dir.path().join("c.toml");

    // Closed IMAP and SMTP ports, no key file: three problems, no panic.
    let (imap, smtp) = (closed_port(), closed_port());
    std::fs::write(&file, config((imap, "plain"), (smtp, "plain"), "", sink_port, "box7@clinic.test")).unwrap();
    let (code, text) = check(&file);
    assert_eq!(code, 2, "{text}");
    assert!(!text.contains("panicked") && !text.contains("reactor"), "{text}");
    assert!(text.contains(&format!("IMAP 127.0.0.1:{imap}: cannot connect")), "{text}");
    assert!(text.contains("email.clinic: connection:"), "the SMTP side is checked too: {text}");
    assert!(text.contains("store.key_file: the key file") && text.contains("does not exist"), "{text}");
    assert!(text.contains("3 problem(s)"), "each problem once: {text}");

    // A missing CA file (named by both sides): reported once.
    generate_key(dir.path());
    std::fs::write(&file, config((imap, "starttls"), (smtp, "starttls"), "nope.pem", sink_port, "box7@clinic.test"))
        .unwrap();
    let (code, text) = check(&file);
    assert_eq!(code, 2, "{text}");
    assert_eq!(text.matches("nope.pem").count(), 1, "once, not once per side: {text}");
    assert!(text.contains("cannot read ca_file"), "{text}");

    // A key file others can read.
    std::fs::write(&file, config((imap, "plain"), (smtp, "plain"), "", sink_port, "box7@clinic.test")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("store.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, text) = check(&file);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("store.key_file:") && text.contains("chmod 600"), "{text}");
    drop(sink);
}

/// Against the real Postfix and Dovecot: the right password passes, a wrong one is reported.
#[test]
fn a_wrong_imap_password_is_reported() {
    let Some(env) = mail_env() else { return };
    let user = "box7@clinic.test";
    let dir = tempfile::tempdir().unwrap();
    generate_key(dir.path());
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let file = dir.path().join("c.toml");
    let ca = env.ca.display().to_string();
    std::fs::write(&file, config((env.imap_port, "starttls"), (env.smtp_port, "starttls"), &ca, sink_port, user))
        .unwrap();

    std::fs::write(dir.path().join("mail.pass"), format!("{}\n", env.users[user])).unwrap();
    let (code, text) = check(&file);
    assert_eq!(code, 0, "{text}");

    std::fs::write(dir.path().join("mail.pass"), "not-the-password\n").unwrap();
    let (code, text) = check(&file);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("login rejected"), "{text}");
    assert!(!text.contains("not-the-password"), "the password is never shown: {text}");
    drop(sink);
}
