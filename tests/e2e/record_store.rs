//! The patient's file as the privacy officer sees it, through the real daemon and CLI: nothing
//! readable at rest, every read audited, the chain verifiable and tampering found, purges that
//! keep the chain whole and refuse to cut into retention, and a store written by schema v1 read
//! by this version.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use carebridge::record::retention::Cutoffs;
use carebridge::record::{Keyring, Store};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::clinic::{Clinic, PATIENT_PHONE, msg};
use support::daemon::cli;
use support::post_message;

/// Synthetic PHI planted in one message: a name, an OHIP number, an email address, a phrase.
const NAME: &str = "Zebulon Quixote-Marchetti";
const OHIP: &str = "9876543217";
const EMAIL: &str = "zebulon.quixote@example.org";
const PHRASE: &str = "my left kidney stone came back";
const ATTACHMENT: &str = "SYNTHETIC-ULTRASOUND-REPORT-4471";

fn data_dir(c: &Clinic) -> PathBuf {
    c.d.config.parent().unwrap().join("data")
}

/// Every byte of every file under `dir`.
fn raw_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A patient writes (with planted PHI and an attachment), the clinician answers; returns once
/// both are delivered.
async fn exchange(c: &Clinic) {
    let client = reqwest::Client::new();
    let att = base64_encode(ATTACHMENT.as_bytes());
    let text = format!("Hello, this is {NAME}, OHIP {OHIP}, email {EMAIL}: {PHRASE}.");
    let body = msg(serde_json::json!({
        "id": "sms-1", "from": PATIENT_PHONE, "text": text,
        "attachments": [{"filename": "report.txt", "content_type": "text/plain", "data_base64": att}],
    }));
    assert_eq!(post_message(&client, c.sms_port, &body).await.0, 202);
    assert!(c.ehr.wait_for(1, Duration::from_secs(20)).await, "forwarded to the EHR");
    // The attachment went out whole, read back from the blob it is stored in once.
    let forwarded = &c.ehr.received()[0].body["attachments"][0];
    assert_eq!(forwarded["data_base64"].as_str(), Some(att.as_str()), "{forwarded}");
    let token = c.ehr.received()[0].body["conversation"].as_str().unwrap().to_string();
    let reply = msg(serde_json::json!({
        "id": "ehr-1", "from": "dr-lee", "text": "Thanks, we will call you.", "conversation": token,
    }));
    assert_eq!(post_message(&client, c.ehr_port, &reply).await.0, 202);
    assert!(c.sms.wait_for(1, Duration::from_secs(20)).await, "answer sent to the patient");
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn records_cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["records", "--actor", "privacy-officer"];
    all.extend_from_slice(args);
    cli(config, &all)
}

fn lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn planted_phi_never_reaches_the_raw_store_files() {
    let mut c = Clinic::start("", "").await;
    exchange(&c).await;
    // The engine's files while the daemon runs: its journal holds every write since start.
    let live = raw_files(&data_dir(&c));
    // Positive control: the grep does see what is stored in the clear (an outbox row's key
    // names its account, and the engine's journal holds the row written and removed).
    assert!(live.iter().any(|(_, b)| contains(b, b"webhook.ehr")), "the engine's journal is read");
    assert!(c.d.terminate(), "clean shutdown");
    let mut files = raw_files(&data_dir(&c));
    assert!(files.iter().any(|(p, _)| p.starts_with(data_dir(&c).join("store"))), "the engine's files are there");
    files.extend(live);
    for needle in
        [NAME, OHIP, EMAIL, PHRASE, ATTACHMENT, PATIENT_PHONE, &PATIENT_PHONE[2..], "p-0001", "Thanks, we will"]
    {
        for (path, bytes) in &files {
            assert!(!contains(bytes, needle.as_bytes()), "{needle:?} found in {}", path.display());
        }
    }
    // And yet the record is all there for whoever holds the key.
    let out = c.d.export();
    let rec = out.iter().find(|l| l["type"] == "record" && l["record"]["source"]["native_id"] == "sms-1").unwrap();
    assert!(rec["record"]["body"].as_str().unwrap().contains(PHRASE));
}

#[tokio::test]
async fn every_read_is_audited_and_the_chain_verifies() {
    let c = Clinic::start("", "").await;
    exchange(&c).await;
    let cfg = c.d.config.clone();

    let (ok, out, err) = records_cli(&cfg, &["list", "--patient", "p-0001"]);
    assert!(ok, "{err}");
    let list = lines(&out);
    assert_eq!(list.len(), 2, "the patient's message and the clinician's answer: {out}");
    assert!(!out.contains(PHRASE) && !out.contains(PATIENT_PHONE), "a listing shows no content");
    let first = list[0]["record"].as_str().unwrap().to_string();

    let (ok, out, err) = records_cli(&cfg, &["show", &first]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert!(shown["record"]["body"].as_str().unwrap().contains(PHRASE));
    assert!(!shown["events"].as_array().unwrap().is_empty(), "the forward's attempt is an event");

    let (ok, out, err) = records_cli(&cfg, &["export", "--patient", "p-0001", "--format", "jsonl"]);
    assert!(ok, "{err}");
    let exported = lines(&out);
    assert_eq!(exported.iter().filter(|l| l["type"] == "record").count(), 2);

    let (ok, out, err) = records_cli(&cfg, &["export", "--patient", "p-0001", "--format", "fhir"]);
    assert!(ok, "{err}");
    let bundle: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    let comms: Vec<&Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Communication")
        .collect();
    assert!(comms.len() >= 2, "one Communication per exchange at least");

    let (ok, out, err) = records_cli(&cfg, &["audit", "--patient", "p-0001"]);
    assert!(ok, "{err}");
    let trail = lines(&out);
    let actions: Vec<&str> = trail.iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["records.list", "records.show", "records.export", "records.export"], "{out}");
    assert!(trail.iter().all(|a| a["actor"] == "privacy-officer" && a["via"] == "admin-api"));
    let first_id: u64 = first.trim_start_matches("rec-").parse().unwrap();
    assert_eq!(trail[1]["records"], serde_json::json!([first_id]), "the show names the record read");
    assert_eq!(trail[3]["detail"], "fhir-r4");

    let (ok, out, err) = records_cli(&cfg, &["verify"]);
    assert!(ok, "{err}\n{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(report["first_break"].is_null());
    // 2 records, their events (attempts) and 5 audit entries, each in the chain.
    assert!(report["by_kind"]["record"].as_u64().unwrap() >= 2);
    assert_eq!(report["by_kind"]["audit"].as_u64().unwrap(), 5, "{out}");
    assert_eq!(report["head_seq"], report["entries"]);

    // A consent change is in the patient's trail too, with who made it and from what source.
    let (ok, _, err) =
        cli(&cfg, &["consent", "grant", "--patient", "p-0001", "--account", "webhook.sms", "--source", "paper-form"]);
    assert!(ok, "{err}");
    let (ok, out, err) = records_cli(&cfg, &["audit", "--patient", "p-0001"]);
    assert!(ok, "{err}");
    let trail = lines(&out);
    let grant = trail.iter().find(|a| a["action"] == "consent.grant").expect("consent change audited");
    assert_eq!(grant["via"], "admin-api");
    assert!(grant["detail"].as_str().unwrap().contains("source=paper-form"), "{grant}");
}

/// Opens the stopped daemon's store with its key (as the privacy officer's tools would).
fn open_store(c: &Clinic) -> Store {
    let data = data_dir(c);
    Store::open(&data, Keyring::load(&data.join("store.key")).unwrap()).unwrap()
}

fn verify(cfg: &Path) -> (bool, Value) {
    let (ok, out, err) = records_cli(cfg, &["verify"]);
    (ok, serde_json::from_str(&out).unwrap_or_else(|_| panic!("verify printed no report: {out} {err}")))
}

/// Copies a stopped store so each tampering starts from the same good one.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Opens one of the engine's trees by name.
type Trees<'a> = dyn Fn(&str) -> fjall::Keyspace + 'a;

#[tokio::test]
async fn verify_finds_deleted_altered_and_missing_entries() {
    let mut c = Clinic::start("", "").await;
    exchange(&c).await;
    assert!(c.d.terminate());
    let cfg = c.d.config.clone();
    let (ok, good) = verify(&cfg);
    assert!(ok, "{good}");
    let entries = good["entries"].as_u64().unwrap();
    let pristine = cfg.parent().unwrap().join("pristine");
    copy_dir(&data_dir(&c), &pristine);

    // Someone with write access to the data directory but not the key file edits the engine.
    let tamper = |what: &dyn Fn(&Trees<'_>)| {
        let data = data_dir(&c);
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&pristine, &data);
        let db = fjall::Database::builder(data.join("store")).open().unwrap();
        what(&|name| db.keyspace(name, fjall::KeyspaceCreateOptions::default).unwrap());
        db.persist(fjall::PersistMode::SyncAll).unwrap();
        drop(db);
        verify(&cfg)
    };
    // A record deleted outright.
    let (ok, r) = tamper(&|tree| {
        let records = tree("records");
        let k = records.first_key_value().unwrap().key().unwrap();
        records.remove(k).unwrap();
    });
    assert!(!ok, "a deleted record breaks the chain");
    assert_eq!(r["first_break"]["seq"], 1);
    assert!(r["first_break"]["reason"].as_str().unwrap().contains("deleted"), "{r}");
    // One byte of an event changed.
    let (ok, r) = tamper(&|tree| {
        let events = tree("events");
        let (k, v) = events.last_key_value().unwrap().into_inner().unwrap();
        let mut v = v.to_vec();
        let n = v.len();
        v[n - 1] ^= 0x01;
        events.insert(k, v).unwrap();
    });
    assert!(!ok);
    assert!(r["first_break"]["reason"].as_str().unwrap().contains("altered"), "{r}");
    // A journal entry in the middle removed.
    let middle = entries / 2;
    let (ok, r) = tamper(&|tree| {
        tree("journal").remove(middle.to_be_bytes()).unwrap();
    });
    assert!(!ok);
    assert_eq!(r["first_break"]["seq"], middle);
    // The tail cut off (the last entry and its head no longer agree).
    let (ok, r) = tamper(&|tree| {
        tree("journal").remove(entries.to_be_bytes()).unwrap();
    });
    assert!(!ok, "{r}");
    // A body slipped in that no journal entry names.
    let (ok, r) = tamper(&|tree| {
        tree("records").insert(u64::MAX.to_be_bytes(), b"forged".to_vec()).unwrap();
    });
    assert!(!ok);
    assert!(r["first_break"]["reason"].as_str().unwrap().contains("does not cover"), "{r}");
    // One byte of a link in the middle of the journal changed (a version 2 entry's link to the
    // previous entry: its first 8 bytes, at offset 42).
    let (ok, r) = tamper(&|tree| {
        let journal = tree("journal");
        let mut v = journal.get(middle.to_be_bytes()).unwrap().unwrap().to_vec();
        v[42] ^= 0x01;
        journal.insert(middle.to_be_bytes(), v).unwrap();
    });
    assert!(!ok);
    assert_eq!(r["first_break"]["seq"], middle, "{r}");
    assert!(r["first_break"]["reason"].as_str().unwrap().contains("previous entry"), "{r}");
    // Back to the pristine copy: whole again.
    let (ok, _) = tamper(&|_| {});
    assert!(ok);
}

#[tokio::test]
async fn purges_leave_tombstones_and_refuse_to_cut_into_retention() {
    let mut c = Clinic::start("", "").await;
    exchange(&c).await;
    let cfg = c.d.config.clone();
    // Inside the default retention (ten years for exchanges): refused, nothing changes.
    let (ok, _, err) = records_cli(&cfg, &["purge", "--older-than-days", "30"]);
    assert!(!ok);
    assert!(err.contains("refused") && err.contains("3650 days"), "{err}");
    let (ok, out, err) = records_cli(&cfg, &["purge", "--dry-run"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["records"], 0, "nothing is that old");
    assert!(c.d.terminate());

    // Ten years later (the cutoff moved past everything): purge through the library.
    let before = {
        let store = open_store(&c);
        assert_eq!(store.stats().records, 2, "the record counter (not a tree walk) agrees");
        let all = Cutoffs { exchanges_ms: u64::MAX, quarantine_ms: u64::MAX, audit_ms: 0 };
        let report = store.purge(all, "retention-test", false).unwrap();
        assert_eq!(report.records, 2);
        assert!(report.events >= 2 && report.tombstones >= 1);
        assert_eq!(store.stats().records, 0, "purged records leave the counter");
        store.flush_blocking().unwrap();
        report
    };
    let (ok, r) = verify(&cfg);
    assert!(ok, "tombstones keep the chain verifiable: {r}");
    assert_eq!(r["purged"].as_u64().unwrap(), before.records + before.events);
    let (ok, out, _) = records_cli(&cfg, &["list", "--patient", "p-0001"]);
    assert!(ok);
    assert!(out.trim().is_empty(), "the purged records are gone: {out}");
}

#[test]
fn a_store_written_by_schema_v1_is_migrated_sealed_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1.tar.gz");
    let st = std::process::Command::new("tar").arg("xzf").arg(&fixture).arg("-C").arg(dir.path()).status().unwrap();
    assert!(st.success());
    assert!(
        raw_files(&dir.path().join("data/db")).iter().any(|(_, b)| contains(b, b"Jane Fixture")),
        "the v1 fixture is plaintext"
    );
    let cfg = dir.path().join("carebridge.toml");
    let data = dir.path().join("data");
    std::fs::write(&cfg, format!("[daemon]\ndata_dir = \"{}\"\n[store]\nkey_file = \"store.key\"\n", data.display()))
        .unwrap();
    // Without a key file the upgrade refuses, saying how to make one.
    let (ok, _, err) = records_cli(&cfg, &["verify"]);
    assert!(!ok && err.contains("keys generate"), "{err}");
    let out = std::process::Command::new(support::daemon::bin())
        .args(["keys", "generate", "--file"])
        .arg(dir.path().join("store.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = |args: &[&str]| records_cli(&cfg, args);
    // The old store is refused until it is migrated, with the command that does it.
    let (ok, _, err) = run(&["list", "--patient", "p-0001"]);
    assert!(!ok && err.contains("carebridge store migrate"), "{err}");
    let (ok, out, err) = cli(&cfg, &["store", "migrate"]);
    assert!(ok, "{err}");
    assert!(out.contains("from schema v1"), "{out}");
    let (ok, out, err) = cli(&cfg, &["store", "migrate"]);
    assert!(ok && out.contains("nothing to migrate"), "running it twice is harmless: {out} {err}");
    let (ok, out, err) = run(&["list", "--patient", "p-0001"]);
    assert!(ok, "{err}");
    let list = lines(&out);
    assert_eq!(list.len(), 2, "{out}");
    let (ok, out, err) = run(&["show", list[0]["record"].as_str().unwrap()]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert!(shown["record"]["body"].as_str().unwrap().contains("Jane Fixture"));
    assert_eq!(shown["record"]["attachments"][0]["filename"], "bp.pdf");
    let (ok, out, err) = run(&["verify"]);
    assert!(ok, "{err} {out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["by_kind"]["quarantine"], 1);
    // After the upgrade nothing of the old plaintext is left in the files the daemon uses (the
    // old files are kept aside, as they were, until the administrator deletes them).
    assert!(dir.path().join("data/pre-migration/db").exists(), "the old files are kept aside");
    let used: Vec<_> =
        raw_files(&data).into_iter().filter(|(p, _)| !p.starts_with(data.join("pre-migration"))).collect();
    assert!(!used.is_empty());
    for (path, bytes) in used {
        assert!(!contains(&bytes, b"Jane Fixture"), "plaintext left in {}", path.display());
    }
}

#[tokio::test]
async fn verify_while_the_daemon_is_recording_reports_no_false_break() {
    let c = Clinic::start("", "").await;
    exchange(&c).await;
    let port = c.sms_port;
    let load = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in 0..400 {
            let body =
                msg(serde_json::json!({"id": format!("load-{i}"), "from": PATIENT_PHONE, "text": "Synthetic load."}));
            assert_eq!(post_message(&client, port, &body).await.0, 202);
        }
    });
    let cfg = c.d.config.clone();
    let mut runs = 0;
    while !load.is_finished() || runs < 3 {
        let cfg = cfg.clone();
        let (ok, r) = tokio::task::spawn_blocking(move || verify(&cfg)).await.unwrap();
        assert!(ok, "verify under load: {r}");
        runs += 1;
    }
    load.await.unwrap();
    println!("verify: {runs} runs while recording");
}

/// The chain's head of `tests/fixtures/store-v2-b47cad3.tar.gz` as carebridge b47cad3 itself
/// reported it (`records verify`, run by that binary on the fixture when it was made).
const B47CAD3_HEAD: (u64, &str) = (6, "9e3a2e41f07e04eacec9fed580e81325acacb587449b0ce0fbd8973f979daa21");

#[test]
fn a_store_written_by_b47cad3_is_migrated_with_its_chain_whole() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v2-b47cad3.tar.gz");
    let st = std::process::Command::new("tar").arg("xzf").arg(&fixture).arg("-C").arg(dir.path()).status().unwrap();
    assert!(st.success());
    let data = dir.path().join("data");
    // Most of what b47cad3 wrote is still only in its write-ahead log: the import must read both.
    assert!(data.join("wal").exists() && data.join("db").exists());
    let cfg = dir.path().join("carebridge.toml");
    std::fs::write(&cfg, format!("[daemon]\ndata_dir = \"{}\"\n", data.display())).unwrap();

    let (ok, _, err) = records_cli(&cfg, &["verify"]);
    assert!(!ok, "an unmigrated store is refused");
    assert!(err.contains("earlier carebridge") && err.contains("carebridge store migrate"), "{err}");
    let run = std::process::Command::new(support::daemon::bin()).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(run.status.code(), Some(2), "run refuses with the configuration exit code");
    assert!(String::from_utf8_lossy(&run.stderr).contains("store migrate"));

    let (ok, out, err) = cli(&cfg, &["store", "migrate"]);
    assert!(ok, "{err}");
    assert!(out.contains("from schema v2"), "{out}");
    assert!(data.join("pre-migration/db").exists() && data.join("pre-migration/wal").exists(), "old files kept");
    assert!(!data.join("db").exists() && !data.join("wal").exists());

    // The old chain's head is the new chain's head, and the chain verifies.
    let (ok, r) = verify(&cfg);
    assert!(ok, "{r}");
    assert_eq!(r["head_seq"].as_u64(), Some(B47CAD3_HEAD.0), "{r}");
    assert_eq!(r["head_hash"].as_str(), Some(B47CAD3_HEAD.1), "{r}");
    assert_eq!(r["by_kind"]["record"], 2);
    assert_eq!(r["by_kind"]["quarantine"], 1);

    // Every kind of entry came along: records with their events, quarantine, dead letters.
    let (ok, out, err) = cli(&cfg, &["export"]);
    assert!(ok, "{err}");
    let all = lines(&out);
    let count = |t: &str| all.iter().filter(|l| l["type"] == t).count();
    assert_eq!((count("record"), count("quarantined"), count("dead_letter")), (2, 1, 1), "{out}");
    let with_attachment =
        all.iter().find(|l| l["type"] == "record" && !l["record"]["attachments"].as_array().unwrap().is_empty());
    assert!(with_attachment.is_some(), "the attachment survived: {out}");

    // Running it again is harmless; and the daemon now starts on it.
    let (ok, out, _) = cli(&cfg, &["store", "migrate"]);
    assert!(ok && out.contains("nothing to migrate"), "{out}");
}

/// A flipped byte anywhere in the store's files: every command either refuses with a clear
/// message (never a panic) or sees every record. Nothing is lost quietly.
#[tokio::test]
async fn one_flipped_byte_in_the_store_is_refused_or_harmless_never_a_quiet_loss() {
    let mut c = Clinic::start("", "").await;
    exchange(&c).await;
    let client = reqwest::Client::new();
    for i in 0..40 {
        let body = msg(serde_json::json!({"id": format!("more-{i}"), "from": PATIENT_PHONE, "text": "Synthetic."}));
        assert_eq!(post_message(&client, c.sms_port, &body).await.0, 202);
    }
    assert!(c.ehr.wait_for(41, Duration::from_secs(30)).await);
    assert!(c.d.terminate());
    let cfg = c.d.config.clone();
    let data = data_dir(&c);
    let (ok, r) = verify(&cfg);
    assert!(ok, "{r}");
    let records = r["by_kind"]["record"].as_u64().unwrap();
    assert_eq!(records, 42);
    let pristine = cfg.parent().unwrap().join("pristine");
    copy_dir(&data, &pristine);
    let files: Vec<(PathBuf, u64)> = raw_files(&pristine)
        .into_iter()
        .filter(|(p, b)| !b.is_empty() && !p.ends_with("store.key") && !p.ends_with("lock"))
        .map(|(p, b)| (p.strip_prefix(&pristine).unwrap().to_path_buf(), b.len() as u64))
        .collect();
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    // A fixed sequence of positions (xorshift), spread over every file by size, plus the first
    // and last byte of each file.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut spots: Vec<(PathBuf, u64)> = Vec::new();
    for (p, n) in &files {
        spots.push((p.clone(), 0));
        spots.push((p.clone(), n - 1));
    }
    for _ in 0..24 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut at = x % total;
        for (p, n) in &files {
            if at < *n {
                spots.push((p.clone(), at));
                break;
            }
            at -= n;
        }
    }
    let (mut refused, mut harmless) = (0, 0);
    let mut reasons = std::collections::BTreeSet::new();
    for (file, at) in spots {
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&pristine, &data);
        let path = data.join(&file);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at as usize] ^= 0x5A;
        std::fs::write(&path, &bytes).unwrap();
        let out = std::process::Command::new(support::daemon::bin())
            .args(["records", "--actor", "privacy-officer", "verify", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_ne!(out.status.code(), Some(101), "{}@{at}: a panic is not a clear refusal: {err}", file.display());
        if out.status.success() {
            let r: Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(
                r["by_kind"]["record"].as_u64(),
                Some(records),
                "{}@{at}: records lost quietly: {r}",
                file.display()
            );
            let (ok, out, err) = cli(&cfg, &["export"]);
            if ok {
                let n = lines(&out).iter().filter(|l| l["type"] == "record").count() as u64;
                assert_eq!(n, records, "{}@{at}: export lost records quietly", file.display());
            } else {
                assert!(!err.trim().is_empty(), "{}@{at}: export failed without saying why", file.display());
            }
            harmless += 1;
        } else {
            assert!(!err.trim().is_empty(), "{}@{at}: refused without a message", file.display());
            assert_eq!(
                out.status.code(),
                Some(65),
                "{}@{at}: damage exits 65, not a retry code: {err}",
                file.display()
            );
            reasons.insert(err.lines().last().unwrap_or_default().chars().take(160).collect::<String>());
            refused += 1;
        }
    }
    println!("flipped bytes: {refused} refused with a message, {harmless} harmless (every record there)");
    for r in &reasons {
        println!("  refused: {r}");
    }
    assert!(refused > 0, "some flips must be caught");
}

/// Runs `carebridge run` on `cfg` for at most `secs`: the exit code and stderr, or `None` if it
/// was still running (then it is killed).
fn run_briefly(cfg: &Path, secs: u64) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(support::daemon::bin())
        .args(["run", "--config"])
        .arg(cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if std::time::Instant::now() > end {
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

/// Issue 15, item 5: a store file cut short (a truncated copy, a partial restore) made `run`
/// panic (exit 101). Every file of the store, cut to half its length and to nothing, is either
/// refused with exit 65 and a message, or harmless (every record still there); never a panic.
#[tokio::test]
async fn a_truncated_store_file_is_refused_with_exit_65_and_a_message_never_a_panic() {
    let mut c = Clinic::start("", "").await;
    exchange(&c).await;
    assert!(c.d.terminate());
    let cfg = c.d.config.clone();
    let data = data_dir(&c);
    let (ok, r) = verify(&cfg);
    assert!(ok, "{r}");
    let records = r["by_kind"]["record"].as_u64().unwrap();
    let pristine = cfg.parent().unwrap().join("pristine");
    copy_dir(&data, &pristine);
    let files: Vec<(PathBuf, u64)> = raw_files(&pristine)
        .into_iter()
        .filter(|(p, b)| !b.is_empty() && !p.ends_with("store.key") && !p.ends_with("lock"))
        .map(|(p, b)| (p.strip_prefix(&pristine).unwrap().to_path_buf(), b.len() as u64))
        .collect();
    let (mut refused, mut harmless) = (0, 0);
    let mut run_checked = false;
    for (file, len) in &files {
        for keep in [len / 2, 0] {
            std::fs::remove_dir_all(&data).unwrap();
            copy_dir(&pristine, &data);
            let path = data.join(file);
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(keep).unwrap();
            let what = format!("{} cut to {keep} of {len} bytes", file.display());
            let out = std::process::Command::new(support::daemon::bin())
                .args(["records", "--actor", "privacy-officer", "verify", "--config"])
                .arg(&cfg)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_ne!(out.status.code(), Some(101), "{what}: a panic is not a clear refusal: {err}");
            if out.status.success() {
                let r: Value = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
                assert_eq!(r["by_kind"]["record"].as_u64(), Some(records), "{what}: records lost quietly: {r}");
                harmless += 1;
                continue;
            }
            assert_eq!(out.status.code(), Some(65), "{what}: damage exits 65: {err}");
            assert!(err.contains("damaged") || err.contains("refused"), "{what}: the message says why: {err}");
            refused += 1;
            // The daemon itself, once, on the first refused cut: the same refusal, not a panic.
            if !run_checked {
                let (code, err) = run_briefly(&cfg, 30);
                assert_eq!(code, Some(65), "{what}: `run` refuses a damaged store with exit 65: {err}");
                assert!(err.contains("damaged"), "{what}: `run` says why: {err}");
                run_checked = true;
            }
        }
    }
    println!("truncated files: {refused} refused with exit 65, {harmless} harmless");
    assert!(refused > 0 && run_checked, "cutting the store's files must be caught");
}

/// Issue #15, item 15: a read through the admin API names who reads, or is refused.
#[tokio::test]
async fn the_admin_api_refuses_a_read_without_an_actor() {
    let c = Clinic::start("", "").await;
    exchange(&c).await;
    let client = reqwest::Client::new();
    let get = |actor: &'static str| {
        client
            .get(format!("http://127.0.0.1:{}/admin/records?patient=p-0001&actor={actor}", c.admin_port))
            .bearer_auth("admin-test-token")
            .send()
    };
    let refused = get("").await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("actor"));
    assert_eq!(get("%20").await.unwrap().status(), 400, "blank is no name either");
    assert_eq!(get("privacy-officer").await.unwrap().status(), 200);
}
