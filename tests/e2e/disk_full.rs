//! The disk under the record store fills up: nothing is acknowledged that is not recorded,
//! nothing acknowledged is lost, and carebridge takes messages again once there is space.
//!
//! The data directory is a small tmpfs, filled with a filler file until `ENOSPC`. The store's
//! engine (fjall) latches the first write error for the life of the process ("poisoned": every
//! later commit and persist fails, even after space comes back; only reopening clears it), so
//! carebridge cannot recover in place: on a failed flush it answers the waiting messages
//! "unavailable" and exits with [`STORE_UNWRITABLE`] so its supervisor (systemd,
//! `Restart=on-failure`) starts it again. This test is that supervisor.
//!
//! Needs root (mount). CI runs as root; elsewhere the test fails with a clear message unless
//! `CAREBRIDGE_ALLOW_SKIP_ROOT=1` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::daemon::wait_http;
use support::load::by_idempotency_key;
use support::sink::{Mode, Sink};
use support::supervisor::Supervised;
use support::{free_port, message, relay_config, signed_post};

/// The exit code of a daemon whose store stopped taking writes (sysexits' EX_IOERR).
const STORE_UNWRITABLE: i32 = 74;
/// Fictional number (555-01xx).
const PHONE: &str = "+14165550177";

/// A tmpfs mounted for the test; unmounted on drop, whatever happened.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success()) {
            // Something still holds it (a daemon that did not die yet): detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Writes `path` until the file system is full; returns how many bytes it took.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 512, 1] {
        let buf = vec![0x5au8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
    let _ = f.sync_all();
    written
}

/// What became of one POST.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    /// 2xx: recorded (or recorded before).
    Accepted,
    /// 503 with a Retry-After.
    Unavailable,
    /// Any other status.
    Other(u16),
    /// No HTTP answer (connection refused or reset: the daemon is down).
    Silence,
}

async fn post(c: &reqwest::Client, port: u16, id: &str) -> Answer {
    let body = message(id, PHONE, &format!("disk test message {id}"));
    let r = signed_post(c, port, &body).send().await;
    match r {
        Err(_) => Answer::Silence,
        Ok(r) if r.status().is_success() => Answer::Accepted,
        Ok(r) if r.status().as_u16() == 503 => {
            assert!(r.headers().get("retry-after").is_some(), "a 503 tells the client when to come back");
            Answer::Unavailable
        }
        Ok(r) => Answer::Other(r.status().as_u16()),
    }
}

/// Mounts a 64 MiB tmpfs at `at`, or says why the test cannot run: `None` means skip (only with
/// `CAREBRIDGE_ALLOW_SKIP_ROOT=1`); without it, a failed mount fails the test.
fn mount_or_skip(at: &Path) -> Option<Tmpfs> {
    match Tmpfs::mount(at, "64m") {
        Ok(m) => Some(m),
        Err(e) if std::env::var("CAREBRIDGE_ALLOW_SKIP_ROOT").as_deref() == Ok("1") => {
            println!("disk_full SKIPPED (CAREBRIDGE_ALLOW_SKIP_ROOT=1): cannot mount a tmpfs: {e}");
            None
        }
        Err(e) => panic!(
            "disk_full needs root to mount a tmpfs as the data directory ({e}); run as root as CI does, \
             or set CAREBRIDGE_ALLOW_SKIP_ROOT=1 to skip this test"
        ),
    }
}

/// One webhook listener on `port` routed to `sink`, the store in `data`.
fn config(dir: &Path, data: &Path, port: u16, sink: &Sink) -> String {
    let patient = format!("[[directory.patient]]\nid = \"p-0077\"\naddresses = [\"phone:{PHONE}\"]");
    relay_config(dir, data, port, &sink.url(), Some(10000), &patient)
}

/// Waits until the daemon answers its health check (`true`) or its run ends (`false`).
async fn up_or_exited(d: &mut Supervised, port: u16, timeout: Duration) -> bool {
    let client = reqwest::Client::new();
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/healthz")).send().await
            && r.status().is_success()
        {
            return true;
        }
        if !d.running() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_messages_loses_none_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_mount) = mount_or_skip(&data) else { return };
    let sink = Sink::start(Mode::Accept).await;
    let port = free_port();
    let toml = config(dir.path(), &data, port, &sink);
    let health = format!("http://127.0.0.1:{port}/healthz");
    let mut d = Supervised::start(dir.path(), &toml);
    assert!(wait_http(&health, Duration::from_secs(30)).await, "daemon did not come up: {:?}", d.logs());
    let c = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut accepted: BTreeSet<String> = BTreeSet::new();

    // Space: messages go through.
    for i in 0..20 {
        let id = format!("before-{i}");
        assert_eq!(post(&c, port, &id).await, Answer::Accepted);
        accepted.insert(id);
    }
    assert!(sink.wait_for(20, Duration::from_secs(20)).await);

    // The disk fills up. Messages keep coming; none may be acknowledged unless recorded. The
    // daemon refuses them (503 + Retry-After) and, its store unable to write, exits to be
    // restarted.
    let filler = data.join("filler");
    let filled = fill(&filler);
    let seen = d.log_len();
    let mut answers: BTreeMap<String, Answer> = BTreeMap::new();
    let mut exit = None;
    for i in 0..2000 {
        let id = format!("full-{i}");
        let a = post(&c, port, &id).await;
        if a == Answer::Accepted {
            accepted.insert(id.clone());
        }
        answers.insert(id, a);
        if let Some(code) = d.wait_exit(Duration::ZERO).await {
            exit = Some(code);
            break;
        }
    }
    let exit = match exit {
        Some(code) => Some(code),
        None => d.wait_exit(Duration::from_secs(30)).await,
    };
    let refused = answers.values().filter(|a| **a != Answer::Accepted).count();
    println!(
        "disk_full: filler {} MiB; while full: {} posted, {} accepted, {} answered 503, {} without answer; exit {:?}",
        filled >> 20,
        answers.len(),
        answers.len() - refused,
        answers.values().filter(|a| **a == Answer::Unavailable).count(),
        answers.values().filter(|a| **a == Answer::Silence).count(),
        exit,
    );
    assert!(refused > 0, "a full disk refuses messages: {answers:?}");
    assert!(answers.values().all(|a| matches!(a, Answer::Accepted | Answer::Unavailable | Answer::Silence)));
    assert_eq!(
        exit,
        Some(Some(STORE_UNWRITABLE)),
        "the daemon exits with {STORE_UNWRITABLE} when its store stops taking writes: {:?}",
        d.logs().iter().skip(seen).collect::<Vec<_>>()
    );
    assert!(
        d.logs().iter().skip(seen).any(|l| l.contains("Record store unwritable")),
        "the log says why: {:?}",
        d.logs().iter().skip(seen).collect::<Vec<_>>()
    );

    // The supervisor restarts it while the disk is still full: it takes nothing it cannot
    // record. A message that still fits in the journal's last allocated page is recorded (and
    // then must survive: it joins `accepted`); the first that does not fit makes it exit again.
    let seen = d.log_len();
    d.spawn();
    let up = up_or_exited(&mut d, port, Duration::from_secs(30)).await;
    let mut a = Answer::Silence;
    let mut code = None;
    for i in 0..500 {
        let id = format!("still-full-{i}");
        a = post(&c, port, &id).await;
        if a == Answer::Accepted {
            accepted.insert(id.clone());
        }
        answers.insert(id, a);
        if let Some(c) = d.wait_exit(Duration::ZERO).await {
            code = Some(c);
            break;
        }
    }
    let code = match code {
        Some(c) => Some(c),
        None => d.wait_exit(Duration::from_secs(30)).await,
    };
    assert!(
        matches!(code, Some(Some(STORE_UNWRITABLE))),
        "a restart on a full disk exits with {STORE_UNWRITABLE} (the store cannot be written), not silently: {code:?} {:?}",
        d.logs().iter().skip(seen).collect::<Vec<_>>()
    );
    println!("disk_full: restarted on the full disk: came up {up}, answered {a:?}, exit {code:?}");

    // Space returns; the supervisor restarts it; the clients resend everything not accepted.
    std::fs::remove_file(&filler).unwrap();
    d.spawn();
    assert!(wait_http(&health, Duration::from_secs(30)).await, "comes up once there is space: {:?}", d.logs());
    let resend: Vec<String> =
        answers.iter().filter(|(_, a)| **a != Answer::Accepted).map(|(id, _)| id.clone()).collect();
    for id in &resend {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match post(&c, port, id).await {
                Answer::Accepted => break,
                a if Instant::now() > end => panic!("{id} still not accepted after space returned: {a:?}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        accepted.insert(id.clone());
    }
    for i in 0..20 {
        let id = format!("after-{i}");
        assert_eq!(post(&c, port, &id).await, Answer::Accepted);
        accepted.insert(id);
    }

    // Everything accepted is recorded exactly once and delivered.
    let end = Instant::now() + Duration::from_secs(30);
    while by_idempotency_key(&sink.received()).0.len() < accepted.len() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.terminate().await, "clean exit: {:?}", d.logs().iter().rev().take(20).collect::<Vec<_>>());
    let export = d.export();
    let mut recorded: BTreeMap<String, usize> = BTreeMap::new();
    for l in export.iter().filter(|l| l["type"] == "record") {
        *recorded.entry(l["record"]["source"]["native_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = accepted.iter().map(|id| (id.clone(), 1)).collect();
    assert_eq!(recorded, want, "every accepted message recorded exactly once, nothing else");
    let (delivered, repeats) = by_idempotency_key(&sink.received());
    let delivered: BTreeSet<String> = delivered
        .iter()
        .map(|r| r.body["text"].as_str().unwrap().trim_start_matches("disk test message ").to_string())
        .collect();
    assert_eq!(delivered, accepted, "every accepted message delivered");

    // No PHI in anything the full disk provoked.
    let leaks: Vec<_> =
        d.logs().into_iter().filter(|l| l.contains("disk test message") || l.contains("5550177")).collect();
    assert!(leaks.is_empty(), "PHI in the log: {leaks:?}");
    println!(
        "disk_full: accepted {}, recorded {}, delivered {} ({} repeats dropped by idempotency key); exits {:?}",
        accepted.len(),
        recorded.len(),
        delivered.len(),
        repeats,
        d.exits
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_noticed_without_new_messages_and_pending_deliveries_survive() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_mount) = mount_or_skip(&data) else { return };
    // The receiver is down: the outbox keeps retrying, and each retry writes to the store.
    let sink = Sink::start(Mode::Always(503)).await;
    let port = free_port();
    let mut d = Supervised::start(dir.path(), &config(dir.path(), &data, port, &sink));
    assert!(up_or_exited(&mut d, port, Duration::from_secs(30)).await, "daemon did not come up: {:?}", d.logs());
    let c = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let ids: Vec<String> = (0..3).map(|i| format!("pending-{i}")).collect();
    for id in &ids {
        assert_eq!(post(&c, port, id).await, Answer::Accepted);
    }
    let retrying = |d: &Supervised| d.logs().iter().filter(|l| l.contains("will retry")).count();
    let end = Instant::now() + Duration::from_secs(20);
    while retrying(&d) < 3 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(retrying(&d) >= 3, "the outbox is retrying: {:?}", d.logs());

    // The disk fills while no message arrives: only the outbox's bookkeeping writes. The daemon
    // notices (it does not go on resending deliveries it cannot record) and exits to be restarted.
    let filler = data.join("filler");
    fill(&filler);
    let seen = d.log_len();
    let code = d.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(
        code,
        Some(Some(STORE_UNWRITABLE)),
        "no message arrived, and still the unwritable store was noticed: {:?}",
        d.logs().iter().skip(seen).collect::<Vec<_>>()
    );

    // Space returns, the receiver too; the restarted daemon delivers what was pending.
    std::fs::remove_file(&filler).unwrap();
    sink.set_mode(Mode::Accept);
    d.spawn();
    assert!(up_or_exited(&mut d, port, Duration::from_secs(30)).await, "comes up once there is space: {:?}", d.logs());
    let end = Instant::now() + Duration::from_secs(30);
    while by_idempotency_key(&sink.received()).0.len() < ids.len() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(d.terminate().await, "clean exit: {:?}", d.logs().iter().rev().take(20).collect::<Vec<_>>());
    let (delivered, _) = by_idempotency_key(&sink.received());
    let mut texts: Vec<&str> = delivered.iter().map(|r| r.body["text"].as_str().unwrap()).collect();
    texts.sort();
    let want: Vec<String> = ids.iter().map(|id| format!("disk test message {id}")).collect();
    assert_eq!(texts, want, "every pending delivery went out once space returned");
    let export = d.export();
    let records: Vec<_> = export.iter().filter(|l| l["type"] == "record").collect();
    assert_eq!(records.len(), ids.len());
    for r in &records {
        let events = r["events"].as_array().unwrap();
        assert_eq!(events.iter().filter(|e| e["outcome"] == "sent").count(), 1, "{events:?}");
    }
    println!(
        "disk_full (no traffic): exits {:?}; {} attempts at the receiver, {} deliveries",
        d.exits,
        sink.attempts(),
        delivered.len()
    );
}
