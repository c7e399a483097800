//! kill -9 in the middle of a stream: every message that got 202 is recorded once and delivered
//! after restart; nothing that was acknowledged is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::daemon::{Daemon, wait_http};
use support::sink::{Mode, Sink};
use support::{free_port, message, post_message, relay_config, signed_post};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_and_are_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::Accept).await;
    let port = free_port();
    let toml = relay_config(dir.path(), &dir.path().join("data"), port, &sink.url(), None, "");
    let mut d = Daemon::start(dir.path(), &toml);
    let health = format!("http://127.0.0.1:{port}/healthz");
    assert!(wait_http(&health, Duration::from_secs(20)).await);

    // Eight clients stream messages; each remembers which ids got 202. Clients resend what
    // failed (connection reset, 503) after the restart, as a real client would.
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (c, acked) = (client.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            for i in 0..400 {
                let id = format!("w{w}-{i}");
                let body = message(&id, "+15550000000", &format!("msg {id}"));
                let r = signed_post(&c, port, &body).send().await;
                match r {
                    Ok(r) if r.status().as_u16() == 202 => {
                        acked.lock().unwrap().insert(id);
                    }
                    _ => failed.push(id),
                }
            }
            failed
        }));
    }
    // Let the stream run, then kill the daemon hard in the middle of it.
    let t0 = std::time::Instant::now();
    while acked.lock().unwrap().len() < 300 && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.kill9();
    let mut unacked = Vec::new();
    for t in tasks {
        unacked.extend(t.await.unwrap());
    }
    let acked_before = acked.lock().unwrap().clone();
    assert!(acked_before.len() >= 300, "stream ran before the kill");
    assert!(!unacked.is_empty(), "the kill happened mid-stream");

    // Restart; clients resend whatever was not acknowledged.
    d.spawn();
    assert!(wait_http(&health, Duration::from_secs(20)).await);
    for id in &unacked {
        let (s, b) = post_message(&client, port, &message(id, "+15550000000", &format!("msg {id}"))).await;
        assert_eq!(s, 202, "{b}");
    }
    let total = acked_before.len() + unacked.len();
    assert!(sink.wait_for(total, Duration::from_secs(60)).await, "sink got {} of {total}", sink.received().len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(d.terminate());

    // Every acknowledged message is recorded exactly once and was delivered.
    let export = d.export();
    let mut by_source: BTreeMap<String, usize> = BTreeMap::new();
    for l in export.iter().filter(|l| l["type"] == "record") {
        *by_source.entry(l["record"]["source"]["native_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    for id in acked_before.iter().chain(unacked.iter()) {
        assert_eq!(by_source.get(id), Some(&1), "{id} recorded exactly once");
    }
    let delivered: BTreeSet<String> = sink
        .received()
        .iter()
        .map(|r| r.body["text"].as_str().unwrap().trim_start_matches("msg ").to_string())
        .collect();
    for id in &acked_before {
        assert!(delivered.contains(id), "{id} was acknowledged before the kill but never delivered");
    }
}
