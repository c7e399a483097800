//! A crash loop under load: several clients post signed messages with unique ids while the
//! daemon is killed with SIGKILL twenty times at random points (including during start-up and
//! recovery) and restarted each time. Clients resend whatever was not answered 2xx, as a real SMS
//! gateway does.
//!
//! At the end, with the daemon stopped cleanly after its outbox drained: every accepted message
//! is recorded exactly once and was delivered at least once; resends of a delivery carry the
//! same `Idempotency-Key`, so a receiver that honours it sees each message exactly once.
//!
//! The kill points come from a seeded RNG; the seed is printed, and `CAREBRIDGE_TEST_SEED=<n>`
//! replays the same schedule (the daemon's own timing still varies).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::daemon::{Daemon, wait_http};
use support::load::{Load, LoadConfig, by_idempotency_key, id_of_text};
use support::sink::{Mode, Sink};
use support::{free_port, relay_config};

const KILLS: usize = 20;

fn seed() -> u64 {
    match std::env::var("CAREBRIDGE_TEST_SEED") {
        Ok(s) => s.parse().expect("CAREBRIDGE_TEST_SEED is a u64"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_under_load_lose_nothing_accepted_and_record_nothing_twice() {
    let seed = seed();
    println!("crash_loop seed = {seed} (replay the kill schedule with CAREBRIDGE_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::Accept).await;
    let port = free_port();
    let patient = format!(
        "[[directory.patient]]\nid = \"p-0042\"\naddresses = [\"phone:{}\"]",
        support::load::LOAD_PHONE.replace(' ', "")
    );
    let toml = relay_config(dir.path(), &dir.path().join("data"), port, &sink.url(), Some(1000), &patient);
    let health = format!("http://127.0.0.1:{port}/healthz");
    let mut d = Daemon::start(dir.path(), &toml);
    assert!(wait_http(&health, Duration::from_secs(30)).await, "daemon did not come up: {:?}", d.logs());

    let load = Load::start(
        port,
        "m",
        LoadConfig {
            clients: 6,
            max_per_client: 4000,
            pause: Duration::from_millis(2),
            request_timeout: Duration::from_secs(10),
        },
    );

    // Twenty kills at random points. Most come a random while after the daemon answered its
    // health check (mid-stream: between receipt and flush, during sends, during bookkeeping);
    // one in four comes a random few milliseconds after the start, while the store is being
    // opened and the outbox resumed.
    let started = Instant::now();
    let mut schedule = Vec::new();
    for kill in 0..KILLS {
        let early = rng.random_ratio(1, 4);
        let delay = Duration::from_millis(if early { rng.random_range(0..250) } else { rng.random_range(0..1200) });
        if !early {
            assert!(wait_http(&health, Duration::from_secs(30)).await, "restart {kill} did not come up");
        }
        let before = load.accepted_count();
        tokio::time::sleep(delay).await;
        d.kill9();
        schedule.push(format!("{}{}ms", if early { "start+" } else { "ready+" }, delay.as_millis()));
        println!(
            "kill {:2}: {:>12} accepted so far {:6} (+{})",
            kill + 1,
            schedule.last().unwrap(),
            load.accepted_count(),
            load.accepted_count() - before
        );
        d.spawn();
    }
    assert!(wait_http(&health, Duration::from_secs(30)).await, "the last restart did not come up: {:?}", d.logs());
    let accepted_during_kills = load.accepted_count();

    // Clients stop sending new messages and resend what is still unaccepted.
    let report = load.finish(Duration::from_secs(60)).await;
    assert!(report.unaccepted.is_empty(), "never accepted after the last restart: {:?}", report.unaccepted);
    let accepted: BTreeSet<String> = report.accepted.keys().cloned().collect();
    assert!(
        accepted_during_kills > 0 && accepted.len() > KILLS,
        "the stream ran between the kills ({} accepted)",
        accepted.len()
    );
    assert!(report.errors > 0, "the kills were felt by the clients");

    // The outbox drains: a delivery per accepted message reaches the sink.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (distinct, _) = by_idempotency_key(&sink.received());
        if distinct.len() >= accepted.len() || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.terminate(), "clean exit after the crash loop: {:?}", d.logs().iter().rev().take(20).collect::<Vec<_>>());
    let (delivered, duplicates) = by_idempotency_key(&sink.received());

    // Recorded exactly once per accepted message, and nothing else recorded.
    let export = d.export();
    let records: Vec<&serde_json::Value> = export.iter().filter(|l| l["type"] == "record").collect();
    let mut by_source: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        *by_source.entry(r["record"]["source"]["native_id"].as_str().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = by_source.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "recorded more than once: {twice:?}");
    let missing: Vec<_> = accepted.iter().filter(|id| !by_source.contains_key(id.as_str())).collect();
    assert!(missing.is_empty(), "accepted (2xx) but not recorded: {missing:?}");
    let unknown: Vec<_> = by_source.keys().filter(|id| !accepted.contains(**id)).collect();
    assert!(unknown.is_empty(), "recorded but never sent by a client: {unknown:?}");
    assert!(export.iter().all(|l| l["type"] == "record"), "no dead letters, quarantine or held items");

    // Delivered: one distinct delivery per record, each from its own message, all signed, and
    // the outbox knows each as sent exactly once (its row was removed when it was recorded sent).
    assert!(sink.received().iter().all(|r| r.signature_ok), "every delivery is signed");
    let mut delivered_ids: BTreeMap<String, usize> = BTreeMap::new();
    for r in &delivered {
        let id = id_of_text(r.body["text"].as_str().unwrap()).unwrap().to_string();
        *delivered_ids.entry(id).or_default() += 1;
    }
    let not_delivered: Vec<_> = accepted.iter().filter(|id| !delivered_ids.contains_key(*id)).collect();
    assert!(not_delivered.is_empty(), "accepted but never delivered: {not_delivered:?}");
    let split: Vec<_> = delivered_ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(split.is_empty(), "one message delivered under several idempotency keys: {split:?}");
    assert_eq!(delivered.len(), accepted.len(), "distinct deliveries == accepted messages");
    for r in &records {
        let sent = r["events"].as_array().unwrap().iter().filter(|e| e["outcome"] == "sent").count();
        assert_eq!(sent, 1, "record {} has {sent} sent events", r["record"]["id"]);
    }

    // The crash loop provoked no PHI in the log.
    let logs = d.logs();
    let leaks: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("load test message") || l.contains("5550142") || l.contains("555 0142"))
        .collect();
    assert!(leaks.is_empty(), "PHI in the log: {leaks:?}");

    println!(
        "crash_loop: seed {seed}; {KILLS} kills at {schedule:?}; {} requests ({} non-2xx, {} without answer); \
         accepted {}, recorded {}, delivered {} (distinct idempotency keys), duplicates suppressed by \
         idempotency key {}; {:.1} s",
        report.attempts,
        report.refused,
        report.errors,
        accepted.len(),
        records.len(),
        delivered.len(),
        duplicates,
        started.elapsed().as_secs_f64(),
    );
}
