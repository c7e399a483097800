//! Throughput and latency of the whole webhook → record → webhook path, through the real daemon
//! binary, with durable records (group commit) — not a timed test, a measurement to read.
//!
//! Run: `cargo bench --bench pipeline` (env: `BENCH_CONNS` (32), `BENCH_MESSAGES` (40000)).
//! Two phases in one run, each with a fresh daemon and store: *recorded only* (no route out) and
//! *recorded and forwarded* (to a signature-checking HTTP sink). Each prints accepted msgs/s
//! (202s), p50/p99 latency of the 202, the rate at which the sink received the forwards, and the
//! group-commit figures (messages per router batch, receipts and time per flush). The load
//! generator and the sink share the machine with the daemon, so compare figures from one run,
//! not across machines.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed bench should panic with the value

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::daemon::{Daemon, wait_http};
use support::sink::{Mode, Sink};
use support::{SECRET, free_port, message};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let only = rt.block_on(phase(false));
    let full = rt.block_on(phase(true));
    println!("ratio forwarded/recorded-only accepted msgs/s: {:.2}", full / only);
}

/// One phase; returns accepted msgs/s.
async fn phase(deliver: bool) -> f64 {
    let conns = env("BENCH_CONNS", 32);
    let total = env("BENCH_MESSAGES", 40_000);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let sink = Sink::start(Mode::Accept).await;
    let port = free_port();
    let route =
        if deliver { "[[route]]\nname = \"bench\"\nfrom = [\"webhook.in\"]\nto = [\"webhook.out\"]" } else { "" };
    let toml = format!(
        r#"
[daemon]
data_dir = "{data}"
# Per-batch figures only (router and flusher); per-message lines are info.
log_level = "warn,carebridge::router=debug,carebridge::record::flusher=debug"
queue_capacity = 4096
[outbox]
max_in_flight = 32
[webhook.in]
listen = "127.0.0.1:{port}"
secret_file = "secret"
from_kind = "phone"
submit_timeout_ms = 10000
[webhook.out]
url = "{url}"
secret_file = "secret"
{route}
[[directory.patient]]
id = "p-bench"
addresses = ["phone:+15550001111"]
[policy.channels]
"webhook.out" = "secure"
"#,
        data = dir.path().join("data").display(),
        url = sink.url()
    );
    let mut d = Daemon::start(dir.path(), &toml);
    assert!(wait_http(&format!("http://127.0.0.1:{port}/healthz"), Duration::from_secs(30)).await);

    // Pre-sign every body so the generator spends its CPU on HTTP, not HMAC.
    let key = carebridge_webhook::SigningKey::new(SECRET.as_bytes());
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let bodies: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
        (0..total)
            .map(|i| {
                let b = message(
                    &format!("b{i}"),
                    "+15550001111",
                    "Hello, I would like to book an appointment next week please.",
                );
                let s = key.sign(ts, &b);
                (b, s)
            })
            .collect(),
    );
    let url = format!("http://127.0.0.1:{port}/v1/messages");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (bodies, url, next) = (bodies.clone(), url.clone(), next.clone());
        // One client per task: one keep-alive connection each.
        let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= bodies.len() {
                    return lat;
                }
                let (b, s) = &bodies[i];
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header(carebridge_webhook::TIMESTAMP_HEADER, ts.to_string())
                    .header(carebridge_webhook::SIGNATURE_HEADER, s.as_str())
                    .body(b.clone())
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status().as_u16(), 202);
                let _ = r.bytes().await;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let accepted = start.elapsed();
    if deliver {
        assert!(sink.wait_for(total, Duration::from_secs(600)).await, "sink got {}", sink.received().len());
    }
    let delivered = start.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let rate = total as f64 / accepted.as_secs_f64();
    println!(
        "pipeline, {}: {total} messages, {conns} connections, durable records (group commit)",
        if deliver { "recorded and forwarded" } else { "recorded only" }
    );
    println!(
        "  accepted (202): {:>8.0} msgs/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        rate,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    if deliver {
        println!(
            "  delivered:      {:>8.0} msgs/s   (all {total} at the sink after {:.2} s)",
            total as f64 / delivered.as_secs_f64(),
            delivered.as_secs_f64()
        );
    }
    d.terminate();
    let logs = d.logs();
    let num = |l: &str, k: &str| -> f64 {
        l.split(&format!("{k}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    for (needle, label, keys) in
        [("Batch planned", "router batches", ["messages", "micros"]), ("Flushed.", "flushes", ["receipts", "flush_us"])]
    {
        let ls: Vec<&String> = logs.iter().filter(|l| l.contains(needle)).collect();
        let n = ls.len().max(1) as f64;
        let avgs: Vec<String> =
            keys.iter().map(|k| format!("avg {k} {:.1}", ls.iter().map(|l| num(l, k)).sum::<f64>() / n)).collect();
        println!("  {label}: {}  {}", ls.len(), avgs.join("  "));
    }
    rate
}
