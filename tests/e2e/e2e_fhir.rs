//! The `fhir` destination through the real daemon, against a real FHIR R4 server on loopback
//! (Medplum's FHIR router, validating every resource it stores; `tests/e2e/support/fhir_server.rs`):
//! conversations over SMS, Telegram and email (real Postfix + Dovecot from
//! `tests/mail-servers.sh`; that test skips like the other email tests when they are not
//! running) filed as linked `Communication`s under the right `Patient`, no second copy
//! after a crash between the server's create and carebridge's bookkeeping, an unknown patient,
//! a refusal with an `OperationOutcome`, and SMART tokens renewed when they expire or are
//! revoked.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;
use carebridge_fakes::bot_api as fake_bot_api;

use fake_bot_api::FakeBotApi;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use support::daemon::{Daemon, wait_http};
use support::fhir_server::{ADMIN_TOKEN, FhirServer, Smart, write_client_keys, write_tls};
use support::sink::{Mode, Sink};
use support::{SECRET, free_port, post_message};

/// The EMR's MRN system, which the clinic configures as `patient_identifier_system`.
const MRN: &str = "https://clinic.example/mrn";
const PATIENT_PHONE: &str = "+14165550199";
const PATIENT_TG: i64 = 5_550_001;
const STAFF_CHAT: i64 = -1_009_876;

/// A clinic whose patients write by SMS (webhook) and Telegram, whose clinicians answer through
/// the EHR's webhook, and whose EMR (`fhir.emr`) files everything.
struct Clinic {
    d: Daemon,
    sms_port: u16,
    ehr_port: u16,
    sms: Sink,
    ehr: Sink,
    fake: FakeBotApi,
    _dir: tempfile::TempDir,
}

/// `auth` is the `[fhir.emr.*]` table (written into the temp dir's files by the caller).
async fn clinic(fhir: &FhirServer, auth: &str, dir: tempfile::TempDir) -> Clinic {
    clinic_with(fhir, auth, dir, "", &[], "").await
}

/// With more accounts (`extra` tables) whose messages also go to the EHR and the EMR.
/// `policy` adds keys to `[policy]`.
async fn clinic_with(
    fhir: &FhirServer,
    auth: &str,
    dir: tempfile::TempDir,
    extra: &str,
    also_from: &[&str],
    policy: &str,
) -> Clinic {
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("emr.token"), ADMIN_TOKEN).unwrap();
    let fake = FakeBotApi::start().await;
    std::fs::write(dir.path().join("tg-token"), fake.token()).unwrap();
    let (sms, ehr) = (Sink::start(Mode::Accept).await, Sink::start(Mode::Accept).await);
    let (sms_port, ehr_port) = (free_port(), free_port());
    let toml = format!(
        r#"
[daemon]
data_dir = "{data}"
[outbox]
retry_initial_ms = 50
retry_max_secs = 1
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
[telegram.front]
token_file = "tg-token"
api_url = "{api_url}"
poll_timeout_secs = 1
staff_chat_id = {STAFF_CHAT}
min_interval_per_chat_ms = 20
[fhir.emr]
base_url = "{fhir_url}"
patient_identifier_system = "{MRN}"
timeout_ms = 60000
{auth}
[[route]]
name = "patients-to-clinic"
from = [{from}]
to = ["webhook.ehr", "fhir.emr"]
[[directory.patient]]
id = "p-0001"
addresses = ["phone:{PATIENT_PHONE}", "telegram:{PATIENT_TG}", "email:ann@patients.test"]
mrn = "MRN-000017"
[[directory.patient]]
id = "p-0002"
addresses = ["phone:+14165550100"]
mrn = "MRN-000042"
[[directory.staff]]
id = "s-lee"
addresses = ["opaque:dr-lee"]
[policy]
{policy}
[policy.channels]
"webhook.ehr" = "secure"
{extra}
"#,
        from = ["webhook.sms", "telegram.front"]
            .iter()
            .chain(also_from)
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", "),
        data = dir.path().join("data").display(),
        sms_url = sms.url(),
        ehr_url = ehr.url(),
        api_url = fake.url(),
        fhir_url = fhir.base,
    );
    let d = Daemon::start(dir.path(), &toml);
    for p in [sms_port, ehr_port] {
        // Generous: the machine running the suite may be busy.
        let up = wait_http(&format!("http://127.0.0.1:{p}/healthz"), Duration::from_secs(60)).await;
        assert!(up, "the daemon listens on {p}: {:?}", d.logs());
    }
    Clinic { d, sms_port, ehr_port, sms, ehr, fake, _dir: dir }
}

const BEARER: &str = "[fhir.emr.bearer]\ntoken_file = \"emr.token\"\n";

fn sms(id: &str, from: &str, text: &str, conversation: Option<&str>) -> Vec<u8> {
    let mut m = json!({ "id": id, "from": from, "text": text });
    if let Some(c) = conversation {
        m["conversation"] = c.into();
    }
    serde_json::to_vec(&m).unwrap()
}

/// Waits until the server holds `n` Communications about `patient` (a `Patient/<id>`).
async fn filed(fhir: &FhirServer, patient: &str, n: usize) -> Vec<Value> {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = fhir.search(&format!("Communication?subject={patient}&_count=100")).await;
        if found.len() >= n {
            return found;
        }
        assert!(std::time::Instant::now() < end, "{} of {n} Communications filed: {found:?}", found.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn record_id(c: &Value) -> &str {
    c["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["system"] == "urn:carebridge:record")
        .and_then(|i| i["value"].as_str())
        .unwrap()
}

fn text(c: &Value) -> &str {
    c["payload"][0]["contentString"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_over_sms_and_telegram_is_filed_as_linked_communications_under_the_patient() {
    let Some(fhir) = FhirServer::start(None) else { return };
    let ann = fhir.add_patient(MRN, "p-0001", "Patient").await;
    let other = fhir.add_patient(MRN, "p-0002", "Other").await;
    let mut s = clinic(&fhir, BEARER, tempfile::tempdir().unwrap()).await;
    let c = reqwest::Client::new();
    // Another patient writes first: their conversation is neither Ann's nor threaded into it.
    assert_eq!(post_message(&c, s.sms_port, &sms("sms-0", "+14165550100", "Hello from Bob", None)).await.0, 202);
    assert_eq!(filed(&fhir, &format!("Patient/{other}"), 1).await.len(), 1);

    // The patient writes by SMS; a clinician answers through the EHR; the patient follows up.
    let asked = "Can I move my appointment to Tuesday?";
    assert_eq!(post_message(&c, s.sms_port, &sms("sms-1", PATIENT_PHONE, asked, None)).await.0, 202);
    assert!(s.ehr.wait_for(2, Duration::from_secs(10)).await);
    let forward = s.ehr.received().into_iter().find(|r| r.body["patient_id"] == "p-0001").unwrap();
    let token = forward.body["conversation"].as_str().unwrap().to_string();
    let answer = "Yes, Tuesday at 10 works.";
    let reply = sms("ehr-1", "dr-lee", answer, Some(&token));
    assert_eq!(post_message(&c, s.ehr_port, &reply).await.0, 202);
    assert!(s.sms.wait_for(1, Duration::from_secs(10)).await, "the answer reaches the patient's phone");
    filed(&fhir, &format!("Patient/{ann}"), 2).await; // the follow-up answers the filed reply
    let thanks = sms("sms-2", PATIENT_PHONE, "Thanks!", Some(&token));
    assert_eq!(post_message(&c, s.sms_port, &thanks).await.0, 202);
    // And writes again on Telegram: a conversation of its own.
    s.fake.patient_text(PATIENT_TG, "Ann", "Also, is the lab open on Saturday?");

    let all = filed(&fhir, &format!("Patient/{ann}"), 4).await;
    assert_eq!(all.len(), 4, "{all:?}");
    let by_text = |t: &str| all.iter().find(|c| text(c) == t).unwrap_or_else(|| panic!("{t} filed: {all:?}"));
    let (first, reply, follow_up, tg) =
        (by_text(asked), by_text(answer), by_text("Thanks!"), by_text("Also, is the lab open on Saturday?"));
    for c in [first, reply, follow_up, tg] {
        assert_eq!(c["status"], "completed");
        assert_eq!(c["subject"]["reference"], format!("Patient/{ann}"), "resolved by MRN, not by name");
        assert_eq!(c["subject"]["identifier"], json!({ "system": MRN, "value": "p-0001" }));
    }
    // One conversation (partOf, by the hash of its token); Telegram's is another.
    let conversation = &first["partOf"][0]["identifier"];
    assert_eq!(conversation["system"], "urn:carebridge:conversation");
    assert_eq!(&reply["partOf"][0]["identifier"], conversation);
    assert_eq!(&follow_up["partOf"][0]["identifier"], conversation);
    assert_ne!(&tg["partOf"][0]["identifier"], conversation);
    assert!(!first.to_string().contains(&token), "the token is a capability and never leaves");
    // Threading: the reply answers the patient's message, the follow-up answers the reply, as
    // references to the server's own resources.
    let id = |c: &Value| format!("Communication/{}", c["id"].as_str().unwrap());
    assert_eq!(reply["inResponseTo"][0]["reference"], id(first));
    assert_eq!(reply["inResponseTo"][0]["identifier"]["value"], record_id(first));
    assert_eq!(follow_up["inResponseTo"][0]["reference"], id(reply));
    assert!(first.get("inResponseTo").is_none() && tg.get("inResponseTo").is_none());
    // Who wrote, who read, by what medium.
    assert_eq!(
        reply["sender"],
        json!({ "type": "Practitioner", "identifier": { "system": "urn:carebridge:staff", "value": "s-lee" } })
    );
    assert_eq!(reply["recipient"][0]["reference"], format!("Patient/{ann}"));
    assert_eq!(first["sender"]["reference"], format!("Patient/{ann}"));
    assert_eq!(first["medium"][0]["text"], "SMS (via webhook)");
    assert_eq!(tg["medium"][0]["text"], "Telegram");
    let stats = fhir.stats().await;
    assert_eq!(stats["creates"], json!({ "created": 5, "existing": 0, "refused": 0 }), "every resource valid");

    // carebridge's own record says what happened to each filing.
    assert!(s.d.terminate());
    let export = s.d.export();
    let filings: Vec<&Value> = export
        .iter()
        .filter(|l| l["type"] == "record")
        .flat_map(|l| l["events"].as_array().unwrap())
        .filter(|e| e["event"] == "attempt" && e["reason"] == "created")
        .collect();
    assert_eq!(filings.len(), 5, "{export:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_servers_create_and_the_bookkeeping_files_no_second_copy() {
    let Some(fhir) = FhirServer::start(None) else { return };
    let ann = fhir.add_patient(MRN, "p-0001", "Patient").await;
    let mut s = clinic(&fhir, BEARER, tempfile::tempdir().unwrap()).await;
    let c = reqwest::Client::new();
    // The server stores the next Communication and never answers: carebridge is killed while it
    // waits, so the create happened and nothing of it is in carebridge's books.
    fhir.control("stall-next-create", None).await;
    assert_eq!(post_message(&c, s.sms_port, &sms("sms-1", PATIENT_PHONE, "Please call me back.", None)).await.0, 202);
    fhir.wait_stats("the stalled create", |st| st["creates"]["created"] == 1).await;
    s.d.kill9();
    s.d.spawn();
    // After the restart the delivery goes again, with the same carebridge identifier.
    fhir.wait_stats("the resend", |st| st["creates"]["existing"] == 1).await;
    let all = filed(&fhir, &format!("Patient/{ann}"), 1).await;
    assert_eq!(all.len(), 1, "one copy: {all:?}");
    let same = fhir.search(&format!("Communication?identifier=urn:carebridge:record|{}", record_id(&all[0]))).await;
    assert_eq!(same.len(), 1);
    assert!(s.d.terminate());
    let export = s.d.export();
    let record = export.iter().find(|l| l["type"] == "record").unwrap();
    let outcomes: Vec<&Value> =
        record["events"].as_array().unwrap().iter().filter(|e| e["event"] == "attempt").map(|e| &e["reason"]).collect();
    assert!(outcomes.contains(&&json!("already there")), "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_the_server_does_not_know_waits_in_the_review_queue_and_is_filed_once_approved() {
    let Some(fhir) = FhirServer::start(None) else { return };
    let mut s = clinic(&fhir, BEARER, tempfile::tempdir().unwrap()).await;
    let c = reqwest::Client::new();
    assert_eq!(post_message(&c, s.sms_port, &sms("sms-1", "+14165550100", "Is my referral in?", None)).await.0, 202);
    assert!(s.ehr.wait_for(1, Duration::from_secs(10)).await);
    assert!(s.d.wait_log("held for review", 0, Duration::from_secs(20)), "{:?}", s.d.logs());
    // Not an error loop: the outbox leaves it alone (the retry delay here is 50 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let searches = s.d.logs().iter().filter(|l| l.contains("held for review")).count();
    assert_eq!(searches, 1, "asked the server once: {:?}", s.d.logs());
    assert_eq!(fhir.stats().await["creates"]["created"], 0, "nothing filed under a guessed patient");
    assert!(s.d.terminate());

    // The review queue shows it, by the rule that held it.
    let (ok, out, err) = s.d.cli(&["review", "list"]);
    assert!(ok, "{err}");
    let held: Value = serde_json::from_str(&out).unwrap();
    let held = held.as_array().unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["account"], "fhir.emr");
    assert_eq!(held[0]["rules"], json!(["fhir.unknown_patient"]));
    let export = s.d.export();
    let attempt = export
        .iter()
        .filter(|l| l["type"] == "record")
        .flat_map(|l| l["events"].as_array().unwrap())
        .find(|e| e["event"] == "attempt" && e["outcome"] == "held")
        .expect("the attempt is recorded");
    let reason = attempt["reason"].as_str().unwrap();
    assert!(reason.contains("unknown patient"), "{reason}");
    assert!(!reason.contains("p-0002") && !reason.contains("555"), "no identifier in the reason: {reason}");

    // The EMR's administrator registers the patient; a clinician approves; it is filed.
    let bob = fhir.add_patient(MRN, "p-0002", "Other").await;
    let delivery = held[0]["delivery"].as_str().unwrap().to_string();
    let (ok, _, err) = s.d.cli(&["review", "approve", &delivery, "--by", "s-lee"]);
    assert!(ok, "{err}");
    s.d.spawn();
    let all = filed(&fhir, &format!("Patient/{bob}"), 1).await;
    assert_eq!(text(&all[0]), "Is my referral in?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_recorded_by_its_operation_outcome_codes_only() {
    let Some(fhir) = FhirServer::start(None) else { return };
    fhir.add_patient(MRN, "p-0001", "Patient").await;
    let diagnostics = "Chart of Ann Patient (MRN p-0001) is locked";
    fhir.control(
        "refuse-communications",
        Some(json!({ "resourceType": "OperationOutcome", "issue": [
            { "severity": "error", "code": "business-rule", "diagnostics": diagnostics, "details": { "text": diagnostics } }
        ]})),
    )
    .await;
    let mut s = clinic(&fhir, BEARER, tempfile::tempdir().unwrap()).await;
    let c = reqwest::Client::new();
    assert_eq!(post_message(&c, s.sms_port, &sms("sms-1", PATIENT_PHONE, "Refill please.", None)).await.0, 202);
    assert!(s.d.wait_log("dead-lettered", 0, Duration::from_secs(20)), "{:?}", s.d.logs());
    assert!(s.d.terminate());
    let (ok, out, _) = s.d.cli(&["outbox", "list"]);
    assert!(ok);
    let dead: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dead[0]["reason"], "fhir create: HTTP 422 (OperationOutcome: error:business-rule)");
    let (ok, all, _) = s.d.cli(&["export"]);
    assert!(ok);
    assert!(!all.contains("is locked"), "the server's free text stays out of the record");
    assert!(s.d.logs().iter().all(|l| !l.contains("is locked") && !l.contains("Refill")));
}

fn smart_table(key: &Path, algorithm: &str, fhir: &FhirServer) -> String {
    format!(
        "[fhir.emr.smart]\ntoken_url = \"{}/auth/token\"\nclient_id = \"carebridge-test\"\nprivate_key_file = \"{}\"\nalgorithm = \"{algorithm}\"\nkey_id = \"k1\"\n",
        fhir.base,
        key.display()
    )
}

/// The FHIR test server is installed (or `FhirServer::start` says why not, or fails when it is
/// required).
fn server_installed() -> bool {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir-server/node_modules").is_dir();
    if !installed {
        let _ = FhirServer::start(None);
    }
    installed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_rs384_assertions_are_taken_too() {
    if !server_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = write_client_keys(dir.path(), "RS384");
    let smart = Smart { client_id: "carebridge-test".into(), public_key: public, token_ttl_secs: 300 };
    let Some(fhir) = FhirServer::start(Some(&smart)) else { return };
    let ann = format!("Patient/{}", fhir.add_patient(MRN, "p-0001", "Patient").await);
    let auth = smart_table(&private, "RS384", &fhir);
    let s = clinic(&fhir, &auth, dir).await;
    let c = reqwest::Client::new();
    assert_eq!(post_message(&c, s.sms_port, &sms("sms-1", PATIENT_PHONE, "hello", None)).await.0, 202);
    filed(&fhir, &ann, 1).await;
    assert_eq!(fhir.stats().await["tokens_issued"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_tokens_are_cached_then_renewed_when_they_expire_or_are_revoked() {
    if !server_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = write_client_keys(dir.path(), "ES384");
    let smart = Smart { client_id: "carebridge-test".into(), public_key: public, token_ttl_secs: 3 };
    let Some(fhir) = FhirServer::start(Some(&smart)) else { return };
    let ann = format!("Patient/{}", fhir.add_patient(MRN, "p-0001", "Patient").await);
    let auth = smart_table(&private, "ES384", &fhir);
    let s = clinic(&fhir, &auth, dir).await;
    let c = reqwest::Client::new();
    let send = |id: &'static str| sms(id, PATIENT_PHONE, id, None);

    // Two messages within the token's life: one token.
    assert_eq!(post_message(&c, s.sms_port, &send("one")).await.0, 202);
    filed(&fhir, &ann, 1).await;
    assert_eq!(post_message(&c, s.sms_port, &send("two")).await.0, 202);
    filed(&fhir, &ann, 2).await;
    assert_eq!(fhir.stats().await["tokens_issued"], 1, "the token is cached");

    // Past its expiry: a new one is asked for before it is used, so the server refuses nothing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(post_message(&c, s.sms_port, &send("three")).await.0, 202);
    filed(&fhir, &ann, 3).await;
    let st = fhir.stats().await;
    assert_eq!((st["tokens_issued"].as_u64(), st["unauthorized"].as_u64()), (Some(2), Some(0)), "{st}");

    // Revoked by the server: the 401 drops it, a new one is fetched, the message is filed.
    fhir.control("revoke-tokens", None).await;
    assert_eq!(post_message(&c, s.sms_port, &send("four")).await.0, 202);
    filed(&fhir, &ann, 4).await;
    let st = fhir.stats().await;
    assert_eq!(st["tokens_issued"], 3, "{st}");
    assert!(st["unauthorized"].as_u64().unwrap() >= 1, "{st}");
    assert!(s.d.logs().iter().all(|l| !l.contains("eyJ")), "no assertion or token in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reads_the_servers_metadata_with_the_accounts_credentials() {
    let Some(fhir) = FhirServer::start(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let config = dir.path().join("carebridge.toml");
    let write = |token: &str| {
        std::fs::write(dir.path().join("emr.token"), token).unwrap();
        let toml = format!(
            "[daemon]\ndata_dir = \"{data}\"\n[webhook.sms]\nlisten = \"127.0.0.1:{port}\"\nsecret_file = \"secret\"\nfrom_kind = \"phone\"\n\
             [fhir.emr]\nbase_url = \"{base}\"\npatient_identifier_system = \"{MRN}\"\n{BEARER}\
             [[route]]\nname = \"r\"\nfrom = [\"webhook.sms\"]\nto = [\"fhir.emr\"]\n",
            data = dir.path().join("data").display(),
            port = free_port(),
            base = fhir.base,
        );
        std::fs::write(&config, toml).unwrap();
    };
    let check = || {
        let out = std::process::Command::new(support::daemon::bin()).arg("check-config").arg(&config).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    write(ADMIN_TOKEN);
    let (ok, _, err) = check();
    assert!(ok, "{err}");
    write("not-the-token");
    let (ok, out, err) = check();
    assert!(!ok, "{out}");
    assert!(err.contains("fhir.emr") && err.contains("401"), "{err}");
    assert!(!err.contains("not-the-token"), "the token is never printed: {err}");
    assert_eq!(fhir.stats().await["creates"]["created"], 0, "a check files nothing");
}

/// Sends `raw` through Postfix as any outside mail client would (plain SMTP on loopback).
async fn smtp_send(env: &support::mail_env::MailEnv, from: &str, to: &str, raw: &str) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect((env.host.as_str(), env.smtp_port)).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            assert!(!line.is_empty(), "SMTP server closed the connection");
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }
    assert!(reply(&mut r).await.starts_with("220"));
    let data: String = raw.lines().map(|l| format!("{}{l}\r\n", if l.starts_with('.') { "." } else { "" })).collect();
    let steps = [
        ("EHLO e2e.test".to_string(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_string(), "354"),
        (format!("{data}."), "250"),
        ("QUIT".to_string(), "221"),
    ];
    for (cmd, want) in steps {
        w.write_all(format!("{cmd}\r\n").as_bytes()).await.unwrap();
        let got = reply(&mut r).await;
        assert!(got.starts_with(want), "{cmd} → {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_conversation_is_filed_with_its_subject_and_message_id() {
    let Some(env) = support::mail_env::mail_env() else { return };
    let Some(fhir) = FhirServer::start(None) else { return };
    let ann = fhir.add_patient(MRN, "p-0001", "Patient").await;
    let dir = tempfile::tempdir().unwrap();
    // Mailboxes of the test servers' that no other test reads (all the end-to-end tests run in
    // one binary, so at the same time as e2e_email's).
    let clinic_box = "box9@clinic.test";
    std::fs::write(dir.path().join("box.pass"), format!("{}\n", env.users[clinic_box])).unwrap();
    let email = format!(
        r#"
[email.clinic]
address = "{clinic_box}"
forward_to = "box10@clinic.test"
[email.clinic.imap]
host = "{host}"
port = {imaps}
tls = "implicit"
tls_name = "{tls_name}"
ca_file = "{ca}"
username = "{clinic_box}"
password_file = "box.pass"
reconnect_max_secs = 2
[email.clinic.smtp]
host = "{host}"
port = {smtp}
tls = "starttls"
tls_name = "{tls_name}"
ca_file = "{ca}"
username = "{clinic_box}"
password_file = "box.pass"
"#,
        host = env.host,
        imaps = env.imaps_port,
        smtp = env.smtp_port,
        tls_name = env.tls_name,
        ca = env.ca.display(),
    );
    let s = clinic_with(&fhir, BEARER, dir, &email, &["email.clinic"], "").await;
    assert!(s.d.wait_log("IMAP connected", 0, Duration::from_secs(60)), "{:?}", s.d.logs());

    let message_id = format!("{}@patients.test", support::mail_env::tag("ann"));
    let raw = format!(
        "From: Ann Patient <ann@patients.test>\r\nTo: {clinic_box}\r\nSubject: Lab results\r\nMessage-ID: <{message_id}>\r\n\
         Date: Mon, 3 Feb 2025 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Are my lab results back?\r\n"
    );
    smtp_send(&env, "ann@patients.test", clinic_box, &raw).await;
    assert!(s.ehr.wait_for(1, Duration::from_secs(60)).await, "{:?}", s.d.logs());
    let token = s.ehr.received()[0].body["conversation"].as_str().unwrap().to_string();
    // The clinician answers through the EHR; the answer goes back to Ann by email, and is filed.
    let reply = sms("ehr-1", "dr-lee", "Yes, all normal.", Some(&token));
    assert_eq!(post_message(&reqwest::Client::new(), s.ehr_port, &reply).await.0, 202);

    let all = filed(&fhir, &format!("Patient/{ann}"), 2).await;
    let asked = all.iter().find(|c| text(c) == "Are my lab results back?").expect("the email is filed");
    let answer = all.iter().find(|c| text(c) == "Yes, all normal.").expect("the answer is filed");
    assert_eq!(asked["medium"][0]["coding"][0]["code"], "EMAILWRIT");
    assert_eq!(asked["topic"]["text"], "Lab results");
    assert!(
        asked["identifier"].as_array().unwrap().iter().any(|i| i["system"] == "urn:carebridge:native:email"
            && i["value"].as_str().is_some_and(|v| v.contains(&message_id))),
        "{asked}"
    );
    assert_eq!(answer["inResponseTo"][0]["reference"], format!("Communication/{}", asked["id"].as_str().unwrap()));
    assert_eq!(answer["partOf"][0]["identifier"], asked["partOf"][0]["identifier"]);
    assert_eq!(answer["recipient"][0]["reference"], format!("Patient/{ann}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_the_secure_account_it_files_the_answer_that_may_not_go_by_sms() {
    let Some(fhir) = FhirServer::start(None) else { return };
    let ann = fhir.add_patient(MRN, "p-0001", "Patient").await;
    let s = clinic_with(&fhir, BEARER, tempfile::tempdir().unwrap(), "", &[], "secure_account = \"fhir.emr\"").await;
    let c = reqwest::Client::new();
    assert_eq!(post_message(&c, s.sms_port, &sms("sms-1", PATIENT_PHONE, "Any news?", None)).await.0, 202);
    assert!(s.ehr.wait_for(1, Duration::from_secs(10)).await);
    let token = s.ehr.received()[0].body["conversation"].as_str().unwrap().to_string();
    let clinical = "Your HbA1c is 7.9%; increase metformin to 1000 mg twice daily.";
    assert_eq!(post_message(&c, s.ehr_port, &sms("ehr-1", "dr-lee", clinical, Some(&token))).await.0, 202);

    // The message, the answer, and the notice carebridge sent the patient about it.
    let all = filed(&fhir, &format!("Patient/{ann}"), 3).await;
    let answer = all.iter().find(|c| text(c) == clinical).expect("the answer is filed in the EMR");
    assert_eq!(answer["recipient"][0]["reference"], format!("Patient/{ann}"));
    let notice =
        all.iter().find(|c| c["identifier"][0]["system"] == "urn:carebridge:delivery").expect("the notice is filed");
    assert_eq!(notice["partOf"][0]["reference"], format!("Communication/{}", answer["id"].as_str().unwrap()));
    assert_eq!(notice["sender"]["identifier"]["value"], "webhook.sms");
    assert!(!text(notice).contains("metformin"), "a notice is PHI-free");
    // The patient's phone gets the policy's notice, not the clinical text.
    assert!(s.sms.wait_for(1, Duration::from_secs(10)).await);
    assert!(s.sms.received().iter().all(|m| !m.body["text"].as_str().unwrap_or_default().contains("metformin")));
    // Rerouted there and on the route: one delivery, one copy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fhir.stats().await["creates"], json!({ "created": 3, "existing": 0, "refused": 0 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_clinics_ca_file_is_trusted_and_nothing_else() {
    if !server_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls = write_tls(dir.path());
    let Some(fhir) = FhirServer::start_with(None, Some(&tls)) else { return };
    assert!(fhir.base.starts_with("https://"));
    let ann = format!("Patient/{}", fhir.add_patient(MRN, "p-0001", "Patient").await);
    let auth = format!("ca_file = \"{}\"\n{BEARER}", tls.ca.display());
    let s = clinic(&fhir, &auth, dir).await;
    assert_eq!(
        post_message(&reqwest::Client::new(), s.sms_port, &sms("sms-1", PATIENT_PHONE, "hi", None)).await.0,
        202
    );
    assert_eq!(filed(&fhir, &ann, 1).await.len(), 1, "filed over TLS with the clinic's CA");

    // Without the CA file the certificate is not trusted: check-config says so, naming the account.
    let config =
        std::fs::read_to_string(&s.d.config).unwrap().replace(&format!("ca_file = \"{}\"\n", tls.ca.display()), "");
    let plain = s.d.config.with_file_name("no-ca.toml");
    std::fs::write(&plain, config).unwrap();
    let out = std::process::Command::new(support::daemon::bin()).arg("check-config").arg(&plain).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("fhir.emr") && err.contains("certificate"), "{err}");
}

/// Issue 19's invariant, every notice in the patient's file: a notice queued after its message
/// was filed (here the "your reply was not sent" a rejection sends the clinician) is filed on its
/// own, `partOf` the server's copy of the message, queued with the verdict (so it survives a
/// restart in between), and once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_sent_after_its_message_was_filed_is_filed_too_once() {
    let Some(fhir) = FhirServer::start(None) else { return };
    let ann = fhir.add_patient(MRN, "p-0001", "Patient").await;
    let mut s = clinic_with(&fhir, BEARER, tempfile::tempdir().unwrap(), "", &[], "over_ceiling = \"hold\"").await;
    let c = reqwest::Client::new();
    assert_eq!(post_message(&c, s.sms_port, &sms("sms-1", PATIENT_PHONE, "Any news?", None)).await.0, 202);
    assert!(s.ehr.wait_for(1, Duration::from_secs(10)).await);
    let token = s.ehr.received()[0].body["conversation"].as_str().unwrap().to_string();
    // A clinical answer may not go by SMS: held for review there, filed in the EMR meanwhile.
    let clinical = "Your HbA1c is 7.9%; increase metformin to 1000 mg twice daily.";
    assert_eq!(post_message(&c, s.ehr_port, &sms("ehr-1", "dr-lee", clinical, Some(&token))).await.0, 202);
    let all = filed(&fhir, &format!("Patient/{ann}"), 2).await;
    let answer = all.iter().find(|c| text(c) == clinical).expect("the answer is filed").clone();
    assert!(s.d.wait_log("held=1", 0, Duration::from_secs(20)), "{:?}", s.d.logs());

    // The officer rejects it while the daemon is down: the notice and its filing are queued
    // by the verdict's transaction, and go once it is back.
    assert!(s.d.terminate());
    let (ok, out, err) = s.d.cli(&["review", "list"]);
    assert!(ok, "{err}");
    let held: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(held.as_array().map(Vec::len), Some(1), "{held}");
    assert_eq!(held[0]["account"], "webhook.sms");
    let delivery = held[0]["delivery"].as_str().unwrap().to_string();
    let (ok, _, err) = s.d.cli(&["review", "reject", &delivery, "--by", "s-lee"]);
    assert!(ok, "{err}");
    s.d.spawn();
    assert!(s.ehr.wait_for(2, Duration::from_secs(20)).await, "the clinician is told the reply was not sent");

    let all = filed(&fhir, &format!("Patient/{ann}"), 3).await;
    let notices: Vec<&Value> =
        all.iter().filter(|c| c["identifier"][0]["system"] == "urn:carebridge:delivery").collect();
    assert_eq!(notices.len(), 1, "{all:?}");
    let notice = notices[0];
    assert!(text(notice).contains("not sent"), "{notice}");
    assert!(!text(notice).contains("metformin"), "a notice is PHI-free");
    assert_eq!(notice["partOf"][0]["reference"], format!("Communication/{}", answer["id"].as_str().unwrap()));
    assert_eq!(notice["partOf"][0]["identifier"]["value"], record_id(&answer));
    assert_eq!(notice["subject"]["reference"], format!("Patient/{ann}"));
    // As its own delivery stood when it was filed (sent by the EHR's worker, or not yet).
    assert!(["in-progress", "completed"].contains(&notice["status"].as_str().unwrap()), "{notice}");

    // Once: another restart files nothing again.
    assert!(s.d.terminate());
    s.d.spawn();
    let up = wait_http(&format!("http://127.0.0.1:{}/healthz", s.sms_port), Duration::from_secs(60)).await;
    assert!(up, "{:?}", s.d.logs());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fhir.stats().await["creates"], json!({ "created": 3, "existing": 0, "refused": 0 }));
    let key = notice["identifier"][0]["value"].as_str().unwrap();
    let same = fhir.search(&format!("Communication?identifier=urn:carebridge:delivery|{key}")).await;
    assert_eq!(same.len(), 1);

    // carebridge's own record: the filing's attempt, and no second notice (a filing is a copy).
    assert!(s.d.terminate());
    let export = s.d.export();
    let events: Vec<&Value> =
        export.iter().filter(|l| l["type"] == "record").flat_map(|l| l["events"].as_array().unwrap()).collect();
    let not_sent = events.iter().filter(|e| e["event"] == "notice" && e["text"].as_str().unwrap().contains("not sent"));
    assert_eq!(not_sent.count(), 1, "{events:?}");
    let created = events.iter().filter(|e| e["event"] == "attempt" && e["reason"] == "created").count();
    assert_eq!(created, 3, "the question, the answer, the notice: {events:?}");
}

/// A message from a sender nobody knows has no patient to be filed under (a dead letter of the
/// `fhir` account); once an administrator attaches it to a patient (`records assign`), the same
/// transaction puts that filing back in the outbox and it is filed under them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_assigned_to_a_patient_later_is_filed_under_them_then() {
    let Some(fhir) = FhirServer::start(None) else { return };
    let bob = fhir.add_patient(MRN, "p-0002", "Other").await;
    let mut s = clinic(&fhir, BEARER, tempfile::tempdir().unwrap()).await;
    let c = reqwest::Client::new();
    let words = "Bob here, on my new phone: is my referral in?";
    assert_eq!(post_message(&c, s.sms_port, &sms("sms-1", "+14165550177", words, None)).await.0, 202);
    assert!(s.d.wait_log("dead-lettered", 0, Duration::from_secs(20)), "{:?}", s.d.logs());
    assert_eq!(fhir.stats().await["creates"]["created"], 0, "nothing filed under a guessed patient");
    assert!(s.d.terminate());

    let (ok, out, err) = s.d.cli(&["records", "--actor", "triage-nurse", "unassigned"]);
    assert!(ok, "{err}");
    let waiting: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(waiting.len(), 1, "{out}");
    let id = waiting[0]["record"].as_str().unwrap().to_string();
    let (ok, out, err) = s.d.cli(&["records", "--actor", "triage-nurse", "assign", &id, "--patient", "p-0002"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"refiled\": 1") || out.contains("\"refiled\":1"), "{out}");
    s.d.spawn();

    let all = filed(&fhir, &format!("Patient/{bob}"), 1).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(text(&all[0]), words);
    assert_eq!(record_id(&all[0]), id);
    assert_eq!(all[0]["subject"]["identifier"], json!({ "system": MRN, "value": "p-0002" }));
    // The sender stays unverified: assignment is triage, not identity.
    assert_eq!(all[0]["sender"]["display"], "Unverified sender");
    assert!(s.d.terminate());
    let export = s.d.export();
    let events: Vec<&Value> =
        export.iter().filter(|l| l["type"] == "record").flat_map(|l| l["events"].as_array().unwrap()).collect();
    assert!(events.iter().any(|e| e["event"] == "requeued" && e["by"] == "triage-nurse"), "{events:?}");
    assert!(events.iter().any(|e| e["event"] == "attempt" && e["reason"] == "created"), "{events:?}");
    let (ok, out, _) = s.d.cli(&["outbox", "list"]);
    assert!(ok && out.trim() == "[]", "no dead letter left: {out}");
}

/// The clinic says which directory value the EMR knows a patient by (`patient_identifier =
/// "mrn"`): the `Patient` carrying the MRN gets the Communications, not one that happens to
/// carry the directory id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patients_are_found_by_the_mrn_the_directory_gives_when_the_clinic_says_so() {
    let Some(fhir) = FhirServer::start(None) else { return };
    let by_mrn = fhir.add_patient(MRN, "MRN-000017", "Patient").await;
    let decoy = fhir.add_patient(MRN, "p-0001", "Decoy").await;
    let auth = format!("patient_identifier = \"mrn\"\n{BEARER}");
    let s = clinic(&fhir, &auth, tempfile::tempdir().unwrap()).await;
    let c = reqwest::Client::new();
    assert_eq!(post_message(&c, s.sms_port, &sms("sms-1", PATIENT_PHONE, "Is the lab open?", None)).await.0, 202);
    let all = filed(&fhir, &format!("Patient/{by_mrn}"), 1).await;
    assert_eq!(text(&all[0]), "Is the lab open?");
    assert_eq!(all[0]["subject"]["identifier"], json!({ "system": MRN, "value": "MRN-000017" }));
    assert!(fhir.search(&format!("Communication?subject=Patient/{decoy}")).await.is_empty());
    assert!(s.d.logs().iter().all(|l| !l.contains("MRN-000017")), "the MRN is never logged");
}
