//! The privacy engine alone (issue 16, "Speed"): MB/s of mixed text through `Policy::scan`
//! (every default detector on: identifiers with their checks, contact details, the keyword
//! lists of ~10,000 terms, values and readings), one core, no I/O. A measurement to read, not
//! a timed test: it prints figures and asserts nothing about speed.
//!
//! Figures are MB per second of this thread's CPU time (Linux schedstat), so other work on
//! shared cores does not lower them; wall time where that is not available.
//!
//! Run: `cargo bench --bench policy` (env: `BENCH_POLICY_SECONDS`, 3 per measurement;
//! `BENCH_POLICY_EACH=1` also measures each detector alone; `BENCH_POLICY_PROFILE=1` runs only
//! the email-sized full scan, `BENCH_POLICY_PROFILE=chat` only the chat-sized one, for
//! `perf record`).
//!
//! Text: the messages of the evaluation corpus (tests/policy_corpus/corpus.txt: English and
//! French, identifiers, clinical and scheduling text, about 60 bytes each), as chat-sized
//! messages one by one and as email-sized texts (30 messages joined by blank lines, ~2 KB).
//! Figures:
//! - `mixed scan`, every default detector, chat- and email-sized texts together (the
//!   headline figure of issue 16: MB/s of mixed text);
//! - `scan`, every default detector (what the router runs once per message);
//! - `scan`, keyword detectors only and regex detectors only (which half dominates);
//! - `check` of an outbound hop to a patient on an insecure account (scan + decision +
//!   redaction re-scan + the safety net).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed bench should panic with the value

use carebridge::policy::{Audience, CheckInput, Class, Direction, Policy, PolicyConfig};
use carebridge_contract::AccountId;
use std::hint::black_box;
use std::time::{Duration, Instant};

const CORPUS: &str = include_str!("../tests/policy_corpus/corpus.txt");

const KEYWORD_KINDS: &[&str] =
    &["medication", "prescription_request", "diagnosis", "symptom", "sensitive_topic", "lab_result"];
const REGEX_KINDS: &[&str] = &[
    "health_number_on",
    "health_number_bc",
    "health_number_qc",
    "sin",
    "mrn",
    "date_of_birth",
    "phone",
    "email",
    "postal_code_ca",
    "zip_us",
    "dose",
    "measurement",
    "reading",
];

fn messages() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for block in CORPUS.split("\n=== ").skip(1) {
        let text: Vec<&str> = block.lines().skip(1).filter(|l| !l.starts_with("@ ")).collect();
        out.push(text.join("\n"));
    }
    out
}

fn policy(toml_text: &str) -> Policy {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        policy: PolicyConfig,
    }
    let f: File = toml::from_str(toml_text).unwrap();
    Policy::compile(&f.policy).unwrap()
}

fn disabled(kinds: &[&str]) -> String {
    kinds.iter().map(|k| format!("[policy.builtin.{k}]\nenabled = false\n")).collect()
}

/// This thread's time on a CPU so far (Linux `/proc/thread-self/schedstat`, nanoseconds), so
/// that figures count the engine's own time, not the time other work on shared cores takes
/// from it; `None` elsewhere (then wall time is used).
fn cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

/// Runs `f` over `texts` for about `secs` seconds of this thread's CPU time; MB/s of text
/// processed per CPU second (and texts per CPU second).
fn rate(texts: &[String], secs: f64, mut f: impl FnMut(&str)) -> (f64, f64) {
    let bytes: usize = texts.iter().map(String::len).sum();
    // Warm up (and build the vocabularies' lazy sets).
    for t in texts {
        f(t);
    }
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let cpu0 = cpu_time();
    let spent = || match (cpu0, cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => start.elapsed(),
    };
    let mut rounds = 0u64;
    while spent() < budget {
        for t in texts {
            f(t);
        }
        rounds += 1;
    }
    let el = spent().as_secs_f64().max(1e-9);
    let mb = (bytes as f64 * rounds as f64) / 1e6;
    (mb / el, (texts.len() as f64 * rounds as f64) / el)
}

fn main() {
    let secs: f64 = std::env::var("BENCH_POLICY_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let chat = messages();
    let email: Vec<String> = chat.chunks(30).map(|c| c.join("\n\n")).collect();
    let avg = |v: &[String]| v.iter().map(String::len).sum::<usize>() / v.len().max(1);
    println!(
        "text: {} chat messages (avg {} B), {} email-sized texts (avg {} B), {secs} s of CPU per figure, one thread",
        chat.len(),
        avg(&chat),
        email.len(),
        avg(&email)
    );

    let all = policy("");
    let keywords_only = policy(&disabled(REGEX_KINDS));
    let regex_only = policy(&disabled(KEYWORD_KINDS));
    let t0 = Instant::now();
    let _ = policy("");
    println!("compile (all default detectors): {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);

    if let Some(which) = std::env::var_os("BENCH_POLICY_PROFILE") {
        // Only the email-sized (or, with `chat`, the chat-sized) full scan, for a profiler.
        let (name, texts) = if which == "chat" { ("chat ", &chat) } else { ("email", &email) };
        let (mbs, _) = rate(texts, secs, |t| {
            black_box(all.scan(black_box(t)));
        });
        println!("{name} scan, all default detectors: {mbs:7.1} MB/s");
        return;
    }
    if std::env::var_os("BENCH_POLICY_EACH").is_some() {
        // One detector at a time (every other one off), email-sized texts: what each costs.
        let email: Vec<String> = messages().chunks(30).map(|c| c.join("\n\n")).collect();
        let none = policy(&disabled(&[KEYWORD_KINDS, REGEX_KINDS].concat()));
        let (mbs, _) = rate(&email, secs, |t| {
            black_box(none.scan(black_box(t)));
        });
        println!("email scan, no detector (views, context automaton): {mbs:7.1} MB/s");
        for kind in KEYWORD_KINDS.iter().chain(REGEX_KINDS) {
            let others: Vec<&str> = KEYWORD_KINDS.iter().chain(REGEX_KINDS).copied().filter(|k| k != kind).collect();
            let only = policy(&disabled(&others));
            let (mbs, _) = rate(&email, secs, |t| {
                black_box(only.scan(black_box(t)));
            });
            println!("email scan, only {kind:20} {mbs:7.1} MB/s");
        }
    }

    // Mixed text: the chat-sized messages with the email-sized texts among them (one after
    // every 30 messages), about half the bytes each: the one figure for "MB/s of mixed text".
    let mixed: Vec<String> =
        chat.chunks(30).zip(&email).flat_map(|(c, e)| c.iter().cloned().chain(std::iter::once(e.clone()))).collect();
    let (mbs, per) = rate(&mixed, secs, |t| {
        black_box(all.scan(black_box(t)));
    });
    println!("mixed scan, all default detectors: {mbs:7.1} MB/s ({per:.0} texts/s, chat and email sized)");

    let account: AccountId = "telegram.front_desk".parse().unwrap();
    for (name, texts) in [("chat", &chat), ("email", &email)] {
        let (mbs, per) = rate(texts, secs, |t| {
            black_box(all.scan(black_box(t)));
        });
        println!("{name:5} scan, all default detectors: {mbs:7.1} MB/s ({per:.0} texts/s)");
        let (mbs, _) = rate(texts, secs, |t| {
            black_box(keywords_only.scan(black_box(t)));
        });
        println!("{name:5} scan, keyword detectors only: {mbs:7.1} MB/s");
        let (mbs, _) = rate(texts, secs, |t| {
            black_box(regex_only.scan(black_box(t)));
        });
        println!("{name:5} scan, regex detectors only:   {mbs:7.1} MB/s");
        let (mbs, per) = rate(texts, secs, |t| {
            let input = CheckInput {
                text: t,
                direction: Direction::Out,
                account: &account,
                audience: Audience::Patient,
                consents: &[],
                conversation_class: Class::None,
                has_attachments: false,
            };
            black_box(all.check(black_box(&input)));
        });
        println!("{name:5} check, patient on insecure:  {mbs:7.1} MB/s ({per:.0} texts/s)");
    }
}
