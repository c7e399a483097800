//! Engine tests, table-driven: every detector's true positives and negatives, classes,
//! ceilings with and without consent, direction, most-restrictive-wins, the seed rule,
//! redaction with multibyte text, custom detectors, validation messages, the explain format,
//! log fields, and a seeded no-panic / no-leak sweep over adversarial strings.
#![allow(clippy::unwrap_used)]

use super::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    policy: PolicyConfig,
}

fn config(toml_text: &str) -> PolicyConfig {
    toml::from_str::<File>(toml_text).unwrap_or_else(|e| panic!("bad test TOML: {e}")).policy
}

fn policy(toml_text: &str) -> Policy {
    Policy::compile(&config(toml_text)).unwrap_or_else(|p| panic!("compile: {p:?}"))
}

fn acct(s: &str) -> AccountId {
    s.parse().unwrap()
}

/// The policy most tests use: a secure EHR webhook as the reroute target and a staff
/// Telegram group that may carry nothing found.
const CLINIC: &str = r#"
[policy]
secure_account = "webhook.ehr"
[policy.channels]
"webhook.ehr" = "secure"
"telegram.staff" = { staff = "none" }
"#;

fn input<'a>(text: &'a str, account: &'a AccountId, direction: Direction, audience: Audience) -> CheckInput<'a> {
    CheckInput {
        text,
        direction,
        account,
        audience,
        consents: &[],
        conversation_class: Class::None,
        has_attachments: false,
    }
}

/// Findings of `text` (inbound on Telegram: detection only) as `kind:span` lines.
fn findings_of(p: &Policy, text: &str) -> String {
    let a = acct("telegram.front_desk");
    let d = p.check(&input(text, &a, Direction::In, Audience::Staff));
    d.findings.iter().map(|f| format!("{}:{}", f.kind, &text[f.start..f.end])).collect::<Vec<_>>().join("\n")
}

fn check(text: &str, expect: &str) {
    let p = Policy::compile(&PolicyConfig::default()).unwrap();
    assert_eq!(findings_of(&p, text), expect.trim(), "text: {text:?}");
}

#[test]
fn detectors_identifiers() {
    let cases: &[(&str, &str)] = &[
        // OHIP: grouped, version code, bare with context; invalid checksum; inside longer runs.
        ("OHIP 1234 567 897", "health_number_on:1234 567 897"),
        ("health card 1234-567-897 AB please", "health_number_on:1234-567-897 AB"),
        ("1234567897 AB", "health_number_on:1234567897 AB"),
        ("my ohip is 1234567897", "health_number_on:1234567897"),
        ("1234567897", ""),
        ("OHIP 1234 567 890", ""),
        ("order 11234567897", ""),
        // Too long for OHIP; it is a North American phone number (1-234-567-8971).
        ("OHIP 1234 567 8971", "phone:1234 567 8971"),
        ("carte santé: 1234567897", "health_number_on:1234567897"),
        // SIN: formatted alone, bare with context, bad checksum, 0-leading.
        ("SIN 123-456-782", "sin:123-456-782"),
        ("123 456 782", "sin:123 456 782"),
        ("my SIN is 123456782", "sin:123456782"),
        ("123456782", ""),
        ("SIN 123-456-789", ""),
        ("SIN 046 454 286", ""),
        ("numéro d'assurance sociale 123 456 782", "sin:123 456 782"),
        // BC PHN: mod 11.
        ("PHN 9698 658 215", "health_number_bc:9698 658 215"),
        ("PHN 9698 648 215", ""),
        // RAMQ: plausible encoded date (month + 50 for women).
        ("carte soleil: TREM 8553 1512", "health_number_qc:TREM 8553 1512"),
        ("RAMQ ABCD 1234 5678", ""),
        // MRN needs a context word.
        ("chart 123456", "mrn:123456"),
        ("order 123456", ""),
        // Date of birth needs a birth word; an appointment date is not one.
        ("DOB: 1984-03-07", "date_of_birth:1984-03-07"),
        ("née le 7 mars 1984", "date_of_birth:7 mars 1984"),
        ("born March 7, 1984", "date_of_birth:March 7, 1984"),
        ("Appointment on 2024-03-07", ""),
        ("DOB 1984-13-07", ""),
        // French negation is not "né le".
        ("Je ne peux pas venir le 12/03/2025", ""),
    ];
    for (text, expect) in cases {
        check(text, expect);
    }
}

#[test]
fn detectors_contact() {
    let cases: &[(&str, &str)] = &[
        ("(416) 555-0199", "phone:(416) 555-0199"),
        ("call 416 555 0199", "phone:416 555 0199"),
        ("+1 416-555-0199", "phone:+1 416-555-0199"),
        // A bare 10-digit run needs a phone word: it is as often an order or reference number.
        ("4165550199", ""),
        ("order REF4165550199", ""),
        ("tel: 4165550199", "phone:4165550199"),
        ("+44 20 7946 0958", "phone:+44 20 7946 0958"),
        ("416-155-0199", ""),
        ("write to ann.b@example.com.", "email:ann.b@example.com"),
        ("ann@@example", ""),
        ("邮箱ann@example.com", "email:ann@example.com"),
        ("K1A 0B1", "postal_code_ca:K1A 0B1"),
        ("m5v2t6", "postal_code_ca:m5v2t6"),
        ("D1A 0B1", ""),
        ("ZIP 90210", "zip_us:90210"),
        ("90210-1234", "zip_us:90210-1234"),
        ("I have 90210 reasons", ""),
        // A Luhn-valid phone number is a phone number, not a health number.
        ("call 4165550197", "phone:4165550197"),
    ];
    for (text, expect) in cases {
        check(text, expect);
    }
}

#[test]
fn detectors_clinical() {
    let cases: &[(&str, &str)] = &[
        ("can I get a refill of my Sertraline", "prescription_request:refill\nmedication:Sertraline"),
        ("50mg twice a day", "dose:50mg"),
        ("0.5 MCG", "dose:0.5 MCG"),
        ("glucose 5.4 mmol/L", "lab_result:glucose\nlab_result:5.4 mmol/L"),
        ("are my blood work results in?", "lab_result:blood work"),
        ("diagnosed with diabetes", "diagnosis:diagnosed\ndiagnosis:diabetes"),
        ("I think I'm pregnant", "sensitive_topic:pregnant"),
        ("RÉSULTATS de la prise de sang", "lab_result:prise de sang"),
        ("ordonnance pour l'hypertension", "prescription_request:ordonnance\ndiagnosis:hypertension"),
        // Both a medication and a sensitive topic: the more sensitive class wins.
        ("methadone", "sensitive_topic:methadone"),
        // Hard negatives.
        ("results of the election", ""),
        ("my lab puppy", ""),
        ("see you at 3pm", ""),
        ("prescriptive grammar", ""),
    ];
    for (text, expect) in cases {
        check(text, expect);
    }
}

#[test]
fn findings_are_byte_offsets_on_char_boundaries() {
    let p = Policy::compile(&PolicyConfig::default()).unwrap();
    // Full-width digits and letters, a zero-width space inside a number, accents, emoji.
    let cases: &[(&str, &str)] = &[
        ("ＯＨＩＰ １２３４ ５６７ ８９７", "health_number_on:１２３４ ５６７ ８９７"),
        ("OHIP 1234\u{200B}567897", "health_number_on:1234\u{200B}567897"),
        ("Zoë 🙂 SIN 123–456–782 🙂", "sin:123–456–782"),
        ("Résultats: prise de sang, Zoë 1234 567 897 ✅", "lab_result:prise de sang\nhealth_number_on:1234 567 897"),
    ];
    for (text, expect) in cases {
        assert_eq!(findings_of(&p, text), *expect, "text: {text:?}");
    }
}

#[test]
fn classes_follow_the_most_sensitive_finding() {
    let p = policy(CLINIC);
    let a = acct("telegram.front_desk");
    let cases: &[(&str, Class)] = &[
        ("hello, can I book for Tuesday?", Class::None),
        ("call me at 416-555-0199", Class::Contact),
        ("OHIP 1234 567 897, call me at 416-555-0199", Class::Identifier),
        ("refill my sertraline, OHIP 1234 567 897", Class::Clinical),
        ("HIV test results, OHIP 1234 567 897", Class::Sensitive),
    ];
    for (text, class) in cases {
        assert_eq!(p.check(&input(text, &a, Direction::In, Audience::Staff)).class, *class, "{text}");
    }
    // The mapping is configurable.
    let p = policy("[policy.builtin.phone]\nclass = \"identifier\"");
    assert_eq!(p.check(&input("416-555-0199", &a, Direction::In, Audience::Staff)).class, Class::Identifier);
}

fn grant(account: &str, purpose: &str) -> ConsentGrant {
    ConsentGrant { account: account.into(), purpose: purpose.into(), source: "test".into(), granted_at: 1 }
}

struct Case {
    account: &'static str,
    audience: Audience,
    consents: Vec<ConsentGrant>,
    conversation: Class,
    attachments: bool,
    text: &'static str,
    action: Action,
    rules: &'static [&'static str],
}

fn out(
    account: &'static str,
    audience: Audience,
    text: &'static str,
    action: Action,
    rules: &'static [&'static str],
) -> Case {
    Case { account, audience, consents: Vec::new(), conversation: Class::None, attachments: false, text, action, rules }
}

fn run(p: &Policy, cases: Vec<Case>) {
    for c in cases {
        let a = acct(c.account);
        let i = CheckInput {
            text: c.text,
            direction: Direction::Out,
            account: &a,
            audience: c.audience,
            consents: &c.consents,
            conversation_class: c.conversation,
            has_attachments: c.attachments,
        };
        let d = p.check(&i);
        assert_eq!(
            (&d.action, d.rules.iter().map(String::as_str).collect::<Vec<_>>()),
            (&c.action, c.rules.to_vec()),
            "{} {:?}: {}",
            c.account,
            c.audience,
            c.text
        );
        assert_eq!(d, p.check(&i), "deterministic");
    }
}

fn to_ehr() -> Action {
    Action::Reroute { to: Some("webhook.ehr".into()) }
}

#[test]
fn ceilings_with_and_without_consent() {
    use Audience::{Patient, Staff};
    let p = policy(CLINIC);
    let with = |mut c: Case, g: Vec<ConsentGrant>| {
        c.consents = g;
        c
    };
    run(
        &p,
        vec![
            // Insecure to a patient: contact details yes, identifiers masked, clinical rerouted.
            out("telegram.front_desk", Patient, "See you Tuesday at 3pm", Action::Allow, &["builtin.allow"]),
            out("telegram.front_desk", Patient, "Call us at 416-555-0100", Action::Allow, &["builtin.allow"]),
            out(
                "telegram.front_desk",
                Patient,
                "Your OHIP 1234 567 897 is on file",
                Action::Redact,
                &["builtin.redact.insecure"],
            ),
            out(
                "telegram.front_desk",
                Patient,
                "Your sertraline is ready",
                to_ehr(),
                &["builtin.ceiling.insecure", "builtin.insecure.clinical"],
            ),
            with(
                out(
                    "telegram.front_desk",
                    Patient,
                    "Your sertraline is ready",
                    to_ehr(),
                    &["builtin.ceiling.insecure", "builtin.insecure.clinical"],
                ),
                vec![grant("telegram.front_desk", "clinical")],
            ),
            // Plain email: clinical only with a consent for a counting purpose, on this account.
            out(
                "email.patients",
                Patient,
                "Your sertraline refill is ready",
                to_ehr(),
                &["builtin.ceiling.email_plain"],
            ),
            with(
                out("email.patients", Patient, "Your sertraline refill is ready", Action::Allow, &["builtin.allow"]),
                vec![grant("email.patients", "clinical")],
            ),
            with(
                out(
                    "email.patients",
                    Patient,
                    "Your sertraline refill is ready",
                    to_ehr(),
                    &["builtin.ceiling.email_plain"],
                ),
                vec![grant("email.patients", "admin")],
            ),
            with(
                out(
                    "email.patients",
                    Patient,
                    "Your sertraline refill is ready",
                    to_ehr(),
                    &["builtin.ceiling.email_plain"],
                ),
                vec![grant("telegram.front_desk", "clinical")],
            ),
            with(
                out("email.patients", Patient, "Your HIV test is negative", to_ehr(), &["builtin.ceiling.email_plain"]),
                vec![grant("email.patients", "clinical")],
            ),
            // Secure: anything.
            out("webhook.ehr", Patient, "Your HIV test is negative", Action::Allow, &["builtin.allow"]),
            // Staff: the clinic's email may carry anything; an insecure staff group is limited.
            out("email.patients", Staff, "HIV test, OHIP 1234 567 897", Action::Allow, &["builtin.allow"]),
            out("telegram.staff", Staff, "call me at 416-555-0199", Action::Redact, &["builtin.redact.insecure"]),
            out("telegram.staff", Staff, "hello", Action::Allow, &["builtin.allow"]),
            out("telegram.front_desk", Staff, "refill my sertraline", to_ehr(), &["builtin.ceiling.insecure"]),
        ],
    );
}

#[test]
fn conversation_and_attachments_raise_the_class() {
    use Audience::Patient;
    let p = policy(CLINIC);
    let mut convo = out(
        "telegram.front_desk",
        Patient,
        "Done! Ready for pickup.",
        to_ehr(),
        &["builtin.conversation.insecure", "builtin.insecure.clinical"],
    );
    convo.conversation = Class::Clinical;
    let mut attach = out("email.patients", Patient, "See attached.", to_ehr(), &["builtin.attachments.email_plain"]);
    attach.attachments = true;
    let mut attach_ok = out("email.patients", Patient, "See attached.", Action::Allow, &["builtin.allow"]);
    attach_ok.attachments = true;
    attach_ok.consents = vec![grant("email.patients", "clinical")];
    let mut contact_convo = out("telegram.front_desk", Patient, "Done!", Action::Allow, &["builtin.allow"]);
    contact_convo.conversation = Class::Contact;
    run(&p, vec![convo, attach, attach_ok, contact_convo]);
}

#[test]
fn most_restrictive_wins_and_names_its_rules() {
    use Audience::Patient;
    let p = policy(&format!(
        "{CLINIC}
[[policy.rule]]
id = \"clinic.no-sin\"
when = {{ kinds = [\"sin\"] }}
action = \"block\"
[[policy.rule]]
id = \"clinic.hold-telegram-ids\"
when = {{ trust = \"insecure\", audience = \"patient\", class_at_least = \"identifier\" }}
action = \"hold\"
[[policy.rule]]
id = \"clinic.email-redact-phone\"
when = {{ accounts = [\"email.patients\"], kinds = [\"phone\"] }}
action = \"redact\"
[[policy.rule]]
id = \"clinic.self\"
when = {{ accounts = [\"webhook.ehr\"], consent = true }}
action = \"reroute\"
to = \"webhook.ehr\"
"
    ));
    let mut self_reroute = out("webhook.ehr", Patient, "hello", Action::Hold, &["clinic.self"]);
    self_reroute.consents = vec![grant("webhook.ehr", "clinical")];
    run(
        &p,
        vec![
            out("telegram.front_desk", Patient, "SIN 123-456-782", Action::Block, &["clinic.no-sin"]),
            out("telegram.front_desk", Patient, "OHIP 1234 567 897", Action::Hold, &["clinic.hold-telegram-ids"]),
            out("email.patients", Patient, "call 416-555-0199", Action::Redact, &["clinic.email-redact-phone"]),
            out(
                "email.patients",
                Patient,
                "OHIP 1234 567 897, call 416-555-0199",
                Action::Redact,
                &["builtin.redact.email_plain", "clinic.email-redact-phone"],
            ),
            self_reroute,
        ],
    );
    // Both redactions apply together.
    let a = acct("email.patients");
    let d = p.check(&input("OHIP 1234 567 897, call 416-555-0199", &a, Direction::Out, Patient));
    assert_eq!(d.rendered.as_deref(), Some("OHIP [health_number_on], call [phone]"));
    // Severity ordering.
    let mut v = [Action::Block, Action::Allow, Action::Hold, Action::Redact, Action::Reroute { to: None }];
    v.sort();
    assert_eq!(v.iter().map(Action::name).collect::<Vec<_>>(), ["allow", "redact", "reroute", "hold", "block"]);
}

#[test]
fn over_ceiling_choices_and_notices() {
    use Audience::{Patient, Staff};
    let text = "Your sertraline is ready";
    let a = acct("email.patients");
    // No secure account: reroute with the "contact the clinic" notice to the patient.
    let p = policy("");
    let d = p.check(&input(text, &a, Direction::Out, Patient));
    assert_eq!(d.action, Action::Reroute { to: None });
    assert_eq!(d.notice_to, Some(NoticeTarget::Recipient));
    assert!(d.notice.as_deref().unwrap().contains("cannot be sent on this channel"));
    // Secure account, French: the secure-message notice.
    let p = policy(&CLINIC.replacen("[policy]\n", "[policy]\nlocale = \"fr\"\n", 1));
    let d = p.check(&input(text, &a, Direction::Out, Patient));
    assert_eq!(d.action, to_ehr());
    assert!(d.notice.as_deref().unwrap().starts_with("Vous avez un nouveau message sécurisé"));
    // Hold: the clinician hears the reply was not sent (if the review rejects it).
    let p = policy("[policy]\nover_ceiling = \"hold\"\n[policy.notices.en]\nclinic = \"Maple\"");
    let d = p.check(&input(text, &a, Direction::Out, Patient));
    assert_eq!((d.action.clone(), d.notice_to), (Action::Hold, Some(NoticeTarget::Sender)));
    assert!(d.notice.as_deref().unwrap().starts_with("Your reply was not sent"));
    // Block of a forward to staff: the patient is told to use a secure channel.
    let p = policy(
        "[policy]\nover_ceiling = \"block\"\n[policy.notices.en]\nclinic = \"Maple\"\ncontact = \"Call 416-555-0100.\"",
    );
    let t = acct("telegram.front_desk");
    let d = p.check(&input(text, &t, Direction::Out, Staff));
    assert_eq!((d.action.clone(), d.notice_to), (Action::Block, Some(NoticeTarget::Sender)));
    assert!(d.notice.as_deref().unwrap().contains("your message to Maple was received"));
    assert!(d.notice.as_deref().unwrap().ends_with("Call 416-555-0100."));
    // Notices never carry the message.
    assert!(!d.notice.unwrap().contains("sertraline"));
}

#[test]
fn inbound_is_always_accepted_and_reports_the_class() {
    let p = policy(CLINIC);
    let tg = acct("telegram.front_desk");
    let em = acct("email.patients");
    let text = "refill my sertraline please, OHIP 1234 567 897";
    let d = p.check(&input(text, &tg, Direction::In, Audience::Staff));
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.class, Class::Clinical);
    assert_eq!(d.rules, ["builtin.inbound.record", "builtin.inbound.insecure_notice"]);
    assert_eq!(d.notice_to, Some(NoticeTarget::Sender));
    assert!(d.notice.unwrap().contains("please do not send health information"));
    let d = p.check(&input(text, &em, Direction::In, Audience::Staff));
    assert_eq!((d.action, d.rules, d.notice), (Action::Allow, vec!["builtin.inbound.record".to_string()], None));
    let d = p.check(&input("hi, call me at 416-555-0199", &tg, Direction::In, Audience::Staff));
    assert_eq!((d.class, d.rules.len(), d.notice), (Class::Contact, 1, None));
    // The advisory can be turned off.
    let p = policy("[policy]\ndisable = [\"builtin.inbound.insecure_notice\"]");
    let d = p.check(&input(text, &tg, Direction::In, Audience::Staff));
    assert_eq!((d.rules.len(), d.notice), (1, None));
}

/// The seed rule: a patient who asks for a prescription on a social channel must not get the
/// prescription back on that channel — by default, with consent, and even if the clinic
/// raised the insecure ceiling.
#[test]
fn seed_rule_prescription_never_returns_on_telegram() {
    let tg = acct("telegram.front_desk");
    let consents = [grant("telegram.front_desk", "clinical")];
    for cfg in [
        String::new(),
        CLINIC.to_string(),
        "[policy.ceilings.insecure]\nwith_consent = \"clinical\"\nwithout_consent = \"clinical\"".to_string(),
    ] {
        let p = policy(&cfg);
        let asked = p.check(&input("Hi, can I get a refill of my sertraline?", &tg, Direction::In, Audience::Staff));
        assert_eq!(asked.action, Action::Allow);
        assert!(asked.class >= Class::Clinical);
        for reply in ["Sertraline 50 mg renewed, pick it up at your pharmacy.", "Done, it's ready.", "Yes."] {
            for consents in [&[][..], &consents[..]] {
                let d = p.check(&CheckInput {
                    text: reply,
                    direction: Direction::Out,
                    account: &tg,
                    audience: Audience::Patient,
                    consents,
                    conversation_class: asked.class,
                    has_attachments: false,
                });
                assert!(matches!(d.action, Action::Reroute { .. }), "{cfg:?} {reply}: {d:?}");
                assert!(d.rules.contains(&"builtin.insecure.clinical".to_string()));
                assert!(d.body_to_send(reply).is_none());
            }
        }
    }
}

#[test]
fn redaction_renders_multibyte_text() {
    let p = policy(CLINIC);
    let a = acct("telegram.front_desk");
    let cases: &[(&str, &str)] = &[
        ("Zoë, votre NAS 123 456 782 est noté ✅", "Zoë, votre NAS [sin] est noté ✅"),
        ("🙂 OHIP １２３４ ５６７ ８９７ 🙂", "🙂 OHIP [health_number_on] 🙂"),
        ("SIN 123-456-782 et carte santé 1234567897", "SIN [sin] et carte santé [health_number_on]"),
    ];
    for (text, want) in cases {
        let d = p.check(&input(text, &a, Direction::Out, Audience::Patient));
        assert_eq!((d.action.clone(), d.rendered.as_deref()), (Action::Redact, Some(*want)), "{text}");
        assert_eq!(d.body_to_send(text), Some(*want));
    }
    // A custom placeholder; redaction can be turned off.
    let p = policy("[policy]\nplaceholder = \"(removed {kind})\"");
    let d = p.check(&input("SIN 123-456-782", &a, Direction::Out, Audience::Patient));
    assert_eq!(d.rendered.as_deref(), Some("SIN (removed sin)"));
    let p = policy("[policy]\nredact_up_to = \"none\"");
    let d = p.check(&input("SIN 123-456-782", &a, Direction::Out, Audience::Patient));
    assert_eq!((d.action, d.rules), (Action::Reroute { to: None }, vec!["builtin.ceiling.insecure".to_string()]));
}

#[test]
fn custom_detectors_and_tuning_from_toml() {
    let p = policy(
        r#"
[policy]
allow = ["+1 (416) 555-0100", "frontdesk@maple.example"]
[[policy.detector]]
kind = "clinic_chart"
pattern = 'CH-[0-9]{6}'
class = "identifier"
score = 0.9
[[policy.detector]]
kind = "clinic_drug"
terms = ["Zorblex"]
class = "clinical"
[[policy.detector]]
kind = "member_card"
pattern = '[0-9]{8}'
validator = "luhn"
context = ["member"]
context_required = true
class = "identifier"
[policy.builtin.medication]
terms = ["novadrug"]
remove_terms = ["lithium"]
[policy.builtin.mrn]
pattern = 'MRN-[0-9]{4}'
context_required = false
score = 0.8
[policy.builtin.zip_us]
enabled = false
"#,
    );
    let cases: &[(&str, &str)] = &[
        ("chart CH-123456", "clinic_chart:CH-123456"),
        ("XCH-123456", ""),
        ("ZORBLEX 10", "clinic_drug:ZORBLEX"),
        ("member 12345674", "member_card:12345674"),
        ("member 12345670", ""),
        ("12345674", ""),
        ("lithium battery, novadrug", "medication:novadrug"),
        ("see MRN-1234", "mrn:MRN-1234"),
        ("ZIP 90210", ""),
        // The clinic's own details are never findings.
        ("call us at 416.555.0100 or frontdesk@maple.example", ""),
        ("call me at 416-555-0199", "phone:416-555-0199"),
    ];
    for (text, expect) in cases {
        assert_eq!(findings_of(&p, text), *expect, "text: {text:?}");
    }
    let kinds = p.kinds();
    assert_eq!(kinds.last().map(|k| k.0.as_str()), Some("member_card"));
    assert!(!kinds.iter().any(|k| k.0 == "zip_us"));
}

#[test]
fn validation_reports_every_problem_with_its_path() {
    let c = config(
        r#"
[policy]
secure_account = "email.clinik"
placeholder = "[{value}]"
disable = ["builtin.ceiling.insecure", "builtin.insecure.clinicl"]
allow = ["--"]
[policy.channels]
"telegram.frontdesk" = "insecure"
"sms.x" = "secure"
[policy.ceilings.email_plain]
without_consent = "clinical"
with_consent = "contact"
[policy.detection]
threshold = 1.5
max_text_bytes = 0
[policy.builtin.medicaton]
terms = ["x"]
[policy.builtin.sin]
pattern = '[0-9]{9}'
terms = ["x"]
[policy.builtin.medication]
remove_terms = ["notadrug"]
[[policy.detector]]
kind = "sin"
pattern = '(unclosed'
class = "identifier"
[[policy.detector]]
kind = "Bad Kind"
class = "contact"
[[policy.detector]]
kind = "empty_match"
pattern = 'a*'
class = "contact"
[[policy.rule]]
id = "builtin.mine"
when = { direction = "in", kinds = ["medicaton"], accounts = ["telegram.frontdesk"] }
action = "hold"
to = "email.clinic"
[[policy.rule]]
id = "dup"
action = "block"
[[policy.rule]]
id = "dup"
action = "block"
[policy.notices.en]
secure_message = "Hello {patient}"
"#,
    );
    let accounts = [acct("email.clinic"), acct("telegram.front_desk")];
    let problems = c.validate(&accounts);
    let got: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let want: &[(&str, &str)] = &[
        ("policy.ceilings.email_plain.with_consent", "consent can only raise a ceiling"),
        ("policy.channels.\"sms.x\"", "unknown channel kind `sms`"),
        (
            "policy.channels.\"telegram.frontdesk\"",
            "unknown account `telegram.frontdesk`, did you mean `telegram.front_desk`?",
        ),
        ("policy.secure_account", "unknown account `email.clinik`, did you mean `email.clinic`?"),
        ("policy.placeholder", "unknown variable `{value}`"),
        ("policy.allow[0]", "letters or digits"),
        ("policy.disable[0]", "cannot be disabled"),
        ("policy.disable[1]", "did you mean `builtin.insecure.clinical`?"),
        ("policy.detection.threshold", "not between 0 and 1"),
        ("policy.detection.max_text_bytes", "between 1 and"),
        ("policy.builtin.medicaton", "unknown built-in detector `medicaton`, did you mean `medication`?"),
        ("policy.builtin.sin.pattern", "only `mrn` takes a pattern"),
        ("policy.builtin.sin.terms", "not a keyword detector"),
        ("policy.builtin.medication.remove_terms[0]", "not in the shipped `medication` list"),
        ("policy.detector[0].kind", "is a built-in detector"),
        ("policy.detector[0].pattern", "invalid regex"),
        ("policy.detector[1].kind", "must be 1-64 characters"),
        ("policy.detector[1]", "set `pattern` or `terms`"),
        ("policy.detector[2].pattern", "matches the empty string"),
        ("policy.rule[0].id", "reserved"),
        ("policy.rule[0].when.direction", "always accepted"),
        ("policy.rule[0].when.kinds[0]", "unknown detector kind `medicaton`, did you mean `medication`?"),
        ("policy.rule[0].when.accounts[0]", "did you mean `telegram.front_desk`?"),
        ("policy.rule[0].to", "only goes with action = \"reroute\""),
        ("policy.rule[2].id", "used by an earlier rule"),
        ("policy.notices.en.secure_message", "unknown variable `{patient}`"),
    ];
    for (path, msg) in want {
        assert!(
            problems.iter().any(|p| p.path == *path && p.message.contains(msg)),
            "missing {path}: {msg}\n got:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(problems.len(), want.len(), "unexpected extra problems:\n{}", got.join("\n"));
    // Compile refuses the same config, without needing the account list.
    assert!(Policy::compile(&c).is_err());
    // A secure_account that is not trusted secure is a problem; the defaults are clean.
    let c = config("[policy]\nsecure_account = \"email.clinic\"");
    let p = c.validate(&accounts);
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("not `secure`"), "{}", p[0]);
    assert!(PolicyConfig::default().validate(&accounts).is_empty());
    assert!(config(CLINIC).validate(&[acct("webhook.ehr"), acct("telegram.staff")]).is_empty());
    // Unknown keys and bad values are rejected by serde with a clear message.
    let e = toml::from_str::<File>("[policy]\nlocal = \"fr\"").err().unwrap().to_string();
    assert!(e.contains("unknown field `local`"), "{e}");
    let e = toml::from_str::<File>("[policy.channels]\n\"telegram.x\" = \"secret\"").err().unwrap().to_string();
    assert!(e.contains("unknown variant `secret`"), "{e}");
    let e = toml::from_str::<File>("[policy.channels.\"telegram.x\"]\ntrusts = \"secure\"").err().unwrap().to_string();
    assert!(e.contains("unknown field `trusts`"), "{e}");
}

#[test]
fn explain_format_is_stable() {
    let p = policy(CLINIC);
    let a = acct("telegram.front_desk");
    let text = "My SIN is 123-456-782.";
    let e = p.explanation(&input(text, &a, Direction::Out, Audience::Patient));
    assert_eq!(
        e.to_json_string(),
        r#"{"findings":[{"kind":"sin","start":10,"end":21,"score":1.0}],"class":"identifier","decision":{"action":"redact","rules":["builtin.redact.insecure"]},"rendered":"My SIN is [sin]."}"#
    );
    assert_eq!(p.explain(&input(text, &a, Direction::Out, Audience::Patient)), serde_json::to_value(&e).unwrap());
    // Reroute carries `to` and renders the notice; hold renders nothing; allow renders the text.
    let v = p.explain(&input("Your sertraline is ready", &a, Direction::Out, Audience::Patient));
    assert_eq!(v["decision"]["action"], "reroute");
    assert_eq!(v["decision"]["to"], "webhook.ehr");
    assert!(v["rendered"].as_str().unwrap().starts_with("You have a new secure message"));
    assert_eq!(v["findings"][0]["score"], 0.7);
    let v = p.explain(&input("hello", &a, Direction::Out, Audience::Patient));
    assert_eq!(v["rendered"], "hello");
    // Finding scores serialise rounded in the decision itself too.
    let d = p.check(&input("call 4165550199", &a, Direction::In, Audience::Staff));
    assert_eq!(serde_json::to_value(&d).unwrap()["findings"][0]["score"], 0.65);
}

#[test]
fn log_fields_carry_no_phi() {
    let p = policy(CLINIC);
    let a = acct("telegram.front_desk");
    let text = "Dana Pryce: refill my sertraline, OHIP 1234 567 897 AB, SIN 123-456-782, dana@example.com";
    let d = p.check(&input(text, &a, Direction::Out, Audience::Patient));
    let line = d.log_fields().to_string();
    assert_eq!(
        line,
        "action=reroute to=webhook.ehr class=clinical effective_class=clinical findings=5 \
         kinds=email:1,health_number_on:1,medication:1,prescription_request:1,sin:1 \
         rules=builtin.ceiling.insecure,builtin.insecure.clinical"
    );
    // Nor do the Debug forms of the input and the decision (in case someone logs `?decision`).
    let text = "Dana Pryce, OHIP 1234 567 897 AB, SIN 123-456-782, dana@example.com";
    let d = p.check(&input(text, &a, Direction::Out, Audience::Staff));
    assert_eq!(d.action, Action::Redact);
    let i = input(text, &a, Direction::Out, Audience::Staff);
    for line in [line, format!("{d:?}"), format!("{i:?}")] {
        for canary in ["Dana", "Pryce", "sertraline", "1234", "567", "897", "123-456-782", "dana@", "example.com"] {
            assert!(!line.contains(canary), "{canary} leaked into {line}");
        }
    }
}

#[test]
fn too_long_texts_fail_closed() {
    let p = policy("[policy.detection]\nmax_text_bytes = 10");
    let a = acct("telegram.front_desk");
    let d = p.check(&input("this text is longer than ten bytes", &a, Direction::Out, Audience::Patient));
    assert_eq!((d.action, d.rules, d.class), (Action::Hold, vec!["builtin.too_long".to_string()], Class::Sensitive));
    let d = p.check(&input("this text is longer than ten bytes", &a, Direction::In, Audience::Staff));
    assert_eq!((d.action, d.class), (Action::Allow, Class::Sensitive));
}

/// A tiny deterministic generator (xorshift64*), so the sweep needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const PIECES: &[&str] = &[
    "1",
    "9",
    "0",
    "8",
    "1234",
    "567",
    "897",
    "123",
    "456",
    "782",
    "9698",
    "658",
    "215",
    "4165550197",
    "１",
    "８",
    "٣",
    "-",
    "–",
    ".",
    " ",
    "\u{00A0}",
    "\u{200B}",
    "\u{FEFF}",
    "\u{00AD}",
    "(",
    ")",
    "+",
    "+1",
    "@",
    "/",
    ":",
    "AB",
    "K1A",
    "0B1",
    "TREM",
    "8553",
    "1512",
    "OHIP",
    "SIN",
    "NAS",
    "PHN",
    "chart",
    "DOB",
    "born",
    "né le",
    "mars",
    "March",
    "1984-03-07",
    "07/03/84",
    "sertraline",
    "refill",
    "HIV",
    "prise de sang",
    "mmol/L",
    "mg",
    "é",
    "É",
    "Œ",
    "ß",
    "İ",
    "ﬁ",
    "🙂",
    "👩‍⚕️",
    "\u{0301}",
    "\u{202E}",
    "\n",
    "\t",
    "\r\n",
    "a",
    "zz",
    "example.com",
    "ann",
    "{kind}",
    "[",
    "]",
    "\\",
    "*",
    "€",
];

/// Never panics, always deterministic, findings well-formed, and never lets content above
/// the ceiling out: an allowed text is within the ceiling, a redacted one re-scans within it.
#[test]
fn no_panic_no_leak_sweep() {
    let p = policy(&format!(
        "{CLINIC}\n[[policy.detector]]\nkind = \"greedy\"\npattern = '[0-9 ]+7'\nclass = \"contact\"\nisolated = false\n"
    ));
    let accounts = [acct("telegram.front_desk"), acct("email.patients"), acct("webhook.ehr"), acct("telegram.staff")];
    let consents = [grant("email.patients", "clinical"), grant("telegram.front_desk", "clinical")];
    let mut rng = Rng(0x5EED_CA5E_B00C_0001);
    for round in 0..1500 {
        let mut text = String::new();
        for _ in 0..rng.below(60) {
            text.push_str(PIECES[rng.below(PIECES.len())]);
        }
        if round % 100 == 0 {
            // Long runs: digits, separators, keywords.
            text.push_str(&"1234 567 897 ".repeat(200 + rng.below(200)));
        }
        let account = &accounts[rng.below(accounts.len())];
        let audience = if rng.below(2) == 0 { Audience::Patient } else { Audience::Staff };
        let conversation = [Class::None, Class::Contact, Class::Clinical][rng.below(3)];
        let cons = if rng.below(2) == 0 { &consents[..] } else { &[][..] };
        for direction in [Direction::In, Direction::Out] {
            let i = CheckInput {
                text: &text,
                direction,
                account,
                audience,
                consents: cons,
                conversation_class: conversation,
                has_attachments: rng.below(4) == 0,
            };
            let d = p.check(&i);
            assert_eq!(d, p.check(&i), "not deterministic: {text:?}");
            assert!(!d.rules.is_empty());
            let mut last_end = 0;
            for f in &d.findings {
                assert!(f.start < f.end && f.end <= text.len(), "{f:?} in {text:?}");
                assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end), "{f:?} in {text:?}");
                assert!(f.start >= last_end, "overlap {f:?} in {text:?}");
                assert!((0.0..=1.0).contains(&f.score));
                last_end = f.end;
            }
            assert_eq!(d.notice.is_some(), d.notice_to.is_some());
            let _ = p.explain(&i);
            let _ = d.log_fields().to_string();
            match direction {
                Direction::In => assert_eq!(d.action, Action::Allow),
                Direction::Out => {
                    let ceiling = p.ceiling(account, audience, cons);
                    match &d.action {
                        Action::Allow => assert!(d.effective_class <= ceiling, "leak: {text:?} {d:?}"),
                        Action::Redact => {
                            let r = d.rendered.as_deref().unwrap();
                            let again = p.check(&input(r, account, Direction::In, Audience::Staff));
                            assert!(again.class <= ceiling, "leak after redaction: {r:?}");
                            assert!(conversation <= ceiling);
                        }
                        _ => assert!(d.rendered.is_none()),
                    }
                }
            }
        }
    }
}

/// Large hostile inputs complete (no quadratic corner: bounded patterns are retried one
/// character on, custom patterns are matched once, context windows are capped). Not timed:
/// a regression shows up as a test that does not finish.
#[test]
fn large_adversarial_inputs_complete() {
    let p = policy(&format!(
        "{CLINIC}\n[[policy.detector]]\nkind = \"greedy\"\npattern = '[0-9a-z@. ]+x'\nclass = \"contact\"\n"
    ));
    let a = acct("telegram.front_desk");
    let inputs = [
        "1".repeat(300_000),
        "1 ".repeat(150_000),
        "1234 ".repeat(60_000),
        format!("{}@", "a".repeat(300_000)),
        "a@b.".repeat(75_000),
        "ohip ".repeat(60_000),
        "hiv ".repeat(75_000),
        "1234567897 ".repeat(27_000),
        "4165550197 OHIP ".repeat(18_000),
        "\u{200B}".repeat(100_000),
        "é".repeat(150_000),
    ];
    for text in &inputs {
        let d = p.check(&input(text, &a, Direction::Out, Audience::Patient));
        assert!(!d.rules.is_empty());
        assert!(d.findings.iter().all(|f| text.is_char_boundary(f.start) && text.is_char_boundary(f.end)));
    }
}

/// The example block of docs/policy.md (pasted into config/example.toml) is valid, and its
/// rules do what its comments say.
#[test]
fn documented_example_config_is_valid() {
    let doc = include_str!("../../docs/policy.md");
    let example = doc.split("## Example config").nth(1).unwrap();
    let block = example.split("```toml\n").nth(1).unwrap().split("```").next().unwrap();
    let c = config(block);
    let accounts = ["webhook.ehr", "telegram.staff", "webhook.forms", "telegram.front_desk", "email.clinic"].map(acct);
    assert_eq!(c.validate(&accounts), Vec::<Problem>::new());
    let p = Policy::compile(&c).unwrap();
    let forms = acct("webhook.forms");
    let d = p.check(&input("OHIP 1234 567 897", &forms, Direction::Out, Audience::Staff));
    assert_eq!((d.action, d.rules), (Action::Block, vec!["clinic.no-ids-to-forms-relay".to_string()]));
    assert_eq!(
        findings_of(&p, "chart MC-123456, REQ-12345678, zorblex"),
        "mrn:MC-123456\nlab_requisition:REQ-12345678\nmedication:zorblex"
    );
    let staff = acct("telegram.staff");
    let d = p.check(&input("Call us at 416-555-0100", &staff, Direction::Out, Audience::Staff));
    assert_eq!(d.action, Action::Allow);
    let d = p.check(&input("Call me at 416-555-0199", &staff, Direction::Out, Audience::Staff));
    assert_eq!(d.rendered.as_deref(), Some("Call me at [phone]"));
    let tg = acct("telegram.front_desk");
    let d = p.check(&input("Your refill is ready", &tg, Direction::Out, Audience::Patient));
    assert!(d.notice.unwrap().contains("Maple Family Health"));
}

#[test]
fn policy_is_shareable_across_tasks() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Policy>();
    assert_send_sync::<Decision>();
}

#[test]
fn a_scan_decides_every_hop_as_a_fresh_check_would() {
    let p = policy(&format!("{CLINIC}\n[policy.detection]\nmax_text_bytes = 60\n"));
    let texts = [
        "Please renew my metformin 500 mg, my OHIP is 1234 567 897.",
        "Call me at 416-555-0199 about the appointment.",
        "See you Monday.",
        "This text is longer than the sixty bytes this policy scans, so it is held unscanned.",
    ];
    let hops = [
        ("telegram.front_desk", Direction::In, Audience::Staff),
        ("telegram.staff", Direction::Out, Audience::Staff),
        ("telegram.front_desk", Direction::Out, Audience::Patient),
        ("webhook.ehr", Direction::Out, Audience::Staff),
    ];
    for text in texts {
        let scan = p.scan(text);
        for (account, direction, audience) in hops {
            let a = acct(account);
            let i = input(text, &a, direction, audience);
            assert!(p.check_scanned(&i, &scan) == p.check(&i), "{text:?} on {account}");
        }
    }
    // A scan of another text is not used for this one.
    let a = acct("telegram.staff");
    let i = input(texts[0], &a, Direction::Out, Audience::Staff);
    assert!(p.check_scanned(&i, &p.scan(texts[2])) == p.check(&i));
    assert_eq!(p.check(&i).action, Action::Reroute { to: Some("webhook.ehr".into()) });
}

/// Issue 16's categories: misspelt context words, numbers wrapped across lines, lists of
/// numbers sharing one context word, French chart phrasing, lay clinical words, readings,
/// everyday sensitive words; and the false positives it named.
#[test]
fn detection_generalises_to_how_people_write() {
    let cases: &[(&str, &str)] = &[
        ("my helth card is 1234567897", "health_number_on:1234567897"),
        ("insurence number 1234567897", "health_number_on:1234567897"),
        ("date of brith: 1984-03-07", "date_of_birth:1984-03-07"),
        ("chrat no. 123456", "mrn:123456"),
        ("my OHIP is 1234 567\n897 thanks", "health_number_on:1234 567\n897"),
        ("SIN 123 456\n782", "sin:123 456\n782"),
        (
            "my OHIP is 1234567897 and my wife's is 2345678904",
            "health_number_on:1234567897\nhealth_number_on:2345678904",
        ),
        (
            "Health cards:\n- me: 1234567897\n- my son: 2345678904",
            "health_number_on:1234567897\nhealth_number_on:2345678904",
        ),
        ("mon numéro de carte d'hôpital est le 123456", "mrn:123456"),
        ("le numéro de dossier à l'hôpital Saint-Luc est le 123456", "mrn:123456"),
        ("numéro de patient 4455667", "mrn:4455667"),
        // False positives.
        ("Date of birth: 1980-01-01\nPreferred date: 2025-03-04", "date_of_birth:1980-01-01"),
        ("Order 4165550199 shipped", ""),
        ("Ref: A4165550199", ""),
    ];
    for (text, expect) in cases {
        check(text, expect);
    }
    let p = Policy::compile(&PolicyConfig::default()).unwrap();
    let a = acct("telegram.front_desk");
    let class = |t: &str| p.check(&input(t, &a, Direction::In, Audience::Staff)).class;
    for t in [
        "my bp was 150/95 this morning",
        "her sugar was 12.3 after supper",
        "he's had a fever of 39.5 since last night",
        "temp 38.9",
        "I need to drop off a stool sample",
        "is my colonoscopy booked?",
        "I think it's pink eye",
        "j'ai un feu sauvage",
        "ma fille fait de la fièvre",
        "mal de gorge depuis trois jours",
        "been throwing up all night",
        "can I get more of my puffer",
    ] {
        assert!(class(t) >= Class::Clinical, "{t}: {:?}", class(t));
    }
    for t in [
        "can I get PrEP here?",
        "I need the morning-after pill",
        "je voudrais la pilule du lendemain",
        "I relapsed last weekend",
        "he overdosed on Friday",
        "I'm 9 weeks along",
        "I don't want to be here anymore",
        "j'ai des idées noires",
        "je fais des crises d'angoisse",
        "is cannabis ok with my meds",
    ] {
        assert_eq!(class(t), Class::Sensitive, "{t}");
    }
    for t in [
        "See you Tuesday at 3pm",
        "Can I move my appointment to Friday morning?",
        "The parking lot is behind the building",
        "Est-ce que je peux venir jeudi à 10 h?",
        "my lab puppy ate my appointment card",
        "results of the election",
        "Thanks, see you at 10:30",
    ] {
        assert!(class(t) <= Class::Contact, "{t}: {:?}", class(t));
    }
}

/// The safety net: to a patient on an insecure account, what would go out must read as
/// contact or scheduling content; it names its own rule, and can be turned off per account
/// or for the whole policy.
#[test]
fn safety_net_keeps_unrecognised_text_off_insecure_patient_channels() {
    use Audience::{Patient, Staff};
    let p = policy(&format!("{CLINIC}\n\"telegram.relaxed\" = {{ safety_net = false }}\n"));
    let net = &["builtin.insecure.safety_net"][..];
    run(
        &p,
        vec![
            // A clinical word no list has: the net reroutes it.
            out("telegram.front_desk", Patient, "Your fundoscopy is booked for Tuesday", to_ehr(), net),
            // Scheduling passes.
            out("telegram.front_desk", Patient, "Your appointment is Tuesday at 10", Action::Allow, &["builtin.allow"]),
            // A redaction's output is checked too.
            out("telegram.front_desk", Patient, "OHIP 1234 567 897 noted, bring the sample Monday", to_ehr(), net),
            // Only patient-facing, insecure accounts.
            out("telegram.front_desk", Staff, "Your fundoscopy is booked", Action::Allow, &["builtin.allow"]),
            out("email.patients", Patient, "Your fundoscopy is booked", Action::Allow, &["builtin.allow"]),
            // Off for one account.
            out("telegram.relaxed", Patient, "Your fundoscopy is booked", Action::Allow, &["builtin.allow"]),
        ],
    );
    let p = policy("[policy]\ndisable = [\"builtin.insecure.safety_net\"]");
    let a = acct("telegram.front_desk");
    let d = p.check(&input("Your fundoscopy is booked", &a, Direction::Out, Audience::Patient));
    assert_eq!(d.action, Action::Allow);
    // The explain output names the rule.
    let p = policy(CLINIC);
    let v = p.explain(&input("Your fundoscopy is booked", &a, Direction::Out, Audience::Patient));
    assert_eq!(v["decision"]["rules"], serde_json::json!(["builtin.insecure.safety_net"]));
    assert_eq!(v["decision"]["action"], "reroute");
}
