//! The SMTP sender against a real Postfix (checked in the recipient's real Dovecot mailbox),
//! plus a tiny loopback SMTP responder for the 4xx case Postfix will not produce on demand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use carebridge_contract::{
    Address, AddressKind, Attachment, Delivery, DeliveryId, DeliveryKind, Outbound, Receipt, RecordId, Redacted,
    SendError, Submission,
};
use common::{MailEnv, MailServers, config, message, start_inbound, tag};
use mail_parser::{MessageParser, MimeHeaders};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SENDER: &str = "box7@clinic.test";

/// Delivery ids unique across runs against the same mailboxes.
fn next_delivery_id() -> DeliveryId {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 % 1_000_000_000;
    DeliveryId(base * 100 + N.fetch_add(1, Ordering::Relaxed))
}

/// The sender account's config, with `smtp` keys for the chosen connection.
fn sender_toml(env: &MailEnv, smtp: &str) -> String {
    let trust = if smtp.contains("\"plain\"") {
        String::new()
    } else {
        format!("tls_name = \"{}\"\nca_file = \"{}\"\n", env.tls_name, env.ca.display())
    };
    format!(
        "address = \"{SENDER}\"\ndisplay_name = \"Clinic (carebridge)\"\nforward_to = \"dr.lee@clinic.test\"\n\
         [smtp]\nhost = \"{}\"\n{trust}timeout_secs = 20\n{smtp}\n",
        env.host,
    )
}

fn starttls_auth(env: &MailEnv) -> String {
    format!("port = {}\ntls = \"starttls\"\nusername = \"{SENDER}\"\npassword_file = \"{SENDER}.pass\"", env.smtp_port)
}

fn sender(env: &MailEnv, smtp: &str) -> std::sync::Arc<dyn Outbound> {
    let cfg = config(&sender_toml(env, smtp));
    carebridge_email::build_outbound(&cfg, &env.build_context("email.box7")).expect("build").expect("smtp configured")
}

fn delivery(kind: DeliveryKind, to: Option<&str>, body: &str) -> Delivery {
    Delivery {
        id: next_delivery_id(),
        record_id: RecordId(77),
        account: "email.box7".parse().unwrap(),
        kind,
        to: to.map(|t| Address::new(AddressKind::Email, t)),
        conversation: Redacted::new("tok-abc".into()),
        patient_id: Some(Redacted::new("p-77".into())),
        sender_label: Some(Redacted::new("Ann Example".into())),
        subject: None,
        body: Redacted::new(body.into()),
        attachments: Vec::new(),
        in_reply_to: Vec::new(),
        rerouted_from: None,
        filed_as: None,
    }
}

fn expected_id(d: &Delivery) -> String {
    format!("carebridge.{}.box7@clinic.test", d.id)
}

async fn landed(env: &MailEnv, user: &str, id: &str, count: usize) -> Vec<Vec<u8>> {
    env.wait_for("the message lands in the recipient's mailbox", || async {
        env.fetch_by_message_id(user, "INBOX", id).await.len() >= count
    })
    .await;
    env.fetch_by_message_id(user, "INBOX", id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_lands_with_plus_address_thread_headers_and_a_phi_free_subject() {
    let Some(env) = common::mail_env() else { return };
    let out = sender(&env, &starttls_auth(&env));
    let mut d = delivery(DeliveryKind::Forward, None, "My knee still hurts.");
    d.in_reply_to = vec!["orig-0@patients.test".into(), "orig-1@patients.test".into(), "bad id\r\nBcc: x@y".into()];
    d.attachments = vec![Attachment {
        filename: Some(Redacted::new("rash.png".into())),
        content_type: "image/png".into(),
        data: Redacted::new(vec![0x89, b'P', b'N', b'G', 0, 1, 2, 3]),
    }];
    let sent = out.send(&d).await.expect("sent");
    let id = expected_id(&d);
    assert_eq!(sent.native_ids, vec![id.clone()], "reported without angle brackets, like inbound ids");

    let raws = landed(&env, "dr.lee@clinic.test", &id, 1).await;
    let msg = MessageParser::default().parse(&raws[0]).expect("parsable");
    assert_eq!(msg.message_id(), Some(id.as_str()));
    let from = msg.from().and_then(|f| f.first()).expect("From");
    assert_eq!(from.address(), Some("box7+tok-abc@clinic.test"));
    assert_eq!(from.name(), Some("Clinic (carebridge)"));
    assert_eq!(msg.to().and_then(|t| t.first()).and_then(|a| a.address()), Some("dr.lee@clinic.test"));
    assert_eq!(msg.subject(), Some("New patient message"));
    assert_eq!(msg.in_reply_to().as_text(), Some("orig-1@patients.test"));
    let refs: Vec<String> =
        msg.references().as_text_list().map(|l| l.iter().map(|r| r.to_string()).collect()).unwrap_or_default();
    assert_eq!(refs, vec!["orig-0@patients.test", "orig-1@patients.test"], "unsafe ids are dropped");
    assert!(msg.header_raw("Bcc").is_none());
    let body = msg.body_text(0).expect("text body");
    assert!(body.contains("Patient: p-77"), "{body}");
    assert!(body.contains("From: Ann Example"), "{body}");
    assert!(body.contains("My knee still hurts."), "{body}");
    let att = msg.attachments().next().expect("attachment");
    assert_eq!(att.attachment_name(), Some("rash.png"));
    assert_eq!(att.contents(), &[0x89, b'P', b'N', b'G', 0, 1, 2, 3]);
    assert_eq!(msg.header_raw("X-Carebridge-Delivery").map(str::trim), Some(d.id.to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_implicit_tls_reaches_the_patient_and_a_resend_keeps_its_message_id() {
    let Some(env) = common::mail_env() else { return };
    let smtp = format!(
        "port = {}\ntls = \"implicit\"\nusername = \"{SENDER}\"\npassword_file = \"{SENDER}.pass\"",
        env.smtps_port
    );
    let out = sender(&env, &smtp);
    let d = delivery(DeliveryKind::Reply, Some("Ann@Patients.test"), "Rest and ice for a week.");
    let first = out.send(&d).await.expect("sent");
    let again = out.send(&d).await.expect("resent");
    assert_eq!(first, again, "a resend reports the same id");
    let raws = landed(&env, "ann@patients.test", &expected_id(&d), 2).await;
    for raw in &raws {
        let msg = MessageParser::default().parse(raw).expect("parsable");
        assert_eq!(msg.message_id(), Some(expected_id(&d).as_str()));
        assert_eq!(msg.subject(), Some("Reply from your clinic"));
        assert_eq!(msg.body_text(0).as_deref().map(str::trim_end), Some("Rest and ice for a week."));
        assert!(msg.header_raw("Auto-Submitted").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_is_marked_auto_generated() {
    let Some(env) = common::mail_env() else { return };
    let out = sender(&env, &starttls_auth(&env));
    let mut d = delivery(DeliveryKind::Notice, Some("ann@patients.test"), "You have a secure message.");
    d.conversation = Redacted::new(String::new());
    out.send(&d).await.expect("sent");
    let raws = landed(&env, "ann@patients.test", &expected_id(&d), 1).await;
    let msg = MessageParser::default().parse(&raws[0]).expect("parsable");
    assert_eq!(msg.header_raw("Auto-Submitted").map(str::trim), Some("auto-generated"));
    assert_eq!(msg.subject(), Some("Message from your clinic"));
    assert_eq!(msg.from().and_then(|f| f.first()).and_then(|a| a.address()), Some(SENDER), "no token, no plus");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_recipients_are_permanent_and_reasons_carry_no_address() {
    let Some(env) = common::mail_env() else { return };
    let out = sender(&env, &starttls_auth(&env));
    for to in ["nobody@clinic.test", "someone@elsewhere.example"] {
        let err = out.send(&delivery(DeliveryKind::Reply, Some(to), "x")).await.expect_err("rejected");
        let SendError::Permanent { reason } = &err else { panic!("{to}: expected Permanent, got {err:?}") };
        assert!(reason.contains("SMTP 5"), "{reason}");
        assert!(!reason.contains('@'), "{reason}");
    }
    let err = out.send(&delivery(DeliveryKind::Reply, Some("not an address"), "x")).await.expect_err("invalid");
    assert!(matches!(err, SendError::Permanent { .. }), "{err:?}");
    let mut telegram = delivery(DeliveryKind::Reply, None, "x");
    telegram.to = Some(Address::new(AddressKind::Telegram, "42"));
    assert!(matches!(out.send(&telegram).await, Err(SendError::Permanent { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_and_4xx_are_retried() {
    let Some(env) = common::mail_env() else { return };
    let refused_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = sender(&env, &format!("port = {refused_port}\ntls = \"plain\""));
    let err = out.send(&delivery(DeliveryKind::Forward, None, "x")).await.expect_err("refused");
    assert!(matches!(err, SendError::Retry { .. }), "{err:?}");
    assert!(out.healthcheck().await.is_err());

    // A server that answers 451 to RCPT.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 fake ESMTP\r\n").await.ok();
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 fake\r\n",
                        "MAIL" | "RSET" | "NOOP" => b"250 ok\r\n",
                        "RCPT" => b"451 4.3.0 try again later\r\n",
                        "QUIT" => b"221 bye\r\n",
                        _ => b"502 no\r\n",
                    };
                    w.write_all(answer).await.ok();
                    if verb == "QUIT" {
                        break;
                    }
                }
            });
        }
    });
    let out = sender(&env, &format!("port = {port}\ntls = \"plain\""));
    let err = out.send(&delivery(DeliveryKind::Forward, None, "x")).await.expect_err("451");
    let SendError::Retry { reason, .. } = &err else { panic!("expected Retry, got {err:?}") };
    assert!(reason.contains("451"), "{reason}");
    assert!(out.healthcheck().await.is_ok(), "the fake answers NOOP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clinician_reply_to_a_forward_threads_back_to_the_conversation() {
    let Some(env) = common::mail_env() else { return };
    // box6 is both the clinic account (reads its mailbox) and the sender of the forward.
    let user = "box6@clinic.test";
    env.empty_mailbox(user).await;
    let cfg = config(&format!(
        "address = \"{user}\"\nforward_to = \"dr.lee@clinic.test\"\n\
         [smtp]\nhost = \"{h}\"\nport = {p}\ntls = \"plain\"\n\
         [imap]\nhost = \"{h}\"\nport = {ip}\ntls = \"plain\"\nusername = \"{user}\"\npassword_file = \"{user}.pass\"\n",
        h = env.host,
        p = env.smtp_port,
        ip = env.imap_port
    ));
    let out = carebridge_email::build_outbound(&cfg, &env.build_context("email.box6")).unwrap().unwrap();
    let mut d = delivery(DeliveryKind::Forward, None, "Patient question");
    d.account = "email.box6".parse().unwrap();
    d.conversation = Redacted::new("conv-XYZ_1".into());
    let sent = out.send(&d).await.expect("forward sent");

    // Dr Lee answers from his own mail client: to the plus-address, threaded, quoting.
    let reply_id = tag("clinician-reply");
    let reply = message(
        "Dr Lee <dr.lee@clinic.test>",
        "box6+conv-XYZ_1@clinic.test",
        &reply_id,
        "Re: New patient message",
        &format!("In-Reply-To: <{0}>\r\nReferences: <{0}>\r\n", sent.native_ids[0]),
        "Come in on Tuesday.\n\n-- \nDr Lee\n\nOn Mon, Clinic wrote:\n> Patient: p-77\n> Patient question\n",
    );
    env.smtp_send_raw("dr.lee@clinic.test", &["box6+conv-XYZ_1@clinic.test"], &reply).await;

    let mut run = start_inbound(&env, "email.box6", &cfg);
    let req = run.router.expect_request("the clinician's reply").await;
    let Submission::Message(e) = &req.submission else { panic!("reply should parse") };
    assert_eq!(e.conversation_token.as_deref(), Some("conv-XYZ_1"));
    assert_eq!(e.references, sent.native_ids, "inbound references match what outbound reported");
    assert_eq!(e.body.expose(), "Come in on Tuesday.");
    assert_eq!(e.from.key().expose(), "email:dr.lee@clinic.test");
    req.reply.send(Receipt::Recorded(RecordId(900))).unwrap();
    env.wait_for("reply acknowledged", || async { env.seen_flags(user, "INBOX", &reply_id).await == vec![true] }).await;
    run.stop().await.expect("clean stop");
}
