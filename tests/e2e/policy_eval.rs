//! Scores the privacy engine on the labelled corpus of tests/policy_corpus/corpus.txt (issue
//! 16), as a reply or forward going to a patient on an insecure account (ceiling `contact`),
//! and fails when a figure falls below its threshold.
//!
//! Run `cargo test --test e2e policy_eval:: -- --nocapture` to print the figures (docs/policy.md,
//! "Evaluation", reports them). Measures:
//! - per kind (identifier and contact kinds, which are labelled span by span): recall and
//!   precision; a finding counts when it overlaps a label of its kind;
//! - message level: clinical recall (messages labelled clinical or sensitive that the
//!   detectors class clinical or higher), sensitive recall, over-flagging of safe text by the
//!   detectors alone;
//! - decisions: leaks (content above the ceiling that would go out: allowed, or redacted
//!   while the message is clinical or still shows a labelled identifier) and over-blocking
//!   (safe messages, `none` or `contact`, rerouted, held or blocked), with the structural
//!   safety net on (the default) and off.
//!
//! `CAREBRIDGE_EVAL_REPORT_ONLY=1` prints without checking thresholds (to score an older
//! engine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use carebridge::policy::{Action, Audience, CheckInput, Class, Direction, Policy, PolicyConfig};
use carebridge_contract::AccountId;
use std::collections::BTreeMap;

const CORPUS: &str = include_str!("../policy_corpus/corpus.txt");

/// Kinds labelled span by span.
const SPAN_KINDS: &[&str] = &[
    "health_number_on",
    "health_number_bc",
    "health_number_qc",
    "sin",
    "mrn",
    "date_of_birth",
    "phone",
    "email",
    "postal_code_ca",
];
/// The clinical detectors, turned off to measure the safety net alone.
const CLINICAL_KINDS: &[&str] = &[
    "medication",
    "dose",
    "prescription_request",
    "lab_result",
    "diagnosis",
    "symptom",
    "measurement",
    "reading",
    "sensitive_topic",
];
const IDENTIFIER_KINDS: &[&str] =
    &["health_number_on", "health_number_bc", "health_number_qc", "sin", "mrn", "date_of_birth"];

struct Message {
    id: String,
    class: Class,
    tags: Vec<String>,
    text: String,
    labels: Vec<(String, String)>,
}

fn class_of(s: &str) -> Class {
    match s {
        "none" => Class::None,
        "contact" => Class::Contact,
        "identifier" => Class::Identifier,
        "clinical" => Class::Clinical,
        "sensitive" => Class::Sensitive,
        other => panic!("unknown class {other}"),
    }
}

fn parse(corpus: &str) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    for line in corpus.lines() {
        if let Some(h) = line.strip_prefix("=== ") {
            let parts: Vec<&str> = h.split('|').map(str::trim).collect();
            out.push(Message {
                id: parts[0].to_string(),
                class: class_of(parts[1]),
                tags: parts.get(2).map(|t| t.split_whitespace().map(String::from).collect()).unwrap_or_default(),
                text: String::new(),
                labels: Vec::new(),
            });
        } else if let Some(m) = out.last_mut() {
            if let Some(l) = line.strip_prefix("@ ") {
                let (kind, value) = l.split_once(' ').expect("`@ kind value`");
                m.labels.push((kind.to_string(), value.to_string()));
            } else if m.labels.is_empty() {
                if !m.text.is_empty() {
                    m.text.push('\n');
                }
                m.text.push_str(line);
            } else {
                // A label's value may span lines (a number wrapped across a line break).
                let last = m.labels.last_mut().unwrap();
                last.1.push('\n');
                last.1.push_str(line);
            }
        } else {
            assert!(line.is_empty() || line.starts_with('#'), "text before the first header: {line}");
        }
    }
    out
}

/// Label spans (byte offsets) in the message text.
fn spans(m: &Message) -> Vec<(String, usize, usize)> {
    let mut from: BTreeMap<&str, usize> = BTreeMap::new();
    m.labels
        .iter()
        .map(|(k, v)| {
            let start_at = from.get(v.as_str()).copied().unwrap_or(0);
            let s = m.text[start_at..].find(v.as_str()).map(|i| i + start_at).unwrap_or_else(|| {
                panic!("{}: label {k} `{v}` not in the text", m.id);
            });
            from.insert(v.as_str(), s + v.len());
            (k.clone(), s, s + v.len())
        })
        .collect()
}

#[derive(Default, Clone, Copy)]
struct Count {
    tp: usize,
    fn_: usize,
    fp: usize,
}

impl Count {
    fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

struct Outcome {
    leaks: Vec<String>,
    over_blocked: Vec<String>,
}

fn decide(p: &Policy, msgs: &[Message]) -> Outcome {
    let account: AccountId = "telegram.front_desk".parse().unwrap();
    let (mut leaks, mut over_blocked) = (Vec::new(), Vec::new());
    for m in msgs {
        let input = CheckInput {
            text: &m.text,
            direction: Direction::Out,
            account: &account,
            audience: Audience::Patient,
            consents: &[],
            conversation_class: Class::None,
            has_attachments: false,
        };
        let d = p.check(&input);
        let sent = d.body_to_send(&m.text);
        let safe = m.class <= Class::Contact;
        match sent {
            Some(body) if !safe => {
                let shows_label = spans(m)
                    .iter()
                    .any(|(k, s, e)| IDENTIFIER_KINDS.contains(&k.as_str()) && body.contains(&m.text[*s..*e]));
                if m.class > Class::Identifier || shows_label {
                    leaks.push(m.id.clone());
                }
            }
            None if safe => over_blocked.push(m.id.clone()),
            _ => {}
        }
        if safe && matches!(d.action, Action::Hold | Action::Block) {
            assert!(over_blocked.contains(&m.id));
        }
    }
    Outcome { leaks, over_blocked }
}

fn policy(extra: &str) -> Option<Policy> {
    #[derive(serde::Deserialize)]
    struct File {
        policy: PolicyConfig,
    }
    let text = format!(
        "[policy]\nsecure_account = \"webhook.ehr\"\n{extra}\n[policy.channels]\n\"webhook.ehr\" = \"secure\"\n"
    );
    let file: File = toml::from_str(&text).expect("eval config parses");
    Policy::compile(&file.policy).ok()
}

#[test]
fn corpus_scores_meet_thresholds() {
    let msgs = parse(CORPUS);
    let p = policy("").expect("the eval policy compiles");
    let account: AccountId = "telegram.front_desk".parse().unwrap();

    let mut per_kind: BTreeMap<&str, Count> = SPAN_KINDS.iter().map(|k| (*k, Count::default())).collect();
    let (mut clinical, mut clinical_found, mut sensitive, mut sensitive_found) = (0, 0, 0, 0);
    let (mut plain, mut plain_found, mut typed, mut typed_found) = (0, 0, 0, 0);
    let (mut misspelt, mut misspelt_found) = (0, 0);
    let (mut safe, mut safe_flagged) = (0, 0);
    let mut misses = Vec::new();
    for m in &msgs {
        let d = p.check(&CheckInput {
            text: &m.text,
            direction: Direction::In,
            account: &account,
            audience: Audience::Staff,
            consents: &[],
            conversation_class: Class::None,
            has_attachments: false,
        });
        let labels = spans(m);
        for (k, s, e) in &labels {
            let c = per_kind.get_mut(k.as_str()).unwrap_or_else(|| panic!("{}: unknown kind {k}", m.id));
            let hit = d.findings.iter().any(|f| f.kind == *k && f.start < *e && f.end > *s);
            if hit {
                c.tp += 1;
            } else {
                c.fn_ += 1;
                misses.push(format!("{} {k}", m.id));
            }
            if m.tags.iter().any(|t| t == "typed") {
                typed += 1;
                typed_found += usize::from(hit);
            }
        }
        for f in &d.findings {
            if let Some(c) = per_kind.get_mut(f.kind.as_str())
                && !labels.iter().any(|(k, s, e)| *k == f.kind && f.start < *e && f.end > *s)
            {
                c.fp += 1;
                misses.push(format!("{} false {}", m.id, f.kind));
            }
        }
        if m.class >= Class::Clinical {
            clinical += 1;
            let ok = d.class >= Class::Clinical;
            clinical_found += usize::from(ok);
            if !ok {
                misses.push(format!("{} clinical missed", m.id));
            }
            if m.tags.iter().any(|t| t == "plain") {
                plain += 1;
                plain_found += usize::from(ok);
            }
            if m.tags.iter().any(|t| t == "misspelt") {
                misspelt += 1;
                misspelt_found += usize::from(ok);
            }
        }
        if m.class == Class::Sensitive {
            sensitive += 1;
            let ok = d.class == Class::Sensitive;
            sensitive_found += usize::from(ok);
            if !ok {
                misses.push(format!("{} sensitive missed", m.id));
            }
        }
        if m.class <= Class::Contact {
            safe += 1;
            if d.class > Class::Contact {
                safe_flagged += 1;
                misses.push(format!("{} safe flagged {:?}", m.id, d.class));
            }
        }
    }
    let ids = per_kind.iter().filter(|(k, _)| IDENTIFIER_KINDS.contains(k)).fold(Count::default(), |a, (_, c)| Count {
        tp: a.tp + c.tp,
        fn_: a.fn_ + c.fn_,
        fp: a.fp + c.fp,
    });

    let with_net = decide(&p, &msgs);
    let without_net = policy("disable = [\"builtin.insecure.safety_net\"]").map(|q| decide(&q, &msgs));
    // The net alone: every clinical detector off, as if detection missed everything clinical.
    let blind = CLINICAL_KINDS.iter().map(|k| format!("[policy.builtin.{k}]\nenabled = false\n")).collect::<String>();
    let net_alone = policy(&format!("[policy.detection]\n{blind}")).map(|q| decide(&q, &msgs));

    let en = msgs.iter().filter(|m| m.tags.iter().any(|t| t == "en")).count();
    let fr = msgs.iter().filter(|m| m.tags.iter().any(|t| t == "fr")).count();
    println!("corpus: {} messages ({en} English, {fr} French), {safe} safe", msgs.len());
    println!("| kind | labels | recall | precision |");
    println!("| --- | --- | --- | --- |");
    for (k, c) in &per_kind {
        println!("| {k} | {} | {:.2} | {:.2} |", c.tp + c.fn_, c.recall(), c.precision());
    }
    println!("| identifiers (all) | {} | {:.2} | {:.2} |", ids.tp + ids.fn_, ids.recall(), ids.precision());
    println!("identifiers typed as people type them: {typed_found} of {typed}");
    println!(
        "clinical recall (message level): {:.2} ({clinical_found} of {clinical})",
        ratio(clinical_found, clinical)
    );
    println!("symptoms in plain words: {plain_found} of {plain}");
    println!("clinical words misspelt: {misspelt_found} of {misspelt}");
    println!("sensitive recall: {:.2} ({sensitive_found} of {sensitive})", ratio(sensitive_found, sensitive));
    println!("safe messages the detectors class above contact: {safe_flagged} of {safe}");
    let pct = |n: usize| 100.0 * ratio(n, safe);
    println!(
        "safety net on:  leaks {} of {}, safe messages blocked or rerouted {} of {safe} ({:.1}%)",
        with_net.leaks.len(),
        msgs.len() - safe,
        with_net.over_blocked.len(),
        pct(with_net.over_blocked.len())
    );
    if let Some(o) = &without_net {
        println!(
            "safety net off: leaks {} of {}, safe messages blocked or rerouted {} of {safe} ({:.1}%)",
            o.leaks.len(),
            msgs.len() - safe,
            o.over_blocked.len(),
            pct(o.over_blocked.len())
        );
        println!("leaks without the net: {}", o.leaks.join(" "));
    }
    if let Some(o) = &net_alone {
        let clinical_msgs = msgs.iter().filter(|m| m.class >= Class::Clinical).count();
        let caught = clinical_msgs
            - o.leaks.iter().filter(|id| msgs.iter().any(|m| &m.id == *id && m.class >= Class::Clinical)).count();
        println!(
            "safety net alone (clinical detectors off): {caught} of {clinical_msgs} clinical messages kept off the channel; leaks: {}",
            o.leaks.join(" ")
        );
    }
    println!("leaks: {}", with_net.leaks.join(" "));
    println!("over-blocked: {}", with_net.over_blocked.join(" "));
    println!("detector misses: {}", misses.join("; "));

    if std::env::var_os("CAREBRIDGE_EVAL_REPORT_ONLY").is_some() {
        return;
    }
    // Thresholds: a little under today's figures, so a regression fails CI and tuning
    // room is small. Leaks above the ceiling: none, with the safety net.
    assert!(ids.recall() >= 0.95, "identifier recall {:.2}", ids.recall());
    assert!(ids.precision() >= 0.90, "identifier precision {:.2}", ids.precision());
    assert!(ratio(clinical_found, clinical) >= 0.95, "clinical recall {clinical_found}/{clinical}");
    assert!(ratio(misspelt_found, misspelt) >= 0.80, "misspelt clinical words {misspelt_found}/{misspelt}");
    assert!(ratio(sensitive_found, sensitive) >= 0.90, "sensitive recall {sensitive_found}/{sensitive}");
    assert!(with_net.leaks.is_empty(), "leaks: {:?}", with_net.leaks);
    assert!(pct(with_net.over_blocked.len()) <= 10.0, "over-blocking {:?}", with_net.over_blocked);
}
