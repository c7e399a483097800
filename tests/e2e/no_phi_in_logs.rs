//! Planted names, phone numbers, health numbers and texts never appear in any log line, in
//! either log format, through a run with successes, retries, dead letters and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::time::Duration;
use support::daemon::{Daemon, wait_http};
use support::sink::{Mode, Sink};
use support::{SECRET, free_port, post_message};

const PLANTED: &[&str] = &[
    "Zebediah",
    "Quackenbush",
    "+14165550142",
    "4165550142",
    "416-555-0142",
    "9876543217",
    "zeb.quack@example.test",
    "persistent cough and fever",
    "oxycodone",
    "M5V 2T6",
];

async fn run(format: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let sink = Sink::start(Mode::FailFirst(500, 2)).await;
    let dead = Sink::start(Mode::Always(422)).await;
    let port = free_port();
    let toml = format!(
        r#"
[daemon]
data_dir = "{data}"
log_format = "{format}"
log_level = "debug"
status_interval_secs = 1
[outbox]
retry_initial_ms = 20
retry_max_secs = 1
[webhook.sms]
listen = "127.0.0.1:{port}"
secret_file = "secret"
from_kind = "phone"
[webhook.ehr]
url = "{ok}"
secret_file = "secret"
[webhook.dead]
url = "{dead}"
secret_file = "secret"
[[route]]
name = "r"
from = ["webhook.sms"]
to = ["webhook.ehr", "webhook.dead"]
[policy.channels]
"webhook.ehr" = "secure"
"webhook.dead" = "secure"
[[directory.patient]]
id = "p-zq"
addresses = ["phone:+14165550142", "email:zeb.quack@example.test"]
"#,
        data = dir.path().join("data").display(),
        ok = sink.url(),
        dead = dead.url()
    );
    let mut d = Daemon::start(dir.path(), &toml);
    assert!(wait_http(&format!("http://127.0.0.1:{port}/healthz"), Duration::from_secs(20)).await);
    let c = reqwest::Client::new();
    let text = "Hi this is Zebediah Quackenbush, 416-555-0142, OHIP 9876543217, M5V 2T6. I have a persistent cough and fever, can I get oxycodone? zeb.quack@example.test";
    for (i, from) in ["+14165550142", "+1 416 555 0142", "+19995550100"].iter().enumerate() {
        let body = serde_json::to_vec(&serde_json::json!({"id": format!("phi-{i}"), "from": from, "text": text, "display_name": "Zebediah Quackenbush"})).unwrap();
        assert_eq!(post_message(&c, port, &body).await.0, 202);
    }
    // Malformed input that carries PHI.
    let bad = format!("{{\"id\": \"bad\", \"from\": \"+14165550142\", \"text\": \"{text}\" ");
    assert_eq!(post_message(&c, port, bad.as_bytes()).await.0, 400);
    let wrong_type = serde_json::to_vec(&serde_json::json!({"id": "wt", "from": 4165550142u64, "text": text})).unwrap();
    assert_eq!(post_message(&c, port, &wrong_type).await.0, 400);
    assert!(sink.wait_for(3, Duration::from_secs(20)).await);
    let seen = 0;
    assert!(d.wait_log("ead-lettered", seen, Duration::from_secs(20)));
    assert!(d.wait_log("Status", seen, Duration::from_secs(5)));
    assert!(d.terminate());
    d.logs()
}

fn check(lines: &[String]) {
    assert!(lines.len() > 10, "the run logged something: {lines:?}");
    for line in lines {
        for p in PLANTED {
            assert!(!line.to_lowercase().contains(&p.to_lowercase()), "PHI `{p}` leaked into a log line: {line}");
        }
    }
    assert!(lines.iter().any(|l| l.contains("Message recorded")), "the run recorded messages");
    assert!(lines.iter().any(|l| l.contains("quarantined")), "the run quarantined input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_logs_carry_no_phi() {
    check(&run("human").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_no_phi() {
    let lines = run("json").await;
    assert!(lines.iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "every line is JSON");
    check(&lines);
}
