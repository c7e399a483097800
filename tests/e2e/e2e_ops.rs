//! The ops endpoint and the dead-letter commands against the real daemon binary over loopback:
//! `/healthz`, `/readyz` (naming an inbound account that cannot connect), `/metrics` whose
//! counts match what was posted and that carries no PHI, the `Status.` line's adapter states,
//! and `carebridge outbox list|retry|drop` on dead letters.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::daemon::{Daemon, wait_http};
use support::sink::{Mode, Sink};
use support::{SECRET, free_port, message, post_message};

const WAIT: Duration = Duration::from_secs(30);
/// Planted PHI: must never appear in /metrics, /readyz or `outbox list`.
const PHONE: &str = "+14165550199";
const TEXT: &str = "Planted-Secret-Text about my knee";

struct Ports {
    webhook: u16,
    ops: u16,
    admin: u16,
}

fn config(dir: &Path, ports: &Ports, sink_url: &str, extra: &str) -> String {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    std::fs::write(dir.join("admin-token"), "ops-test-admin-token").unwrap();
    format!(
        r#"
[daemon]
data_dir = "{data}"
status_interval_secs = 1

[outbox]
retry_initial_ms = 50
retry_max_secs = 1
max_attempts = 3

[ops]
listen = "127.0.0.1:{ops}"

[admin]
listen = "127.0.0.1:{admin}"
token_file = "admin-token"

[webhook.in]
listen = "127.0.0.1:{webhook}"
secret_file = "secret"
from_kind = "phone"

[webhook.out]
url = "{sink_url}"
secret_file = "secret"

[[route]]
name = "in-to-out"
from = ["webhook.in"]
to = ["webhook.out"]

[[directory.patient]]
id = "p-0001"
addresses = ["phone:{PHONE}"]
{extra}
"#,
        data = dir.join("data").display(),
        ops = ports.ops,
        admin = ports.admin,
        webhook = ports.webhook,
    )
}

async fn start(dir: &Path, sink: &Sink, extra: &str) -> (Daemon, Ports) {
    let ports = Ports { webhook: free_port(), ops: free_port(), admin: free_port() };
    let d = Daemon::start(dir, &config(dir, &ports, &sink.url(), extra));
    assert!(
        wait_http(&format!("http://127.0.0.1:{}/healthz", ports.ops), WAIT).await,
        "ops endpoint did not come up: {:?}",
        d.logs()
    );
    (d, ports)
}

async fn get(port: u16, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await.expect("ops endpoint answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Polls `path` until `check` accepts the answer; returns the last answer either way.
async fn poll(port: u16, path: &str, check: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let end = Instant::now() + WAIT;
    loop {
        let (status, body) = get(port, path).await;
        if check(status, &body) || Instant::now() > end {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of every sample of `name`.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

fn assert_no_phi(what: &str, text: &str) {
    for phi in [PHONE, "4165550199", "Planted-Secret-Text", "knee", "p-0001"] {
        assert!(!text.contains(phi), "{what} leaked {phi:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_match_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::Accept).await;
    let (mut d, ports) = start(dir.path(), &sink, "").await;

    assert_eq!(get(ports.ops, "/healthz").await.0, 200);
    let (status, body) = poll(ports.ops, "/readyz", |s, _| s == 200).await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["store"], "ok");
    assert_eq!(ready["failed"], serde_json::json!([]));
    assert_eq!(ready["inbound"], serde_json::json!([{ "account": "webhook.in", "state": "up" }]));

    let client = reqwest::Client::new();
    for i in 0..3 {
        let (status, body) = post_message(&client, ports.webhook, &message(&format!("m{i}"), PHONE, TEXT)).await;
        assert_eq!(status, 202, "{body}");
    }
    assert!(sink.wait_for(3, WAIT).await, "sink got {}", sink.received().len());

    // Deliveries are counted once their outcome is written, just after the sink answered.
    let sent = ["account=\"webhook.out\"", "outcome=\"sent\""];
    let (_, metrics) =
        poll(ports.ops, "/metrics", |_, t| sample(t, "carebridge_deliveries_total", &sent) == Some(3.0)).await;
    let recorded = ["account=\"webhook.in\"", "channel=\"webhook\"", "outcome=\"recorded\""];
    assert_eq!(sample(&metrics, "carebridge_messages_received_total", &recorded), Some(3.0), "{metrics}");
    assert_eq!(total(&metrics, "carebridge_messages_received_total"), 3.0, "nothing else was counted");
    assert_eq!(sample(&metrics, "carebridge_deliveries_total", &sent), Some(3.0), "{metrics}");
    assert_eq!(total(&metrics, "carebridge_deliveries_total"), 3.0, "no retries, nothing dead");
    assert_eq!(total(&metrics, "carebridge_decisions_total"), 3.0, "one decision per message and destination");
    assert!(sample(&metrics, "carebridge_flush_duration_seconds_count", &[]).unwrap_or(0.0) >= 1.0, "{metrics}");
    assert!(sample(&metrics, "carebridge_flush_messages_sum", &[]).unwrap_or(0.0) >= 3.0, "{metrics}");
    assert_eq!(sample(&metrics, "carebridge_dead_letters", &[]), Some(0.0));
    assert_eq!(sample(&metrics, "carebridge_held_for_review", &[]), Some(0.0));
    assert_eq!(sample(&metrics, "carebridge_inbound_up", &["account=\"webhook.in\""]), Some(1.0));
    assert_no_phi("/metrics", &metrics);

    // A redelivery is counted as a duplicate, not as a new message.
    let (status, body) = post_message(&client, ports.webhook, &message("m0", PHONE, TEXT)).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("duplicate")));
    let (_, metrics) = get(ports.ops, "/metrics").await;
    assert_eq!(sample(&metrics, "carebridge_messages_received_total", &["outcome=\"duplicate\""]), Some(1.0));

    let from = d.log_len();
    assert!(d.wait_log("adapters=webhook.in=up", from, WAIT), "status line names adapter states: {:?}", d.logs());
    assert!(d.terminate(), "clean exit on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_an_inbound_account_that_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("imap-pass"), "not-a-real-password").unwrap();
    let sink = Sink::start(Mode::Accept).await;
    // Nothing listens on this port: the IMAP reader never connects.
    let closed = free_port();
    let mailbox = format!(
        "[email.mailbox]\naddress = \"clinic@clinic.test\"\n[email.mailbox.imap]\nhost = \"127.0.0.1\"\n\
         port = {closed}\ntls = \"plain\"\nusername = \"clinic@clinic.test\"\npassword_file = \"imap-pass\"\n\
         reconnect_max_secs = 1\n"
    );
    let (mut d, ports) = start(dir.path(), &sink, &mailbox).await;

    let (status, body) = poll(ports.ops, "/readyz", |_, b| b.contains("\"reason\":\"connect\"")).await;
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["store"], "ok", "{body}");
    assert!(ready["failed"].as_array().unwrap().contains(&serde_json::json!("email.mailbox")), "{body}");
    let mailbox_check = ready["inbound"].as_array().unwrap().iter().find(|c| c["account"] == "email.mailbox").cloned();
    assert_eq!(
        mailbox_check,
        Some(serde_json::json!({ "account": "email.mailbox", "state": "down", "reason": "connect" }))
    );
    assert!(!body.contains("clinic@clinic.test"), "readiness names accounts, never addresses: {body}");
    // The other receiver is fine and not blamed.
    let (_, body) =
        poll(ports.ops, "/readyz", |_, b| !b.contains("\"failed\":[\"email.mailbox\",\"webhook.in\"]")).await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["failed"], serde_json::json!(["email.mailbox"]), "{body}");

    let (_, metrics) = get(ports.ops, "/metrics").await;
    assert_eq!(sample(&metrics, "carebridge_inbound_up", &["account=\"email.mailbox\""]), Some(0.0), "{metrics}");
    assert!(d.wait_log("email.mailbox=down(connect)", 0, WAIT), "status line shows the state: {:?}", d.logs());
    assert!(d.terminate(), "clean exit on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_retried_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::Always(400)).await;
    let (mut d, ports) = start(dir.path(), &sink, "").await;
    let client = reqwest::Client::new();
    for i in 0..2 {
        let (status, body) = post_message(&client, ports.webhook, &message(&format!("dl{i}"), PHONE, TEXT)).await;
        assert_eq!(status, 202, "{body}");
    }

    // 400 is permanent: both are dead-lettered after one attempt.
    let (_, metrics) = poll(ports.ops, "/metrics", |_, t| sample(t, "carebridge_dead_letters", &[]) == Some(2.0)).await;
    assert_eq!(sample(&metrics, "carebridge_dead_letters", &[]), Some(2.0), "{metrics}");
    assert_eq!(sample(&metrics, "carebridge_deliveries_total", &["outcome=\"dead\""]), Some(2.0), "{metrics}");
    let (ok, out, err) = d.cli(&["outbox", "list"]);
    assert!(ok, "{err}");
    assert_no_phi("outbox list", &out);
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 2, "{out}");
    for dead in &list {
        assert_eq!(dead["account"], "webhook.out");
        assert_eq!(dead["kind"], "forward");
        assert_eq!(dead["attempts"], 1);
        assert!(dead["reason"].as_str().unwrap().contains("400"), "{dead}");
        assert!(dead["dead_at_ms"].as_u64().unwrap() > 0);
    }
    let (retried, dropped) = (list[0]["delivery"].as_str().unwrap(), list[1]["delivery"].as_str().unwrap());

    // Retry once the receiver accepts: delivered, same delivery id (its idempotency key).
    sink.set_mode(Mode::Accept);
    let (ok, out, err) = d.cli(&["outbox", "retry", retried, "--by", "s-ops"]);
    assert!(ok, "{err}");
    assert!(out.contains("requeued"), "{out}");
    assert!(sink.wait_for(1, WAIT).await, "the retried delivery arrives");
    let got = sink.received();
    assert_eq!(got[0].body["delivery_id"], retried, "{:?}", got[0].body);

    let (ok, out, err) = d.cli(&["outbox", "drop", dropped, "--by", "s-ops"]);
    assert!(ok, "{err}");
    assert!(out.contains("dropped"), "{out}");
    let (ok, out, _) = d.cli(&["outbox", "list"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap().len(), 0, "{out}");
    let (ok, _, err) = d.cli(&["outbox", "retry", dropped]);
    assert!(!ok && err.contains("no such dead letter"), "a dropped letter cannot come back: {err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 1, "the dropped letter was never sent");
    let (_, metrics) = poll(ports.ops, "/metrics", |_, t| sample(t, "carebridge_dead_letters", &[]) == Some(0.0)).await;
    assert_eq!(sample(&metrics, "carebridge_dead_letters", &[]), Some(0.0), "{metrics}");

    assert!(d.terminate(), "clean exit on SIGTERM");
    // With the daemon stopped, the CLI reads the store itself.
    let (ok, out, err) = d.cli(&["outbox", "list"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]");
    let export = d.export();
    // The export writes ids as numbers; the list as `dlv-0000000042`.
    let events_of = |delivery: &str| -> Vec<serde_json::Value> {
        let number: u64 = delivery.trim_start_matches("dlv-").parse().unwrap();
        export
            .iter()
            .filter(|l| l["type"] == "record")
            .flat_map(|l| l["events"].as_array().unwrap().clone())
            .filter(|e| e["delivery"] == number)
            .collect()
    };
    let retried_events = events_of(retried);
    let kinds: Vec<&str> = retried_events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["attempt", "dead_lettered", "requeued", "attempt"], "{retried_events:?}");
    assert_eq!(retried_events[2]["by"], "s-ops");
    assert_eq!(retried_events[3]["outcome"], "sent");
    let dropped_events = events_of(dropped);
    let kinds: Vec<&str> = dropped_events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["attempt", "dead_lettered", "dropped"], "{dropped_events:?}");
    assert_eq!(dropped_events[2]["by"], "s-ops");
}

/// Runs `carebridge run` on `toml` (written to `dir`) and waits for it to exit: its code and
/// stderr.
fn run_to_exit(dir: &Path, toml: &str) -> (Option<i32>, String) {
    let cfg = dir.join("carebridge.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut child = std::process::Command::new(support::daemon::bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + WAIT;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (code, err)
}

/// Issue 15, item 5: a configuration that validates but names something unusable (a secret file
/// that is not there, a key file others can read, a missing admin token) is found only by `run`,
/// which exited 1, so `RestartPreventExitStatus=2` did not stop the restart loop. Each exits 2.
#[test]
fn every_configuration_failure_at_run_exits_2() {
    let ports = Ports { webhook: free_port(), ops: free_port(), admin: free_port() };
    let sink = "http://127.0.0.1:9/unused";

    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), &ports, sink, "").replace("secret_file = \"secret\"", "secret_file = \"absent\"");
    let (code, err) = run_to_exit(dir.path(), &toml);
    assert_eq!(code, Some(2), "a missing secret file: {err}");
    assert!(err.contains("absent"), "names the file: {err}");

    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), &ports, sink, "[store]\nkey_file = \"store.key\"\n");
    std::fs::write(dir.path().join("carebridge.toml"), &toml).unwrap();
    let key = dir.path().join("store.key");
    let out = std::process::Command::new(support::daemon::bin())
        .args(["keys", "generate", "--file"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = run_to_exit(dir.path(), &toml);
    assert_eq!(code, Some(2), "a key file others can read: {err}");
    assert!(err.contains("chmod 600"), "says what to do: {err}");

    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), &ports, sink, "[store]\nkey_file = \"no-such.key\"\n");
    let (code, err) = run_to_exit(dir.path(), &toml);
    assert_eq!(code, Some(2), "a key file that does not exist: {err}");

    let dir = tempfile::tempdir().unwrap();
    let toml = config(dir.path(), &ports, sink, "");
    std::fs::remove_file(dir.path().join("admin-token")).unwrap();
    let (code, err) = run_to_exit(dir.path(), &toml);
    assert_eq!(code, Some(2), "a missing admin token file: {err}");
}

/// Issue 15, item 5: running out of file descriptors exited 74, which tells the operator the
/// disk is full. Started under a tiny `RLIMIT_NOFILE` (so the store, or the runtime before it,
/// cannot open what it needs), carebridge exits 71 and says why, never 74.
#[test]
fn running_out_of_file_descriptors_exits_71_not_74() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports { webhook: free_port(), ops: free_port(), admin: free_port() };
    let cfg = dir.path().join("carebridge.toml");
    std::fs::write(&cfg, config(dir.path(), &ports, "http://127.0.0.1:9/unused", "")).unwrap();
    for limit in [8, 10, 12, 14] {
        let _ = std::fs::remove_dir_all(dir.path().join("data"));
        // Descriptors 3..9 inherited from the test harness are closed first, so the limit is
        // what carebridge itself has.
        let script =
            format!("ulimit -n {limit} && exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- && exec \"$0\" run --config \"$1\"");
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script, support::daemon::bin()])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let end = Instant::now() + WAIT;
        let code = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s.code();
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        use std::io::Read;
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        assert_eq!(code, Some(71), "limit {limit}: {err}");
        assert!(err.contains("Too many open files"), "limit {limit}: says why: {err}");
    }
}
