//! The IMAP reader against a real Dovecot (mail delivered through a real Postfix), driven
//! through a real `Submitter::channel` whose router end the test answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use carebridge_contract::{Receipt, RecordId, Submission};
use common::{MailEnv, MailServers, assert_no_phi, capture_logs, config, message, start_inbound, tag};
use std::time::Duration;

/// An account config for one test mailbox (`top` = extra top-level keys, `imap` = extra keys
/// in the imap table).
fn toml_for(env: &MailEnv, user: &str, tls: &str, top: &str, imap: &str) -> String {
    let (port, tls_keys) = match tls {
        "implicit" | "starttls" => (
            if tls == "implicit" { env.imaps_port } else { env.imap_port },
            format!("tls = \"{tls}\"\ntls_name = \"{}\"\nca_file = \"{}\"", env.tls_name, env.ca.display()),
        ),
        _ => (env.imap_port, "tls = \"plain\"".to_string()),
    };
    format!(
        "address = \"{user}\"\n{top}\n[imap]\nhost = \"{host}\"\nport = {port}\n{tls_keys}\n\
         username = \"{user}\"\npassword_file = \"{user}.pass\"\nreconnect_max_secs = 2\n{imap}\n",
        host = env.host
    )
}

fn expect_message(req: &carebridge_contract::SubmitRequest) -> &carebridge_contract::Envelope {
    match &req.submission {
        Submission::Message(e) => e,
        Submission::Malformed { reason, .. } => panic!("unexpected malformed submission: {reason}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pickup_and_seen_only_after_a_may_ack_receipt() {
    let Some(env) = common::mail_env() else { return };
    capture_logs();
    let user = "box1@clinic.test";
    env.empty_mailbox(user).await;
    // Polling every hour and resyncing every 25 minutes: within this test, new mail can only
    // arrive through IDLE.
    let cfg = config(&toml_for(&env, user, "implicit", "", "poll_secs = 3600\nidle_resync_secs = 1500"));
    let mut run = start_inbound(&env, "email.box1", &cfg);

    // 1. A message already waiting is picked up by the first sync.
    let first = tag("first");
    env.smtp_send_raw(
        "ann@patients.test",
        &[user],
        &message(
            "\"Ann Example\" <ann@patients.test>",
            user,
            &first,
            "Knee pain secret-subject",
            "",
            "My knee hurts secret-body.",
        ),
    )
    .await;
    let req = run.router.expect_request("the first message").await;
    let e = expect_message(&req);
    assert_eq!(e.from.key().expose(), "email:ann@patients.test");
    assert_eq!(e.native_message_id.as_deref(), Some(first.as_str()));
    assert_eq!(e.body.expose(), "My knee hurts secret-body.");
    assert_eq!(e.subject.as_ref().map(|s| s.expose().as_str()), Some("Knee pain secret-subject"));
    // Keyed by what the message is (a copy the mail system delivers twice is one record), and
    // PHI-free: a digest, not the Message-ID.
    let key = e.source.native_id.strip_prefix("m:").expect("a message with a Message-ID is keyed by content");
    assert!(key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{}", e.source.native_id);
    assert_eq!(e.source.account.to_string(), "email.box1");
    assert_eq!(run.health.get(), carebridge_contract::Health::Up, "a connected reader reports itself up");
    // Fetched but not yet acknowledged: still unread at the source.
    assert_eq!(env.seen_flags(user, "INBOX", &first).await, vec![false]);
    req.reply.send(Receipt::Recorded(RecordId(1))).unwrap();
    env.wait_for("first message marked \\Seen after Recorded", || async {
        env.seen_flags(user, "INBOX", &first).await == vec![true]
    })
    .await;

    // 2. A reply arriving while the reader idles: pushed by IDLE, carries the plus-address token
    //    and the thread ids, and loses its quote.
    let reply = tag("reply");
    env.smtp_send_raw(
        "dr.lee@clinic.test",
        &["box1+tok-123@clinic.test"],
        &message(
            "Dr Lee <dr.lee@clinic.test>",
            "Clinic <box1+tok-123@clinic.test>",
            &reply,
            "Re: New patient message",
            "In-Reply-To: <carebridge.dlv-0000000042.box1@clinic.test>\r\n",
            "Rest secret-answer.\n\nOn Mon, Clinic wrote:\n> Patient: p-1\n> quoted secret-quote\n",
        ),
    )
    .await;
    let req = run.router.expect_request("the reply, via IDLE").await;
    let e = expect_message(&req);
    let reply_source = e.source.clone();
    assert_eq!(e.conversation_token.as_deref(), Some("tok-123"));
    assert_eq!(e.references, vec!["carebridge.dlv-0000000042.box1@clinic.test"]);
    assert_eq!(e.body.expose(), "Rest secret-answer.");
    // 3. The router cannot take it: it must stay unread and come back later.
    req.reply.send(Receipt::Unavailable).unwrap();
    let again = run.router.expect_request("the same reply, retried after Unavailable").await;
    assert_eq!(again.submission.source(), &reply_source, "same dedup key on retry");
    assert_eq!(env.seen_flags(user, "INBOX", &reply).await, vec![false], "Unavailable must not ack");
    again.reply.send(Receipt::Recorded(RecordId(2))).unwrap();
    env.wait_for("reply marked \\Seen after Recorded", || async {
        env.seen_flags(user, "INBOX", &reply).await == vec![true]
    })
    .await;

    // 4. Nothing is submitted again once acknowledged.
    assert!(run.router.quiet_for(Duration::from_secs(2)).await, "an acknowledged message came back");
    run.stop().await.expect("clean stop");
    assert_no_phi(&["secret-subject", "secret-body", "secret-answer", "secret-quote", "Ann Example", "tok-123"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_folder_receives_acknowledged_messages_over_starttls() {
    let Some(env) = common::mail_env() else { return };
    capture_logs();
    let user = "box2@clinic.test";
    env.empty_mailbox(user).await;
    let cfg = config(&toml_for(&env, user, "starttls", "", "processed_folder = \"Archive\""));
    let mut run = start_inbound(&env, "email.box2", &cfg);

    let one = tag("moved-one");
    let two = tag("moved-two");
    env.smtp_send_raw("ann@patients.test", &[user], &message("ann@patients.test", user, &one, "x", "", "one")).await;
    let req = run.router.expect_request("first message").await;
    assert_eq!(expect_message(&req).native_message_id.as_deref(), Some(one.as_str()));
    assert_eq!(env.seen_flags(user, "INBOX", &one).await, vec![false]);
    assert!(env.seen_flags(user, "Archive", &one).await.is_empty(), "not moved before the receipt");
    req.reply.send(Receipt::Recorded(RecordId(10))).unwrap();
    env.wait_for("first message moved to Archive", || async {
        env.seen_flags(user, "Archive", &one).await == vec![true]
            && env.seen_flags(user, "INBOX", &one).await.is_empty()
    })
    .await;

    // A duplicate receipt acknowledges too.
    env.smtp_send_raw("ann@patients.test", &[user], &message("ann@patients.test", user, &two, "x", "", "two")).await;
    let req = run.router.expect_request("second message").await;
    req.reply.send(Receipt::Duplicate(RecordId(10))).unwrap();
    env.wait_for("duplicate moved to Archive", || async {
        env.seen_flags(user, "Archive", &two).await == vec![true]
            && env.seen_flags(user, "INBOX", &two).await.is_empty()
    })
    .await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_quarantined_then_acked_and_the_reader_keeps_going() {
    let Some(env) = common::mail_env() else { return };
    capture_logs();
    let user = "box3@clinic.test";
    env.empty_mailbox(user).await;
    let cfg = config(&toml_for(&env, user, "plain", "max_attachment_bytes = 2048", ""));
    let mut run = start_inbound(&env, "email.box3", &cfg);

    // Each case: raw bytes with a unique marker, and what the router should get.
    let garbage = tag("garbage");
    let nofrom = tag("nofrom");
    let charset = tag("charset");
    let huge = tag("huge");
    let auto = tag("auto");
    let normal = tag("normal");
    env.append(user, "INBOX", format!("this is not an email {garbage}\r\n").as_bytes()).await;
    env.append(user, "INBOX", format!("Subject: {nofrom}\r\nMessage-ID: <{nofrom}>\r\n\r\nno sender\r\n").as_bytes())
        .await;
    let mut unknown = format!(
        "From: ann@patients.test\r\nTo: {user}\r\nSubject: x\r\nMessage-ID: <{charset}>\r\n\
         Content-Type: text/plain; charset=x-no-such-charset\r\nContent-Transfer-Encoding: 8bit\r\n\r\nbytes "
    )
    .into_bytes();
    unknown.extend_from_slice(b"\xff\xfe end\r\n");
    env.smtp_send_raw("ann@patients.test", &[user], &unknown).await;
    let big = "QUFB".repeat(2000); // 6000 bytes decoded, over the 2048-byte limit
    env.smtp_send_raw(
        "ann@patients.test",
        &[user],
        format!(
            "From: ann@patients.test\r\nTo: {user}\r\nSubject: x\r\nMessage-ID: <{huge}>\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nscan attached\r\n\
             --b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{big}\r\n--b--\r\n"
        )
        .as_bytes(),
    )
    .await;
    env.smtp_send_raw(
        "dr.lee@clinic.test",
        &[user],
        &message("dr.lee@clinic.test", user, &auto, "Out of office", "Auto-Submitted: auto-replied\r\n", "I am away"),
    )
    .await;
    env.smtp_send_raw(
        "ann@patients.test",
        &[user],
        &message("ann@patients.test", user, &normal, "x", "", "still working"),
    )
    .await;

    let mut seen = std::collections::HashSet::new();
    for n in 0..6 {
        let req = run.router.expect_request(&format!("submission {n} of 6")).await;
        let (name, receipt) = match &req.submission {
            Submission::Malformed { raw, reason, .. } => {
                let raw = String::from_utf8_lossy(raw.expose()).into_owned();
                assert!(!reason.contains('@'), "reason must be PHI-free: {reason}");
                let name = if raw.contains(&garbage) {
                    "garbage"
                } else if raw.contains(&nofrom) {
                    assert!(reason.contains("sender"), "{reason}");
                    "nofrom"
                } else if raw.contains(&auto) {
                    assert!(reason.contains("automatic"), "{reason}");
                    "auto"
                } else {
                    panic!("unexpected malformed submission: {reason}")
                };
                (name, Receipt::Quarantined { id: RecordId(100 + n), reason: reason.clone() })
            }
            Submission::Message(e) => {
                let id = e.native_message_id.clone().unwrap_or_default();
                let name = if id == charset {
                    assert_eq!(e.body.expose(), "bytes \u{fffd}\u{fffd} end");
                    "charset"
                } else if id == huge {
                    assert!(e.attachments.is_empty(), "over-limit attachment dropped");
                    assert_eq!(e.body.expose(), "scan attached\n\n[attachment removed: over size limit]");
                    "huge"
                } else if id == normal {
                    assert_eq!(e.body.expose(), "still working");
                    "normal"
                } else {
                    panic!("unexpected message {id}")
                };
                (name, Receipt::Recorded(RecordId(100 + n)))
            }
        };
        assert!(seen.insert(name), "{name} submitted twice before being answered");
        req.reply.send(receipt).unwrap();
    }
    env.wait_for("every message acknowledged (none left unseen)", || async {
        env.search(user, "INBOX", "UNSEEN").await.is_empty()
    })
    .await;
    assert!(run.router.quiet_for(Duration::from_secs(2)).await, "a quarantined message was fetched again");
    run.stop().await.expect("clean stop");
}

/// Mail that arrives while the reader is busy with earlier mail (between its SEARCH and its
/// IDLE) is picked up at once. The server announces it (`* n EXISTS`) during one of the reader's
/// own commands, not during the IDLE that follows, so a reader that relied on IDLE alone slept
/// until `idle_resync_secs`: the cause of the flaky "no submission arrived: submission 2 of 6"
/// in the test above, whose SMTP-delivered messages land while the first ones are processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_arriving_during_a_sync_is_not_left_for_the_next_resync() {
    let Some(env) = common::mail_env() else { return };
    capture_logs();
    let user = "box8@clinic.test";
    env.empty_mailbox(user).await;
    // A resync far beyond the waits below: only a prompt pickup passes.
    let cfg = config(&toml_for(&env, user, "plain", "", "idle_resync_secs = 1500"));
    let first = tag("first");
    let second = tag("second");
    env.append(user, "INBOX", &message("ann@patients.test", user, &first, "x", "", "one")).await;
    let mut run = start_inbound(&env, "email.box8", &cfg);

    let req = run.router.expect_request("the first message").await;
    assert_eq!(expect_message(&req).native_message_id.as_deref(), Some(first.as_str()));
    // The second message lands while the first is still unanswered: the reader's next commands
    // (the acknowledgement) carry the server's EXISTS for it.
    env.append(user, "INBOX", &message("ann@patients.test", user, &second, "x", "", "two")).await;
    req.reply.send(Receipt::Recorded(RecordId(1))).unwrap();

    let req = tokio::time::timeout(Duration::from_secs(15), run.router.expect_request("the second message"))
        .await
        .expect("mail that arrived during the sync was picked up without waiting for the resync");
    assert_eq!(expect_message(&req).native_message_id.as_deref(), Some(second.as_str()));
    req.reply.send(Receipt::Recorded(RecordId(2))).unwrap();
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_works_without_idle_and_stops_promptly() {
    let Some(env) = common::mail_env() else { return };
    capture_logs();
    let user = "box4@clinic.test";
    env.empty_mailbox(user).await;
    let cfg = config(&toml_for(&env, user, "plain", "", "idle = false\npoll_secs = 1"));
    let mut run = start_inbound(&env, "email.box4", &cfg);
    let id = tag("polled");
    env.smtp_send_raw("ann@patients.test", &[user], &message("ann@patients.test", user, &id, "x", "", "polled")).await;
    let req = run.router.expect_request("polled message").await;
    assert_eq!(expect_message(&req).native_message_id.as_deref(), Some(id.as_str()));
    req.reply.send(Receipt::Recorded(RecordId(5))).unwrap();
    env.wait_for("polled message seen", || async { env.seen_flags(user, "INBOX", &id).await == vec![true] }).await;
    run.stop().await.expect("stops cleanly on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_retried_until_shutdown() {
    let Some(env) = common::mail_env() else { return };
    capture_logs();
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = toml_for(&env, "box4@clinic.test", "plain", "", "")
        .replace(&format!("port = {}", env.imap_port), &format!("port = {port}"));
    let cfg = config(&text);
    let run = start_inbound(&env, "email.unreachable", &cfg);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!run.task.is_finished(), "the reader keeps retrying instead of giving up");
    run.stop().await.expect("clean stop while reconnecting");
    let logs = common::captured_logs();
    assert!(
        logs.contains("email.unreachable") && logs.contains("reconnecting") && logs.contains("error_kind=\"connect\""),
        "reconnection attempts are logged:\n{logs}"
    );
}

/// Needs no mail server: nothing listens on the port, so the reader reports itself down with the
/// error kind (never server text) and keeps retrying until shutdown.
#[tokio::test]
async fn health_is_down_with_the_error_kind_while_the_server_is_unreachable() {
    let dir = std::env::temp_dir().join(format!("carebridge-email-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pass"), "not-a-real-password").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = config(&format!(
        "address = \"box@clinic.test\"\n[imap]\nhost = \"127.0.0.1\"\nport = {closed}\ntls = \"plain\"\n\
         username = \"box@clinic.test\"\npassword_file = \"pass\"\nreconnect_max_secs = 1\n"
    ));
    let account: carebridge_contract::AccountId = "email.health".parse().unwrap();
    let build = carebridge_contract::config::BuildContext { account: account.clone(), config_dir: dir };
    let inbound = carebridge_email::build_inbound(&cfg, &build).expect("build_inbound").expect("imap configured");
    let (submitter, _rx) = carebridge_contract::Submitter::channel(1);
    let health = carebridge_contract::HealthReporter::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let cx =
        carebridge_contract::InboundContext { account, submitter, shutdown: shutdown.clone(), health: health.clone() };
    let task = tokio::spawn(inbound.run(cx));
    let mut seen = health.get();
    for _ in 0..500 {
        seen = health.get();
        if seen != carebridge_contract::Health::Starting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, carebridge_contract::Health::Down { reason: "connect" });
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
