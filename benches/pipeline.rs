//! Throughput, latency and memory of the whole webhook → record → webhook path, through the
//! real daemon binary with durable, chained, encrypted records (group commit) and the policy's
//! default detectors on (the config below sets no `[policy]` detector options) — not a timed
//! test, a measurement to read (issue #7, "Performance").
//!
//! Run: `cargo bench --bench pipeline` (with `CAREBRIDGE_TEST_POSTGRES` set to a server's DSN,
//! e.g. from `tests/postgres.sh start`, a last run puts the store in PostgreSQL). Env: `BENCH_MESSAGES` (40000 per run), `BENCH_CONNS`
//! (32), `BENCH_CONNS_LOW` (4), `BENCH_PREFILL` (1000000 records written into the store of the
//! last run before its daemon starts; 0 skips that run), `BENCH_ONLY` (a comma-separated subset of
//! the runs below: `low`, `high`, `floor`, `recorded`, `prefill`, `postgres`).
//!
//! Runs, each with a fresh daemon (or relay) and data directory, in one invocation:
//! 1. empty store, `BENCH_CONNS_LOW` connections, forwarded to a signature-checking HTTP sink;
//! 2. empty store, `BENCH_CONNS` connections, forwarded, then a second pass of new messages on
//!    the same daemon;
//! 3. the HTTP floor: the same load through the webhook adapters alone, joined by a relay that
//!    answers at once and forwards (`common/relay.rs`: no router, policy, record or outbox), in
//!    a process of its own — the ceiling this HTTP stack and this machine set;
//! 4. empty store, `BENCH_CONNS` connections, recorded only (no route: the cost of forwarding);
//! 5. a store pre-filled with `BENCH_PREFILL` records through the library (`Store::open` +
//!    `commit_exchanges`, each delivery then recorded as sent with `apply_outbox`, as a drained
//!    outbox leaves it; with the key file the daemon then loads), `BENCH_CONNS`, forwarded, then
//!    a second pass. The first pass meets the store's cache cold, as after a restart; the second one
//!    warm, as a daemon that has been running. Flatness is reported for both.
//!
//! Each prints accepted msgs/s (the `202`s) with p50/p99 of the `202`, the end-to-end rate
//! (until the sink had every forward), the daemon's idle RSS (after start, nothing sent) and its
//! peak RSS (VmHWM) after the load, and the group-commit figures. A summary compares the figures
//! with the issue's targets. The load generator and the sink run on the same cores as the
//! daemon (and other work may too): compare figures within one run, not across machines.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed bench should panic with the value

#[path = "../tests/e2e/support/mod.rs"]
mod support;

#[path = "common/synth.rs"]
mod synth;

#[path = "common/relay.rs"]
mod relay;

use carebridge::record::schema::EventKind;
use carebridge::record::{Exchange, Keyring, OutboxUpdate, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::daemon::{Daemon, wait_http};
use support::sink::{Mode, Sink};
use support::{SECRET, free_port, message};
use synth::{PATIENTS, Synth, disk_usage, env, mb};

/// Bytes a prefilled record may take on disk, rounded up from `cargo bench --bench store` (about
/// 6.7 kB per message there, flushed every batch), to refuse a prefill the disk cannot hold.
const PREFILL_BYTES_PER_RECORD: u64 = 8_000;

/// What one run measured.
#[derive(Clone, Debug, Default)]
struct Run {
    label: String,
    /// 0: the first load after the daemon started (the store's cache cold); 1: the same load again on
    /// the same daemon, new messages (cache warm).
    pass: usize,
    conns: usize,
    accepted: f64,
    end_to_end: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
    idle_rss_kb: u64,
    peak_rss_kb: u64,
    /// The daemon's CPU per message, µs.
    daemon_us: f64,
    /// This process's (load generator and sink) CPU per message, µs: a fixed amount of work per
    /// message, so the ratio of the two does not move with the machine's speed.
    harness_us: f64,
}

/// `VmRSS`, `VmHWM`, … of a process, in kB.
fn proc_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system, in clock ticks) of each of a process's threads, summed per thread
/// name with digits dropped (`tokio-rt-worker`, `fjall:worker`), so a run can say which part of the
/// daemon the CPU went to.
fn thread_ticks(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid …`: comm may hold spaces, so split after the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name: String = stat[open + 1..close].chars().filter(|c| !c.is_ascii_digit()).collect();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the comm: state is field 0, utime field 11, stime field 12.
        let ticks = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        *out.entry(name).or_default() += ticks;
    }
    out
}

fn main() {
    if let Ok(spec) = std::env::var(relay::ROLE_ENV) {
        return relay::main(&spec, SECRET);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let low = env("BENCH_CONNS_LOW", 4);
    let high = env("BENCH_CONNS", 32);
    let prefill = env("BENCH_PREFILL", 1_000_000);
    // `BENCH_ONLY=high,floor` (names: low, high, floor, recorded, prefill, postgres) runs a subset,
    // to iterate on one figure; the summary reads what ran.
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|n| n.trim() == name));
    let mut runs = Vec::new();
    if wanted("low") {
        let t = Target::Daemon { deliver: true, prefill: 0, postgres: false };
        runs.extend(rt.block_on(run("empty store, forwarded", low, t, 1)));
    }
    if wanted("high") {
        let t = Target::Daemon { deliver: true, prefill: 0, postgres: false };
        runs.extend(rt.block_on(run("empty store, forwarded", high, t, 2)));
    }
    if wanted("floor") {
        runs.extend(rt.block_on(run(FLOOR, high, Target::Relay, 1)));
    }
    if wanted("recorded") {
        let t = Target::Daemon { deliver: false, prefill: 0, postgres: false };
        runs.extend(rt.block_on(run("empty store, recorded only", high, t, 1)));
    }
    if prefill > 0 && wanted("prefill") {
        let label = format!("{prefill} records in store, forwarded");
        runs.extend(rt.block_on(run(&label, high, Target::Daemon { deliver: true, prefill, postgres: false }, 2)));
    }
    // Last, so the summary's comparisons with the targets read the embedded runs.
    if std::env::var_os(carebridge::record::pg_backend::testing::DSN_VAR).is_some() && wanted("postgres") {
        let pg = Target::Daemon { deliver: true, prefill: 0, postgres: true };
        runs.extend(rt.block_on(run("empty store on PostgreSQL, forwarded", high, pg, 1)));
    } else if wanted("postgres") {
        println!("pipeline on PostgreSQL: skipped ({} is not set)", carebridge::record::pg_backend::testing::DSN_VAR);
    }
    summary(&runs, high, prefill);
}

/// Writes `count` synthetic records into the store in `data_dir`, as the router would have, with a
/// fresh key file where the daemon looks by default (`<data_dir>/store.key`).
fn prefill_store(data_dir: &Path, count: usize) {
    let need = count as u64 * PREFILL_BYTES_PER_RECORD;
    let avail = available_bytes(data_dir.parent().unwrap());
    if let Some(avail) = avail {
        assert!(
            avail > need + 2_000_000_000,
            "prefilling {count} records needs about {} but only {} is free; lower BENCH_PREFILL",
            mb(need),
            mb(avail)
        );
    }
    let keys = Keyring::generate(&data_dir.join("store.key")).unwrap();
    let store = Store::open(data_dir, keys).unwrap();
    let mut synth = Synth::new(11, "pre");
    let start = Instant::now();
    let batch = 256;
    let mut done = 0;
    while done < count {
        let size = batch.min(count - done);
        let b: Vec<Exchange> =
            (0..size).map(|i| synth.exchange((done + i) as u64, &mut || store.next_id().unwrap())).collect();
        store.commit_exchanges(&b).unwrap();
        // A clinic's store has its outbox drained: every prefilled delivery was sent (an attempt
        // event, the receiver's id remembered), as the outbox would have written it. Left in the
        // outbox, the daemon would send a million old rows during the measurement.
        let sent: Vec<OutboxUpdate> = b
            .into_iter()
            .flat_map(|ex| ex.outbox)
            .map(|(key, item)| {
                let delivery = item.delivery.id;
                OutboxUpdate::Sent {
                    native_ids: vec![format!("sink-{}", key.seq)],
                    key,
                    item,
                    events: vec![EventKind::Attempt { delivery, attempt: 1, outcome: "sent".into(), reason: None }],
                }
            })
            .collect();
        store.apply_outbox(&sent).unwrap();
        done += size;
        if done % 200_000 < batch {
            eprintln!("  prefill: {done}/{count} records, {:.0} s", start.elapsed().as_secs_f64());
        }
    }
    store.flush_blocking().unwrap();
    drop(store);
    let took = start.elapsed();
    let (used, _) = disk_usage(data_dir);
    println!(
        "  prefill: {count} records through the library in {:.1} s ({:.0} records/s), store {} on disk",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64(),
        mb(used)
    );
}

/// Free bytes on the file system holding `dir` (`df -Pk`), if `df` answers.
fn available_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kb: u64 = text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()?;
    Some(kb * 1024)
}

/// A daemon config: webhook in, webhook out to the sink (when `deliver`), a directory of the
/// synthetic patients. No `[policy]` options beyond the destination's trust: every default
/// detector runs on every message.
fn config(data: &Path, port: u16, sink_url: &str, deliver: bool, store: &str) -> String {
    let route =
        if deliver { "[[route]]\nname = \"bench\"\nfrom = [\"webhook.in\"]\nto = [\"webhook.out\"]" } else { "" };
    let mut toml = format!(
        r#"
[daemon]
data_dir = "{data}"
# Per-batch figures (router and flusher) and the per-message `Message recorded.` lines, as a
# clinic running at `info` writes them.
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
url = "{sink_url}"
secret_file = "secret"
{route}
{store}
[policy.channels]
"webhook.out" = "secure"
"#,
        data = data.display(),
    );
    for p in 0..PATIENTS {
        toml.push_str(&format!("[[directory.patient]]\nid = \"p-{p:04}\"\naddresses = [\"phone:+1416555{p:04}\"]\n"));
    }
    toml
}

/// What a run sends its load to.
#[derive(Clone, Copy)]
enum Target {
    /// The daemon, forwarding to the sink when `deliver`, its store pre-filled with `prefill`
    /// records first.
    Daemon { deliver: bool, prefill: usize, postgres: bool },
    /// The HTTP floor (`common/relay.rs`): the webhook adapters alone, forwarding everything.
    Relay,
}

/// The floor's label in the tables.
const FLOOR: &str = "HTTP floor: webhook adapters alone, no record";

/// The relay's process, killed when dropped (also when a failed run panics).
struct RelayProcess(std::process::Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The process under load.
enum Proc {
    Daemon(Daemon),
    Relay(RelayProcess),
}

/// One run with a fresh daemon (its store pre-filled first if asked) or relay. `passes` loads
/// of `BENCH_MESSAGES` new messages each are sent one after the other: the first meets the store's
/// cache cold, as after a restart, the second warm, as a daemon that has been running.
async fn run(label: &str, conns: usize, target: Target, passes: usize) -> Vec<Run> {
    let total = env("BENCH_MESSAGES", 40_000);
    println!("pipeline, {label}: {total} messages, {conns} connections");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let data = dir.path().join("data");
    if let Target::Daemon { prefill, .. } = target
        && prefill > 0
    {
        prefill_store(&data, prefill);
    }
    let sink = Sink::start(Mode::Accept).await;
    let port = free_port();
    let (mut proc, deliver, ready) = match target {
        Target::Daemon { deliver, postgres, .. } => {
            // On PostgreSQL: a database of its own on the server of `CAREBRIDGE_TEST_POSTGRES`.
            let store = if postgres {
                let dsn = std::env::var(carebridge::record::pg_backend::testing::DSN_VAR).unwrap();
                let db = format!("cb_pipeline_{}", std::process::id());
                carebridge::record::pg_backend::testing::database(&dsn, &db).unwrap();
                let url = format!("{}/{db}", dsn.rsplit_once('/').unwrap().0);
                std::fs::write(dir.path().join("db.url"), url).unwrap();
                "[store]\nbackend = \"postgres\"\n[store.postgres]\nurl_file = \"db.url\"\n".to_string()
            } else {
                String::new()
            };
            let started = Instant::now();
            let d = Daemon::start(dir.path(), &config(&data, port, &sink.url(), deliver, &store));
            assert!(
                wait_http(&format!("http://127.0.0.1:{port}/healthz"), Duration::from_secs(600)).await,
                "daemon did not start: {:?}",
                d.logs().iter().rev().take(5).collect::<Vec<_>>()
            );
            (Proc::Daemon(d), deliver, started.elapsed())
        }
        Target::Relay => {
            let started = Instant::now();
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .env(relay::ROLE_ENV, format!("{port} {}", sink.url()))
                .spawn()
                .unwrap();
            let relay = RelayProcess(child);
            // It has no health endpoint: listening is ready.
            let end = Instant::now() + Duration::from_secs(30);
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                assert!(Instant::now() < end, "the relay did not start listening");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (Proc::Relay(relay), true, started.elapsed())
        }
    };
    // Let start-up settle (the store's first flush, adapters connecting) before reading idle memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (pid, who) = match &proc {
        Proc::Daemon(d) => (d.pid().unwrap(), "daemon"),
        Proc::Relay(r) => (r.0.id(), "relay"),
    };
    let idle_rss_kb = proc_kb(pid, "VmRSS");

    let mut out = Vec::new();
    for pass in 0..passes {
        // Pre-signed bodies from the synthetic patients, ~300-byte texts, so the generator spends
        // its CPU on HTTP, not HMAC.
        let key = carebridge_webhook::SigningKey::new(SECRET.as_bytes());
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let mut texts = Synth::new(3 + pass as u64, "b");
        let bodies: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
            (0..total)
                .map(|i| {
                    let phone = format!("+1416555{:04}", i % PATIENTS);
                    let b = message(&format!("b{pass}-{i}"), &phone, &texts.text());
                    let s = key.sign(ts, &b);
                    (b, s)
                })
                .collect(),
        );
        let cpu_before = thread_ticks(pid);
        let harness_before: u64 = thread_ticks(std::process::id()).values().sum();
        let start = Instant::now();
        let (mut lat, refused) = send_all(port, ts, bodies, conns).await;
        let accepted = start.elapsed();
        let mut end_to_end = None;
        if deliver {
            // `attempts()` is a counter (every answer is 200 in `Accept` mode); `received()` would
            // clone every body on each poll and steal CPU from the daemon.
            let end = Instant::now() + Duration::from_secs(600);
            let want = total * (pass + 1);
            while sink.attempts() < want && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(sink.attempts() >= want, "the sink got {} of {want}", sink.attempts());
            end_to_end = Some(total as f64 / start.elapsed().as_secs_f64());
        }
        let cpu_after = thread_ticks(pid);
        let harness: u64 = thread_ticks(std::process::id()).values().sum::<u64>().saturating_sub(harness_before);
        let peak_rss_kb = proc_kb(pid, "VmHWM");
        let rss_after_kb = proc_kb(pid, "VmRSS");
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
        let mut r = Run {
            label: if pass == 0 { label.to_string() } else { format!("{label}, second pass (warm)") },
            pass,
            conns,
            accepted: total as f64 / accepted.as_secs_f64(),
            end_to_end,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            idle_rss_kb,
            peak_rss_kb,
            ..Run::default()
        };
        if pass == 0 {
            println!("  ready after {:.1} s", ready.as_secs_f64());
        } else {
            println!("  second pass, {total} new messages on the same daemon:");
        }
        println!(
            "  accepted (202): {:>8.0} msgs/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({refused} answers 503, sent again)",
            r.accepted, r.p50_ms, r.p99_ms
        );
        if let Some(e) = r.end_to_end {
            println!("  end to end:     {e:>8.0} msgs/s   (every forward at the sink)");
        }
        println!(
            "  RSS: idle {:.1} MB, peak (VmHWM) {:.1} MB, after the load {:.1} MB",
            idle_rss_kb as f64 / 1024.0,
            peak_rss_kb as f64 / 1024.0,
            rss_after_kb as f64 / 1024.0
        );
        // Where the daemon's CPU went, per message (clock ticks are 10 ms: a rough split).
        let per_msg_us = |ticks: u64| ticks as f64 * 10_000.0 / total as f64;
        let mut parts: Vec<(String, u64)> = cpu_after
            .iter()
            .map(|(n, a)| (n.clone(), a.saturating_sub(cpu_before.get(n).copied().unwrap_or(0))))
            .filter(|(_, t)| *t > 0)
            .collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        let all: u64 = parts.iter().map(|(_, t)| t).sum();
        println!(
            "  {who} CPU: {:.0} µs/msg ({})",
            per_msg_us(all),
            parts.iter().map(|(n, t)| format!("{n} {:.0}", per_msg_us(*t))).collect::<Vec<_>>().join(", ")
        );
        // The load generator and the sink share the cores: what they cost bounds what any daemon
        // could reach on this machine.
        println!("  load generator + sink CPU (this process): {:.0} µs/msg", per_msg_us(harness));
        (r.daemon_us, r.harness_us) = (per_msg_us(all), per_msg_us(harness));
        out.push(r);
    }
    let d = match &mut proc {
        Proc::Daemon(d) => d,
        Proc::Relay(_) => return out,
    };
    d.terminate();
    let logs = d.logs();
    let num = |l: &str, k: &str| -> f64 {
        l.split(&format!("{k}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.trim_matches('"').parse().ok())
            .unwrap_or(0.0)
    };
    for (needle, what, keys) in
        [("Batch planned", "router batches", ["messages", "micros"]), ("Flushed.", "flushes", ["receipts", "flush_us"])]
    {
        let ls: Vec<&String> = logs.iter().filter(|l| l.contains(needle)).collect();
        let n = ls.len().max(1) as f64;
        let avgs: Vec<String> =
            keys.iter().map(|k| format!("avg {k} {:.1}", ls.iter().map(|l| num(l, k)).sum::<f64>() / n)).collect();
        println!("  {what}: {}  {}", ls.len(), avgs.join("  "));
    }
    // Proof that the detectors ran: the texts name a medication in about half the messages.
    let recorded: Vec<&String> = logs.iter().filter(|l| l.contains("Message recorded.")).collect();
    let with_findings = recorded.iter().filter(|l| num(l, "findings") > 0.0).count();
    println!("  detectors: {with_findings} of {} recorded messages had findings", recorded.len());
    out
}

/// Sends every body to the daemon on `port` over `conns` keep-alive connections at once, each
/// taking the next body not yet sent: the latency of each `202`, and how many `503`s came back.
async fn send_all(port: u16, ts: i64, bodies: Arc<Vec<(Vec<u8>, String)>>, conns: usize) -> (Vec<Duration>, usize) {
    let url = format!("http://127.0.0.1:{port}/v1/messages");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (bodies, url, next, refused) = (bodies.clone(), url.clone(), next.clone(), refused.clone());
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
                // A 503 (outbox full, queue full) is the daemon pushing back: count it, wait a
                // little and send again, as a gateway would; latency is until the 202.
                loop {
                    let r = client
                        .post(&url)
                        .header(carebridge_webhook::TIMESTAMP_HEADER, ts.to_string())
                        .header(carebridge_webhook::SIGNATURE_HEADER, s.as_str())
                        .body(b.clone())
                        .send()
                        .await
                        .expect("request");
                    let status = r.status().as_u16();
                    let _ = r.bytes().await;
                    match status {
                        202 => break,
                        503 => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::with_capacity(bodies.len());
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    (lat, refused.load(std::sync::atomic::Ordering::Relaxed))
}

fn summary(runs: &[Run], high: usize, prefill: usize) {
    println!();
    println!("| run | conns | accepted msgs/s | end to end msgs/s | p50 ms | p99 ms | idle RSS MB | peak RSS MB |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in runs {
        println!(
            "| {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.1} | {:.1} |",
            r.label,
            r.conns,
            r.accepted,
            r.end_to_end.map(|e| format!("{e:.0}")).unwrap_or_else(|| "–".into()),
            r.p50_ms,
            r.p99_ms,
            r.idle_rss_kb as f64 / 1024.0,
            r.peak_rss_kb as f64 / 1024.0
        );
    }
    let find = |full: bool, forwarded: bool, pass: usize| {
        runs.iter().find(|r| {
            r.conns == high
                && r.label != FLOOR
                && r.label.contains("records in store") == full
                && r.end_to_end.is_some() == forwarded
                && r.pass == pass
        })
    };
    let (Some(empty), Some(recorded)) = (find(false, true, 0), find(false, false, 0)) else { return };
    let (empty_warm, full, full_warm) = (find(false, true, 1), find(true, true, 0), find(true, true, 1));
    // The path is webhook → record → webhook: its sustained rate is the end-to-end one (an
    // outbox that falls behind the 202s only grows).
    let e2e = |r: &Run| r.end_to_end.unwrap_or(0.0);
    let ratio = |f: Option<&Run>, e: Option<&Run>| Some((e2e(f?) / e2e(e?).max(1e-9), f?.accepted / e?.accepted));
    let (flat, flat_warm) = (ratio(full, Some(empty)), ratio(full_warm, empty_warm));
    let yes = |b: bool| if b { "yes" } else { "NO" };
    let within = |(f, a): (f64, f64)| (0.9..=1.1).contains(&f) && (0.9..=1.1).contains(&a);
    println!();
    println!("issue #7 targets (one run, noisy shared machine):");
    println!("| target | measured | met |");
    println!("| --- | --- | --- |");
    println!(
        "| >= 15k msgs/s at {high} connections, end to end | {:.0} msgs/s (accepted {:.0}){} | {} |",
        e2e(empty),
        empty.accepted,
        empty_warm.map(|w| format!("; second pass {:.0}", e2e(w))).unwrap_or_default(),
        yes(e2e(empty) >= 15_000.0)
    );
    println!(
        "| p99 < 10 ms | {:.2} ms at {high} conns{}, {:.2} ms at {} | {} |",
        empty.p99_ms,
        empty_warm.map(|w| format!(" (second pass {:.2})", w.p99_ms)).unwrap_or_default(),
        runs[0].p99_ms,
        runs[0].conns,
        yes(empty.p99_ms < 10.0 && runs[0].p99_ms < 10.0)
    );
    println!(
        "| idle RSS < 30 MB | {:.1} MB (empty store){} | {} |",
        empty.idle_rss_kb as f64 / 1024.0,
        full.map(|f| format!(", {:.1} MB with {prefill} records", f.idle_rss_kb as f64 / 1024.0)).unwrap_or_default(),
        // A clinic's daemon runs with a full store, so both must be under the target.
        yes(runs
            .iter()
            .filter(|r| r.conns == high && r.end_to_end.is_some() && r.label != FLOOR)
            .all(|r| r.idle_rss_kb < 30 * 1024))
    );
    // The machine's speed drifts within a run (the bench's own CPU per message, a fixed amount
    // of work, has moved by 40% between runs of one invocation): the daemon's CPU per message
    // measured against the bench's is a ratio that drift does not move.
    let by_cpu = |f: Option<&Run>, e: Option<&Run>| {
        let (f, e) = (f?, e?);
        Some((e.daemon_us / e.harness_us.max(1e-9)) / (f.daemon_us / f.harness_us.max(1e-9)).max(1e-9))
    };
    let cpu_flat = match (by_cpu(full, Some(empty)), by_cpu(full_warm, empty_warm)) {
        (Some(c), Some(w)) => format!("; by CPU per message against the bench's own: {c:.2}, second pass {w:.2}"),
        (Some(c), None) => format!("; by CPU per message against the bench's own: {c:.2}"),
        _ => String::new(),
    };
    match flat {
        Some((f, a)) => println!(
            "| flat (±10%) with store size | {prefill} records / empty: {f:.2} end to end, {a:.2} accepted{}{cpu_flat} | {} |",
            flat_warm.map(|(f, a)| format!("; second pass (warm) {f:.2} and {a:.2}")).unwrap_or_default(),
            yes(within((f, a)) && flat_warm.is_none_or(within))
        ),
        None => println!("| flat (±10%) with store size | not run (BENCH_PREFILL=0) | – |"),
    }
    println!(
        "ratio forwarded/recorded-only accepted msgs/s at {high} conns: {:.2}",
        empty.accepted / recorded.accepted
    );
    // The ceiling this machine sets: the same HTTP work with nothing behind it, on the same cores
    // as the bench.
    if let Some(floor) = runs.iter().find(|r| r.label == FLOOR) {
        println!(
            "HTTP floor at {high} conns (webhook adapters alone, no record): {:.0} msgs/s end to end, p99 {:.2} ms, \
             {:.0} µs/msg of CPU (bench {:.0}); the daemon reached {:.2} of it",
            e2e(floor),
            floor.p99_ms,
            floor.daemon_us,
            floor.harness_us,
            e2e(empty) / e2e(floor).max(1e-9)
        );
    }
}
