//! Sending against the fake Bot API over real loopback HTTP: staff forwards, replies, splitting,
//! documents, and the classification of Telegram's errors for the outbox.

mod common;
use carebridge_fakes::bot_api as fake_bot_api;

use carebridge_contract::testkit::LogCapture;
use carebridge_contract::{
    Address, AddressKind, Attachment, Delivery, DeliveryId, DeliveryKind, Outbound, RecordId, Redacted, SendError, Sent,
};
use fake_bot_api::FakeBotApi;
use std::time::Duration;

const PATIENT: i64 = 4242;
const STAFF_CHAT: i64 = -1_001_234;

fn outbound(fake: &FakeBotApi, extra: &str) -> carebridge_telegram::TelegramOutbound {
    outbound_at(&fake.url(), fake.token(), extra)
}

fn outbound_at(url: &str, token: &str, extra: &str) -> carebridge_telegram::TelegramOutbound {
    let cfg = common::config(url, &format!("staff_chat_id = {STAFF_CHAT}\nmin_interval_per_chat_ms = 20\n{extra}"));
    carebridge_telegram::outbound(&cfg, &common::build_context(common::config_dir(token))).expect("builds")
}

fn delivery(id: u64, kind: DeliveryKind, to: Option<i64>, body: &str) -> Delivery {
    Delivery {
        id: DeliveryId(id),
        record_id: RecordId(id),
        account: common::account(),
        kind,
        to: to.map(|c| Address::new(AddressKind::Telegram, c.to_string())),
        conversation: Redacted::new("conv-token-abc".to_string()),
        patient_id: Some(Redacted::new("P-0042".to_string())),
        sender_label: Some(Redacted::new("Ann Example".to_string())),
        subject: None,
        body: Redacted::new(body.to_string()),
        attachments: Vec::new(),
        in_reply_to: Vec::new(),
        rerouted_from: None,
        filed_as: None,
    }
}

/// What the outbox does: retry on `Retry`, waiting at least `after`. Returns the result and how
/// many retries it took.
async fn send_like_the_outbox(out: &dyn Outbound, d: &Delivery) -> (Result<Sent, SendError>, u32) {
    let mut retries = 0;
    loop {
        match out.send(d).await {
            Err(SendError::Retry { after, .. }) if retries < 20 => {
                retries += 1;
                tokio::time::sleep(after.unwrap_or(Duration::from_millis(100))).await;
            }
            other => return (other, retries),
        }
    }
}

#[tokio::test]
async fn a_forward_goes_to_the_staff_chat_with_a_phi_free_header() {
    let fake = FakeBotApi::start().await;
    let out = outbound(&fake, "");
    let sent = out.send(&delivery(1, DeliveryKind::Forward, None, "Can I take ibuprofen?")).await.expect("sent");
    let msgs = fake.sent_to(STAFF_CHAT);
    assert_eq!(msgs.len(), 1);
    let text = msgs[0].text.as_deref().unwrap_or("");
    assert!(text.contains("Patient P-0042"), "{text}");
    assert!(text.ends_with("Can I take ibuprofen?"), "{text}");
    assert!(!text.contains("Ann Example"), "the sender label stays out of the staff chat");
    assert!(!text.contains("conv-token-abc"));
    assert_eq!(msgs[0].parse_mode, None, "plain text by default");
    assert_eq!(sent.native_ids, vec![format!("{STAFF_CHAT}:{}", msgs[0].message_id)]);
}

#[tokio::test]
async fn a_reply_reaches_the_patient_threaded_under_their_message() {
    let fake = FakeBotApi::start().await;
    let asked = fake.patient_text(PATIENT, "Ann", "question");
    let out = outbound(&fake, "");
    let mut d = delivery(2, DeliveryKind::Reply, Some(PATIENT), "Yes, with food.");
    d.in_reply_to = vec![format!("{STAFF_CHAT}:9"), format!("{PATIENT}:{}", asked.message_id)];
    let sent = out.send(&d).await.expect("sent");
    let msgs = fake.sent_to(PATIENT);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].text.as_deref(), Some("Yes, with food."), "no staff header on replies");
    assert_eq!(msgs[0].reply_to, Some(asked.message_id), "threads under the message in the same chat");
    assert_eq!(sent.native_ids, vec![format!("{PATIENT}:{}", msgs[0].message_id)]);
}

#[tokio::test]
async fn a_long_message_is_split_and_every_part_is_reported() {
    let fake = FakeBotApi::start().await;
    let out = outbound(&fake, "");
    let paragraph = "Take one tablet twice a day with water. ".repeat(40);
    let body = [paragraph.as_str(); 8].join("\n\n");
    let sent = out.send(&delivery(3, DeliveryKind::Forward, None, &body)).await.expect("sent");
    let msgs = fake.sent_to(STAFF_CHAT);
    assert!(msgs.len() >= 3, "{} parts", msgs.len());
    for m in &msgs {
        let t = m.text.as_deref().unwrap_or("");
        assert!(t.encode_utf16().count() <= 4096);
        assert!(!t.starts_with(char::is_whitespace) && !t.is_empty());
    }
    let tablets: usize = msgs.iter().map(|m| m.text.as_deref().unwrap_or("").matches("tablet").count()).sum();
    assert_eq!(tablets, 40 * 8, "nothing lost or repeated");
    let ids: Vec<String> = msgs.iter().map(|m| format!("{STAFF_CHAT}:{}", m.message_id)).collect();
    assert_eq!(sent.native_ids, ids);
}

#[tokio::test]
async fn a_429_storm_is_retried_until_it_passes() {
    let fake = FakeBotApi::start().await;
    let out = outbound(&fake, "");
    fake.rate_limit_sends(3, 1);
    let d = delivery(4, DeliveryKind::Reply, Some(PATIENT), "Your results are ready.");
    match out.send(&d).await {
        Err(SendError::Retry { after, reason }) => {
            assert_eq!(after, Some(Duration::from_secs(1)));
            assert!(reason.contains("429"), "{reason}");
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    let (result, retries) = send_like_the_outbox(&out, &d).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(retries >= 2, "{retries}");
    assert_eq!(fake.sent_to(PATIENT).len(), 1, "sent exactly once");
}

#[tokio::test]
async fn a_retry_in_the_middle_of_a_split_message_resends_only_the_rest() {
    let fake = FakeBotApi::start().await;
    let out = outbound(&fake, "");
    let body = format!("{}\n\n{}", "a".repeat(4000), "b".repeat(4000));
    fake.rate_limit_sends_after(1, 1, 1);
    let d = delivery(5, DeliveryKind::Reply, Some(PATIENT), &body);
    let (result, retries) = send_like_the_outbox(&out, &d).await;
    let sent = result.expect("sent in the end");
    assert_eq!(retries, 1);
    let msgs = fake.sent_to(PATIENT);
    assert_eq!(msgs.len(), 2, "the first part was not sent twice");
    assert!(msgs[0].text.as_deref().is_some_and(|t| t.starts_with('a')));
    assert!(msgs[1].text.as_deref().is_some_and(|t| t.starts_with('b')));
    assert_eq!(sent.native_ids.len(), 2);
}

#[tokio::test]
async fn blocked_deactivated_and_unknown_chats_are_permanent_with_clear_reasons() {
    let fake = FakeBotApi::start().await;
    let out = outbound(&fake, "");
    fake.block_chat(PATIENT);
    fake.fail_chat(777, 403, "Forbidden: user is deactivated");
    fake.fail_chat(778, 400, "Bad Request: chat not found");
    fake.fail_chat(779, 400, "Bad Request: message text is empty");
    for (chat, want) in
        [(PATIENT, "blocked by the user"), (777, "deactivated"), (778, "chat not found"), (779, "(400)")]
    {
        match out.send(&delivery(6, DeliveryKind::Reply, Some(chat), "hello")).await {
            Err(SendError::Permanent { reason }) => {
                assert!(reason.contains(want), "{reason}");
                assert!(!reason.contains("hello") && !reason.contains(&chat.to_string()), "{reason}");
            }
            other => panic!("chat {chat}: expected permanent, got {other:?}"),
        }
    }
    let not_telegram = Delivery {
        to: Some(Address::new(AddressKind::Email, "a@b.test")),
        ..delivery(7, DeliveryKind::Reply, None, "x")
    };
    assert!(matches!(out.send(&not_telegram).await, Err(SendError::Permanent { .. })));
}

#[tokio::test]
async fn network_failures_and_a_wrong_token_are_retried_not_dead_lettered() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let out = outbound_at(&url, fake_bot_api::TOKEN, "");
    assert!(matches!(out.send(&delivery(8, DeliveryKind::Forward, None, "x")).await, Err(SendError::Retry { .. })));

    let fake = FakeBotApi::start().await;
    let wrong = outbound_at(&fake.url(), "999:WRONG", "");
    match wrong.send(&delivery(9, DeliveryKind::Forward, None, "x")).await {
        Err(SendError::Retry { reason, .. }) => {
            assert!(reason.contains("401") && !reason.contains("WRONG"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(wrong.healthcheck().await.is_err());
    assert!(outbound(&fake, "").healthcheck().await.is_ok());
}

#[tokio::test]
async fn attachments_go_out_as_documents() {
    let fake = FakeBotApi::start().await;
    let out = outbound(&fake, "");
    let mut d = delivery(10, DeliveryKind::Forward, None, "see attached");
    d.attachments = vec![Attachment {
        filename: Some(Redacted::new("referral.pdf".to_string())),
        content_type: "application/pdf".to_string(),
        data: Redacted::new(b"%PDF-1.4 referral".to_vec()),
    }];
    let sent = out.send(&d).await.expect("sent");
    let msgs = fake.sent_to(STAFF_CHAT);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].method, "sendMessage");
    assert_eq!(msgs[1].method, "sendDocument");
    assert_eq!(msgs[1].document, Some((Some("referral.pdf".to_string()), b"%PDF-1.4 referral".to_vec())));
    assert_eq!(sent.native_ids.len(), 2);
}

#[tokio::test]
async fn markdown_v2_mode_escapes_patient_text() {
    let fake = FakeBotApi::start().await;
    let out = outbound(&fake, "parse_mode = \"MarkdownV2\"");
    out.send(&delivery(11, DeliveryKind::Forward, None, "BP 120/80 (ok)!")).await.expect("sent");
    let m = &fake.sent_to(STAFF_CHAT)[0];
    assert_eq!(m.parse_mode.as_deref(), Some("MarkdownV2"));
    let t = m.text.as_deref().unwrap_or("");
    assert!(t.starts_with("*New patient message"), "{t}");
    assert!(t.ends_with("BP 120/80 \\(ok\\)\\!"), "{t}");
}

#[tokio::test]
async fn send_logs_carry_no_phi_and_no_token() {
    let (logs, _guard) = LogCapture::install();
    let fake = FakeBotApi::start().await;
    let out = outbound(&fake, "");
    let patient = 918_273_645;
    fake.block_chat(patient);
    let _ = out.send(&delivery(12, DeliveryKind::Reply, Some(patient), "Annabelle: insulin 40u")).await;
    fake.rate_limit_sends(1, 1);
    let _ = out.send(&delivery(13, DeliveryKind::Forward, None, "Annabelle: insulin 40u")).await;
    let text = logs.text();
    assert!(text.contains("Telegram send failed."), "{text}");
    for secret in ["Annabelle", "insulin", &patient.to_string(), "TEST-TOKEN", "P-0042"] {
        assert!(!text.contains(secret), "log leaked {secret:?}:\n{text}");
    }
}
