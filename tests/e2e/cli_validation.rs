//! The administrator's commands that change what may be sent where (`consent`, `link`) refuse
//! what does not exist, with a did-you-mean, and every audited command names a real actor even
//! when USER and LOGNAME are unset (issue 15, items 14 and 15). No daemon runs: the commands
//! work on the store directly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::path::Path;
use std::process::Command;
use support::daemon::bin;

const CONFIG: &str = r#"
[daemon]
data_dir = "DATA_DIR"

[store]
key_file = "store.key"

[webhook.sms]
listen = "127.0.0.1:0"
url = "http://127.0.0.1:9/send"
secret_env = "SMS_SECRET"

[email.clinic]
address = "clinic@clinic.test"
[email.clinic.smtp]
host = "127.0.0.1"
port = 9
tls = "plain"
allow_plain = true

[telegram.desk]
token_env = "TG_TOKEN"
staff_chat_id = -1001

[[route]]
name = "sms-in"
from = ["webhook.sms"]
to = ["email.clinic"]

[[directory.patient]]
id = "p-0001"
addresses = ["phone:+14165550199"]
"#;

/// Runs `carebridge args… --config dir/c.toml` with USER, LOGNAME and SUDO_USER unset, as under
/// systemd, cron or `docker exec`.
fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(dir.join("c.toml"))
        .env_remove("USER")
        .env_remove("LOGNAME")
        .env_remove("SUDO_USER")
        .env("SMS_SECRET", "s3cret")
        .env("TG_TOKEN", "123:abc")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Absolute: relative data directories resolve from the working directory, shared by tests.
    let data = dir.path().join("data");
    std::fs::write(dir.path().join("c.toml"), CONFIG.replace("DATA_DIR", data.to_str().unwrap())).unwrap();
    let out =
        Command::new(bin()).args(["keys", "generate", "--file"]).arg(dir.path().join("store.key")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

#[test]
fn consent_and_link_refuse_unknown_patients_and_accounts_with_a_hint() {
    let dir = setup();
    let d = dir.path();
    let grant = |patient: &str, account: &str| {
        run(d, &["consent", "grant", "--patient", patient, "--account", account, "--source", "paper-form"])
    };
    let (ok, _, err) = grant("p-0002", "webhook.sms");
    assert!(!ok, "an unknown patient is refused");
    assert!(err.contains("unknown patient id `p-0002` (did you mean `p-0001`?)"), "{err}");
    let (ok, _, err) = grant("p-0001", "ok");
    assert!(!ok, "a misspelt account is refused");
    assert!(err.contains("unknown account `ok`"), "{err}");
    let (ok, _, err) = grant("p-0001", "webhook.smss");
    assert!(!ok);
    assert!(err.contains("(did you mean `webhook.sms`?)"), "{err}");
    let (ok, _, err) = run(d, &["consent", "withdraw", "--patient", "p-0001", "--account", "webhok.sms"]);
    assert!(!ok, "a misspelt withdrawal must not report ok while the consent stays in force");
    assert!(err.contains("did you mean `webhook.sms`"), "{err}");
    let (ok, out, err) = grant("p-0001", "webhook.sms");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "ok");

    let link = |account: &str| run(d, &["link", "--patient", "p-0001", "--account", account]);
    let (ok, _, err) = link("email.clinic");
    assert!(!ok, "no link codes for email");
    assert!(err.contains("link codes are for Telegram"), "{err}");
    let (ok, _, err) = link("webhook.sms");
    assert!(!ok, "nor for webhooks");
    assert!(err.contains("link codes are for Telegram"), "{err}");
    let (ok, _, err) = link("telegram.dsk");
    assert!(!ok);
    assert!(err.contains("(did you mean `telegram.desk`?)"), "{err}");
    let (ok, out, err) = link("telegram.desk");
    assert!(ok, "{err}");
    assert_eq!(out.trim().len(), 10, "a code: {out}");
}

#[test]
fn audited_commands_name_a_real_actor_without_user_or_logname() {
    let dir = setup();
    let d = dir.path();
    let (ok, _, err) = run(d, &["consent", "grant", "--patient", "p-0001", "--account", "webhook.sms"]);
    assert!(ok, "the login name comes from the user id when the variables are unset: {err}");
    let (ok, _, err) =
        run(d, &["consent", "grant", "--patient", "p-0001", "--account", "webhook.sms", "--actor", "s-lee"]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(d, &["records", "--actor", "privacy-officer", "audit", "--patient", "p-0001"]);
    assert!(ok, "{err}");
    let actors: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|a| a["action"] == "consent.grant")
        .map(|a| a["actor"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(actors.len(), 2, "{out}");
    assert!(!["unknown", "unnamed", "cli", ""].contains(&actors[0].as_str()), "a real name: {actors:?}");
    assert_eq!(actors[1], "s-lee");

    // An empty name is refused before anything is recorded.
    let (ok, _, err) = run(d, &["review", "approve", "dlv-0000000001", "--by", " "]);
    assert!(!ok);
    assert!(err.contains("must not be empty"), "{err}");
    let (ok, _, err) = run(d, &["outbox", "retry", "dlv-0000000001", "--by", ""]);
    assert!(!ok);
    assert!(err.contains("must not be empty"), "{err}");
}
