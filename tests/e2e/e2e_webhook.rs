//! End to end over real loopback HTTP: signed messages into `webhook.in`, through the real daemon
//! binary, out to a real sink that verifies signatures.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::time::Duration;
use support::daemon::{Daemon, wait_http};
use support::sink::{Mode, Sink};
use support::{SECRET, free_port, message, post_message, post_raw, signed_post};

fn config(dir: &std::path::Path, in_port: u16, sink_url: &str, extra: &str) -> String {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    format!(
        r#"
[daemon]
data_dir = "{data}"
status_interval_secs = 1

[outbox]
retry_initial_ms = 50
retry_max_secs = 1
max_attempts = 5

[webhook.in]
listen = "127.0.0.1:{in_port}"
secret_file = "secret"
from_kind = "phone"
max_body_bytes = 4096

[webhook.out]
url = "{sink_url}"
secret_file = "secret"

[[route]]
name = "in-to-out"
from = ["webhook.in"]
to = ["webhook.out"]

[[directory.patient]]
id = "p-0001"
addresses = ["phone:+14165550199"]
{extra}
"#,
        data = dir.join("data").display()
    )
}

async fn start(dir: &std::path::Path, sink: &Sink, extra: &str) -> (Daemon, u16) {
    let port = free_port();
    let d = Daemon::start(dir, &config(dir, port, &sink.url(), extra));
    assert!(
        wait_http(&format!("http://127.0.0.1:{port}/healthz"), Duration::from_secs(20)).await,
        "daemon did not come up: {:?}",
        d.logs()
    );
    (d, port)
}

fn records(export: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    export.iter().filter(|l| l["type"] == "record").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_recorded_and_delivered_once_with_a_valid_signature() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::Accept).await;
    let (mut d, port) = start(dir.path(), &sink, "").await;
    let client = reqwest::Client::new();
    let n = 60;
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            post_message(&c, port, &message(&format!("m{i}"), "+1 416 555 0199", &format!("hello {i}"))).await
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "recorded");
    }
    assert!(sink.wait_for(n, Duration::from_secs(20)).await, "sink got {}", sink.received().len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = sink.received();
    assert_eq!(got.len(), n, "each message exactly once");
    assert!(got.iter().all(|r| r.signature_ok), "every delivery is signed");
    let mut keys: Vec<_> = got.iter().map(|r| r.idempotency_key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "idempotency keys are per delivery");
    assert!(got.iter().all(|r| r.body["patient_id"] == "p-0001" && r.body["kind"] == "forward"));
    let mut texts: Vec<String> = got.iter().map(|r| r.body["text"].as_str().unwrap().to_string()).collect();
    texts.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("hello {i}")).collect();
    want.sort();
    assert_eq!(texts, want);

    assert!(d.terminate(), "clean exit on SIGTERM");
    let export = d.export();
    let recs = records(&export);
    assert_eq!(recs.len(), n);
    for r in recs {
        assert_eq!(r["record"]["patient_id"], "p-0001");
        assert_eq!(r["record"]["sender"]["role"], "patient");
        let events = r["events"].as_array().unwrap();
        assert!(events.iter().any(|e| e["event"] == "attempt" && e["outcome"] == "sent"), "{events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::Accept).await;
    let (mut d, port) = start(dir.path(), &sink, "").await;
    let c = reqwest::Client::new();
    let body = message("same-id", "+14165550199", "once");
    let (s1, b1) = post_message(&c, port, &body).await;
    let (s2, b2) = post_message(&c, port, &body).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(b1["status"], "recorded");
    assert_eq!(b2["status"], "duplicate");
    assert_eq!(b1["record_id"], b2["record_id"]);
    assert!(sink.wait_for(1, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 1);
    assert!(d.terminate());
    assert_eq!(records(&d.export()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_until_delivered_and_permanent_ones_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::FailFirst(500, 3)).await;
    let (mut d, port) = start(dir.path(), &sink, "").await;
    let c = reqwest::Client::new();
    assert_eq!(post_message(&c, port, &message("r1", "+14165550199", "retry me")).await.0, 202);
    assert!(sink.wait_for(1, Duration::from_secs(20)).await, "delivered after retries");
    assert_eq!(sink.attempts(), 4, "three 500s then a 200");

    sink.set_mode(Mode::Always(400));
    let seen = d.log_len();
    assert_eq!(post_message(&c, port, &message("r2", "+14165550199", "refused")).await.0, 202);
    assert!(d.wait_log("dead-lettered", seen, Duration::from_secs(20)), "{:?}", d.logs());
    assert!(d.terminate());
    let export = d.export();
    let recs = records(&export);
    let r1 = recs.iter().find(|r| r["record"]["source"]["native_id"] == "r1").unwrap();
    let outcomes: Vec<&str> =
        r1["events"].as_array().unwrap().iter().map(|e| e["outcome"].as_str().unwrap_or("")).collect();
    assert_eq!(outcomes, ["retry", "retry", "retry", "sent"]);
    let dead: Vec<_> = export.iter().filter(|l| l["type"] == "dead_letter").collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["dead_letter"]["reason"], "HTTP 400");
    let r2 = recs.iter().find(|r| r["record"]["source"]["native_id"] == "r2").unwrap();
    assert!(r2["events"].as_array().unwrap().iter().any(|e| e["event"] == "dead_lettered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::Accept).await;
    let (mut d, port) = start(dir.path(), &sink, "").await;
    let c = reqwest::Client::new();
    let good = message("g1", "+14165550199", "fine");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let key = carebridge_webhook::SigningKey::new(SECRET.as_bytes());

    // Wrong secret.
    let bad_sig = carebridge_webhook::SigningKey::new(b"wrong").sign(now, &good);
    assert_eq!(post_raw(&c, port, &good, &now.to_string(), &bad_sig).await.0, 401);
    // Stale timestamp, correctly signed.
    let old = now - 3600;
    assert_eq!(post_raw(&c, port, &good, &old.to_string(), &key.sign(old, &good)).await.0, 401);
    // Malformed JSON: 400, quarantined.
    let (s, b) = post_message(&c, port, b"{\"id\": \"x\", \"text\": ").await;
    assert_eq!(s, 400, "{b}");
    assert!(b["quarantine_id"].is_string(), "{b}");
    // Invalid UTF-8: 400, quarantined.
    let (s, b) = post_message(&c, port, b"{\"id\":\"u\",\"from\":\"+1\",\"text\":\"\xff\xfe\"}").await;
    assert_eq!(s, 400, "{b}");
    // Missing field.
    let (s, _) = post_message(&c, port, b"{\"id\":\"nf\",\"text\":\"no sender\"}").await;
    assert_eq!(s, 400);
    // Oversized body.
    let big = message("big", "+14165550199", &"x".repeat(10_000));
    assert_eq!(post_message(&c, port, &big).await.0, 413);
    // Still serving.
    let (s, b) = post_message(&c, port, &good).await;
    assert_eq!(s, 202, "{b}");
    assert!(sink.wait_for(1, Duration::from_secs(10)).await);
    assert!(d.alive());
    assert!(d.terminate());
    let export = d.export();
    assert_eq!(records(&export).len(), 1, "only the good message is a record");
    // The signed-but-malformed inputs are kept, with what was wrong, for the privacy officer.
    let quarantined: Vec<_> = export.iter().filter(|l| l["type"] == "quarantined").collect();
    assert_eq!(quarantined.len(), 3, "bad JSON, invalid UTF-8, missing field");
    assert!(quarantined.iter().all(|q| !q["quarantined"]["reason"].as_str().unwrap().is_empty()));
    assert!(
        quarantined
            .iter()
            .any(|q| q["quarantined"]["raw"].as_array().is_some_and(|b| b.contains(&serde_json::json!(0xff)))),
        "raw bytes kept as received"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_deliveries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::Always(503)).await;
    let (mut d, port) = start(dir.path(), &sink, "").await;
    let c = reqwest::Client::new();
    for i in 0..3 {
        assert_eq!(post_message(&c, port, &message(&format!("k{i}"), "+14165550199", "later")).await.0, 202);
    }
    assert!(d.wait_log("will retry", 0, Duration::from_secs(10)));
    assert!(d.terminate(), "clean shutdown with deliveries pending");
    assert_eq!(sink.received().len(), 0);
    sink.set_mode(Mode::Accept);
    d.spawn();
    assert!(sink.wait_for(3, Duration::from_secs(20)).await, "pending deliveries go out after restart");
    let mut texts: Vec<_> = sink.received().iter().map(|r| r.body["record_id"].as_str().unwrap().to_string()).collect();
    texts.dedup();
    assert_eq!(texts.len(), 3);
    assert!(d.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_answers_503_with_retry_after_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::Always(503)).await;
    let (mut d, port) = start(dir.path(), &sink, "[router]\nmax_outbox_pending = 2").await;
    let c = reqwest::Client::new();
    for i in 0..2 {
        assert_eq!(post_message(&c, port, &message(&format!("f{i}"), "+14165550199", "queued")).await.0, 202);
    }
    // The outbox is at its limit: the next message is refused, not dropped, with a hint.
    let body = message("f2", "+14165550199", "refused for now");
    let r = signed_post(&c, port, &body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some(), "tells the client when to come back");
    // The receiver recovers, the outbox drains, and the same message is accepted on resend.
    sink.set_mode(Mode::Accept);
    assert!(sink.wait_for(2, Duration::from_secs(20)).await);
    let mut accepted = false;
    for _ in 0..100 {
        if post_message(&c, port, &body).await.0 == 202 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "accepted again once the outbox drained");
    assert!(sink.wait_for(3, Duration::from_secs(20)).await);
    assert!(d.terminate());
    assert_eq!(records(&d.export()).len(), 3, "the refused message was not recorded twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_send_in_flight_finish_and_does_not_resend_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::Slow(1500)).await;
    let (mut d, port) = start(dir.path(), &sink, "").await;
    let c = reqwest::Client::new();
    assert_eq!(post_message(&c, port, &message("slow-1", "+14165550199", "in flight")).await.0, 202);
    // SIGTERM while the receiver is still answering.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.attempts(), 1, "the send is in flight");
    assert!(d.terminate(), "clean exit after the send finished");
    assert_eq!(sink.received().len(), 1, "the send in flight completed before exit");
    assert!(d.logs().iter().any(|l| l.contains("Delivered.")));
    // After a restart nothing is resent: the completion was recorded before exit.
    sink.set_mode(Mode::Accept);
    d.spawn();
    assert!(wait_http(&format!("http://127.0.0.1:{port}/healthz"), Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sink.attempts(), 1, "no resend after restart");
    assert!(d.terminate());
    let export = d.export();
    let events = records(&export)[0]["events"].as_array().unwrap().clone();
    assert_eq!(events.iter().filter(|e| e["outcome"] == "sent").count(), 1);
}
