//! The store's own guarantees, through its public operations: attachments stored once and read
//! back whole, every committed outbox row visible to a worker's scan before any flush (the race
//! issue #14 found in the old store), ids dense across restarts, a full disk's partial batch
//! never in the way of the next open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::schema::*;
use super::*;
use crate::policy::Class;
use carebridge_contract::{Address, AddressKind, Attachment, Delivery, DeliveryKind, Redacted, SourceKey};

/// A store opener: a data directory and a key file in, a store out.
type Open = fn(&Path, Keyring) -> Result<Store, StoreError>;

/// Every backend these tests run against, by name (the boundary: `engine.rs`). PostgreSQL joins
/// here with issue #18.
const BACKENDS: [(&str, Open); 1] = [("fjall", Store::open)];

/// Runs `test` once per backend, each in a fresh directory.
fn each_backend(test: impl Fn(&str, &dyn Fn(&Path) -> Store, &Path)) {
    for (name, open) in BACKENDS {
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
        assert!(next > last - 1 && next <= last + 1, "{name}: after {last} came {next}: no jump at a restart");
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
