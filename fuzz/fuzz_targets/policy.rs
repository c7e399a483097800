//! Text → the privacy engine, through the entry point the router uses (`Policy::check` with a
//! `CheckInput`), with the policy of `config/example.toml` compiled once.
//!
//! Input layout: the whole input (lossy UTF-8) is the text; its first byte also picks the hop
//! (direction, account, audience, attachments, consent, conversation class), so seed files are
//! plain patient texts and every byte is still scanned.
//!
//! Besides "never panics", checks what the router and the record rely on: decisions are
//! deterministic; rules are never empty; a notice always says whom it is for; findings are
//! sorted, non-overlapping, on char boundaries; the class is the highest finding's class;
//! inbound is always allowed; a redaction re-checked is within the ceiling and no longer
//! contains the text of a span it had to mask.
#![no_main]

use carebridge::policy::{Action, Audience, CheckInput, Class, ConsentGrant, Direction, Policy, PolicyConfig};
use carebridge_contract::AccountId;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The accounts of config/example.toml (their trust levels differ: insecure, email, secure).
const ACCOUNTS: [&str; 4] = ["telegram.front_desk", "email.clinic", "webhook.sms", "webhook.ehr"];
const CLASSES: [Class; 5] = [Class::None, Class::Contact, Class::Identifier, Class::Clinical, Class::Sensitive];

struct Fixture {
    policy: Policy,
    accounts: Vec<AccountId>,
    kinds: HashMap<String, Class>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let file: toml::Table =
            toml::from_str(include_str!("../../config/example.toml")).expect("config/example.toml parses");
        let section = file.get("policy").cloned().expect("config/example.toml has a [policy] section");
        let config: PolicyConfig = section.try_into().expect("the [policy] section deserialises");
        let policy = Policy::compile(&config).expect("the example policy compiles");
        let accounts = ACCOUNTS.iter().map(|a| a.parse().expect("a valid account id")).collect();
        let kinds = policy.kinds().into_iter().collect();
        Fixture { policy, accounts, kinds }
    })
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;
    let control = data.first().copied().unwrap_or(0);
    let account = &fx.accounts[usize::from((control >> 2) & 3)];
    let consents = [ConsentGrant {
        account: account.to_string(),
        purpose: "clinical".to_string(),
        source: "fuzz".to_string(),
        granted_at: 0,
    }];
    let input = CheckInput {
        text,
        direction: if control & 3 == 3 { Direction::In } else { Direction::Out },
        account,
        audience: if control & 0x10 == 0 { Audience::Patient } else { Audience::Staff },
        consents: if control & 0x40 == 0 { &[] } else { &consents },
        conversation_class: CLASSES[usize::from(control >> 7) * (data.len() % CLASSES.len())],
        has_attachments: control & 0x20 != 0,
    };

    let decision = fx.policy.check(&input);
    assert!(decision == fx.policy.check(&input), "decisions are deterministic");
    assert!(!decision.rules.is_empty(), "a decision names its rules");
    assert_eq!(decision.notice.is_some(), decision.notice_to.is_some(), "a notice says whom it is for");
    assert_eq!(decision.rendered.is_some(), decision.action == Action::Redact, "rendered exactly for redact");
    assert!(decision.effective_class >= decision.class);

    let mut end = 0;
    let mut class = Class::None;
    for f in &decision.findings {
        assert!(f.start >= end && f.start < f.end && f.end <= text.len(), "findings sorted, non-overlapping");
        assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end), "findings on char boundaries");
        assert!((0.0..=1.0).contains(&f.score), "score within 0..=1");
        let kind_class = *fx.kinds.get(&f.kind).expect("a finding's kind is one the policy runs");
        class = class.max(kind_class);
        end = f.end;
    }
    assert_eq!(decision.class, class, "the text's class is its highest finding's class");

    match input.direction {
        Direction::In => assert_eq!(decision.action, Action::Allow, "inbound is always recorded"),
        Direction::Out => {
            assert!(decision.effective_class >= input.conversation_class);
            if input.has_attachments {
                assert!(decision.effective_class >= Class::Clinical, "attachments count as clinical");
            }
        }
    }
    assert_eq!(decision.body_to_send(text).is_some(), matches!(decision.action, Action::Allow | Action::Redact));

    if let Some(rendered) = &decision.rendered {
        let ceiling = fx.policy.ceiling(account, input.audience, input.consents);
        let again = fx.policy.check(&CheckInput { text: rendered, direction: Direction::In, ..input.clone() });
        assert!(again.class <= ceiling, "a redacted text is within the ceiling");
        for f in &decision.findings {
            let span = &text[f.start..f.end];
            // Masked: every finding above the ceiling. A span whose text also occurs elsewhere
            // (undetected) or that could be spliced from a `[kind]` placeholder proves nothing.
            let masked = fx.kinds[&f.kind] > ceiling;
            if masked && span.len() >= 4 && text.matches(span).count() == 1 && !span.contains(['[', ']']) {
                assert!(!rendered.contains(span), "a masked span's text is gone from the redaction");
            }
        }
    }
});
