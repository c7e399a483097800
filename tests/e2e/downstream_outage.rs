//! The downstream systems go away for a while and come back on the same port: the EHR (which
//! receives patients' messages) and the SMS gateway (which sends clinicians' answers to patients).
//! Meanwhile carebridge keeps accepting messages (202: recorded) and retries with backoff (also
//! across a kill -9 and restart in the middle of the outage); once the receivers are back it
//! delivers everything, in the order the outbox promises
//! (`src/outbox.rs`, `order_key`):
//!
//! - a forward to a webhook's default destination is ordered per conversation: a patient's
//!   follow-ups in one conversation reach the EHR in the order the patient sent them;
//! - a reply is ordered per recipient: a patient gets a clinician's answers in the order they
//!   were written.
//!
//! Across conversations and recipients nothing is promised (they go in parallel), and the test
//! does not check it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::clinic::msg;
use support::daemon::{Daemon, wait_http};
use support::gate::Gate;
use support::load::by_idempotency_key;
use support::sink::{Mode, Sink};
use support::{SECRET, free_port, post_message};

/// Patients (fictional 555-01xx numbers) and how many follow-ups / answers each conversation gets
/// during the outage.
const PHONES: [&str; 3] = ["+14165550101", "+14165550102", "+14165550103"];
const FOLLOW_UPS: usize = 15;
const ANSWERS: usize = 10;

/// Waits until `sink` has `n` distinct deliveries (by idempotency key); an upper bound only.
async fn wait_distinct(sink: &Sink, n: usize, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if by_idempotency_key(&sink.received()).0.len() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_receivers_are_down_messages_are_accepted_then_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let (ehr, sms) = (Sink::start(Mode::Accept).await, Sink::start(Mode::Accept).await);
    let (mut ehr_gate, mut sms_gate) = (Gate::open(ehr.port).await, Gate::open(sms.port).await);
    let (sms_port, ehr_port) = (free_port(), free_port());
    let patients: String = PHONES
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[[directory.patient]]\nid = \"p-{i:04}\"\naddresses = [\"phone:{p}\"]\n"))
        .collect();
    // A short backoff cap, so the first attempt after the receivers return comes soon; enough
    // attempts that the outage does not dead-letter anything.
    let toml = format!(
        r#"
[daemon]
data_dir = "{data}"
[outbox]
retry_initial_ms = 50
retry_max_secs = 1
max_attempts = 10000
[webhook.sms]
listen = "127.0.0.1:{sms_port}"
url = "{sms_url}"
secret_file = "secret"
from_kind = "phone"
[webhook.ehr]
listen = "127.0.0.1:{ehr_port}"
url = "{ehr_url}"
secret_file = "secret"
from_kind = "opaque"
[[route]]
name = "patients-to-ehr"
from = ["webhook.sms"]
to = ["webhook.ehr"]
{patients}
[[directory.staff]]
id = "s-lee"
addresses = ["opaque:dr-lee"]
[policy.channels]
"webhook.ehr" = "secure"
"#,
        data = dir.path().join("data").display(),
        sms_url = sms_gate.url(),
        ehr_url = ehr_gate.url(),
    );
    let mut d = Daemon::start(dir.path(), &toml);
    for p in [sms_port, ehr_port] {
        assert!(wait_http(&format!("http://127.0.0.1:{p}/healthz"), Duration::from_secs(30)).await, "{:?}", d.logs());
    }
    let c = reqwest::Client::new();

    // Each patient opens a conversation while everything is up; the EHR learns its token.
    for (i, phone) in PHONES.iter().enumerate() {
        let body =
            msg(serde_json::json!({"id": format!("open-{i}"), "from": phone, "text": format!("patient {i} opens")}));
        assert_eq!(post_message(&c, sms_port, &body).await.0, 202);
    }
    assert!(wait_distinct(&ehr, PHONES.len(), Duration::from_secs(20)).await, "the first messages arrive");
    let tokens: BTreeMap<String, String> = ehr
        .received()
        .iter()
        .map(|r| {
            let who = r.body["text"].as_str().unwrap().trim_end_matches(" opens").to_string();
            (who, r.body["conversation"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(tokens.len(), PHONES.len(), "one conversation per patient");

    // Both receivers go down.
    ehr_gate.close().await;
    sms_gate.close().await;
    let (ehr_before, sms_before) = (ehr.received().len(), sms.received().len());
    let seen = d.log_len();

    // During the outage every patient writes follow-ups in their conversation and the clinician
    // answers each of them, all concurrently across conversations, in order within each.
    let mut tasks = Vec::new();
    for (i, phone) in PHONES.iter().enumerate() {
        let token = tokens[&format!("patient {i}")].clone();
        let (pc, phone) = (c.clone(), phone.to_string());
        tasks.push(tokio::spawn(async move {
            for k in 0..FOLLOW_UPS {
                let body = msg(serde_json::json!({
                    "id": format!("fu-{i}-{k}"), "from": phone, "text": format!("patient {i} follow-up {k}"),
                    "conversation": token,
                }));
                let (s, b) = post_message(&pc, sms_port, &body).await;
                assert_eq!((s, b["status"].as_str()), (202, Some("recorded")), "{b}");
            }
        }));
        let (sc, token) = (c.clone(), tokens[&format!("patient {i}")].clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..ANSWERS {
                let body = msg(serde_json::json!({
                    "id": format!("ans-{i}-{k}"), "from": "dr-lee", "text": format!("answer {k} to patient {i}"),
                    "conversation": token,
                }));
                let (s, b) = post_message(&sc, ehr_port, &body).await;
                assert_eq!((s, b["status"].as_str()), (202, Some("recorded")), "{b}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // carebridge is trying, and failing, to reach both; it keeps trying with backoff.
    let retries = |d: &Daemon, from: usize, account: &str| {
        d.logs()
            .iter()
            .skip(from)
            .filter(|l| l.contains("will retry") && l.contains(&format!("account=webhook.{account}")))
            .count()
    };
    let retried_a_few_times = |d: &Daemon, from: usize| {
        retries(d, from, "ehr") >= 3 * PHONES.len() && retries(d, from, "sms") >= 3 * PHONES.len()
    };
    let end = Instant::now() + Duration::from_secs(30);
    while !retried_a_few_times(&d, seen) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        retried_a_few_times(&d, seen),
        "retried during the outage: {:?}",
        d.logs().iter().skip(seen).collect::<Vec<_>>()
    );

    // The daemon is killed and restarted during the outage: the outbox resumes from disk, in
    // the same order, and goes on retrying.
    d.kill9();
    let seen = d.log_len();
    d.spawn();
    for p in [sms_port, ehr_port] {
        assert!(wait_http(&format!("http://127.0.0.1:{p}/healthz"), Duration::from_secs(30)).await, "{:?}", d.logs());
    }
    let end = Instant::now() + Duration::from_secs(30);
    while !retried_a_few_times(&d, seen) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        retried_a_few_times(&d, seen),
        "retried after the restart: {:?}",
        d.logs().iter().skip(seen).collect::<Vec<_>>()
    );
    assert_eq!((ehr.received().len(), sms.received().len()), (ehr_before, sms_before), "nothing got through");

    // They come back on the same ports.
    ehr_gate.reopen().await;
    sms_gate.reopen().await;
    let want_ehr = PHONES.len() * (1 + FOLLOW_UPS);
    let want_sms = PHONES.len() * ANSWERS;
    assert!(wait_distinct(&ehr, want_ehr, Duration::from_secs(60)).await, "EHR got {:?}", ehr.received().len());
    assert!(wait_distinct(&sms, want_sms, Duration::from_secs(60)).await, "SMS got {:?}", sms.received().len());
    assert!(d.terminate(), "clean exit");

    // Everything delivered exactly once per idempotency key, signed.
    let (ehr_got, ehr_repeats) = by_idempotency_key(&ehr.received());
    let (sms_got, sms_repeats) = by_idempotency_key(&sms.received());
    assert_eq!((ehr_got.len(), sms_got.len()), (want_ehr, want_sms));
    assert!(ehr.received().iter().chain(sms.received().iter()).all(|r| r.signature_ok));

    // In order per conversation (forwards) and per recipient (answers).
    for (i, phone) in PHONES.iter().enumerate() {
        let token = &tokens[&format!("patient {i}")];
        let forwards: Vec<&str> = ehr_got
            .iter()
            .filter(|r| r.body["conversation"] == token.as_str())
            .map(|r| r.body["text"].as_str().unwrap())
            .collect();
        let mut want = vec![format!("patient {i} opens")];
        want.extend((0..FOLLOW_UPS).map(|k| format!("patient {i} follow-up {k}")));
        assert_eq!(forwards, want, "the EHR got patient {i}'s conversation out of order");

        let answers: Vec<&str> = sms_got
            .iter()
            .filter(|r| r.body["to"]["value"] == *phone)
            .inspect(|r| assert_eq!(r.body["kind"], "reply"))
            .map(|r| r.body["text"].as_str().unwrap())
            .collect();
        let want: Vec<String> = (0..ANSWERS).map(|k| format!("answer {k} to patient {i}")).collect();
        assert_eq!(answers, want, "patient {i} got the answers out of order");
    }

    // The store agrees: every record's deliveries were sent once, none dead-lettered.
    let export = d.export();
    let records: Vec<_> = export.iter().filter(|l| l["type"] == "record").collect();
    assert_eq!(records.len(), PHONES.len() * (1 + FOLLOW_UPS + ANSWERS));
    assert!(export.iter().all(|l| l["type"] == "record"), "no dead letters or held deliveries");
    let mut retried = 0;
    for r in &records {
        let events = r["events"].as_array().unwrap();
        assert_eq!(events.iter().filter(|e| e["outcome"] == "sent").count(), 1, "{events:?}");
        retried += events.iter().filter(|e| e["outcome"] == "retry").count();
    }
    println!(
        "downstream_outage: {} records; EHR {} deliveries ({} repeats dropped by idempotency key), SMS {} ({} repeats); \
         {retried} failed attempts recorded during the outage",
        records.len(),
        ehr_got.len(),
        ehr_repeats,
        sms_got.len(),
        sms_repeats
    );
}
