//! The config front door, through the real binary: every shipped TOML validates; a broken one
//! gets every problem at once, with paths and did-you-mean hints, and a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::process::Command;
use support::daemon::bin;

fn check_config(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(bin()).args(["check-config", "--no-environment"]).arg(path).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn every_shipped_toml_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let (code, out, err) = check_config(&p);
            assert_eq!(code, 0, "{}: {out}{err}", p.display());
            n += 1;
        }
    }
    assert!(n >= 2, "default.toml and example.toml at least");
}

#[test]
fn the_embedded_default_is_the_shipped_default() {
    let out = Command::new(bin()).arg("print-default-config").output().unwrap();
    let shipped =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), shipped);
}

#[test]
fn every_problem_is_reported_at_once_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        r#"
[daemon]
queue_capacity = 0

[webhook.forms]
listen = "127.0.0.1:9"
secret_env = "X"

[webhook.ehr]
url = "ftp://nope"
secret_env = "X"

[[route]]
name = "r"
from = ["webhook.form"]
to = ["webhook.ehr", "email.nowhere"]

[[directory.patient]]
id = "p 1"
addresses = ["fax:123", "email:ann@x.test"]

[[directory.staff]]
id = "s-1"
addresses = ["email:ANN@x.test"]
"#,
    )
    .unwrap();
    let (code, _, err) = check_config(&p);
    assert_eq!(code, 2, "{err}");
    for needle in [
        "daemon.queue_capacity",
        "webhook.ehr.url",
        "route[0].from: route `r`: unknown account `webhook.form` (did you mean `webhook.forms`?)",
        "unknown account `email.nowhere`",
        "directory.patient[0].id",
        "directory.patient[0].addresses[0]: unknown address kind `fax`",
        "directory.staff[0].addresses[0]: address already belongs to `p 1`",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
    assert!(!err.contains("ann@x.test"), "addresses are PHI and never echoed: {err}");
}

#[test]
fn inline_secrets_and_unknown_keys_are_refused_with_a_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.toml");
    std::fs::write(&p, "[webhook.forms]\nlisten = \"127.0.0.1:9\"\nsecret = \"hunter2\"\n").unwrap();
    let (code, _, err) = check_config(&p);
    assert_eq!(code, 2);
    assert!(err.contains("webhook.forms.secret: secrets are never written inline: use `secret_env`"), "{err}");
    assert!(!err.contains("hunter2"));

    std::fs::write(&p, "[daemon]\ndata_dri = \"x\"\n").unwrap();
    let (code, _, err) = check_config(&p);
    assert_eq!(code, 2);
    assert!(err.contains("daemon.data_dri: unknown field `data_dri`"), "{err}");
    assert!(err.contains("(did you mean `data_dir`?)"), "{err}");
}

/// Parse and type errors name their TOML path and come all at once, like validation problems:
/// several in one section, in other sections, and inside accounts (naming the key).
#[test]
fn parse_and_type_errors_name_their_path_and_come_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    std::fs::write(
        &p,
        r#"
[daemon]
data_dri = "x"
log_format = "xml"

[outbox]
max_attempts = "twelve"

[webhook.in]
listen = "not an address"
secret_env = "S"
max_skew = 3

[webhook.out]
url = "http://127.0.0.1:9/"
secret_env = "S"
timeout_ms = "soon"
"#,
    )
    .unwrap();
    let (code, _, err) = check_config(&p);
    assert_eq!(code, 2, "{err}");
    for needle in [
        "daemon.data_dri: unknown field `data_dri`",
        "daemon.log_format: unknown variant `xml`",
        "outbox.max_attempts: invalid type",
        "webhook.in.listen:",
        "webhook.in.max_skew: unknown field `max_skew`",
        "webhook.out.timeout_ms: invalid type",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
    assert!(!err.contains("twelve") && !err.contains("soon"), "values are never echoed: {err}");
}

#[test]
fn two_listeners_on_one_address_and_an_empty_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("l.toml");
    std::fs::write(
        &p,
        r#"
[ops]
listen = "127.0.0.1:9187"

[admin]
listen = "127.0.0.1:8181"
token_env = "T"

[webhook.in]
listen = "127.0.0.1:8181"
secret_env = "S"

[webhook.other]
listen = "0.0.0.0:9187"
secret_env = "S"
"#,
    )
    .unwrap();
    let (code, _, err) = check_config(&p);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("webhook.in.listen: 127.0.0.1:8181 is already the address of `admin.listen`"), "{err}");
    assert!(err.contains("webhook.other.listen: 0.0.0.0:9187 is already the address of `ops.listen`"), "{err}");

    for empty in ["", "\n# only a comment\n"] {
        std::fs::write(&p, empty).unwrap();
        let (code, _, err) = check_config(&p);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("the file is empty"), "{err}");
    }
}

/// A Telegram account in a route's `to` receives forwards, which go to `staff_chat_id`: without
/// one every forward would be dead-lettered.
#[test]
fn a_telegram_staff_destination_needs_a_staff_chat_id() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tg.toml");
    let text = r#"
[webhook.in]
listen = "127.0.0.1:0"
secret_env = "S"

[telegram.staff]
token_env = "TG"
STAFF

[[route]]
name = "to-staff"
from = ["webhook.in"]
to = ["telegram.staff"]

[policy.channels]
"telegram.staff" = "insecure"
"#;
    std::fs::write(&p, text.replace("STAFF", "")).unwrap();
    let (code, _, err) = check_config(&p);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("route[0].to: route `to-staff`: `telegram.staff` has no `staff_chat_id`"), "{err}");
    assert!(err.contains("set `telegram.staff.staff_chat_id`"), "{err}");

    std::fs::write(&p, text.replace("STAFF", "staff_chat_id = -1001234567890")).unwrap();
    let (code, out, err) = check_config(&p);
    assert_eq!(code, 0, "{out}{err}");
}

/// Issue #15, item 6: a read command where there is no store refuses, and creates nothing.
#[test]
fn a_read_command_without_a_store_refuses_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(bin()).args(args).current_dir(dir.path()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for args in
        [&["records", "--actor", "officer", "list", "--patient", "p-1"][..], &["export"][..], &["review", "list"][..]]
    {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("no record store") && err.contains("--config"), "{args:?}: {err}");
        assert!(!err.contains("restore the key file"), "{args:?}: {err}");
        assert!(!dir.path().join("data").exists(), "{args:?} created ./data");
    }
    // With a config whose data directory holds no store: the same, naming the setting.
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("[daemon]\ndata_dir = \"{}\"\n", dir.path().join("nothing").display())).unwrap();
    let (code, err) =
        run(&["records", "--actor", "officer", "--config", cfg.to_str().unwrap(), "list", "--patient", "p-1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("data_dir"), "{err}");
    assert!(!dir.path().join("nothing").exists());
}
