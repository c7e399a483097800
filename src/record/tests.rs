//! The store's own guarantees, through its public operations: attachments stored once and read
//! back whole, every committed outbox row visible to a worker's scan before any flush (the race
//! issue #14 found in the old store), ids dense across restarts (embedded) or unique across
//! instances (PostgreSQL), a full disk's partial batch never in the way of the next open.
//!
//! Every test through [`each_backend`] runs on the embedded backend and on PostgreSQL: a real
//! server, whose DSN `tests/run.sh` sets in `CAREBRIDGE_TEST_POSTGRES` (and
//! `CAREBRIDGE_REQUIRE_POSTGRES`, so CI never skips them). Each test directory gets a database
//! of its own on that server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::schema::*;
use super::*;
use crate::policy::Class;
use carebridge_contract::DeliveryId;
use carebridge_contract::{Address, AddressKind, Attachment, Delivery, DeliveryKind, Redacted, SourceKey};

/// A store opener: a data directory and a key file in, a store out.
type Open = fn(&Path, Keyring) -> Result<Store, StoreError>;

/// Every backend these tests run against, by name (the boundary: `engine.rs`).
const BACKENDS: [(&str, Open); 2] = [("fjall", Store::open), ("postgres", open_postgres)];

/// The PostgreSQL database of a test directory: named after the directory, so reopening the
/// directory reopens the same database (a restart), and every test has its own.
fn database_of(dir: &Path) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(dir.as_os_str().as_encoded_bytes());
    format!("cb_{}", &hex::encode(digest)[..24])
}

/// The settings of a test directory's database on the test server (created if new).
fn pg_settings(dir: &Path) -> pg_backend::PgSettings {
    let dsn = pg_backend::testing::dsn().expect("the PostgreSQL tests are skipped without a server");
    pg_backend::testing::database(&dsn, &database_of(dir)).unwrap()
}

/// A store in the test directory's database.
fn open_postgres(dir: &Path, keys: Keyring) -> Result<Store, StoreError> {
    Store::open_postgres(keys, &pg_settings(dir))
}

/// Whether the PostgreSQL tests run: a server is given (or required: then a missing one fails).
fn postgres_available() -> bool {
    let there = pg_backend::testing::dsn().is_some();
    if !there {
        eprintln!(
            "skipping the PostgreSQL backend: {} is not set (tests/run.sh starts a server)",
            pg_backend::testing::DSN_VAR
        );
    }
    there
}

/// A key file in `dir` (the same one every instance of a test shares).
fn keys_in(dir: &Path) -> Keyring {
    match Keyring::load(&dir.join("store.key")) {
        Ok(k) => k,
        Err(_) => Keyring::generate(&dir.join("store.key")).unwrap(),
    }
}

/// Runs `test` once per backend, each in a fresh directory.
fn each_backend(test: impl Fn(&str, &dyn Fn(&Path) -> Store, &Path)) {
    for (name, open) in BACKENDS {
        if name == "postgres" && !postgres_available() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let opener = move |dir: &Path| {
            let keys = match Keyring::load(&dir.join("store.key")) {
                Ok(k) => k,
                Err(_) => Keyring::generate(&dir.join("store.key")).unwrap(),
            };
            open(&dir.join("data"), keys).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        test(name, &opener, dir.path());
    }
}

/// One exchange from a patient with one attachment, forwarded with it.
fn exchange(store: &Store, native: &str, data: &[u8]) -> (Exchange, OutboxKey) {
    let record_id = RecordId(store.next_id().unwrap());
    let from = Address::new(AddressKind::Phone, "+14165550100");
    let att = Attachment {
        filename: Some(Redacted::new("scan.pdf".into())),
        content_type: "application/pdf".into(),
        data: Redacted::new(data.to_vec()),
    };
    let stored = AttachmentV1 { blob: Some(BlobRefV1 { record: record_id, index: 0 }), ..AttachmentV1::from(&att) };
    let account: AccountId = "webhook.ehr".parse().unwrap();
    let delivery = Delivery {
        id: DeliveryId(store.next_id().unwrap()),
        record_id,
        account: account.clone(),
        kind: DeliveryKind::Forward,
        to: None,
        conversation: Redacted::new("0011".into()),
        patient_id: None,
        sender_label: None,
        subject: None,
        body: Redacted::new("Synthetic text.".into()),
        attachments: Vec::new(),
        in_reply_to: Vec::new(),
        rerouted_from: None,
        filed_as: None,
    };
    let mut delivery = DeliveryV1::from(delivery);
    delivery.attachments = vec![stored.clone().without_data()];
    let key = OutboxKey { account, seq: store.next_id().unwrap() };
    let record = RecordV1 {
        v: 1,
        id: record_id,
        recorded_at_ms: now_ms(),
        sent_at_ms: now_ms(),
        source: SourceKey { account: "webhook.sms".parse().unwrap(), native_id: native.into() },
        from: (&from).into(),
        sender: SenderV1::Unknown,
        display_name: None,
        subject: None,
        body: Redacted::new("Synthetic text.".into()),
        attachments: vec![stored],
        native_message_id: None,
        conversation: "0011".into(),
        patient_id: None,
        edit_of: None,
        class: Class::None,
        finding_kinds: Vec::new(),
        consents: Vec::new(),
        decisions: Vec::new(),
        notes: Vec::new(),
    };
    let conversation = ConversationV1 {
        v: 1,
        token: "0011".into(),
        patient_id: None,
        origin_account: "webhook.sms".into(),
        origin_address: from.into(),
        class: Class::None,
        last_patient_message: None,
        created_at_ms: now_ms(),
    };
    let item =
        OutboxItemV1 { v: 1, delivery, attempts: 0, not_before_ms: 0, patient_id: None, requires_consent: false };
    let ex = Exchange {
        record,
        conversation,
        native_refs: Vec::new(),
        outbox: vec![(key.clone(), item)],
        review: Vec::new(),
        link: None,
        notice_marks: Vec::new(),
    };
    (ex, key)
}

#[test]
fn an_attachment_is_stored_once_and_read_back_whole_for_the_send_and_the_officer() {
    each_backend(|_, open, dir| {
        let store = open(dir);
        let bytes = b"%PDF-1.4 synthetic scan".repeat(50);
        let (ex, key) = exchange(&store, "sms-1", &bytes);
        let id = ex.record.id;
        assert_eq!(store.commit_exchanges(&[ex]).unwrap(), vec![Committed::New]);
        store.flush_blocking().unwrap();
        // The bytes are in one blob; the outbox row and the record only refer to it.
        assert_eq!(store.blobs.len().unwrap(), 1);
        let row = store.outbox.get(key.encode()).unwrap().unwrap();
        let plain = store.keys.open(t::OUTBOX, &key.encode(), &row).unwrap();
        assert!(!String::from_utf8_lossy(&plain).contains("\"data\""), "no bytes in the outbox row");
        let rec = store.record(id).unwrap().unwrap();
        assert!(rec.attachments[0].data().is_none() && rec.attachments[0].blob.is_some());
        // The send gets the bytes back.
        let item = store.outbox_item(&key).unwrap().unwrap();
        let d = store.delivery_to_send(&item.delivery).unwrap();
        assert_eq!(d.attachments[0].data.expose(), &bytes);
        // So does the privacy officer's view.
        let shown = store.with_attachment_data(rec).unwrap();
        assert_eq!(shown.attachments[0].data().unwrap(), &bytes[..]);
        assert!(shown.attachments[0].data_base64.is_some());
    });
}

#[test]
fn a_blob_altered_or_gone_is_an_error_not_an_empty_attachment() {
    each_backend(|_, open, dir| {
        let store = open(dir);
        let (ex, key) = exchange(&store, "sms-2", b"synthetic");
        let id = ex.record.id;
        store.commit_exchanges(&[ex]).unwrap();
        let blob_key = BlobRefV1 { record: id, index: 0 }.key();
        store
            .transact(|tx| {
                tx.on(&store.blobs).remove(blob_key)?;
                Ok::<(), TxError<()>>(())
            })
            .unwrap();
        let item = store.outbox_item(&key).unwrap().unwrap();
        let e = store.delivery_to_send(&item.delivery).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    });
}

#[test]
fn a_worker_scan_sees_every_committed_row_before_any_flush() {
    // The old store's scans read only what its apply thread had reached, so a worker started
    // between a commit and the apply missed rows whose wake-up it had also missed. Here every
    // commit is visible at once; the worker flushes before sending what it found.
    each_backend(|_, open, dir| {
        let store = open(dir);
        let (ex, key) = exchange(&store, "sms-3", b"x");
        store.commit_exchanges(&[ex]).unwrap();
        assert_eq!(store.outbox_keys(&key.account).unwrap(), vec![key.clone()], "visible before the flush");
        let item = store.outbox_item(&key).unwrap().unwrap();
        let update = OutboxUpdate::Sent { key: key.clone(), item, native_ids: vec![], events: vec![] };
        store.apply_outbox(&[update]).unwrap();
        assert!(store.outbox_keys(&key.account).unwrap().is_empty(), "a sent row is gone from the scan at once");
    });
}

#[test]
fn ids_stay_dense_across_a_restart() {
    each_backend(|name, open, dir| {
        let last = {
            let store = open(dir);
            let (ex, _) = exchange(&store, "sms-4", b"x");
            store.commit_exchanges(&[ex]).unwrap();
            let last = store.next_id().unwrap();
            store.close().unwrap();
            last
        };
        let store = open(dir);
        let next = store.next_id().unwrap();
        if name == "fjall" {
            assert!(next > last - 1 && next <= last + 1, "{name}: after {last} came {next}: no jump at a restart");
        } else {
            // Shared by instances: ids come in reserved blocks, so a restart skips the rest of
            // its block, and never hands out one already given.
            assert!(next > last, "{name}: after {last} came {next}: an id handed out twice");
        }
    });
}

#[test]
fn a_store_reopened_reads_back_what_it_committed() {
    each_backend(|name, open, dir| {
        let (id, key) = {
            let store = open(dir);
            let (ex, key) = exchange(&store, "sms-r", b"scan");
            let id = ex.record.id;
            store.commit_exchanges(&[ex]).unwrap();
            store.flush_blocking().unwrap();
            store.close().unwrap();
            (id, key)
        };
        let store = open(dir);
        assert_eq!(store.record(id).unwrap().unwrap().source.native_id, "sms-r", "{name}");
        assert_eq!(store.outbox_keys(&key.account).unwrap(), vec![key], "{name}");
        assert_eq!(store.stats().records, 1, "{name}");
        assert_eq!(store.verify().unwrap().entries, 1, "{name}: the chain holds the record");
    });
}

#[test]
fn a_redelivery_is_recorded_once_even_in_the_same_batch() {
    each_backend(|name, open, dir| {
        let store = open(dir);
        let (first, _) = exchange(&store, "sms-dup", b"x");
        let (again, _) = exchange(&store, "sms-dup", b"x");
        let id = first.record.id;
        let got = store.commit_exchanges(&[first, again]).unwrap();
        assert_eq!(got, vec![Committed::New, Committed::Duplicate(id)], "{name}");
        let (later, _) = exchange(&store, "sms-dup", b"x");
        assert_eq!(store.commit_exchanges(&[later]).unwrap(), vec![Committed::Duplicate(id)], "{name}");
        assert_eq!(store.records().count(), 1, "{name}");
    });
}

#[test]
fn scans_see_the_transactions_own_writes_and_removals() {
    // The PostgreSQL backend buffers a transaction's writes until commit: its reads and prefix
    // scans inside it must see them, as fjall's do.
    each_backend(|name, open, dir| {
        let store = open(dir);
        let tree = &store.notices;
        store
            .transact(|tx| {
                let t = tx.on(tree);
                t.insert(b"a\x00one", b"1")?;
                t.insert(b"a\x00two", b"2")?;
                t.insert(b"b\x00one", b"3")?;
                Ok::<(), TxError<()>>(())
            })
            .unwrap();
        store
            .transact(|tx| {
                let t = tx.on(tree);
                assert_eq!(t.remove(b"a\x00one")?, Some(b"1".to_vec()), "{name}");
                t.insert(b"a\x00three", b"4")?;
                t.insert(b"a\xff", b"5")?;
                let keys: Vec<_> = t.scan_prefix(b"a\x00")?.into_iter().map(|(k, _)| k).collect();
                assert_eq!(keys, vec![b"a\x00three".to_vec(), b"a\x00two".to_vec()], "{name}");
                assert_eq!(t.get(b"a\x00one")?, None, "{name}");
                Ok::<(), TxError<()>>(())
            })
            .unwrap();
        let all: Vec<_> = tree.iter().map(|e| e.unwrap().0).collect();
        assert_eq!(all, vec![b"a\x00three".to_vec(), b"a\x00two".to_vec(), b"a\xff".to_vec(), b"b\x00one".to_vec()]);
        let last = tree.iter().next_back().unwrap().unwrap().0;
        assert_eq!(last, b"b\x00one".to_vec(), "{name}: scans go backwards too");
        let from: Vec<_> = tree.range_from(b"a\xff").map(|e| e.unwrap().0).collect();
        assert_eq!(from, vec![b"a\xff".to_vec(), b"b\x00one".to_vec()], "{name}");
        // An aborted transaction leaves nothing.
        let r = store.transact(|tx| {
            tx.on(tree).insert(b"z", b"9")?;
            Err::<(), _>(TxError::Abort(()))
        });
        assert!(matches!(r, Err(TxError::Abort(()))));
        assert!(tree.get(b"z").unwrap().is_none(), "{name}");
    });
}

#[test]
fn a_scan_longer_than_a_page_returns_every_entry_once_in_order() {
    each_backend(|name, open, dir| {
        let store = open(dir);
        let n = 1300u32;
        store
            .transact(|tx| {
                let t = tx.on(&store.notices);
                for i in 0..n {
                    t.insert(i.to_be_bytes(), b"v")?;
                }
                Ok::<(), TxError<()>>(())
            })
            .unwrap();
        let keys: Vec<u32> =
            store.notices.iter().map(|e| u32::from_be_bytes(e.unwrap().0.try_into().unwrap())).collect();
        assert_eq!(keys, (0..n).collect::<Vec<_>>(), "{name}");
        assert_eq!(store.notices.len().unwrap(), n as usize, "{name}");
    });
}

#[test]
fn a_store_missing_durable_commits_is_refused_not_opened_short() {
    // The witness is the embedded backend's own guard (a server backend's commit is durable when
    // it returns).
    let dir = tempfile::tempdir().unwrap();
    {
        let keys = Keyring::generate(&dir.path().join("store.key")).unwrap();
        let store = Store::open(&dir.path().join("data"), keys).unwrap();
        for i in 0..3 {
            let (ex, _) = exchange(&store, &format!("sms-w{i}"), b"x");
            store.commit_exchanges(&[ex]).unwrap();
            store.flush_blocking().unwrap();
        }
        store.close().unwrap();
    }
    // The witness says more was made durable than the engine holds (as after its journal was
    // cut): the open refuses.
    let witness = dir.path().join("data").join(engine::WITNESS_FILE);
    let mut b = std::fs::read(&witness).unwrap();
    let n = u64::from_be_bytes(b[..8].try_into().unwrap()) + 5;
    b[..8].copy_from_slice(&n.to_be_bytes());
    let crc = crc32fast::hash(&b[..8]);
    b[8..12].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&witness, &b).unwrap();
    let keys = Keyring::load(&dir.path().join("store.key")).unwrap();
    let Err(e) = Store::open(&dir.path().join("data"), keys) else { panic!("opened a store missing commits") };
    assert!(e.is_corrupt() && e.exit_code() == EXIT_STORE_DAMAGED, "{e}");
    assert!(e.to_string().contains("were made durable"), "{e}");
}

/// Two instances on one PostgreSQL database, as two daemons on two machines would be.
fn two_instances(dir: &Path) -> (Store, Store) {
    let settings = pg_settings(&dir.join("data"));
    let a = Store::open_postgres(keys_in(dir), &settings).unwrap();
    let b = Store::open_postgres(keys_in(dir), &settings).unwrap();
    (a, b)
}

#[test]
fn two_instances_hand_out_ids_no_other_instance_uses() {
    if !postgres_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_instances(dir.path());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3000 {
        assert!(seen.insert(a.next_id().unwrap()), "an id handed out twice");
        assert!(seen.insert(b.next_id().unwrap()), "an id handed out twice");
    }
}

#[test]
fn two_instances_writing_at_once_record_a_redelivery_once_and_keep_one_chain() {
    if !postgres_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_instances(dir.path());
    // Both instances receive the same 40 messages (a source redelivering to both behind a load
    // balancer), each in batches, at the same time.
    let run = |store: Store| {
        std::thread::spawn(move || {
            let mut new = 0;
            for batch in 0..10 {
                let exs: Vec<_> = (0..4).map(|i| exchange(&store, &format!("sms-{}", batch * 4 + i), b"x").0).collect();
                new += store.commit_exchanges(&exs).unwrap().iter().filter(|c| **c == Committed::New).count();
            }
            new
        })
    };
    let (ta, tb) = (run(a.clone()), run(b.clone()));
    let total = ta.join().unwrap() + tb.join().unwrap();
    assert_eq!(total, 40, "each message recorded exactly once across the two instances");
    assert_eq!(a.records().count(), 40);
    assert_eq!(b.stats().records, 40);
    let report = a.verify().unwrap();
    assert_eq!(report.entries, 40, "one global chain holds every record: {report:?}");
}

#[test]
fn a_database_newer_than_the_binary_is_refused() {
    if !postgres_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    drop(open_postgres(&data, keys_in(dir.path())).unwrap());
    let settings = pg_settings(&data);
    let next = pg_backend::MIGRATIONS.len() as i32 + 1;
    pg_backend::testing::execute(&settings, &format!("INSERT INTO carebridge_migrations (version) VALUES ({next})"))
        .unwrap();
    let Err(e) = open_postgres(&data, keys_in(dir.path())) else { panic!("opened a newer database") };
    assert!(matches!(e, StoreError::Schema { .. }) && e.exit_code() == 2, "{e}");
}

#[test]
fn every_instance_must_share_the_key_file() {
    if !postgres_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    drop(open_postgres(&data, keys_in(dir.path())).unwrap());
    let other = tempfile::tempdir().unwrap();
    let Err(e) = open_postgres(&data, keys_in(other.path())) else { panic!("opened with another key file") };
    assert!(matches!(e, StoreError::Sealed { tree: "meta", .. }) && e.exit_code() == 2, "{e}");
}

#[test]
fn an_unreachable_database_is_a_clear_error_not_a_hang() {
    // Nothing listens on port 1.
    let settings = pg_backend::PgSettings {
        config: "postgresql://carebridge@127.0.0.1:1/carebridge".parse().unwrap(),
        ca_file: None,
        pool_size: 2,
    };
    let dir = tempfile::tempdir().unwrap();
    let Err(e) = Store::open_postgres(keys_in(dir.path()), &settings) else { panic!("opened nothing") };
    assert!(matches!(e, StoreError::Engine(EngineError::Unavailable(_))), "{e}");
    assert!(e.to_string().contains("unavailable"), "{e}");
}

#[test]
fn the_database_holds_no_planted_phi() {
    // What the server stores (a dump of the whole database) holds ciphertext and blinded keys
    // only: no name, address, phone number or text of the message.
    if !postgres_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = open_postgres(&data, keys_in(dir.path())).unwrap();
    let (mut ex, _) = exchange(&store, "sms-planted-PHI-77", b"PLANTED-ATTACHMENT-BYTES");
    ex.record.body = carebridge_contract::Redacted::new("Planted Zelda Quixote, health number 9876-543-210".into());
    ex.record.display_name = Some(carebridge_contract::Redacted::new("Zelda Quixote".into()));
    ex.record.patient_id = Some("MRN-PLANTED-4242".into());
    ex.conversation.patient_id = Some("MRN-PLANTED-4242".into());
    store.commit_exchanges(&[ex]).unwrap();
    store
        .grant_consent(
            "MRN-PLANTED-4242",
            crate::policy::ConsentGrant {
                account: "webhook.sms".into(),
                purpose: "clinical".into(),
                source: "test".into(),
                granted_at: 1,
            },
        )
        .unwrap();
    let dump = pg_backend::testing::dump(&pg_settings(&data)).unwrap();
    assert!(dump.len() > 1000, "the dump holds the store ({} bytes)", dump.len());
    for phi in [
        "Zelda",
        "Quixote",
        "9876-543-210",
        "MRN-PLANTED-4242",
        "+14165550100",
        "4165550100",
        "sms-planted-PHI-77",
        "Synthetic text",
        "PLANTED-ATTACHMENT-BYTES",
        "scan.pdf",
    ] {
        assert!(!dump.contains(phi), "{phi:?} is in the database in clear");
        let hex_phi = hex::encode(phi);
        assert!(!dump.contains(&hex_phi), "{phi:?} is in the database in clear (bytea hex)");
    }
}

#[test]
fn a_store_copied_into_postgres_and_back_keeps_every_entry_its_chain_and_its_ids() {
    if !postgres_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = || keys_in(dir.path());
    let embedded = Store::open(&dir.path().join("data"), keys()).unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (ex, key) = exchange(&embedded, &format!("sms-copy-{i}"), b"scan bytes");
        ids.push((ex.record.id, key));
        embedded.commit_exchanges(&[ex]).unwrap();
    }
    embedded.flush_blocking().unwrap();
    let used = embedded.next_id().unwrap();
    let pg = open_postgres(&dir.path().join("pg"), keys()).unwrap();
    let there = transfer::copy_store(&embedded, &pg).unwrap();
    assert_eq!(there.chain_entries, 5);
    assert_eq!(there.chain_head, embedded.chain_head().unwrap().1, "the copy's head is the source's");
    for (id, key) in &ids {
        assert!(pg.record(*id).unwrap().is_some());
        let item = pg.outbox_item(key).unwrap().unwrap();
        let sent = pg.delivery_to_send(&item.delivery).unwrap();
        assert_eq!(sent.attachments[0].data.expose(), b"scan bytes", "blobs come along");
    }
    assert!(pg.next_id().unwrap() > used, "new ids continue past the source's");
    // Once more into a store that is not empty: refused.
    let e = transfer::copy_store(&embedded, &pg).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    // And back, after the PostgreSQL store took one more record.
    let (ex, _) = exchange(&pg, "sms-copy-pg", b"x");
    let last = ex.record.id;
    pg.commit_exchanges(&[ex]).unwrap();
    let back = Store::open(&dir.path().join("back"), keys()).unwrap();
    let copied = transfer::copy_store(&pg, &back).unwrap();
    assert_eq!(copied.chain_entries, 6);
    assert_eq!(back.records().count(), 6);
    assert!(back.record(last).unwrap().is_some());
    assert!(back.next_id().unwrap() > last.0, "the embedded copy's ids continue past every PostgreSQL block");
    back.close().unwrap();
    drop(back);
    let back = Store::open(&dir.path().join("back"), keys()).unwrap();
    assert_eq!(back.patient_ref("p-1"), embedded.patient_ref("p-1"), "log pseudonyms stay the same");
    assert_eq!(back.verify().unwrap().entries, 6);
}

/// A PostgreSQL server of a test's own (`tests/postgres.sh`), which it may stop and start:
/// stopped with the guard.
struct OwnServer {
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnServer {
    fn script(&self, cmd: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/postgres.sh");
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

#[test]
fn an_outage_of_the_database_fails_writes_clearly_and_the_store_recovers_by_itself() {
    if !postgres_available() {
        return;
    }
    let port = 20000 + (std::process::id() % 20000) as u16;
    let server = OwnServer { dir: std::env::temp_dir().join(format!("cb-pg-outage-{port}")), port };
    server.script("start");
    let dsn = format!("postgresql://postgres@127.0.0.1:{port}/postgres");
    let settings = pg_backend::testing::database(&dsn, "outage").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_postgres(keys_in(dir.path()), &settings).unwrap();
    let (ex, _) = exchange(&store, "sms-before", b"x");
    store.commit_exchanges(&[ex]).unwrap();
    server.script("pause");
    // Down: writes fail (the router answers "unavailable": no ack, the source keeps the message),
    // the probe /readyz asks says so, and nothing is half written.
    let (ex, _) = exchange(&store, "sms-during", b"x");
    let e = store.commit_exchanges(&[ex]).unwrap_err();
    assert!(matches!(e, StoreError::Engine(EngineError::Unavailable(_))), "{e}");
    assert!(!e.is_io() && !e.is_corrupt(), "an outage is neither a full disk nor damage: {e}");
    assert!(store.probe().is_err());
    assert!(store.flush_blocking().is_ok(), "the flusher does not stop the daemon over an outage");
    // Back: the same store handle works again, and the redelivered message is recorded.
    server.script("resume");
    store.probe().unwrap();
    let (ex, _) = exchange(&store, "sms-during", b"x");
    assert_eq!(store.commit_exchanges(&[ex]).unwrap(), vec![Committed::New]);
    assert_eq!(store.records().count(), 2);
    assert_eq!(store.verify().unwrap().entries, 2);
}

#[test]
fn a_row_another_instance_sent_is_not_brought_back_by_a_late_retry() {
    // Two instances may attempt one row when a live holder loses its delivery lease (`outbox_lease`): whichever records
    // second must not put a sent row back in the outbox, nor dead-letter it.
    each_backend(|name, open, dir| {
        let store = open(dir);
        let (ex, key) = exchange(&store, "sms-late", b"x");
        let record = ex.record.id;
        store.commit_exchanges(&[ex]).unwrap();
        let item = store.outbox_item(&key).unwrap().unwrap();
        let sent = OutboxUpdate::Sent { key: key.clone(), item: item.clone(), native_ids: vec![], events: vec![] };
        store.apply_outbox(&[sent]).unwrap();
        let retry = OutboxUpdate::Retry { key: key.clone(), item: item.clone(), events: vec![] };
        store.apply_outbox(&[retry]).unwrap();
        assert!(store.outbox_item(&key).unwrap().is_none(), "{name}: a sent row stays gone");
        let dead = OutboxUpdate::Dead { key: key.clone(), item, reason: "HTTP 400".into(), events: vec![] };
        store.apply_outbox(&[dead]).unwrap();
        assert!(store.dead_letters().unwrap().is_empty(), "{name}: nor is it dead-lettered");
        assert!(store.record(record).unwrap().is_some());
    });
}

#[test]
fn the_outbox_reads_in_commit_order_across_instances_and_a_retry_keeps_its_place() {
    // The holder of an account's delivery lease (`outbox_lease`) reads the outbox in the one
    // order of commits, whichever instance committed: ids come in blocks per instance, so key
    // order is not commit order on a shared store.
    each_backend(|name, open, dir| {
        let a = open(dir);
        // On PostgreSQL a second instance on the same database; the embedded store has one.
        let b = if name == "postgres" { open(dir) } else { a.clone() };
        let account: AccountId = "webhook.ehr".parse().unwrap();
        let mut committed = Vec::new();
        for (i, store) in [&b, &a, &b, &a].into_iter().enumerate() {
            let (ex, key) = exchange(store, &format!("sms-order-{i}"), b"x");
            store.commit_exchanges(&[ex]).unwrap();
            committed.push(key);
        }
        if name == "postgres" {
            assert!(committed[0].seq > committed[1].seq, "the second instance's block comes after the first's");
        }
        let (keys, last) = a.outbox_keys_after(&account, 0).unwrap();
        assert_eq!(keys, committed, "{name}: commit order");
        assert_eq!(b.outbox_keys_after(&account, 0).unwrap().0, committed, "{name}: the same from every instance");
        // A retry writes the row again: it keeps its place, and is not read again as new.
        let mut item = a.outbox_item(&committed[0]).unwrap().unwrap();
        item.attempts = 1;
        item.not_before_ms = now_ms() + 60_000;
        b.apply_outbox(&[OutboxUpdate::Retry { key: committed[0].clone(), item, events: vec![] }]).unwrap();
        assert_eq!(a.outbox_keys_after(&account, 0).unwrap().0, committed, "{name}: a retry keeps its place");
        assert_eq!(a.outbox_keys_after(&account, last).unwrap(), (vec![], last), "{name}: nothing new");
        // A row sent is gone; one committed later is read after the last place seen.
        let item = a.outbox_item(&committed[1]).unwrap().unwrap();
        a.apply_outbox(&[OutboxUpdate::Sent { key: committed[1].clone(), item, native_ids: vec![], events: vec![] }])
            .unwrap();
        let (ex, newer) = exchange(&b, "sms-order-later", b"x");
        b.commit_exchanges(&[ex]).unwrap();
        let (keys, later) = a.outbox_keys_after(&account, last).unwrap();
        assert_eq!(keys, vec![newer.clone()], "{name}");
        assert!(later > last);
        let all = a.outbox_keys_after(&account, 0).unwrap().0;
        assert_eq!(all, vec![committed[0].clone(), committed[2].clone(), committed[3].clone(), newer], "{name}");
    });
}
