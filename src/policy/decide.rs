//! Deciding: channel trust and ceilings, consent, the built-in rules, the clinic's rules, and
//! "most restrictive wins".
//!
//! Inbound (`Direction::In`): always [`Action::Allow`] (`builtin.inbound.record`): the patient
//! may send anything and the router records it. The findings and class are reported so the
//! router can remember the conversation's class; PHI arriving on an insecure channel also gets
//! an advisory "please use a secure channel" notice (`builtin.inbound.insecure_notice`).
//!
//! Outbound (`Direction::Out`), the account's ceiling is picked by audience and consent, then
//! every rule below that applies proposes an action; the most severe wins and every rule that
//! proposed it is named:
//! - `builtin.redact.<trust>`: the text is above the ceiling only because of findings of class
//!   `redact_up_to` or lower (identifiers by default): mask them.
//! - `builtin.ceiling.<trust>`: the text is above the ceiling otherwise: `over_ceiling`
//!   (reroute to `secure_account` by default).
//! - `builtin.conversation.<trust>`: the conversation's class is above the ceiling (a reply to
//!   a prescription request is clinical even if it says "done").
//! - `builtin.attachments.<trust>`: attachments (never scanned) count as `attachment_class`.
//! - `builtin.insecure.clinical`: clinical content never goes to a patient on an insecure
//!   channel, whatever the ceilings and consents say (the seed rule: a patient who asks for a
//!   prescription on a social channel does not get it back there).
//! - the clinic's `[[policy.rule]]`s.
//! - `builtin.allow` when nothing else applies.
//! - `builtin.insecure.safety_net`, last: to a patient on an insecure account, a text that
//!   would go out (allowed, or redacted) must read as contact or scheduling content (see
//!   [`safe`]); otherwise `over_ceiling`. Off per account with `safety_net = false`.
//!
//! A redaction is re-scanned: if the rendered text is still above the ceiling the decision
//! falls back to `over_ceiling` (`builtin.rescan`). A text longer than
//! `detection.max_text_bytes` is not scanned: it counts as `sensitive` (`builtin.too_long`).

use super::classify;
use super::config::{
    DEFAULT_MAX_TEXT_BYTES, DEFAULT_PLACEHOLDER, Locale, OverCeiling, PolicyConfig, RuleAction, RuleWhen,
};
use super::detectors::custom::{assemble, pct};
use super::detectors::{Engine, Hit, Params};
use super::notices::{NoticeKind, Notices};
use super::resolved::Resolved;
use super::safe;
use super::{
    Action, AppliedRule, Audience, CheckInput, Class, ConsentGrant, Decision, Direction, NoticeTarget, Scan, Trust,
};
use carebridge_contract::AccountId;
use carebridge_contract::config::Problem;
use std::collections::BTreeSet;

/// A configured rule, ready to match.
#[derive(Clone, Debug)]
struct Rule {
    id: String,
    when: RuleWhen,
    action: RuleAction,
    to: Option<String>,
}

/// Everything [`super::Policy`] needs per check, built once.
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    /// Each account's trust, ceilings, locale and safety net.
    accounts: Resolved,
    engine: Engine,
    secure_account: Option<String>,
    over_ceiling: OverCeiling,
    redact_up_to: Class,
    placeholder: String,
    attachment_class: Class,
    inbound_notice_class: Class,
    consent_purposes: Vec<String>,
    disabled: BTreeSet<String>,
    rules: Vec<Rule>,
    notices: Notices,
    locale: Locale,
    max_text_bytes: usize,
}

/// One rule's proposal.
#[derive(Clone, Debug)]
struct Outcome {
    rule: String,
    action: Action,
    /// For Redact: indices of the hits to mask.
    redact: Vec<usize>,
}

/// What the rules look at.
struct Hop<'a> {
    input: &'a CheckInput<'a>,
    name: String,
    trust: Trust,
    hits: &'a [Hit],
    class: Class,
    effective: Class,
    ceiling: Class,
    consent: bool,
}

impl Compiled {
    pub(crate) fn new(config: &PolicyConfig) -> Result<Compiled, Vec<Problem>> {
        let d = &config.detection;
        let defaults = Params::default();
        let params = Params {
            threshold: d.threshold.map_or(defaults.threshold, pct),
            boost: d.context_boost.map_or(defaults.boost, pct),
            floor: d.context_floor.map_or(defaults.floor, pct),
            words_before: d.context_words_before.unwrap_or(defaults.words_before),
            words_after: d.context_words_after.unwrap_or(defaults.words_after),
        };
        let engine =
            Engine::build(assemble(config), params, &config.allow).map_err(|e| vec![Problem::new("policy", e)])?;
        let rules = config
            .rule
            .iter()
            .map(|r| Rule { id: r.id.clone(), when: r.when.clone(), action: r.action, to: r.to.clone() })
            .collect();
        Ok(Compiled {
            accounts: Resolved::new(config),
            engine,
            secure_account: config.secure_account.clone(),
            over_ceiling: config.over_ceiling.unwrap_or_default(),
            redact_up_to: config.redact_up_to.unwrap_or(Class::Identifier),
            placeholder: config.placeholder.clone().unwrap_or_else(|| DEFAULT_PLACEHOLDER.to_string()),
            attachment_class: config.attachment_class.unwrap_or(Class::Clinical),
            inbound_notice_class: config.inbound_notice_class.unwrap_or(Class::Identifier),
            consent_purposes: config.consent_purposes.clone().unwrap_or_else(|| vec!["clinical".to_string()]),
            disabled: config.disable.iter().cloned().collect(),
            rules,
            notices: Notices::new(&config.notices),
            locale: config.locale.unwrap_or_default(),
            max_text_bytes: d.max_text_bytes.unwrap_or(DEFAULT_MAX_TEXT_BYTES),
        })
    }

    pub(crate) fn kinds(&self) -> Vec<(String, Class)> {
        self.engine.specs().iter().map(|s| (s.kind.clone(), s.class)).collect()
    }

    pub(crate) fn trust(&self, account: &AccountId) -> Trust {
        self.accounts.of(account).trust
    }

    pub(crate) fn settings(&self, account: &AccountId) -> super::resolved::AccountSettings {
        self.accounts.of(account)
    }

    /// The ceiling for this hop, and whether a consent in force raised it.
    pub(crate) fn ceiling(&self, account: &AccountId, audience: Audience, consents: &[ConsentGrant]) -> (Class, bool) {
        let consent = self.has_consent(account, consents);
        (self.accounts.of(account).ceiling.for_audience(audience, consent), consent)
    }

    fn has_consent(&self, account: &AccountId, consents: &[ConsentGrant]) -> bool {
        if consents.is_empty() {
            return false;
        }
        let name = account.to_string();
        consents.iter().any(|g| g.account == name && self.consent_purposes.contains(&g.purpose))
    }

    fn locale_of(&self, account: &AccountId) -> Locale {
        self.accounts.of(account).locale
    }

    pub(crate) fn reroute_notice(&self, account: &AccountId, audience: Audience) -> String {
        let kind = match audience {
            Audience::Patient => NoticeKind::SecureMessage,
            Audience::Staff => NoticeKind::StaffSecureMessage,
        };
        self.notices.render(kind, self.locale_of(account))
    }

    fn enabled(&self, rule: &str) -> bool {
        !self.disabled.contains(rule)
    }

    pub(crate) fn check(&self, input: &CheckInput<'_>) -> Decision {
        self.decide(input, &self.scan(input.text))
    }

    /// The detectors' findings in `text`; none for a text too long to scan.
    pub(crate) fn scan<'t>(&self, text: &'t str) -> Scan<'t> {
        let hits = (text.len() <= self.max_text_bytes).then(|| self.engine.detect(text));
        Scan { text, hits }
    }

    /// Decides on the findings of `scan`, which must be of `input.text`.
    pub(crate) fn decide(&self, input: &CheckInput<'_>, scan: &Scan<'_>) -> Decision {
        let Some(hits) = &scan.hits else { return self.too_long(input) };
        let class = classify::text_class(&self.engine, hits);
        match input.direction {
            Direction::In => self.inbound(input, hits, class),
            Direction::Out => self.outbound(input, hits, class),
        }
    }

    fn too_long(&self, input: &CheckInput<'_>) -> Decision {
        let rule = "builtin.too_long".to_string();
        let (action, rules) = match input.direction {
            Direction::In => (Action::Allow, vec!["builtin.inbound.record".to_string(), rule]),
            Direction::Out => (Action::Hold, vec![rule]),
        };
        let (notice, notice_to) = self.notice(&action, input);
        let applied = rules.iter().map(|r| AppliedRule { rule: r.clone(), action: action.name().into() }).collect();
        Decision {
            action,
            rules,
            class: Class::Sensitive,
            findings: Vec::new(),
            rendered: None,
            notice,
            notice_to,
            effective_class: Class::Sensitive,
            applied,
        }
    }

    fn inbound(&self, input: &CheckInput<'_>, hits: &[Hit], class: Class) -> Decision {
        let mut rules = vec!["builtin.inbound.record".to_string()];
        let advisory = "builtin.inbound.insecure_notice";
        let (mut notice, mut notice_to) = (None, None);
        if self.trust(input.account) == Trust::Insecure
            && class > Class::None
            && class >= self.inbound_notice_class
            && self.enabled(advisory)
        {
            rules.push(advisory.to_string());
            notice = Some(self.notices.render(NoticeKind::UseSecureChannel, self.locale_of(input.account)));
            notice_to = Some(NoticeTarget::Sender);
        }
        let applied = rules.iter().map(|r| AppliedRule { rule: r.clone(), action: "allow".into() }).collect();
        Decision {
            action: Action::Allow,
            rules,
            class,
            findings: classify::findings(&self.engine, hits),
            rendered: None,
            notice,
            notice_to,
            effective_class: class,
            applied,
        }
    }

    fn outbound(&self, input: &CheckInput<'_>, hits: &[Hit], class: Class) -> Decision {
        let trust = self.trust(input.account);
        let (ceiling, consent) = self.ceiling(input.account, input.audience, input.consents);
        let mut effective = class.max(input.conversation_class);
        if input.has_attachments {
            effective = effective.max(self.attachment_class);
        }
        let hop = Hop { input, name: input.account.to_string(), trust, hits, class, effective, ceiling, consent };
        let mut outcomes = self.builtin_outcomes(&hop);
        outcomes.extend(self.rules.iter().filter(|r| self.matches(r, &hop)).map(|r| self.rule_outcome(r, &hop)));
        if outcomes.is_empty() {
            outcomes.push(Outcome { rule: "builtin.allow".to_string(), action: Action::Allow, redact: Vec::new() });
        }

        // Most restrictive wins; every rule proposing it is named, in evaluation order.
        let severity = outcomes.iter().map(|o| o.action.severity()).max().unwrap_or(0);
        let winners: Vec<&Outcome> = outcomes.iter().filter(|o| o.action.severity() == severity).collect();
        let mut action = winners.first().map_or(Action::Allow, |o| o.action.clone());
        let mut rules: Vec<String> = Vec::new();
        for o in &winners {
            if !rules.contains(&o.rule) {
                rules.push(o.rule.clone());
            }
        }
        let mut applied: Vec<AppliedRule> =
            outcomes.iter().map(|o| AppliedRule { rule: o.rule.clone(), action: o.action.name().into() }).collect();
        let mut rendered = None;
        // What would go out, with the spans the safety net ignores (contact details found,
        // masked placeholders).
        let mut outgoing: Option<(String, Vec<(usize, usize)>)> = None;
        if action == Action::Redact {
            let spans: BTreeSet<usize> = winners.iter().flat_map(|o| o.redact.iter().copied()).collect();
            let (text, masks) = self.render(input.text, hits, &spans);
            let again = self.engine.detect(&text);
            if classify::text_class(&self.engine, &again) > ceiling {
                action = self.over_ceiling_action(input.account);
                rules = vec!["builtin.rescan".to_string()];
                applied.push(AppliedRule { rule: "builtin.rescan".into(), action: action.name().into() });
            } else {
                let mut neutral = masks;
                neutral.extend(again.iter().map(|h| (h.start, h.end)));
                outgoing = Some((text.clone(), neutral));
                rendered = Some(text);
            }
        }
        let net = "builtin.insecure.safety_net";
        if action.severity() <= Action::Redact.severity()
            && input.audience == Audience::Patient
            && trust == Trust::Insecure
            && self.enabled(net)
            && self.safety_net_on(input.account)
        {
            let safe = match &outgoing {
                Some((text, neutral)) => safe::reads_safe(text, neutral),
                None => {
                    let neutral: Vec<(usize, usize)> = hits.iter().map(|h| (h.start, h.end)).collect();
                    safe::reads_safe(input.text, &neutral)
                }
            };
            if !safe {
                action = self.over_ceiling_action(input.account);
                rules = vec![net.to_string()];
                rendered = None;
            }
        }
        let (notice, notice_to) = self.notice(&action, input);
        Decision {
            action,
            rules,
            class,
            findings: classify::findings(&self.engine, hits),
            rendered,
            notice,
            notice_to,
            effective_class: effective,
            applied,
        }
    }

    fn builtin_outcomes(&self, hop: &Hop<'_>) -> Vec<Outcome> {
        let mut out = Vec::new();
        let t = hop.trust.as_str();
        let account = hop.input.account;
        if hop.class > hop.ceiling {
            let above = classify::above(&self.engine, hop.hits, hop.ceiling);
            let redactable = hop
                .hits
                .iter()
                .filter(|h| self.engine.class(h) > hop.ceiling)
                .all(|h| self.engine.class(h) <= self.redact_up_to);
            let redact_rule = format!("builtin.redact.{t}");
            if redactable && self.enabled(&redact_rule) {
                out.push(Outcome { rule: redact_rule, action: Action::Redact, redact: above });
            } else {
                out.push(self.over_ceiling(format!("builtin.ceiling.{t}"), account));
            }
        }
        let conversation = format!("builtin.conversation.{t}");
        if hop.input.conversation_class > hop.ceiling && self.enabled(&conversation) {
            out.push(self.over_ceiling(conversation, account));
        }
        let attachments = format!("builtin.attachments.{t}");
        if hop.input.has_attachments && self.attachment_class > hop.ceiling && self.enabled(&attachments) {
            out.push(self.over_ceiling(attachments, account));
        }
        let seed = "builtin.insecure.clinical";
        if hop.input.audience == Audience::Patient
            && hop.trust == Trust::Insecure
            && hop.effective >= Class::Clinical
            && self.enabled(seed)
        {
            out.push(self.over_ceiling(seed.to_string(), account));
        }
        out
    }

    fn over_ceiling(&self, rule: String, account: &AccountId) -> Outcome {
        Outcome { rule, action: self.over_ceiling_action(account), redact: Vec::new() }
    }

    fn over_ceiling_action(&self, account: &AccountId) -> Action {
        match self.over_ceiling {
            OverCeiling::Reroute => self.reroute(self.secure_account.clone(), account),
            OverCeiling::Hold => Action::Hold,
            OverCeiling::Block => Action::Block,
        }
    }

    /// A reroute to `to`; rerouting to the very account being checked is no reroute: hold.
    fn reroute(&self, to: Option<String>, account: &AccountId) -> Action {
        if to.as_deref() == Some(account.to_string().as_str()) { Action::Hold } else { Action::Reroute { to } }
    }

    fn matches(&self, r: &Rule, hop: &Hop<'_>) -> bool {
        let w = &r.when;
        w.direction.is_none_or(|d| d == Direction::Out)
            && w.audience.is_none_or(|a| a == hop.input.audience)
            && w.trust.is_none_or(|t| t == hop.trust)
            && (w.accounts.is_empty() || w.accounts.contains(&hop.name))
            && w.class_at_least.is_none_or(|c| hop.effective >= c)
            && (w.kinds.is_empty() || hop.hits.iter().any(|h| w.kinds.iter().any(|k| k == self.engine.kind(h))))
            && w.consent.is_none_or(|c| c == hop.consent)
            && w.attachments.is_none_or(|a| a == hop.input.has_attachments)
    }

    fn rule_outcome(&self, r: &Rule, hop: &Hop<'_>) -> Outcome {
        let account = hop.input.account;
        let (action, redact) = match r.action {
            RuleAction::Allow => (Action::Allow, Vec::new()),
            RuleAction::Redact => {
                let pick: Vec<usize> = hop
                    .hits
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| {
                        if !r.when.kinds.is_empty() {
                            r.when.kinds.iter().any(|k| k == self.engine.kind(h))
                        } else if let Some(c) = r.when.class_at_least {
                            self.engine.class(h) >= c
                        } else {
                            true
                        }
                    })
                    .map(|(i, _)| i)
                    .collect();
                (Action::Redact, pick)
            }
            RuleAction::Reroute => {
                (self.reroute(r.to.clone().or_else(|| self.secure_account.clone()), account), Vec::new())
            }
            RuleAction::Hold => (Action::Hold, Vec::new()),
            RuleAction::Block => (Action::Block, Vec::new()),
        };
        Outcome { rule: r.id.clone(), action, redact }
    }

    /// Whether the account keeps the safety net (`[policy.channels] … safety_net`, default on).
    fn safety_net_on(&self, account: &AccountId) -> bool {
        self.accounts.of(account).safety_net
    }

    /// The text with the chosen hits replaced by the placeholder (overlaps merged), and where
    /// the placeholders are in it.
    fn render(&self, text: &str, hits: &[Hit], chosen: &BTreeSet<usize>) -> (String, Vec<(usize, usize)>) {
        let mut spans: Vec<(usize, usize, &str)> =
            chosen.iter().filter_map(|&i| hits.get(i)).map(|h| (h.start, h.end, self.engine.kind(h))).collect();
        spans.sort_by_key(|s| (s.0, s.1));
        let mut out = String::with_capacity(text.len());
        let mut masks = Vec::new();
        let mut pos = 0;
        for (start, end, kind) in spans {
            if end <= pos {
                continue;
            }
            let start = start.max(pos);
            let (Some(keep), Some(_)) = (text.get(pos..start), text.get(start..end)) else { continue };
            out.push_str(keep);
            let at = out.len();
            out.push_str(&self.placeholder.replace("{kind}", kind));
            masks.push((at, out.len()));
            pos = end;
        }
        out.push_str(text.get(pos..).unwrap_or_default());
        (out, masks)
    }

    /// The notice an action carries, and who it is for.
    fn notice(&self, action: &Action, input: &CheckInput<'_>) -> (Option<String>, Option<NoticeTarget>) {
        if input.direction == Direction::In {
            return (None, None);
        }
        let here = self.locale_of(input.account);
        let (kind, target, locale) = match (action, input.audience) {
            (Action::Reroute { to: Some(_) }, Audience::Patient) => {
                (NoticeKind::SecureMessage, NoticeTarget::Recipient, here)
            }
            (Action::Reroute { to: None }, Audience::Patient) => {
                (NoticeKind::ContactClinic, NoticeTarget::Recipient, here)
            }
            (Action::Reroute { .. }, Audience::Staff) => {
                (NoticeKind::StaffSecureMessage, NoticeTarget::Recipient, here)
            }
            (Action::Block | Action::Hold, Audience::Staff) => {
                (NoticeKind::UseSecureChannel, NoticeTarget::Sender, self.locale)
            }
            (Action::Block | Action::Hold, Audience::Patient) => {
                (NoticeKind::ReplyNotSent, NoticeTarget::Sender, self.locale)
            }
            (Action::Allow | Action::Redact, _) => return (None, None),
        };
        (Some(self.notices.render(kind, locale)), Some(target))
    }
}
