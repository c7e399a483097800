//! Long polling against the fake Bot API over real loopback HTTP: the getUpdates offset is the
//! ack, and it moves only past updates whose receipt allowed it.

mod common;
use carebridge_fakes::bot_api as fake_bot_api;

use carebridge_contract::testkit::{Answers, FakeRouter, LogCapture};
use carebridge_contract::{AdapterError, Health, HealthReporter, InboundContext, Receipt, Submission};
use fake_bot_api::FakeBotApi;
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_poller_that_reached_the_api_is_ready_before_its_first_long_poll_returns() {
    let fake = FakeBotApi::start().await;
    // Every getUpdates is held as long as the test runs, as Telegram holds an empty long poll
    // for its whole timeout: readiness comes from the API answering at all.
    fake.stall_polls(true);
    let router = FakeRouter::start(Answers::Router { unavailable: 0 });
    let run = start(&fake, &router, "");
    wait_health(&run, Health::Up).await;
    fake.stall_polls(false);
    run.stop().await;
}

const PATIENT: i64 = 4242;
const STAFF_CHAT: i64 = -1_001_234;

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), AdapterError>>,
    health: HealthReporter,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        let r = r.expect("adapter stops after shutdown").expect("adapter task did not panic");
        assert!(r.is_ok(), "{r:?}");
    }
}

fn start(fake: &FakeBotApi, router: &FakeRouter, extra: &str) -> Running {
    start_on(&fake.url(), fake.token(), router, extra)
}

/// Like [`start`], against any Bot API URL (a closed port, for the health tests).
fn start_on(url: &str, token: &str, router: &FakeRouter, extra: &str) -> Running {
    let cfg = common::config(url, &format!("staff_chat_id = {STAFF_CHAT}\n{extra}"));
    let cx = common::build_context(common::config_dir(token));
    let inbound = carebridge_telegram::build_inbound(&cfg, &cx).expect("builds").expect("has inbound");
    let shutdown = CancellationToken::new();
    let health = HealthReporter::new();
    let icx = InboundContext {
        account: common::account(),
        submitter: router.submitter(),
        shutdown: shutdown.clone(),
        health: health.clone(),
    };
    let task = tokio::spawn(inbound.run(icx));
    Running { shutdown, task, health }
}

/// Waits until the adapter's reported health is `want`.
async fn wait_health(run: &Running, want: Health) {
    for _ in 0..500 {
        if run.health.get() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("health stayed {:?}, wanted {want:?}", run.health.get());
}

fn envelope(router: &FakeRouter, i: usize) -> carebridge_contract::Envelope {
    router.with(i, |s| match &s.submission {
        Submission::Message(e) => e.clone(),
        other => panic!("expected a message, got {other:?}"),
    })
}

#[tokio::test]
async fn a_recorded_update_is_confirmed_and_never_delivered_again() {
    let fake = FakeBotApi::start().await;
    let router = FakeRouter::start(Answers::Router { unavailable: 0 });
    let run = start(&fake, &router, "");

    let first = fake.patient_text(PATIENT, "Ann", "My appointment is tomorrow");
    router.wait_for(1).await;
    let e = envelope(&router, 0);
    assert_eq!(e.body.expose(), "My appointment is tomorrow");
    assert_eq!(e.from.key().expose(), &format!("telegram:{PATIENT}"));
    assert_eq!(e.display_name.as_ref().map(|n| n.expose().as_str()), Some("Ann"));
    assert_eq!(e.native_message_id, Some(format!("{PATIENT}:{}", first.message_id)));
    assert!(e.source.native_id.starts_with(&format!("u{}-", first.update_id)));

    fake.wait_until("the first update to be confirmed", |f| !f.pending_update_ids().contains(&first.update_id)).await;
    // A later update flows through; the first one was handed out exactly once.
    fake.patient_text(PATIENT, "Ann", "second");
    router.wait_for(2).await;
    assert_eq!(envelope(&router, 1).body.expose(), "second");
    assert_eq!(fake.delivery_count(first.update_id), 1);
    assert_eq!(router.len(), 2);
    run.stop().await;
}

#[tokio::test]
async fn an_unavailable_router_leaves_the_update_with_telegram() {
    let fake = FakeBotApi::start().await;
    // The first two submissions are answered Unavailable (router saturated, store failing).
    let router = FakeRouter::start(Answers::Router { unavailable: 2 });
    let run = start(&fake, &router, "");

    let u = fake.patient_text(PATIENT, "Ann", "please call me");
    let later = fake.patient_text(PATIENT, "Ann", "after that");
    router.wait_for(3).await;
    // The same update came back until it was recorded; the later one waited behind it.
    for i in 0..3 {
        router.with(i, |s| assert!(s.submission.source().native_id.starts_with(&format!("u{}-", u.update_id))));
    }
    router.with(0, |s| assert_eq!(s.answer, Receipt::Unavailable));
    router.with(1, |s| assert_eq!(s.answer, Receipt::Unavailable));
    router.with(2, |s| assert!(matches!(s.answer, Receipt::Recorded(_))));
    assert!(fake.delivery_count(u.update_id) >= 3, "redelivered by Telegram, not remembered by the adapter");

    router.wait_for(4).await;
    assert_eq!(envelope(&router, 3).body.expose(), "after that");
    fake.wait_until("both updates confirmed", |f| f.pending_update_ids().is_empty()).await;
    let count = fake.delivery_count(u.update_id);
    // Once recorded, never again: another update passes and the first is not handed out again.
    fake.patient_text(PATIENT, "Ann", "third");
    router.wait_for(5).await;
    assert_eq!(fake.delivery_count(u.update_id), count);
    let later_submissions = (0..router.len())
        .filter(|&i| router.with(i, |s| s.submission.source().native_id.starts_with(&format!("u{}-", later.update_id))))
        .count();
    assert_eq!(later_submissions, 1, "the later update was submitted only after the first was recorded");
    assert_eq!(router.len(), 5);
    run.stop().await;
}

#[tokio::test]
async fn a_malformed_update_is_quarantined_then_confirmed() {
    let fake = FakeBotApi::start().await;
    let router = FakeRouter::start(Answers::Router { unavailable: 0 });
    let run = start(&fake, &router, "");

    let bad = fake.push_malformed(PATIENT);
    let garbage = fake.push_raw(|id| json!({"update_id": id, "message": "Ann Example, 416-555-0199"}));
    fake.patient_text(PATIENT, "Ann", "still works");
    router.wait_for(3).await;
    for (i, id) in [(0, bad), (1, garbage)] {
        router.with(i, |s| match &s.submission {
            Submission::Malformed { source, raw, reason } => {
                assert_eq!(source.native_id, format!("u{id}"));
                assert!(!raw.expose().is_empty());
                assert!(!reason.contains("Ann") && !reason.contains("416"), "{reason}");
            }
            other => panic!("expected malformed, got {other:?}"),
        });
    }
    assert_eq!(envelope(&router, 2).body.expose(), "still works");
    fake.wait_until("all confirmed", |f| f.pending_update_ids().is_empty()).await;
    assert_eq!(fake.delivery_count(bad), 1);
    assert_eq!(router.len(), 3);
    run.stop().await;
}

#[tokio::test]
async fn edits_replies_links_and_groups_are_mapped() {
    let fake = FakeBotApi::start().await;
    let router = FakeRouter::start(Answers::Router { unavailable: 0 });
    let run = start(&fake, &router, "");

    let start_msg = fake.patient_start(PATIENT, "Ann", "LINK-7Q2X");
    let original = fake.patient_text(PATIENT, "Ann", "my dose is 5mg");
    fake.edit_message(PATIENT, original.message_id, "my dose is 10mg");
    fake.patient_reply(PATIENT, "Ann", "see above", original.message_id);
    fake.group_text(-999, 77, "Stranger", "hello from another group", None);
    let staff = fake.group_text(STAFF_CHAT, 77, "Dr", "We will call you", Some(1));
    router.wait_for(5).await;

    let link = envelope(&router, 0);
    assert_eq!(link.link_code.as_ref().map(|c| c.expose().as_str()), Some("LINK-7Q2X"));
    assert_eq!(link.body.expose(), "/start");
    assert_eq!(link.native_message_id, Some(format!("{PATIENT}:{}", start_msg.message_id)));

    let edit = envelope(&router, 2);
    assert_eq!(edit.body.expose(), "my dose is 10mg");
    assert_eq!(edit.edit_of, Some(format!("{PATIENT}:{}", original.message_id)));
    assert_ne!(edit.source, envelope(&router, 1).source, "an edit is a new source");

    let reply = envelope(&router, 3);
    assert_eq!(reply.references, vec![format!("{PATIENT}:{}", original.message_id)]);

    // The other group's message was skipped; the staff group's was taken.
    let from_staff = envelope(&router, 4);
    assert_eq!(from_staff.body.expose(), "We will call you");
    assert_eq!(from_staff.from.key().expose(), "telegram:77");
    assert_eq!(from_staff.native_message_id, Some(format!("{STAFF_CHAT}:{}", staff.message_id)));
    fake.wait_until("all confirmed, including the ignored one", |f| f.pending_update_ids().is_empty()).await;
    assert_eq!(router.len(), 5);
    run.stop().await;
}

#[tokio::test]
async fn photos_and_documents_are_downloaded_within_the_limit() {
    let fake = FakeBotApi::start().await;
    let router = FakeRouter::start(Answers::Router { unavailable: 0 });
    let run = start(&fake, &router, "max_attachment_bytes = 1000");

    let photo: Vec<u8> = (0..900u32).map(|i| (i % 251) as u8).collect();
    fake.patient_photo(PATIENT, "Ann", Some("the rash"), photo.clone());
    fake.patient_document(PATIENT, "Ann", "results.pdf", "application/pdf", b"%PDF-1.7 tiny".to_vec());
    fake.patient_document(PATIENT, "Ann", "scan.tiff", "image/tiff", vec![7u8; 5000]);
    router.wait_for(3).await;

    let p = envelope(&router, 0);
    assert_eq!(p.body.expose(), "the rash");
    assert_eq!(p.attachments.len(), 1);
    assert_eq!(p.attachments[0].data.expose(), &photo);
    assert_eq!(p.attachments[0].content_type, "image/jpeg");

    let d = envelope(&router, 1);
    assert_eq!(d.attachments[0].data.expose(), b"%PDF-1.7 tiny");
    assert_eq!(d.attachments[0].filename.as_ref().map(|f| f.expose().as_str()), Some("results.pdf"));
    assert_eq!(d.attachments[0].content_type, "application/pdf");

    let big = envelope(&router, 2);
    assert!(big.attachments.is_empty());
    assert!(big.body.expose().contains("larger than the 1000-byte limit"), "{}", big.body.expose());
    assert!(!big.body.expose().contains("scan.tiff"));
    // The over-limit file was never fetched.
    assert_eq!(fake.calls("getFile").len(), 2);
    run.stop().await;
}

#[tokio::test]
async fn a_restart_fetches_what_was_not_confirmed_and_the_router_deduplicates() {
    let fake = FakeBotApi::start().await;
    let router = FakeRouter::start(Answers::Router { unavailable: 0 });
    let run = start(&fake, &router, "");
    // The adapter fetches the update, but the poll confirming it is lost on the way, and the
    // daemon dies before another one.
    fake.stall_after_next_batch();
    let u = fake.patient_text(PATIENT, "Ann", "first");
    router.wait_for(1).await;
    fake.wait_until("a poll after the record", |f| {
        f.calls("getUpdates").iter().any(|c| c.params["offset"] == u.update_id + 1)
    })
    .await;
    run.task.abort();
    let _ = run.task.await;
    fake.stall_polls(false);
    assert!(fake.pending_update_ids().contains(&u.update_id), "the lost poll confirmed nothing");

    let run = start(&fake, &router, "");
    router.wait_for(2).await;
    router.with(1, |s| assert!(matches!(s.answer, Receipt::Duplicate(_)), "{:?}", s.answer));
    fake.wait_until("confirmed after restart", |f| f.pending_update_ids().is_empty()).await;
    run.stop().await;
}

#[tokio::test]
async fn logs_carry_no_phi_and_no_token() {
    let (logs, _guard) = LogCapture::install();
    let fake = FakeBotApi::start().await;
    let router = FakeRouter::start(Answers::Router { unavailable: 1 });
    let run = start(&fake, &router, "max_attachment_bytes = 10");
    // An id no port number or update id will contain by chance.
    let patient = 918_273_645;
    fake.patient_text(patient, "Annabelle", "Annabelle's insulin 40 units");
    fake.patient_document(patient, "Annabelle", "annabelle-labs.pdf", "application/pdf", vec![1u8; 50]);
    fake.push_malformed(patient);
    router.wait_for(4).await;
    run.stop().await;
    let text = logs.text();
    assert!(text.contains("Update recorded."), "logs were captured: {text}");
    for secret in ["Annabelle", "insulin", "annabelle-labs", &patient.to_string(), "TEST-TOKEN", "no date here"] {
        assert!(!text.contains(secret), "log leaked {secret:?}:\n{text}");
    }
}

#[tokio::test]
async fn health_is_up_while_get_updates_answers_and_down_while_it_fails() {
    let fake = FakeBotApi::start().await;
    let router = FakeRouter::start(Answers::Router { unavailable: 0 });
    let run = start(&fake, &router, "");
    assert_ne!(run.health.get(), Health::Down { reason: "network" });
    fake.patient_text(PATIENT, "Ann", "hello");
    router.wait_for(1).await;
    wait_health(&run, Health::Up).await;
    run.stop().await;

    // Nothing listens on this port: every getUpdates fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let run = start_on(&format!("http://127.0.0.1:{closed}"), fake.token(), &router, "");
    wait_health(&run, Health::Down { reason: "network" }).await;
    run.stop().await;
}
