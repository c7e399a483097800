//! Two daemons on one PostgreSQL store (issue #18, `docs/scale-out.md`): load goes in through
//! both (some messages redelivered to both, as a source behind a load balancer may), the
//! downstream EHR is down so deliveries wait in the outbox in retry backoff, the daemon holding
//! the EHR account's delivery lease is killed with `kill -9`, the EHR comes back. Until the kill
//! only the holder attempts deliveries (none by both); the other daemon takes the lease over
//! (`src/outbox_lease.rs`) and sends everything, one patient's messages (recorded one after
//! another, alternately through both daemons) in the order they were recorded; at the end every
//! accepted message is recorded exactly once and delivered once by Idempotency-Key.
//!
//! A second test runs one Telegram bot on both daemons: one polls `getUpdates` (the lease
//! holder), the other stands by, and takes over when the holder is killed.
//!
//! Needs a PostgreSQL server: `tests/run.sh` starts one and sets `CAREBRIDGE_TEST_POSTGRES`
//! (and `CAREBRIDGE_REQUIRE_POSTGRES`, so CI never skips this); without it the test says so and
//! skips.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;
use carebridge_fakes::bot_api as fake_bot_api;

use carebridge::record::pg_backend::testing;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::clinic::msg;
use support::daemon::{Daemon, wait_http};
use support::load::by_idempotency_key;
use support::sink::{Mode, Sink};
use support::{SECRET, free_port, post_message};

/// Messages per daemon, and how many of them are also redelivered to the other one.
const PER_DAEMON: usize = 30;
const REDELIVERED: usize = 8;
/// Messages from one patient, each sent once the one before was accepted, alternately to
/// either daemon: their order is the order they were recorded.
const IN_ORDER: usize = 12;

/// The delivery ids a daemon attempted (its log lines of attempts name them), among its first
/// `upto` lines.
fn attempted(logs: &[String], upto: usize) -> BTreeSet<String> {
    logs.iter()
        .take(upto)
        .filter(|l| l.contains("will retry") || l.contains("Delivered."))
        .filter_map(|l| {
            let at = l.find("delivery_id=")? + "delivery_id=".len();
            l[at..].split_whitespace().next().map(str::to_string)
        })
        .collect()
}

/// Whether a log line says this daemon took the EHR account's delivery lease.
fn ehr_lease_taken(line: &str) -> bool {
    line.contains("Lease taken") && line.contains("outbox.webhook.ehr")
}

fn config(dir: &std::path::Path, name: &str, sms_port: u16, ehr_port: u16, ehr_url: &str) -> String {
    format!(
        r#"
[daemon]
data_dir = "{data}"
[store]
key_file = "{key}"
backend = "postgres"
[store.postgres]
url_file = "{url}"
takeover_secs = 3
[outbox]
retry_initial_ms = 50
retry_max_secs = 1
max_attempts = 10000
[webhook.sms]
listen = "127.0.0.1:{sms_port}"
url = "http://127.0.0.1:9/unused"
secret_file = "{secret}"
from_kind = "phone"
[webhook.ehr]
listen = "127.0.0.1:{ehr_port}"
url = "{ehr_url}"
secret_file = "{secret}"
from_kind = "opaque"
[[route]]
name = "patients-to-ehr"
from = ["webhook.sms"]
to = ["webhook.ehr"]
[policy.channels]
"webhook.ehr" = "secure"
"#,
        data = dir.join(name).display(),
        key = dir.join("store.key").display(),
        url = dir.join("db.url").display(),
        secret = dir.join("secret").display(),
    )
}

async fn wait_distinct(sink: &Sink, n: usize, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if by_idempotency_key(&sink.received()).0.len() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_store_and_one_takes_over_when_the_other_is_killed() {
    let Some(dsn) = testing::dsn() else {
        eprintln!("skipping: {} is not set (tests/run.sh starts PostgreSQL)", testing::DSN_VAR);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = format!("cb_scale_out_{}", std::process::id());
    let url = format!("{}/{db}", dsn.rsplit_once('/').unwrap().0);
    std::fs::write(dir.path().join("db.url"), format!("{url}\n")).unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    testing::database(&dsn, &db).unwrap();
    // One key file for both instances (the canary at start checks they share it).
    let out = std::process::Command::new(support::daemon::bin())
        .args(["keys", "generate", "--file"])
        .arg(dir.path().join("store.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The EHR takes the patient's first message (its conversation token continues the
    // conversation), then refuses: every delivery waits in the outbox, in retry backoff.
    let ehr = Sink::start(Mode::Accept).await;
    let ports: Vec<(u16, u16)> = (0..2).map(|_| (free_port(), free_port())).collect();
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let mut daemons = [
        Daemon::start(&a_dir, &config(dir.path(), "data-a", ports[0].0, ports[0].1, &ehr.url())),
        Daemon::start(&b_dir, &config(dir.path(), "data-b", ports[1].0, ports[1].1, &ehr.url())),
    ];
    for (p, d) in [(ports[0].0, &daemons[0]), (ports[1].0, &daemons[1])] {
        assert!(wait_http(&format!("http://127.0.0.1:{p}/healthz"), Duration::from_secs(30)).await, "{:?}", d.logs());
    }

    let c = reqwest::Client::new();
    let first = msg(serde_json::json!({"id": "s-00", "from": "+14165559999", "text": "text s-00"}));
    assert_eq!(post_message(&c, ports[0].0, &first).await.0, 202);
    assert!(ehr.wait_for(1, Duration::from_secs(30)).await, "the first message is delivered");
    let conversation = ehr.received()[0].body["conversation"].as_str().unwrap().to_string();
    ehr.set_mode(Mode::Always(503));

    // Load through both, at once; some messages reach both daemons (a redelivery).
    let mut accepted: BTreeSet<String> = BTreeSet::from(["s-00".to_string()]);
    let mut sends = Vec::new();
    // The patient writes again and again in that conversation (one recipient: delivered one at
    // a time, in order), through either daemon in turn.
    let in_order = tokio::spawn({
        let client = c.clone();
        let ports = ports.clone();
        async move {
            let mut ids = vec!["s-00".to_string()];
            for k in 1..IN_ORDER {
                let id = format!("s-{k:02}");
                let body = msg(serde_json::json!({
                    "id": id, "from": "+14165559999", "text": format!("text {id}"), "conversation": conversation,
                }));
                let status = post_message(&client, ports[k % 2].0, &body).await.0;
                assert!(status == 202 || status == 200, "{id}: {status}");
                ids.push(id);
            }
            ids
        }
    });
    for i in 0..PER_DAEMON {
        for (d, (port, _)) in ports.iter().enumerate() {
            let id = format!("m-{d}-{i}");
            let body = msg(
                serde_json::json!({"id": id, "from": format!("+1416555{:04}", i % 7), "text": format!("text {id}")}),
            );
            let client = c.clone();
            let port = *port;
            sends.push(tokio::spawn(async move { (id, post_message(&client, port, &body).await.0) }));
            if i < REDELIVERED {
                // The same message to the other daemon too.
                let other = ports[1 - d].0;
                let id = format!("m-{d}-{i}");
                let body = msg(
                    serde_json::json!({"id": id, "from": format!("+1416555{:04}", i % 7), "text": format!("text {id}")}),
                );
                let client = c.clone();
                sends.push(tokio::spawn(async move { (id, post_message(&client, other, &body).await.0) }));
            }
        }
    }
    for s in sends {
        let (id, status) = s.await.unwrap();
        assert!(status == 202 || status == 200, "{id}: {status}");
        accepted.insert(id);
    }
    assert_eq!(accepted.len(), 2 * PER_DAEMON + 1);
    let in_order = in_order.await.unwrap();
    accepted.extend(in_order.iter().cloned());
    // Deliveries are being tried (and refused), every row in retry backoff.
    let tried = Instant::now();
    while ehr.attempts() < 40 && tried.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The EHR account's deliveries are one daemon's: the other attempted none of them.
    let holder =
        daemons.iter().position(|d| d.logs().iter().any(|l| ehr_lease_taken(l))).expect("a delivery lease holder");
    let survivor = 1 - holder;
    let before_kill: Vec<usize> = daemons.iter().map(Daemon::log_len).collect();
    let (by_holder, by_other) = (
        attempted(&daemons[holder].logs(), before_kill[holder]),
        attempted(&daemons[survivor].logs(), before_kill[survivor]),
    );
    assert!(!by_holder.is_empty(), "the holder attempts deliveries");
    assert!(
        by_holder.is_disjoint(&by_other),
        "a delivery attempted by both daemons: {:?}",
        by_holder.intersection(&by_other)
    );
    assert!(by_other.is_empty(), "only the lease holder sends the account's rows: {by_other:?}");

    // The holder dies with every delivery unsent; then the EHR comes back.
    daemons[holder].kill9();
    let killed = Instant::now();
    ehr.set_mode(Mode::Accept);

    // The survivor delivers everything, the dead one's rows included.
    assert!(
        wait_distinct(&ehr, accepted.len(), Duration::from_secs(60)).await,
        "delivered {} of {}; survivor's log: {:?}",
        by_idempotency_key(&ehr.received()).0.len(),
        accepted.len(),
        daemons[survivor].logs().iter().rev().take(20).collect::<Vec<_>>()
    );
    // A figure for docs/scale-out.md, not an assertion.
    println!("fail-over: every delivery made {:?} after the kill (takeover_secs = 3)", killed.elapsed());
    let (kept, repeats) = by_idempotency_key(&ehr.received());
    println!("repeats dropped by Idempotency-Key: {repeats}");
    let delivered: BTreeMap<String, usize> = kept
        .iter()
        .map(|r| (r.body["text"].as_str().unwrap().trim_start_matches("text ").to_string(), 1))
        .fold(BTreeMap::new(), |mut m, (k, n)| {
            *m.entry(k).or_default() += n;
            m
        });
    for id in &accepted {
        assert_eq!(delivered.get(id), Some(&1), "{id}: one delivery (by Idempotency-Key); repeats: {repeats}");
    }
    assert_eq!(repeats, 0, "no delivery was sent twice: one sender at a time");
    // The patient's messages reached the EHR in the order they were recorded, though half were
    // recorded by the dead daemon and all waited in backoff across the take-over.
    let arrived: Vec<String> = ehr
        .received()
        .iter()
        .filter_map(|r| r.body["text"].as_str()?.strip_prefix("text s-").map(|k| format!("s-{k}")))
        .collect();
    assert_eq!(arrived, in_order, "one recipient's deliveries in record order");
    assert!(
        daemons[survivor].logs().iter().skip(before_kill[survivor]).any(|l| ehr_lease_taken(l)),
        "the survivor took the dead one's delivery lease over"
    );
    let b = &daemons[survivor];

    // Every accepted message is in the shared record exactly once.
    let (ok, out, err) = b.cli(&["export"]);
    assert!(ok, "export: {err}");
    let mut by_source: BTreeMap<String, usize> = BTreeMap::new();
    for l in out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()) {
        if l["type"] == "record" {
            *by_source.entry(l["record"]["source"]["native_id"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    for id in &accepted {
        assert_eq!(by_source.get(id), Some(&1), "{id} recorded exactly once across both daemons");
    }
    let (ok, out, err) = b.cli(&["records", "verify"]);
    assert!(ok, "verify: {out} {err}");
}

/// Setup shared by the tests: a database of its own, its URL in `db.url`, one key file.
fn shared_store(dir: &std::path::Path, dsn: &str, db: &str) {
    testing::database(dsn, db).unwrap();
    let url = format!("{}/{db}", dsn.rsplit_once('/').unwrap().0);
    std::fs::write(dir.join("db.url"), format!("{url}\n")).unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let out = std::process::Command::new(support::daemon::bin())
        .args(["keys", "generate", "--file"])
        .arg(dir.join("store.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A log line about the bot's lease (not a delivery lease).
fn bot_lease(line: &str, what: &str) -> bool {
    line.contains(what) && line.contains("telegram.front") && !line.contains("outbox.")
}

fn bot_config(dir: &std::path::Path, name: &str, api_url: &str, sink_url: &str) -> String {
    bot_config_with(dir, name, api_url, sink_url, "")
}

/// [`bot_config`] with more tables appended.
fn bot_config_with(dir: &std::path::Path, name: &str, api_url: &str, sink_url: &str, extra: &str) -> String {
    std::fs::write(dir.join("tg-token"), format!("{}\n", fake_bot_api::TOKEN)).unwrap();
    format!(
        r#"
[daemon]
data_dir = "{data}"
[store]
key_file = "{key}"
backend = "postgres"
[store.postgres]
url_file = "{url}"
takeover_secs = 3
[outbox]
retry_initial_ms = 50
retry_max_secs = 1
[webhook.sink]
url = "{sink_url}"
secret_file = "{secret}"
[telegram.front]
token_file = "{token}"
api_url = "{api_url}"
poll_timeout_secs = 1
staff_chat_id = -1009876
[[route]]
name = "telegram-to-clinic"
from = ["telegram.front"]
to = ["webhook.sink"]
{extra}
"#,
        data = dir.join(name).display(),
        key = dir.join("store.key").display(),
        url = dir.join("db.url").display(),
        secret = dir.join("secret").display(),
        token = dir.join("tg-token").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bot_is_polled_by_one_daemon_and_the_other_takes_over_when_it_is_killed() {
    let Some(dsn) = testing::dsn() else {
        eprintln!("skipping: {} is not set (tests/run.sh starts PostgreSQL)", testing::DSN_VAR);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    shared_store(dir.path(), &dsn, &format!("cb_scale_bot_{}", std::process::id()));
    let fake = fake_bot_api::FakeBotApi::start().await;
    let sink = Sink::start(Mode::Accept).await;
    let mut daemons = Vec::new();
    for name in ["a", "b"] {
        let d_dir = dir.path().join(name);
        std::fs::create_dir_all(&d_dir).unwrap();
        daemons.push(Daemon::start(&d_dir, &bot_config(dir.path(), &format!("data-{name}"), &fake.url(), &sink.url())));
    }
    let holder = loop {
        if let Some(i) = daemons.iter().position(|d| d.logs().iter().any(|l| bot_lease(l, "Lease taken"))) {
            break i;
        }
        assert!(daemons.iter_mut().all(|d| d.alive()), "a daemon exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let standby = 1 - holder;
    let standing_by = Instant::now();
    while !daemons[standby].logs().iter().any(|l| bot_lease(l, "Another instance holds the lease")) {
        assert!(standing_by.elapsed() < Duration::from_secs(30), "the other daemon stands by for the bot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.patient_text(5_550_001, "Ann", "first message");
    assert!(sink.wait_for(1, Duration::from_secs(30)).await, "the holder polls and forwards");

    daemons[holder].kill9();
    let killed = Instant::now();
    fake.patient_text(5_550_001, "Ann", "second message");
    // Distinct deliveries: the first one may go twice (killed after sending, before recording
    // it sent; the repeat carries the same Idempotency-Key).
    assert!(
        wait_distinct(&sink, 2, Duration::from_secs(30)).await,
        "the standby takes the bot over: {:?}",
        daemons[standby].logs().iter().rev().take(10).collect::<Vec<_>>()
    );
    println!("fail-over: the bot's next message forwarded {:?} after the kill (takeover_secs = 3)", killed.elapsed());
    assert!(daemons[standby].logs().iter().any(|l| bot_lease(l, "Lease taken")), "the standby took the bot's lease");
    let texts: Vec<String> = by_idempotency_key(&sink.received())
        .0
        .iter()
        .map(|r| r.body["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(texts, ["first message", "second message"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_whose_bot_lease_is_cut_stops_the_bot_alone_and_runs_on() {
    let Some(dsn) = testing::dsn() else {
        eprintln!("skipping: {} is not set (tests/run.sh starts PostgreSQL)", testing::DSN_VAR);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = format!("cb_scale_cut_{}", std::process::id());
    shared_store(dir.path(), &dsn, &db);
    let fake = fake_bot_api::FakeBotApi::start().await;
    let sink = Sink::start(Mode::Accept).await;
    let mut daemons = Vec::new();
    let mut ops_ports = Vec::new();
    for name in ["a", "b"] {
        let d_dir = dir.path().join(name);
        std::fs::create_dir_all(&d_dir).unwrap();
        let ops = free_port();
        let extra = format!("[ops]\nlisten = \"127.0.0.1:{ops}\"\n");
        let toml = bot_config_with(dir.path(), &format!("data-{name}"), &fake.url(), &sink.url(), &extra);
        daemons.push(Daemon::start(&d_dir, &toml));
        ops_ports.push(ops);
    }
    let holder = loop {
        if let Some(i) = daemons.iter().position(|d| d.logs().iter().any(|l| bot_lease(l, "Lease taken"))) {
            break i;
        }
        assert!(daemons.iter_mut().all(|d| d.alive()), "a daemon exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    fake.patient_text(5_550_002, "Ann", "before the cut");
    assert!(sink.wait_for(1, Duration::from_secs(30)).await, "the holder polls and forwards");

    // The holder's connection holding the bot's lease is cut (a network fault, an administrator).
    let settings = testing::database(&dsn, &db).unwrap();
    let key = carebridge::lease::lock_key("telegram.front") as u32;
    let from = daemons[holder].log_len();
    testing::execute(
        &settings,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND classid = 25442 \
             AND objid = {key} AND objsubid = 2 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
    )
    .unwrap();
    assert!(
        daemons[holder].wait_log("the receiver stopped and stands by", from, Duration::from_secs(30)),
        "the holder gives the bot up: {:?}",
        daemons[holder].logs().iter().rev().take(10).collect::<Vec<_>>()
    );
    // The bot runs on, on one of the two (whichever took the lease first), and nothing is lost.
    fake.patient_text(5_550_002, "Ann", "after the cut");
    assert!(wait_distinct(&sink, 2, Duration::from_secs(30)).await, "the bot is polled again");
    // The holder did not stop: the process and its other parts run on.
    assert!(daemons[holder].alive(), "losing a lease stops no daemon");
    assert!(!daemons[holder].logs().iter().any(|l| l.contains("Shutting down")));
    let c = reqwest::Client::new();
    let health = c.get(format!("http://127.0.0.1:{}/healthz", ops_ports[holder])).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let texts: Vec<String> = by_idempotency_key(&sink.received())
        .0
        .iter()
        .map(|r| r.body["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(texts, ["before the cut", "after the cut"]);
    // Each message recorded once.
    let records = daemons[holder].export().iter().filter(|l| l["type"] == "record").count();
    assert_eq!(records, 2, "each message recorded exactly once");
}

/// A PostgreSQL server of the test's own (`tests/postgres.sh`), which it stops and starts;
/// removed with the guard.
struct OwnServer {
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnServer {
    fn start() -> OwnServer {
        let port = free_port();
        let server = OwnServer { dir: std::env::temp_dir().join(format!("cb-pg-wait-{port}")), port };
        server.script("start");
        server
    }

    fn dsn(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn script(&self, cmd: &str) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/postgres.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(cmd)
            .arg(&self.dir)
            .env("PG_PORT", self.port.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "postgres.sh {cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.script("stop");
    }
}

/// Waits for `url` to answer `status`; the last body seen.
async fn wait_status(url: &str, status: u16, timeout: Duration) -> Option<serde_json::Value> {
    let c = reqwest::Client::new();
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(r) = c.get(url).send().await
            && r.status().as_u16() == status
        {
            return Some(r.json().await.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_starts_while_its_database_is_down_and_runs_once_it_is_back() {
    if testing::dsn().is_none() {
        eprintln!("skipping: {} is not set (tests/run.sh starts PostgreSQL)", testing::DSN_VAR);
        return;
    }
    let server = OwnServer::start();
    let dir = tempfile::tempdir().unwrap();
    shared_store(dir.path(), &server.dsn(), "cb_wait");
    let settings = testing::database(&server.dsn(), "cb_wait").unwrap();
    let ehr = Sink::start(Mode::Accept).await;
    let (sms, ehr_port, ops) = (free_port(), free_port(), free_port());
    let toml =
        format!("{}\n[ops]\nlisten = \"127.0.0.1:{ops}\"\n", config(dir.path(), "data", sms, ehr_port, &ehr.url()));
    server.script("pause");

    // Down at start: the daemon runs, says why it is not ready, and refuses messages for now.
    let mut daemon = Daemon::start(dir.path(), &toml);
    let ready = format!("http://127.0.0.1:{ops}/readyz");
    let body = wait_status(&ready, 503, Duration::from_secs(30)).await;
    let body = body.unwrap_or_else(|| panic!("/readyz answers 503: {:?}", daemon.logs()));
    assert_eq!(body["store"], "database unreachable", "{body}");
    let c = reqwest::Client::new();
    let message = msg(serde_json::json!({"id": "w-1", "from": "+14165550111", "text": "text w-1"}));
    let r = support::signed_post(&c, sms, &message).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503, "a webhook refuses while the store is unreachable");
    assert!(r.headers().contains_key("retry-after"));
    assert!(daemon.alive(), "the daemon waits for its database: {:?}", daemon.logs());

    // Back: the daemon opens the store (migrations, key canary) and runs, by itself.
    server.script("resume");
    assert!(
        wait_status(&ready, 200, Duration::from_secs(60)).await.is_some(),
        "ready once the database is back: {:?}",
        daemon.logs().iter().rev().take(10).collect::<Vec<_>>()
    );
    assert_eq!(post_message(&c, sms, &message).await.0, 202, "the redelivered message is accepted");
    assert!(ehr.wait_for(1, Duration::from_secs(30)).await, "and forwarded");
    assert!(daemon.terminate(), "a clean stop");

    // A database that answers but is wrong (newer than the binary) is still refused at once.
    testing::execute(&settings, "INSERT INTO carebridge_migrations (version) VALUES (1000)").unwrap();
    let mut run = std::process::Command::new(support::daemon::bin())
        .args(["run", "--config"])
        .arg(&daemon.config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "a newer database is refused, not waited for");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(2), "refused with the configuration's exit code");
}
