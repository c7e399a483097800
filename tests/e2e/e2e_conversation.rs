//! Conversations across channels, through the real daemon: a patient writes by SMS (webhook),
//! the EHR receives it with a conversation token, a clinician answers through the EHR's webhook
//! and the answer reaches the patient's phone. Only directory staff can answer; a stranger
//! holding a token cannot inject into the patient's conversation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::time::Duration;
use support::clinic::{Clinic, msg};
use support::post_message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clinician_answers_through_the_ehr_and_the_patient_gets_it_by_sms() {
    let mut s = Clinic::start("", "").await;
    let c = reqwest::Client::new();
    let (st, _) = post_message(
        &c,
        s.sms_port,
        &msg(serde_json::json!({"id": "sms-1", "from": "+1 416 555 0199", "text": "Can I move my appointment?"})),
    )
    .await;
    assert_eq!(st, 202);
    assert!(s.ehr.wait_for(1, Duration::from_secs(10)).await);
    let fwd = s.ehr.received()[0].body.clone();
    assert_eq!(fwd["kind"], "forward");
    assert_eq!(fwd["patient_id"], "p-0001");
    let token = fwd["conversation"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 32, "an unguessable token");

    let reply = "Yes, your appointment is moved to Tuesday at 10.";
    let (st, b) = post_message(
        &c,
        s.ehr_port,
        &msg(serde_json::json!({"id": "ehr-1", "from": "dr-lee", "text": reply, "conversation": token})),
    )
    .await;
    assert_eq!(st, 202, "{b}");
    assert!(s.sms.wait_for(1, Duration::from_secs(10)).await);
    let out = s.sms.received()[0].body.clone();
    assert_eq!(out["kind"], "reply");
    assert_eq!(out["to"]["kind"], "phone");
    assert_eq!(out["to"]["value"], "+14165550199");
    assert_eq!(out["text"], reply);
    assert_eq!(out["in_reply_to"], serde_json::json!(["sms-1"]), "threads under the patient's message");
    assert_eq!(s.ehr.received().len(), 1, "the reply is not forwarded back to the EHR");

    // The patient writes again in the same conversation: forwarded with the same token.
    let (st, _) = post_message(
        &c,
        s.sms_port,
        &msg(serde_json::json!({"id": "sms-2", "from": "+14165550199", "text": "Thanks!", "conversation": token})),
    )
    .await;
    assert_eq!(st, 202);
    assert!(s.ehr.wait_for(2, Duration::from_secs(10)).await);
    assert_eq!(s.ehr.received()[1].body["conversation"], token.as_str());

    assert!(s.d.terminate());
    let export = s.d.export();
    let recs: Vec<_> = export.iter().filter(|l| l["type"] == "record").map(|l| &l["record"]).collect();
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|r| r["conversation"] == token.as_str() && r["patient_id"] == "p-0001"));
    assert_eq!(recs[1]["sender"]["role"], "staff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_with_a_token_cannot_write_to_the_patient() {
    let mut s = Clinic::start("", "").await;
    let c = reqwest::Client::new();
    assert_eq!(
        post_message(&c, s.sms_port, &msg(serde_json::json!({"id": "sms-1", "from": "+14165550199", "text": "hello"})))
            .await
            .0,
        202
    );
    assert!(s.ehr.wait_for(1, Duration::from_secs(10)).await);
    let token = s.ehr.received()[0].body["conversation"].as_str().unwrap().to_string();

    // Someone not in the directory as staff, with the right token.
    let (st, _) = post_message(
        &c,
        s.ehr_port,
        &msg(serde_json::json!({"id": "x-1", "from": "mallory", "text": "send me your data", "conversation": token})),
    )
    .await;
    assert_eq!(st, 202, "recorded (everything is), but not sent to the patient");
    // A made-up token from a staff member goes nowhere near a patient either.
    let (st, _) = post_message(
        &c,
        s.ehr_port,
        &msg(serde_json::json!({"id": "x-2", "from": "dr-lee", "text": "hi", "conversation": "0000"})),
    )
    .await;
    assert_eq!(st, 202);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(s.sms.received().len(), 0, "nothing reached the patient's phone");
    assert!(s.d.terminate());
    let export = s.d.export();
    let stranger =
        export.iter().find(|l| l["type"] == "record" && l["record"]["source"]["native_id"] == "x-1").unwrap();
    assert_eq!(stranger["record"]["sender"]["role"], "unknown");
    assert_ne!(stranger["record"]["conversation"], token.as_str(), "not attached to the patient's conversation");
    assert!(stranger["record"]["notes"].as_array().unwrap().iter().any(|n| n == "conversation_mismatch"));
}
