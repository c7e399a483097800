//! Telegram end to end: the real daemon binary long-polls a faithful fake Bot API
//! (`carebridge_fakes::bot_api`) over loopback HTTP. A patient links their chat with a code
//! from `carebridge link`, writes, the message is recorded and forwarded to a webhook sink and to
//! the staff group; a clinician's reply in the staff group reaches the patient's chat. Also: a
//! 429 storm delays but does not reorder or lose messages, a daemon killed around getUpdates
//! loses and duplicates nothing, and a patient who blocked the bot gives a clear dead letter.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;
use carebridge_fakes::bot_api as fake_bot_api;

use fake_bot_api::{FakeBotApi, SentMessage};
use std::path::Path;
use std::time::Duration;
use support::daemon::Daemon;
use support::sink::{Mode, Sink};
use support::{SECRET, free_port};

const PATIENT: i64 = 5_550_001;
const STAFF_USER: i64 = 7001;
const STAFF_CHAT: i64 = -1_009_876;

struct Setup {
    d: Daemon,
    fake: FakeBotApi,
    sink: Sink,
    _dir: tempfile::TempDir, // kept alive: the daemon's store and config live in it
}

fn config(dir: &Path, fake: &FakeBotApi, sink: &Sink, admin_port: u16, extra: &str) -> String {
    std::fs::write(dir.join("secret"), SECRET).expect("write secret");
    std::fs::write(dir.join("admin-token"), "admin-token-for-tests").expect("write admin token");
    std::fs::write(dir.join("tg-token"), format!("{}\n", fake.token())).expect("write bot token");
    format!(
        r#"
[daemon]
data_dir = "{data}"
status_interval_secs = 1

[outbox]
retry_initial_ms = 50
retry_max_secs = 1
max_attempts = 30

[admin]
listen = "127.0.0.1:{admin_port}"
token_file = "admin-token"

[webhook.sink]
url = "{sink_url}"
secret_file = "secret"

[telegram.front]
token_file = "tg-token"
api_url = "{api_url}"
poll_timeout_secs = 1
staff_chat_id = {STAFF_CHAT}
min_interval_per_chat_ms = 20

[[route]]
name = "telegram-to-clinic"
from = ["telegram.front"]
to = ["webhook.sink", "telegram.front"]

[[directory.patient]]
id = "p-0001"
addresses = ["email:ann@patients.test"]

[[directory.staff]]
id = "s-lee"
addresses = ["telegram:{STAFF_USER}"]
{extra}
"#,
        data = dir.join("data").display(),
        sink_url = sink.url(),
        api_url = fake.url(),
    )
}

async fn setup() -> Setup {
    setup_with("").await
}

/// [`setup`] with more config appended (`[policy]` tables, say).
async fn setup_with(extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = FakeBotApi::start().await;
    let sink = Sink::start(Mode::Accept).await;
    let d = Daemon::start(dir.path(), &config(dir.path(), &fake, &sink, free_port(), extra));
    let s = Setup { d, fake, sink, _dir: dir };
    s.wait_log("carebridge ready.", 0).await;
    s.fake.wait_until("the daemon to poll getUpdates", |f| !f.calls("getUpdates").is_empty()).await;
    s
}

impl Setup {
    /// Waits (without blocking the runtime the fake runs on) for a daemon log line.
    async fn wait_log(&self, needle: &str, from: usize) {
        for _ in 0..1500 {
            if self.d.logs().iter().skip(from).any(|l| l.contains(needle)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no log line with {needle:?}:\n{}", self.d.logs().join("\n"));
    }

    async fn wait_sink(&self, n: usize) -> Vec<support::sink::Received> {
        assert!(self.sink.wait_for(n, Duration::from_secs(30)).await, "sink got {}", self.sink.received().len());
        self.sink.received()
    }

    /// `carebridge link` → the code, then the patient sends `/start CODE` and gets the notice.
    async fn link_patient(&self) {
        let (ok, code, err) = self.d.cli(&["link", "--patient", "p-0001", "--account", "telegram.front"]);
        assert!(ok, "link failed: {err}");
        let code = code.trim().to_string();
        assert!(!code.is_empty());
        let before = self.fake.sent_to(PATIENT).len();
        self.fake.patient_start(PATIENT, "Ann", &code);
        let notices = self.fake.wait_sent_to(PATIENT, before + 1).await;
        let notice = notices.last().and_then(|m| m.text.clone()).unwrap_or_default();
        assert!(notice.contains("linked"), "{notice}");
    }

    /// Waits for a status line showing an empty outbox: every delivery so far is sent and its
    /// Telegram message ids are recorded, so a staff reply to one of them can be mapped. (A
    /// human needs seconds to answer; a test answers within a millisecond of the send.)
    async fn settle(&self) {
        let from = self.d.log_len();
        self.wait_log("outbox_pending=0 ", from).await;
    }

    /// Waits until the staff chat got a message containing `needle`, and returns it.
    async fn staff_message_with(&self, needle: &str) -> SentMessage {
        let find = |f: &FakeBotApi| {
            f.sent_to(STAFF_CHAT).into_iter().find(|m| m.text.as_deref().is_some_and(|t| t.contains(needle)))
        };
        self.fake.wait_until(&format!("a staff chat message with {needle:?}"), |f| find(f).is_some()).await;
        find(&self.fake).expect("found above")
    }

    fn stop_and_export(&mut self) -> Vec<serde_json::Value> {
        assert!(self.d.terminate(), "clean exit on SIGTERM: {}", self.d.logs().join("\n"));
        self.d.export()
    }
}

impl Drop for Setup {
    /// A failing test shows the daemon's log (PHI-free by design) to explain itself.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.d.logs().join("\n"));
            eprintln!("--- sent by the bot ---\n{:#?}", self.fake.sent());
        }
    }
}

fn records(export: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    export.iter().filter(|l| l["type"] == "record").collect()
}

fn texts(msgs: &[SentMessage]) -> Vec<String> {
    msgs.iter().map(|m| m.text.clone().unwrap_or_default()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_patient_writes_and_a_clinician_answers_from_the_staff_group() {
    let mut s = setup().await;
    s.link_patient().await;

    let asked = s.fake.patient_text(PATIENT, "Ann", "Could I move my appointment to Tuesday?");
    // The `/start CODE` message is recorded and answered but not forwarded: only the question
    // reaches the sink, and no link code travels anywhere.
    let got = s.wait_sink(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = if s.sink.received().len() > got.len() { s.sink.received() } else { got };
    assert_eq!(got.len(), 1, "the link request is not forwarded");
    assert!(got.iter().all(|r| !r.body["text"].as_str().unwrap_or("").contains("start")), "no link code forwarded");
    let fwd = got
        .iter()
        .find(|r| r.body["text"] == "Could I move my appointment to Tuesday?")
        .expect("forwarded to the sink");
    assert_eq!(fwd.body["patient_id"], "p-0001");
    assert_eq!(fwd.body["kind"], "forward");

    // The staff group gets the forward with a PHI-free header naming the patient id.
    let forward = s.staff_message_with("Could I move").await;
    let text = forward.text.clone().unwrap_or_default();
    assert!(text.contains("p-0001") && text.contains("Could I move my appointment"), "{text}");
    assert!(!text.contains("Ann"), "no names in the staff chat header: {text}");

    // A clinician replies to the forwarded message in the staff group.
    s.settle().await;
    let before = s.fake.sent_to(PATIENT).len();
    s.fake.group_text(
        STAFF_CHAT,
        STAFF_USER,
        "Dr Lee",
        "Your appointment is confirmed for Tuesday at 10.",
        Some(forward.message_id),
    );
    let to_patient = s.fake.wait_sent_to(PATIENT, before + 1).await;
    let answer = to_patient.last().expect("a message to the patient");
    assert_eq!(answer.text.as_deref(), Some("Your appointment is confirmed for Tuesday at 10."));
    assert_eq!(answer.reply_to, Some(asked.message_id), "threaded under the patient's message");

    let export = s.stop_and_export();
    let recs = records(&export);
    let from_patient: Vec<_> = recs.iter().filter(|r| r["record"]["patient_id"] == "p-0001").collect();
    assert!(from_patient.len() >= 2, "link and message recorded: {recs:?}");
    // Issue 15, item 8: the link confirmation is correspondence of the patient's file.
    let link = from_patient
        .iter()
        .find(|r| r["record"]["notes"].as_array().unwrap().iter().any(|n| n == "link_redeemed"))
        .expect("the link request's record");
    let told: Vec<&serde_json::Value> =
        link["events"].as_array().unwrap().iter().filter(|e| e["event"] == "notice").collect();
    assert_eq!(told.len(), 1, "{link}");
    assert!(told[0]["text"].as_str().unwrap().contains("linked"), "{told:?}");
    assert_eq!(told[0]["to"]["value"], PATIENT.to_string());
    assert_eq!(told[0]["account"], "telegram.front");
    let logs = s.d.logs().join("\n");
    for phi in ["Could I move", "Ann", "Dr Lee", "confirmed for Tuesday", &PATIENT.to_string(), "TEST-TOKEN"] {
        assert!(!logs.contains(phi), "daemon log leaked {phi:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_delays_but_loses_nothing_and_keeps_each_chat_in_order() {
    let mut s = setup().await;
    s.link_patient().await;
    s.fake.patient_text(PATIENT, "Ann", "Can we talk about my booking?");
    let forward = s.staff_message_with("Can we talk").await;

    // Clinician replies during a storm: the patient's chat gets every one, once, in order
    // (the outbox orders deliveries per recipient).
    s.settle().await;
    let before = s.fake.sent_to(PATIENT).len();
    s.fake.rate_limit_sends(5, 1);
    let n = 5;
    for i in 0..n {
        s.fake.group_text(
            STAFF_CHAT,
            STAFF_USER,
            "Dr Lee",
            &format!("Reply {i} about your booking."),
            Some(forward.message_id),
        );
    }
    let to_patient = s.fake.wait_sent_to(PATIENT, before + n).await;
    let want: Vec<String> = (0..n).map(|i| format!("Reply {i} about your booking.")).collect();
    assert_eq!(texts(&to_patient[before..]), want, "every reply once, in order");

    // Patient notes during another storm: every forward reaches the staff chat exactly once.
    // (Forwards to the staff chat are ordered per conversation by the outbox, not per chat.)
    let before = s.fake.sent_to(STAFF_CHAT).len();
    s.fake.rate_limit_sends(4, 1);
    for i in 0..n {
        s.fake.patient_text(PATIENT, "Ann", &format!("note {i} about the booking"));
    }
    let staff = s.fake.wait_sent_to(STAFF_CHAT, before + n).await;
    let mut notes: Vec<String> =
        texts(&staff[before..]).iter().map(|t| t.lines().last().unwrap_or("").to_string()).collect();
    notes.sort();
    let want: Vec<String> = (0..n).map(|i| format!("note {i} about the booking")).collect();
    assert_eq!(notes, want, "every forward exactly once");
    let export = s.stop_and_export();
    assert!(export.iter().all(|l| l["type"] != "dead_letter"), "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_around_get_updates_loses_nothing_and_records_once() {
    let mut s = setup().await;

    // 1. Killed right after getUpdates handed the update out (most likely before recording it).
    let first = s.fake.patient_text(PATIENT, "Ann", "first message");
    s.fake.wait_until("the update to be handed out", |f| f.delivery_count(first.update_id) >= 1).await;
    s.d.kill9();
    s.d.spawn();
    s.fake.wait_until("the first update to be confirmed", |f| !f.pending_update_ids().contains(&first.update_id)).await;

    // 2. Killed after recording, while the poll that would confirm it is lost on the way.
    s.fake.stall_after_next_batch();
    let second = s.fake.patient_text(PATIENT, "Ann", "second message");
    let from = s.d.log_len();
    s.wait_log("Update recorded.", from).await;
    s.fake
        .wait_until("the confirming poll", |f| {
            f.calls("getUpdates").iter().any(|c| c.params["offset"] == second.update_id + 1)
        })
        .await;
    s.d.kill9();
    assert!(s.fake.pending_update_ids().contains(&second.update_id), "not confirmed before the kill");
    s.fake.stall_polls(false);
    s.d.spawn();
    s.fake.wait_until("the second update to be confirmed", |f| f.pending_update_ids().is_empty()).await;
    assert!(s.fake.delivery_count(second.update_id) >= 2, "Telegram redelivered it");

    let got = s.wait_sink(2).await;
    let export = s.stop_and_export();
    let recs = records(&export);
    for u in [first.update_id, second.update_id] {
        let prefix = format!("u{u}-");
        let n = recs
            .iter()
            .filter(|r| r["record"]["source"]["native_id"].as_str().is_some_and(|id| id.starts_with(&prefix)))
            .count();
        assert_eq!(n, 1, "update {u} recorded exactly once");
    }
    let mut sink_texts: Vec<String> = got.iter().map(|r| r.body["text"].as_str().unwrap_or("").to_string()).collect();
    sink_texts.sort();
    sink_texts.dedup();
    assert_eq!(sink_texts, ["first message", "second message"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_bot_dead_letters_the_reply_with_a_clear_reason() {
    let mut s = setup().await;
    s.link_patient().await;
    s.fake.patient_text(PATIENT, "Ann", "Is the clinic open on Saturday?");
    let forward = s.staff_message_with("Saturday").await;
    s.settle().await;
    s.fake.block_chat(PATIENT);
    let from = s.d.log_len();
    s.fake.group_text(STAFF_CHAT, STAFF_USER, "Dr Lee", "Yes, from 9 to 12.", Some(forward.message_id));
    s.wait_log("dead-lettered", from).await;
    let export = s.stop_and_export();
    let dead: Vec<_> = export.iter().filter(|l| l["type"] == "dead_letter").collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0]["dead_letter"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("blocked by the user"), "{reason}");
    assert!(!reason.contains(&PATIENT.to_string()) && !reason.contains("Saturday"), "{reason}");
}

/// The sink as the clinic's secure EHR and the policy's secure account; the staff group stays
/// insecure, so clinical content posted there is rerouted to the EHR.
const SECURE_SINK: &str = r#"
[policy]
secure_account = "webhook.sink"
over_ceiling = "reroute"
[policy.channels]
"webhook.sink" = "secure"
"#;

/// Issue 15, item 11: the route names the EHR and the staff group; the group's copy of a
/// clinical message is rerouted to the EHR, which got the same message twice under two
/// Idempotency-Keys. One message, one delivery per destination; the group gets a PHI-free notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_rerouted_to_a_destination_already_on_the_route_is_delivered_once() {
    let mut s = setup_with(SECURE_SINK).await;
    s.link_patient().await;
    s.fake.patient_text(PATIENT, "Ann", "Can you renew my prescription for amoxicillin please?");
    let got = s.wait_sink(1).await;
    let notice = s.staff_message_with("secure inbox").await;
    assert!(!notice.text.unwrap_or_default().contains("amoxicillin"), "the staff group gets no PHI");
    s.settle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = if s.sink.received().len() > got.len() { s.sink.received() } else { got };
    let copies: Vec<_> = got.iter().filter(|r| r.body["text"].as_str().unwrap_or("").contains("amoxicillin")).collect();
    assert_eq!(copies.len(), 1, "the EHR gets the message once: {:?}", got.iter().map(|r| &r.body).collect::<Vec<_>>());
    assert!(
        s.fake.sent_to(STAFF_CHAT).iter().all(|m| !m.text.as_deref().unwrap_or("").contains("amoxicillin")),
        "no copy in the staff group"
    );

    let export = s.stop_and_export();
    let rec = records(&export)
        .into_iter()
        .find(|r| r["record"]["finding_kinds"].as_array().is_some_and(|k| !k.is_empty()))
        .expect("the clinical message is recorded");
    let ds = rec["record"]["decisions"].as_array().unwrap();
    let ids: Vec<&serde_json::Value> = ds.iter().map(|d| &d["delivery"]).collect();
    assert_eq!(ds.len(), 2, "{ds:?}");
    assert_eq!(ids[0], ids[1], "both destinations name the one delivery: {ds:?}");
    assert!(ds.iter().any(|d| d["action"] == "reroute") && ds.iter().any(|d| d["action"] == "allow"), "{ds:?}");
}

/// Issue 15, item 12: the link confirmation and the "not linked" reply were bilingual whatever
/// `policy.locale` said; they follow it like every other notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_notices_follow_the_policy_locale() {
    let s = setup_with("[policy]\nlocale = \"fr\"\n").await;
    const STRANGER: i64 = 5_550_777;
    s.fake.patient_text(STRANGER, "Bob", "Bonjour");
    let unlinked = s.fake.wait_sent_to(STRANGER, 1).await;
    let text = unlinked[0].text.clone().unwrap_or_default();
    assert!(text.starts_with("Bonjour.") && text.contains("/start CODE") && !text.contains("Hello"), "{text}");

    let (ok, code, err) = s.d.cli(&["link", "--patient", "p-0001", "--account", "telegram.front"]);
    assert!(ok, "{err}");
    s.fake.patient_start(PATIENT, "Ann", code.trim());
    let linked = s.fake.wait_sent_to(PATIENT, 1).await;
    let text = linked[0].text.clone().unwrap_or_default();
    assert_eq!(text, "Votre conversation est maintenant liée à la clinique.");
}

/// Issue 15, item 9: a message from a chat nobody has linked went to the insecure staff group in
/// clear, phone number and all, and nothing queued it for triage. The group gets a PHI-free
/// notice; the administrator lists the record while the daemon runs and attaches it to the
/// patient's file (audited, chained).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_senders_message_stays_off_the_staff_group_and_waits_for_triage() {
    let mut s = setup().await;
    const STRANGER: i64 = 5_550_999;
    let text = "Hi, this is Ann from my new phone, please call me at 416-555-0143 about my results.";
    s.fake.patient_text(STRANGER, "Ann", text);
    let notice = s.staff_message_with("unverified sender").await;
    s.settle().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for m in s.fake.sent_to(STAFF_CHAT) {
        let t = m.text.unwrap_or_default();
        assert!(!t.contains("555-0143") && !t.contains("results") && !t.contains(&STRANGER.to_string()), "{t}");
    }
    assert!(notice.text.unwrap_or_default().contains("records unassigned"));

    // Triage while the daemon runs: through the admin API.
    let (ok, out, err) = s.d.cli(&["records", "--actor", "triage-nurse", "unassigned"]);
    assert!(ok, "{err}");
    let waiting: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(waiting.len(), 1, "{out}");
    assert_eq!(waiting[0]["sender"], "unknown");
    assert!(!out.contains("555-0143"), "the list carries no content");
    let id = waiting[0]["record"].as_str().unwrap().to_string();
    let (ok, _, err) = s.d.cli(&["records", "--actor", "triage-nurse", "assign", &id, "--patient", "p-9999"]);
    assert!(!ok && err.contains("unknown patient"), "a patient not in the directory is refused: {err}");
    let (ok, _, err) = s.d.cli(&["records", "--actor", "triage-nurse", "assign", &id, "--patient", "p-0001"]);
    assert!(ok, "{err}");
    let (ok, _, err) = s.d.cli(&["records", "--actor", "triage-nurse", "assign", &id, "--patient", "p-0001"]);
    assert!(!ok && err.contains("already"), "assigned once: {err}");
    let (ok, out, err) = s.d.cli(&["records", "--actor", "triage-nurse", "unassigned"]);
    assert!(ok && out.trim().is_empty(), "nothing waits any more: {out} {err}");
    let (ok, out, err) = s.d.cli(&["records", "--actor", "triage-nurse", "list", "--patient", "p-0001"]);
    assert!(ok && out.contains(&id), "now in the patient's file: {out} {err}");

    let export = s.stop_and_export();
    let rec = records(&export).into_iter().find(|r| r["record"]["body"] == text).expect("recorded");
    let assigned: Vec<&serde_json::Value> =
        rec["events"].as_array().unwrap().iter().filter(|e| e["event"] == "assigned").collect();
    assert_eq!(assigned.len(), 1, "{rec}");
    assert_eq!((assigned[0]["patient"].as_str(), assigned[0]["by"].as_str()), (Some("p-0001"), Some("triage-nurse")));
    let decisions = rec["record"]["decisions"].as_array().unwrap();
    assert!(
        decisions
            .iter()
            .any(|d| d["account"] == "telegram.front" && d["rules"][0] == "builtin.unknown_sender.insecure_channel"),
        "{decisions:?}"
    );
    let (ok, trail, err) = s.d.cli(&["records", "--actor", "officer", "audit", "--patient", "p-0001"]);
    assert!(ok && trail.contains("records.assign"), "the assignment is audited: {trail} {err}");
    let (ok, _, err) = s.d.cli(&["records", "verify"]);
    assert!(ok, "the chain verifies: {err}");
}
