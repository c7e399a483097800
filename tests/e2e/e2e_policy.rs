//! The privacy policy through the real daemon: the seed rule (a prescription asked for by SMS
//! is not answered by SMS), rerouting to the secure channel, the review queue (hold, list,
//! show, approve, reject, each step recorded) and `policy explain`'s stable JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::time::Duration;
use support::clinic::{Clinic, msg};
use support::sink::Mode;
use support::{SECRET, post_message};

const ASK: &str = "Hi, can you renew my prescription for amoxicillin please?";
const ANSWER: &str = "Renewed: amoxicillin 500 mg, three times a day for 7 days.";

/// The patient asks by SMS; the EHR gets it; the clinician answers through the EHR.
async fn ask_and_answer(s: &Clinic, id: &str) {
    let c = reqwest::Client::new();
    let before = s.ehr.received().len();
    let (st, _) =
        post_message(&c, s.sms_port, &msg(serde_json::json!({"id": id, "from": "+14165550199", "text": ASK}))).await;
    assert_eq!(st, 202);
    assert!(s.ehr.wait_for(before + 1, Duration::from_secs(10)).await, "the secure EHR gets the request");
    let token = s.ehr.received()[before].body["conversation"].as_str().unwrap().to_string();
    let (st, b) = post_message(
        &c,
        s.ehr_port,
        &msg(serde_json::json!({"id": format!("ans-{id}"), "from": "dr-lee", "text": ANSWER, "conversation": token})),
    )
    .await;
    assert_eq!(st, 202, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prescription_asked_by_sms_is_answered_on_the_secure_channel_not_by_sms() {
    let mut s = Clinic::start("over_ceiling = \"reroute\"", "").await;
    ask_and_answer(&s, "sms-1").await;

    assert!(s.portal.wait_for(1, Duration::from_secs(10)).await, "the answer goes to the secure portal");
    let secure = s.portal.received()[0].body.clone();
    assert_eq!(secure["kind"], "reply");
    assert_eq!(secure["text"], ANSWER);
    assert_eq!(secure["to"]["value"], "+14165550199");
    // Issue 15, item 13: the portal learns where the answer was meant to go.
    assert_eq!(secure["rerouted_from"], "webhook.sms", "{secure}");
    assert!(s.ehr.received().iter().all(|r| r.body.get("rerouted_from").is_none()), "absent when not rerouted");

    // By SMS the patient gets only PHI-free notices: an advisory when they wrote health details
    // on SMS, and "you have a secure message" for the answer.
    assert!(s.sms.wait_for(2, Duration::from_secs(10)).await, "the patient is told by SMS");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sms: Vec<_> = s.sms.received();
    assert_eq!(sms.len(), 2);
    assert!(sms.iter().all(|m| m.body["kind"] == "notice"), "no reply by SMS");
    assert!(sms.iter().any(|m| m.body["text"].as_str().unwrap().contains("secure message")));
    for m in &sms {
        let t = m.body["text"].as_str().unwrap();
        assert!(!t.to_lowercase().contains("amoxicillin") && !t.contains("500"), "no PHI in the SMS: {t}");
    }

    assert!(s.d.terminate());
    let export = s.d.export();
    let answer =
        export.iter().find(|l| l["type"] == "record" && l["record"]["source"]["native_id"] == "ans-sms-1").unwrap();
    let decision = &answer["record"]["decisions"][0];
    assert_eq!(decision["account"], "webhook.sms");
    assert_eq!(decision["action"], "reroute");
    assert!(
        decision["rules"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().starts_with("builtin.")),
        "{decision}"
    );
    // Issue 15, item 8: what the patient was told is in their file, with its text and recipient:
    // the advisory on their message, the "secure message" notice on the answer.
    let notices = |l: &serde_json::Value| -> Vec<serde_json::Value> {
        l["events"].as_array().unwrap().iter().filter(|e| e["event"] == "notice").cloned().collect()
    };
    let told = notices(answer);
    assert_eq!(told.len(), 1, "{answer}");
    assert!(told[0]["text"].as_str().unwrap().contains("secure message"), "{told:?}");
    assert_eq!(told[0]["to"]["value"], "+14165550199");
    assert_eq!(told[0]["account"], "webhook.sms");
    let ask = export.iter().find(|l| l["type"] == "record" && l["record"]["source"]["native_id"] == "sms-1").unwrap();
    let advised = notices(ask);
    assert_eq!(advised.len(), 1, "{ask}");
    assert!(advised[0]["text"].as_str().unwrap().contains("do not send health"), "{advised:?}");
    let record_id = format!("rec-{}", answer["record"]["id"].as_u64().unwrap());
    let (ok, shown, err) = s.d.cli(&["records", "--actor", "officer", "show", &record_id]);
    assert!(ok, "{err}");
    assert!(shown.contains("\"event\": \"notice\"") && shown.contains("secure message"), "records show: {shown}");
    let (ok, jsonl, err) = s.d.cli(&["records", "--actor", "officer", "export", "--patient", "p-0001"]);
    assert!(ok, "{err}");
    assert_eq!(jsonl.matches("\"event\":\"notice\"").count(), 2, "the JSON lines export: {jsonl}");
    let (ok, fhir, err) =
        s.d.cli(&["records", "--actor", "officer", "export", "--patient", "p-0001", "--format", "fhir"]);
    assert!(ok, "{err}");
    let bundle: serde_json::Value = serde_json::from_str(&fhir).unwrap();
    let told_fhir: Vec<&serde_json::Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["payload"][0]["contentString"].as_str().is_some_and(|t| t.contains("secure message")))
        .collect();
    assert_eq!(told_fhir.len(), 1, "the notice is a Communication of the FHIR export");
    assert_eq!(told_fhir[0]["recipient"][0]["reference"], "Patient/p-0001");
    // The rerouted answer's delivery: by the portal, to the patient.
    let answer_dlv = format!("dlv-{:010}", decision["delivery"].as_u64().unwrap());
    let dlv =
        bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).find(|r| r["id"] == answer_dlv.as_str());
    let dlv = dlv.expect("the rerouted delivery is in the bundle");
    assert_eq!(dlv["recipient"][0]["reference"], "Patient/p-0001", "{dlv}");
    assert_eq!(dlv["medium"][0]["text"], "webhook", "{dlv}");
    assert_eq!(decision["rerouted_to"], "webhook.portal");

    let logs = s.d.logs().join("\n");
    assert!(!logs.to_lowercase().contains("amoxicillin"), "no message text in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_answers_wait_for_a_clinician_who_approves_or_rejects_them() {
    let mut s = Clinic::start("over_ceiling = \"hold\"", "").await;
    ask_and_answer(&s, "sms-1").await;
    ask_and_answer(&s, "sms-2").await;
    let mut held = serde_json::Value::Null;
    for _ in 0..200 {
        held = s.review(&["list"]);
        if held.as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = held.as_array().unwrap().clone();
    assert_eq!(held.len(), 2, "both answers held: {held:?}");
    assert!(held.iter().all(|h| h["account"] == "webhook.sms" && !h["rules"].as_array().unwrap().is_empty()));
    assert!(!serde_json::to_string(&held).unwrap().contains("amoxicillin"), "the list carries no text");
    let replies = |s: &Clinic| s.sms.received().into_iter().filter(|m| m.body["kind"] == "reply").collect::<Vec<_>>();
    assert_eq!(replies(&s).len(), 0, "nothing sent while held");
    // Two messages with health details by SMS, one advisory: unprompted notices are throttled.
    assert!(s.sms.wait_for(1, Duration::from_secs(10)).await, "the advisory arrives");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let advisories = s.sms.received().into_iter().filter(|m| m.body["kind"] == "notice").count();
    assert_eq!(advisories, 1, "one advice to use a secure channel, not one per message");

    let first = held[0]["delivery"].as_str().unwrap().to_string();
    let second = held[1]["delivery"].as_str().unwrap().to_string();
    let shown = s.review(&["show", &first]);
    assert_eq!(shown["text"], ANSWER, "the clinician sees what they approve");
    // Issue 15, item 10: every rule that applies, not only the one that held it, and what
    // approving will do: SMS may not carry it, so approval sends it by the secure portal.
    let applied: Vec<&str> = shown["applied"].as_array().unwrap().iter().map(|a| a["rule"].as_str().unwrap()).collect();
    assert!(applied.len() >= 2 && applied.contains(&"builtin.insecure.clinical"), "{shown}");
    assert_eq!(shown["on_approval"], serde_json::json!({ "action": "reroute", "to": "webhook.portal" }), "{shown}");

    let notices_before = s.sms.received().len();
    let approved = s.review(&["approve", &first, "--by", "s-lee"]);
    assert_eq!(approved["verdict"], "approved");
    assert_eq!(approved["rerouted_to"], "webhook.portal");
    assert!(s.portal.wait_for(1, Duration::from_secs(10)).await, "the approved answer goes by the secure portal");
    let secure = s.portal.received()[0].body.clone();
    assert_eq!((secure["kind"].as_str(), secure["text"].as_str()), (Some("reply"), Some(ANSWER)));
    assert_eq!(secure["rerouted_from"], "webhook.sms");
    assert!(s.sms.wait_for(notices_before + 1, Duration::from_secs(10)).await, "the patient is told by SMS");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(replies(&s).len(), 0, "an approved clinical answer still never goes by SMS");
    let told = s.sms.received()[notices_before].body.clone();
    assert_eq!(told["kind"], "notice");
    assert!(told["text"].as_str().unwrap().contains("secure message"), "{told}");

    let before = s.ehr.received().len();
    let rejected = s.review(&["reject", &second, "--by", "s-lee"]);
    assert_eq!(rejected["verdict"], "rejected");
    assert!(s.ehr.wait_for(before + 1, Duration::from_secs(10)).await, "the clinician is told the reply was not sent");
    let notice = s.ehr.received()[before].body.clone();
    assert_eq!(notice["kind"], "notice");
    assert!(notice["text"].as_str().unwrap().contains("not sent"), "{notice}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(replies(&s).len(), 0, "the rejected answer never reaches the patient");
    assert_eq!(s.portal.received().len(), 1, "nor the portal");
    assert_eq!(s.review(&["list"]), serde_json::json!([]));

    assert!(s.d.terminate());
    let export = s.d.export();
    let verdicts: Vec<(String, String)> = export
        .iter()
        .filter(|l| l["type"] == "record")
        .flat_map(|l| l["events"].as_array().unwrap().clone())
        .filter(|e| e["event"] == "reviewed")
        .map(|e| (e["verdict"].as_str().unwrap().to_string(), e["by"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(verdicts.len(), 2, "each review step is in the record");
    assert!(
        verdicts.contains(&("approved".into(), "s-lee".into()))
            && verdicts.contains(&("rejected".into(), "s-lee".into()))
    );
    // The "your reply was not sent" notice is in the file of the rejected answer, to its author.
    let not_sent: Vec<serde_json::Value> = export
        .iter()
        .filter(|l| l["type"] == "record")
        .flat_map(|l| l["events"].as_array().unwrap().clone())
        .filter(|e| e["event"] == "notice" && e["text"].as_str().unwrap().contains("reply was not sent"))
        .collect();
    assert_eq!(not_sent.len(), 1, "{not_sent:?}");
    assert_eq!(not_sent[0]["to"]["value"], "dr-lee");
    assert_eq!(not_sent[0]["account"], "webhook.ehr");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_is_snapshotted_and_rechecked_just_before_each_send() {
    // SMS treated like plain email here: clinical content may go to a patient who consented.
    let mut s = Clinic::start("over_ceiling = \"reroute\"", "\"webhook.sms\" = \"email_plain\"").await;
    let (ok, _, err) =
        s.d.cli(&["consent", "grant", "--patient", "p-0001", "--account", "webhook.sms", "--source", "paper-form"]);
    assert!(ok, "{err}");
    // The patient's gateway is down for now, so the answer waits in the outbox.
    s.sms.set_mode(Mode::Always(503));
    ask_and_answer(&s, "sms-1").await;
    let from = s.d.log_len();
    assert!(s.d.wait_log("will retry", from, Duration::from_secs(10)), "the answer was allowed and is being sent");

    // The patient withdraws consent before the gateway comes back. (The log is read from before
    // the withdrawal: the next retry may notice it before the command returns.)
    let from = s.d.log_len();
    let (ok, _, err) = s.d.cli(&["consent", "withdraw", "--patient", "p-0001", "--account", "webhook.sms"]);
    assert!(ok, "{err}");
    s.sms.set_mode(Mode::Accept);
    assert!(s.d.wait_log("Consent withdrawn since recording", from, Duration::from_secs(10)), "{:?}", s.d.logs());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.sms.received().iter().all(|m| m.body["kind"] != "reply"), "not sent after the withdrawal");
    let held = s.review(&["list"]);
    assert_eq!(held.as_array().unwrap().len(), 1);
    assert_eq!(held[0]["rules"], serde_json::json!(["builtin.consent.recheck"]));

    assert!(s.d.terminate());
    let export = s.d.export();
    let answer =
        export.iter().find(|l| l["type"] == "record" && l["record"]["source"]["native_id"] == "ans-sms-1").unwrap();
    let consents = answer["record"]["consents"].as_array().unwrap();
    assert_eq!(consents.len(), 1, "the consent in force is in the record");
    assert_eq!(consents[0]["source"], "paper-form");
    assert_eq!(answer["record"]["decisions"][0]["action"], "allow");
    assert!(answer["events"].as_array().unwrap().iter().any(|e| e["event"] == "consent_withdrawn"));
}

#[test]
fn policy_explain_prints_the_documented_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\ndata_dir = \"{}\"\n[webhook.sms]\nurl = \"http://127.0.0.1:9/x\"\nsecret_file = \"secret\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let text = "My SIN is 193 456 787, please call me.";
    let mut child = std::process::Command::new(support::daemon::bin())
        .args(["policy", "explain", "--channel", "webhook.sms", "--direction", "out", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("{\"findings\":"), "key order is part of the format: {stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let sin = v["findings"].as_array().unwrap().iter().find(|f| f["kind"] == "sin").expect("the SIN is found");
    let (start, end) = (sin["start"].as_u64().unwrap() as usize, sin["end"].as_u64().unwrap() as usize);
    assert_eq!(&text[start..end], "193 456 787", "byte offsets into the input");
    assert_eq!(v["class"], "identifier");
    assert!(v["decision"]["action"].is_string() && !v["decision"]["rules"].as_array().unwrap().is_empty());
    assert!(!v["rendered"].as_str().unwrap().contains("193 456 787"), "what would be sent has no SIN");
}

/// Issue 15, item 10, the other two ways an approval can go: a hold a clinic rule asked for is
/// the reviewer's to waive (sent as held); a hold the channel's ceiling made, with the secure
/// account closed to it too, is refused: nothing is sent and it stays held until rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_waives_a_review_rule_but_never_a_ceiling() {
    let s = Clinic::start(
        "over_ceiling = \"hold\"\n\
         [[policy.rule]]\nid = \"clinic.review_ehr\"\naction = \"hold\"\nwhen = { accounts = [\"webhook.ehr\"], audience = \"staff\" }\n\
         [[policy.rule]]\nid = \"clinic.portal_closed\"\naction = \"block\"\nwhen = { accounts = [\"webhook.portal\"] }\n",
        "",
    )
    .await;
    let c = reqwest::Client::new();
    let (st, _) =
        post_message(&c, s.sms_port, &msg(serde_json::json!({"id": "sms-1", "from": "+14165550199", "text": ASK})))
            .await;
    assert_eq!(st, 202);
    let held = |s: &Clinic| s.review(&["list"]).as_array().unwrap().clone();
    let mut list = Vec::new();
    for _ in 0..200 {
        list = held(&s);
        if !list.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(list.len(), 1, "the forward to the EHR is held by the clinic's rule: {list:?}");
    assert_eq!(list[0]["rules"], serde_json::json!(["clinic.review_ehr"]));
    let forward = list[0]["delivery"].as_str().unwrap().to_string();
    assert_eq!(s.review(&["show", &forward])["on_approval"]["action"], "send");
    s.review(&["approve", &forward, "--by", "s-lee"]);
    assert!(s.ehr.wait_for(1, Duration::from_secs(10)).await, "a review rule is the reviewer's to waive");
    let token = s.ehr.received()[0].body["conversation"].as_str().unwrap().to_string();

    let (st, b) = post_message(
        &c,
        s.ehr_port,
        &msg(serde_json::json!({"id": "ans-1", "from": "dr-lee", "text": ANSWER, "conversation": token})),
    )
    .await;
    assert_eq!(st, 202, "{b}");
    let mut answer = None;
    for _ in 0..200 {
        answer = held(&s).into_iter().find(|h| h["account"] == "webhook.sms");
        if answer.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = answer.expect("the answer is held by the SMS ceiling")["delivery"].as_str().unwrap().to_string();
    let shown = s.review(&["show", &answer]);
    assert_eq!(shown["on_approval"]["action"], "refuse", "{shown}");
    let (ok, _, err) = s.d.cli(&["review", "approve", &answer, "--by", "s-lee"]);
    assert!(!ok, "approval is refused");
    assert!(err.contains("stays held") && err.contains("webhook.portal"), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.sms.received().iter().all(|m| m.body["kind"] != "reply"), "nothing by SMS");
    assert!(s.portal.received().is_empty(), "nothing by the closed portal");
    assert!(held(&s).iter().any(|h| h["delivery"] == answer.as_str()), "still held");
    assert_eq!(s.review(&["reject", &answer, "--by", "s-lee"])["verdict"], "rejected");
}
