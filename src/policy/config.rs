//! The `[policy]` section of the TOML file, and its validation.
//!
//! Every key is optional: no `[policy]` at all gives the defaults of docs/policy.md (Telegram
//! and webhooks insecure, email `email_plain`; contact details only on insecure channels;
//! clinical content on plain email only with consent; every built-in detector on). Defaults
//! are resolved at compile time, so the structs below hold exactly what the file says.
//!
//! Validation is pure and reports every problem with its TOML path
//! (`policy.detector[1].pattern`, `policy.channels."telegram.front_desk"`), regex errors
//! verbatim, and did-you-mean suggestions for accounts, kinds and rule ids.

use super::detectors::{self, normalize};
use super::{Audience, Class, Direction, Trust};
use carebridge_contract::config::Problem;
use carebridge_contract::{AccountId, ChannelKind};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The largest text the engine scans (64 MiB); `detection.max_text_bytes` may not exceed it.
pub const MAX_TEXT_BYTES_LIMIT: usize = 64 << 20;
/// The default `detection.max_text_bytes` (1 MiB): longer texts are not scanned but treated as
/// `sensitive` (fail closed).
pub const DEFAULT_MAX_TEXT_BYTES: usize = 1 << 20;
/// The default redaction placeholder; `{kind}` is the finding's kind.
pub const DEFAULT_PLACEHOLDER: &str = "[{kind}]";

/// The `[policy]` section of the TOML file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Language of notices: `en` (default), `fr` or `bilingual` (English then French).
    pub locale: Option<Locale>,
    /// Per-account settings keyed by account id: either a trust level
    /// (`"telegram.front_desk" = "insecure"`) or a table (`trust`, `locale`, ceiling overrides).
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelPolicy>,
    /// Class ceilings per trust level (`[policy.ceilings.insecure]`).
    #[serde(default)]
    pub ceilings: CeilingsConfig,
    /// The account rerouted content goes to (must be trusted `secure`). Without it, a reroute
    /// sends only the "please contact the clinic" notice.
    pub secure_account: Option<String>,
    /// What an outbound text above its channel's ceiling gets: `reroute` (default), `hold` or
    /// `block`.
    pub over_ceiling: Option<OverCeiling>,
    /// Findings of this class or lower are masked instead of rerouting when they are all that
    /// breaks the ceiling (default `identifier`; `none` turns redaction off).
    pub redact_up_to: Option<Class>,
    /// What replaces a redacted span (default `[{kind}]`; `{kind}` is the only variable).
    pub placeholder: Option<String>,
    /// The class outbound attachments count as, since they are not scanned (default
    /// `clinical`).
    pub attachment_class: Option<Class>,
    /// Inbound messages of this class or higher on a channel that is not secure get a "please
    /// use a secure channel" advisory notice (default `identifier`).
    pub inbound_notice_class: Option<Class>,
    /// Consent purposes that raise a channel's ceiling to `with_consent` (default
    /// `["clinical"]`).
    pub consent_purposes: Option<Vec<String>>,
    /// The clinic's own details (phone, email, address): never findings.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Built-in rule ids to turn off (only the optional ones; see docs/policy.md).
    #[serde(default)]
    pub disable: Vec<String>,
    /// Scoring knobs.
    #[serde(default)]
    pub detection: DetectionConfig,
    /// Tuning of built-in detectors, keyed by kind (`[policy.builtin.medication]`).
    #[serde(default)]
    pub builtin: BTreeMap<String, BuiltinTuning>,
    /// The clinic's own detectors (`[[policy.detector]]`).
    #[serde(default)]
    pub detector: Vec<CustomDetector>,
    /// The clinic's own rules (`[[policy.rule]]`), combined with the built-in ones: the most
    /// restrictive action wins.
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
    /// Notice wording and the clinic's details in them.
    #[serde(default)]
    pub notices: NoticesConfig,
}

/// Language of notices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Locale {
    /// English.
    #[default]
    En,
    /// French.
    Fr,
    /// English, then French.
    Bilingual,
}

/// Per-account settings. In TOML either a bare trust level or a table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelPolicy {
    /// Overrides the channel kind's default trust.
    pub trust: Option<Trust>,
    /// Overrides `policy.locale` for notices on this account.
    pub locale: Option<Locale>,
    /// Overrides the trust level's `without_consent` ceiling for this account.
    pub without_consent: Option<Class>,
    /// Overrides the trust level's `with_consent` ceiling for this account.
    pub with_consent: Option<Class>,
    /// Overrides the trust level's `staff` ceiling for this account (e.g. a staff group).
    pub staff: Option<Class>,
    /// `false` turns off the safety net (`builtin.insecure.safety_net`) for this account.
    pub safety_net: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelTable {
    trust: Option<Trust>,
    locale: Option<Locale>,
    without_consent: Option<Class>,
    with_consent: Option<Class>,
    staff: Option<Class>,
    safety_net: Option<bool>,
}

impl<'de> Deserialize<'de> for ChannelPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ChannelPolicy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a trust level (\"secure\", \"email_plain\" or \"insecure\") or a table with trust, locale, \
                     without_consent, with_consent, staff, safety_net",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ChannelPolicy, E> {
                let trust = Trust::deserialize(de::value::StrDeserializer::<E>::new(s))?;
                Ok(ChannelPolicy { trust: Some(trust), ..ChannelPolicy::default() })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ChannelPolicy, A::Error> {
                let t = ChannelTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ChannelPolicy {
                    trust: t.trust,
                    locale: t.locale,
                    without_consent: t.without_consent,
                    with_consent: t.with_consent,
                    staff: t.staff,
                    safety_net: t.safety_net,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Ceilings per trust level.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeilingsConfig {
    /// `[policy.ceilings.insecure]`.
    pub insecure: Option<CeilingConfig>,
    /// `[policy.ceilings.email_plain]`.
    pub email_plain: Option<CeilingConfig>,
    /// `[policy.ceilings.secure]`.
    pub secure: Option<CeilingConfig>,
}

/// The highest class a channel may carry: to a patient without consent, with consent, and
/// to staff (consent does not apply to staff channels).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeilingConfig {
    /// To a patient with no consent in force for this channel.
    pub without_consent: Option<Class>,
    /// To a patient with a consent in force (a purpose in `consent_purposes`).
    pub with_consent: Option<Class>,
    /// To clinic staff (inbox, staff chat, EHR).
    pub staff: Option<Class>,
}

/// A resolved ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ceiling {
    pub without_consent: Class,
    pub with_consent: Class,
    pub staff: Class,
}

impl Ceiling {
    /// The defaults per trust level (docs/policy.md, "Defaults").
    pub(crate) fn default_for(trust: Trust) -> Ceiling {
        match trust {
            Trust::Insecure => {
                Ceiling { without_consent: Class::Contact, with_consent: Class::Contact, staff: Class::Contact }
            }
            Trust::EmailPlain => {
                Ceiling { without_consent: Class::Contact, with_consent: Class::Clinical, staff: Class::Sensitive }
            }
            Trust::Secure => {
                Ceiling { without_consent: Class::Sensitive, with_consent: Class::Sensitive, staff: Class::Sensitive }
            }
        }
    }

    fn overlay(self, c: Option<&CeilingConfig>) -> Ceiling {
        let Some(c) = c else { return self };
        Ceiling {
            without_consent: c.without_consent.unwrap_or(self.without_consent),
            with_consent: c.with_consent.unwrap_or(self.with_consent),
            staff: c.staff.unwrap_or(self.staff),
        }
    }

    /// The ceiling for an audience.
    pub(crate) fn for_audience(&self, audience: Audience, consent: bool) -> Class {
        match (audience, consent) {
            (Audience::Staff, _) => self.staff,
            (Audience::Patient, true) => self.with_consent,
            (Audience::Patient, false) => self.without_consent,
        }
    }
}

/// What an over-ceiling outbound text gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverCeiling {
    /// Send on `secure_account` instead, with a notice here.
    #[default]
    Reroute,
    /// Keep for clinician review.
    Hold,
    /// Do not send; notice to the sender.
    Block,
}

/// Scoring knobs (`[policy.detection]`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionConfig {
    /// Minimum score of a finding, 0..=1 (default 0.4).
    pub threshold: Option<f64>,
    /// Added to a score when a context word is near (default 0.35).
    pub context_boost: Option<f64>,
    /// Minimum score of a match with a context word near (default 0.4).
    pub context_floor: Option<f64>,
    /// Words before a match searched for context words (default 6).
    pub context_words_before: Option<usize>,
    /// Words after a match searched for context words (default 3).
    pub context_words_after: Option<usize>,
    /// Longest text scanned, in bytes (default 1 MiB, at most 64 MiB). Longer texts are not
    /// scanned and count as `sensitive`.
    pub max_text_bytes: Option<usize>,
}

/// Tuning of one built-in detector (`[policy.builtin.<kind>]`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinTuning {
    /// `false` turns the detector off.
    pub enabled: Option<bool>,
    /// The class its findings give (overrides the default mapping).
    pub class: Option<Class>,
    /// Overrides the global threshold for this detector.
    pub threshold: Option<f64>,
    /// `mrn` only: the base score of a match (default 0.05, so a context word is needed).
    pub score: Option<f64>,
    /// Whether a context word must be near every match.
    pub context_required: Option<bool>,
    /// `mrn` only: the clinic's chart-number pattern (Rust regex syntax).
    pub pattern: Option<String>,
    /// Keyword detectors only: terms added to the shipped list.
    #[serde(default)]
    pub terms: Vec<String>,
    /// Keyword detectors only: shipped terms to drop.
    #[serde(default)]
    pub remove_terms: Vec<String>,
    /// Context words added to the shipped ones.
    #[serde(default)]
    pub context: Vec<String>,
}

/// A check-digit validator for custom detectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validator {
    /// No validation.
    #[default]
    None,
    /// The match's digits must pass the Luhn (mod 10) check.
    Luhn,
}

/// One of the clinic's own detectors (`[[policy.detector]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    /// Kind name reported in findings: `[a-z][a-z0-9_]*`, not a built-in kind.
    pub kind: String,
    /// The class its findings give.
    pub class: Class,
    /// A Rust regex (no look-around); `(?i)` for case-insensitive.
    pub pattern: Option<String>,
    /// Keywords (whole words, case- and accent-insensitive).
    #[serde(default)]
    pub terms: Vec<String>,
    /// Context words that raise the score when near a match.
    #[serde(default)]
    pub context: Vec<String>,
    /// Whether a context word must be near every match (default false).
    #[serde(default)]
    pub context_required: bool,
    /// Base score of a match, 0..=1 (default 0.6).
    pub score: Option<f64>,
    /// Overrides the global threshold.
    pub threshold: Option<f64>,
    /// Check-digit validation of pattern matches (default none).
    #[serde(default)]
    pub validator: Validator,
    /// Reject pattern matches glued to more digits or letters (default true).
    pub isolated: Option<bool>,
}

/// One of the clinic's own rules (`[[policy.rule]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Stable id named in decisions and logs (not starting with `builtin.`).
    pub id: String,
    /// Conditions, all of which must hold (an empty `when` matches every outbound hop).
    #[serde(default)]
    pub when: RuleWhen,
    /// What a match asks for.
    pub action: RuleAction,
    /// `reroute` only: the account to send on instead (default `policy.secure_account`).
    pub to: Option<String>,
}

/// A rule's conditions.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleWhen {
    /// Only `out`: inbound messages are always accepted and recorded.
    pub direction: Option<Direction>,
    /// Who reads the hop.
    pub audience: Option<Audience>,
    /// The hop account's trust.
    pub trust: Option<Trust>,
    /// The hop's account is one of these.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// The effective class (text, conversation and attachments) is at least this.
    pub class_at_least: Option<Class>,
    /// A finding of one of these kinds is present.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// A consent is (true) or is not (false) in force for the patient on this account.
    pub consent: Option<bool>,
    /// The message has (true) or has no (false) attachments.
    pub attachments: Option<bool>,
}

/// What a rule asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Nothing more (names the rule in allowed decisions).
    Allow,
    /// Mask the findings of `when.kinds` (or of class ≥ `when.class_at_least`, or all).
    Redact,
    /// Send on `to` (or `secure_account`) instead, with a notice here.
    Reroute,
    /// Keep for clinician review.
    Hold,
    /// Do not send; notice to the sender.
    Block,
}

/// Notice wording (`[policy.notices.en]`, `[policy.notices.fr]`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticesConfig {
    /// English.
    #[serde(default)]
    pub en: NoticeTexts,
    /// French.
    #[serde(default)]
    pub fr: NoticeTexts,
}

/// One language's notice values and optional template overrides. Templates may use only
/// `{clinic}` and `{contact}`: a notice can never carry message text or patient details.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeTexts {
    /// The clinic's name (default "the clinic" / "la clinique").
    pub clinic: Option<String>,
    /// How to reach the clinic securely (phone, portal URL).
    pub contact: Option<String>,
    /// To a patient whose reply went to the secure account.
    pub secure_message: Option<String>,
    /// To a patient whose reply cannot be sent on this channel and has no secure account.
    pub contact_clinic: Option<String>,
    /// To a patient who sent PHI on a channel that is not secure, or whose message could not
    /// be passed on.
    pub use_secure_channel: Option<String>,
    /// To a staff channel whose forward went to the secure account.
    pub staff_secure_message: Option<String>,
    /// To a clinician whose reply was not sent.
    pub reply_not_sent: Option<String>,
}

impl NoticeTexts {
    /// The template overrides with their key names.
    pub(crate) fn templates(&self) -> [(&'static str, Option<&str>); 5] {
        [
            ("secure_message", self.secure_message.as_deref()),
            ("contact_clinic", self.contact_clinic.as_deref()),
            ("use_secure_channel", self.use_secure_channel.as_deref()),
            ("staff_secure_message", self.staff_secure_message.as_deref()),
            ("reply_not_sent", self.reply_not_sent.as_deref()),
        ]
    }
}

/// Built-in rule ids that `policy.disable` may turn off.
pub(crate) fn disableable_rules() -> Vec<String> {
    let mut v = vec![
        "builtin.inbound.insecure_notice".to_string(),
        "builtin.insecure.clinical".to_string(),
        "builtin.insecure.safety_net".to_string(),
    ];
    for t in Trust::ALL {
        v.push(format!("builtin.redact.{}", t.as_str()));
        v.push(format!("builtin.conversation.{}", t.as_str()));
        v.push(format!("builtin.attachments.{}", t.as_str()));
    }
    v
}

/// Every built-in rule id.
pub(crate) fn builtin_rules() -> Vec<String> {
    let mut v = vec![
        "builtin.allow".to_string(),
        "builtin.inbound.record".to_string(),
        "builtin.too_long".to_string(),
        "builtin.rescan".to_string(),
    ];
    for t in Trust::ALL {
        v.push(format!("builtin.ceiling.{}", t.as_str()));
    }
    v.extend(disableable_rules());
    v
}

impl PolicyConfig {
    /// Pure validation; `accounts` are the configured account ids (for did-you-mean).
    pub fn validate(&self, accounts: &[AccountId]) -> Vec<Problem> {
        self.check(Some(accounts))
    }

    /// Validation with or without the account list (compile has none).
    pub(crate) fn check(&self, accounts: Option<&[AccountId]>) -> Vec<Problem> {
        let mut p = Vec::new();
        self.check_channels(accounts, &mut p);
        self.check_scalars(accounts, &mut p);
        self.check_detection(&mut p);
        let builtin = detectors::builtin_specs();
        self.check_builtin(&builtin, &mut p);
        let custom_kinds = self.check_detectors(&builtin, &mut p);
        let mut kinds: Vec<String> = builtin.iter().map(|s| s.kind.clone()).collect();
        kinds.extend(custom_kinds);
        self.check_rules(&kinds, accounts, &mut p);
        self.check_notices(&mut p);
        p
    }

    /// The resolved ceiling of a trust level (config over defaults).
    pub(crate) fn ceiling_for(&self, trust: Trust) -> Ceiling {
        let c = match trust {
            Trust::Insecure => self.ceilings.insecure.as_ref(),
            Trust::EmailPlain => self.ceilings.email_plain.as_ref(),
            Trust::Secure => self.ceilings.secure.as_ref(),
        };
        Ceiling::default_for(trust).overlay(c)
    }

    /// The trust of an account id string (configured, or its kind's default).
    pub(crate) fn trust_of(&self, account: &str) -> Option<Trust> {
        if let Some(t) = self.channels.get(account).and_then(|c| c.trust) {
            return Some(t);
        }
        account.parse::<AccountId>().ok().map(|a| default_trust(a.kind()))
    }

    /// The resolved ceiling of an account: its trust level's, with the account's overrides.
    pub(crate) fn ceiling_of_account(&self, account: &str, trust: Trust) -> Ceiling {
        let base = self.ceiling_for(trust);
        let Some(ch) = self.channels.get(account) else { return base };
        Ceiling {
            without_consent: ch.without_consent.unwrap_or(base.without_consent),
            with_consent: ch.with_consent.unwrap_or(base.with_consent),
            staff: ch.staff.unwrap_or(base.staff),
        }
    }

    fn check_channels(&self, accounts: Option<&[AccountId]>, p: &mut Vec<Problem>) {
        for t in Trust::ALL {
            let c = self.ceiling_for(t);
            if c.with_consent < c.without_consent {
                p.push(Problem::new(
                    format!("policy.ceilings.{}.with_consent", t.as_str()),
                    format!(
                        "`{}` is lower than without_consent (`{}`): consent can only raise a ceiling",
                        c.with_consent.as_str(),
                        c.without_consent.as_str()
                    ),
                ));
            }
        }
        for (name, ch) in &self.channels {
            let path = format!("policy.channels.{}", quote_key(name));
            check_account(name, &path, accounts, p);
            let Some(trust) = self.trust_of(name) else { continue };
            let c = self.ceiling_of_account(name, trust);
            if (ch.with_consent.is_some() || ch.without_consent.is_some()) && c.with_consent < c.without_consent {
                p.push(Problem::new(
                    format!("{path}.with_consent"),
                    format!(
                        "`{}` is lower than without_consent (`{}`): consent can only raise a ceiling",
                        c.with_consent.as_str(),
                        c.without_consent.as_str()
                    ),
                ));
            }
        }
    }

    fn check_scalars(&self, accounts: Option<&[AccountId]>, p: &mut Vec<Problem>) {
        if let Some(s) = &self.secure_account {
            let path = "policy.secure_account";
            if check_account(s, path, accounts, p)
                && let Some(t) = self.trust_of(s)
                && t != Trust::Secure
            {
                p.push(Problem::new(
                    path,
                    format!(
                        "`{s}` is trusted as `{}`, not `secure`: reroutes must go to a secure account (set \
                         [policy.channels.{}] trust = \"secure\" if the clinic controls it end to end)",
                        t.as_str(),
                        quote_key(s)
                    ),
                ));
            }
        }
        if let Some(ph) = &self.placeholder {
            if let Err(e) = check_template(ph, &["kind"]) {
                p.push(Problem::new("policy.placeholder", e));
            } else if ph.chars().count() > 100 {
                p.push(Problem::new("policy.placeholder", "must be at most 100 characters"));
            }
        }
        if let Some(purposes) = &self.consent_purposes {
            for (i, s) in purposes.iter().enumerate() {
                if s.trim().is_empty() {
                    p.push(Problem::new(format!("policy.consent_purposes[{i}]"), "must not be empty"));
                }
            }
        }
        for (i, a) in self.allow.iter().enumerate() {
            if normalize::compact(a).is_empty() {
                p.push(Problem::new(format!("policy.allow[{i}]"), "must contain letters or digits"));
            }
        }
        let optional = disableable_rules();
        let all = builtin_rules();
        for (i, id) in self.disable.iter().enumerate() {
            if optional.contains(id) {
                continue;
            }
            let path = format!("policy.disable[{i}]");
            let msg = if id.starts_with("builtin.ceiling.") {
                format!("`{id}` cannot be disabled: raise the ceiling in [policy.ceilings] instead")
            } else if all.contains(id) {
                format!("`{id}` cannot be disabled")
            } else {
                format!("unknown built-in rule `{id}`{}", did_you_mean(id, optional.iter().map(String::as_str)))
            };
            p.push(Problem::new(path, msg));
        }
    }

    fn check_detection(&self, p: &mut Vec<Problem>) {
        let d = &self.detection;
        for (key, v) in
            [("threshold", d.threshold), ("context_boost", d.context_boost), ("context_floor", d.context_floor)]
        {
            check_unit(v, &format!("policy.detection.{key}"), p);
        }
        for (key, v) in
            [("context_words_before", d.context_words_before), ("context_words_after", d.context_words_after)]
        {
            if v.is_some_and(|n| n > 50) {
                p.push(Problem::new(format!("policy.detection.{key}"), "must be at most 50 words"));
            }
        }
        if let Some(n) = d.max_text_bytes
            && (n == 0 || n > MAX_TEXT_BYTES_LIMIT)
        {
            p.push(Problem::new(
                "policy.detection.max_text_bytes",
                format!("must be between 1 and {MAX_TEXT_BYTES_LIMIT} bytes"),
            ));
        }
    }

    fn check_builtin(&self, builtin: &[detectors::Spec], p: &mut Vec<Problem>) {
        for (kind, t) in &self.builtin {
            let path = format!("policy.builtin.{}", quote_key(kind));
            let Some(spec) = builtin.iter().find(|s| &s.kind == kind) else {
                p.push(Problem::new(
                    path,
                    format!(
                        "unknown built-in detector `{kind}`{}",
                        did_you_mean(kind, builtin.iter().map(|s| s.kind.as_str()))
                    ),
                ));
                continue;
            };
            if kind != "mrn" {
                if t.pattern.is_some() {
                    p.push(Problem::new(
                        format!("{path}.pattern"),
                        "only `mrn` takes a pattern; add a [[policy.detector]] for another format",
                    ));
                }
                if t.score.is_some() {
                    p.push(Problem::new(format!("{path}.score"), "only `mrn` takes a score"));
                }
            }
            if let Some(pat) = &t.pattern {
                check_pattern(pat, &format!("{path}.pattern"), p);
            }
            check_unit(t.score, &format!("{path}.score"), p);
            check_unit(t.threshold, &format!("{path}.threshold"), p);
            if !spec.has_terms() && (!t.terms.is_empty() || !t.remove_terms.is_empty()) {
                p.push(Problem::new(
                    format!("{path}.terms"),
                    format!("`{kind}` is not a keyword detector; add a [[policy.detector]] with terms instead"),
                ));
            }
            check_terms(&t.terms, &format!("{path}.terms"), p);
            check_terms(&t.context, &format!("{path}.context"), p);
            let shipped: BTreeSet<String> = spec.terms.iter().map(|s| normalize::fold_term(s)).collect();
            for (i, r) in t.remove_terms.iter().enumerate() {
                if spec.has_terms() && !shipped.contains(&normalize::fold_term(r)) {
                    p.push(Problem::new(
                        format!("{path}.remove_terms[{i}]"),
                        format!("`{r}` is not in the shipped `{kind}` list"),
                    ));
                }
            }
        }
    }

    /// Checks `[[policy.detector]]`; returns the custom kinds (for rule validation).
    fn check_detectors(&self, builtin: &[detectors::Spec], p: &mut Vec<Problem>) -> Vec<String> {
        let mut seen = BTreeSet::new();
        for (i, d) in self.detector.iter().enumerate() {
            let path = format!("policy.detector[{i}]");
            if !valid_kind(&d.kind) {
                p.push(Problem::new(
                    format!("{path}.kind"),
                    format!("`{}` must be 1-64 characters of a-z, 0-9 and `_`, starting with a letter", d.kind),
                ));
            } else if builtin.iter().any(|s| s.kind == d.kind) {
                p.push(Problem::new(
                    format!("{path}.kind"),
                    format!(
                        "`{}` is a built-in detector: tune it under [policy.builtin.{}] or pick another name",
                        d.kind, d.kind
                    ),
                ));
            } else if !seen.insert(d.kind.clone()) {
                p.push(Problem::new(format!("{path}.kind"), format!("`{}` is defined twice", d.kind)));
            }
            if d.pattern.is_none() && d.terms.is_empty() {
                p.push(Problem::new(path.clone(), "set `pattern` or `terms` (or both)"));
            }
            if let Some(pat) = &d.pattern {
                check_pattern(pat, &format!("{path}.pattern"), p);
            }
            if d.validator != Validator::None && d.pattern.is_none() {
                p.push(Problem::new(format!("{path}.validator"), "a validator needs a `pattern`"));
            }
            if d.context_required && d.context.is_empty() {
                p.push(Problem::new(format!("{path}.context"), "context_required = true needs context words"));
            }
            check_unit(d.score, &format!("{path}.score"), p);
            check_unit(d.threshold, &format!("{path}.threshold"), p);
            check_terms(&d.terms, &format!("{path}.terms"), p);
            check_terms(&d.context, &format!("{path}.context"), p);
        }
        seen.into_iter().collect()
    }

    fn check_rules(&self, kinds: &[String], accounts: Option<&[AccountId]>, p: &mut Vec<Problem>) {
        let mut ids = BTreeSet::new();
        for (i, r) in self.rule.iter().enumerate() {
            let path = format!("policy.rule[{i}]");
            let id_ok = !r.id.is_empty()
                && r.id.len() <= 100
                && r.id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !id_ok {
                p.push(Problem::new(
                    format!("{path}.id"),
                    format!("`{}` must be 1-100 characters of A-Z, a-z, 0-9, `.`, `_`, `-`", r.id),
                ));
            } else if r.id.starts_with("builtin.") {
                p.push(Problem::new(format!("{path}.id"), "ids starting with `builtin.` are reserved"));
            } else if !ids.insert(r.id.as_str()) {
                p.push(Problem::new(format!("{path}.id"), format!("`{}` is used by an earlier rule", r.id)));
            }
            if r.when.direction == Some(Direction::In) {
                p.push(Problem::new(
                    format!("{path}.when.direction"),
                    "inbound messages are always accepted and recorded; to limit where they go, write the rule \
                     for direction = \"out\" (audience = \"staff\" for forwards)",
                ));
            }
            for (j, k) in r.when.kinds.iter().enumerate() {
                if !kinds.contains(k) {
                    p.push(Problem::new(
                        format!("{path}.when.kinds[{j}]"),
                        format!("unknown detector kind `{k}`{}", did_you_mean(k, kinds.iter().map(String::as_str))),
                    ));
                }
            }
            for (j, a) in r.when.accounts.iter().enumerate() {
                check_account(a, &format!("{path}.when.accounts[{j}]"), accounts, p);
            }
            if let Some(to) = &r.to {
                if r.action != RuleAction::Reroute {
                    p.push(Problem::new(format!("{path}.to"), "`to` only goes with action = \"reroute\""));
                } else {
                    check_account(to, &format!("{path}.to"), accounts, p);
                }
            }
        }
    }

    fn check_notices(&self, p: &mut Vec<Problem>) {
        for (lang, texts) in [("en", &self.notices.en), ("fr", &self.notices.fr)] {
            for (key, t) in texts.templates() {
                let Some(t) = t else { continue };
                let path = format!("policy.notices.{lang}.{key}");
                if t.trim().is_empty() {
                    p.push(Problem::new(path, "must not be empty"));
                } else if let Err(e) = check_template(t, &["clinic", "contact"]) {
                    p.push(Problem::new(path, e));
                }
            }
            for (key, v) in [("clinic", &texts.clinic), ("contact", &texts.contact)] {
                if let Some(v) = v
                    && v.contains(['{', '}'])
                {
                    p.push(Problem::new(format!("policy.notices.{lang}.{key}"), "must not contain `{` or `}`"));
                }
            }
        }
    }
}

/// The channel kind's default trust (Telegram and webhooks insecure, email plain, FHIR secure).
pub(crate) fn default_trust(kind: ChannelKind) -> Trust {
    match kind {
        ChannelKind::Telegram => Trust::Insecure,
        ChannelKind::Email => Trust::EmailPlain,
        ChannelKind::Webhook => Trust::Insecure,
        // The clinic's own EMR, over TLS with carebridge's credentials: a staff-side secure hop.
        ChannelKind::Fhir => Trust::Secure,
    }
}

/// `a.b` needs quotes as a TOML key; `ab` does not.
fn quote_key(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        k.to_string()
    } else {
        format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Checks an account id's syntax and, when the list is known, its existence. Returns whether
/// it is usable.
fn check_account(name: &str, path: &str, accounts: Option<&[AccountId]>, p: &mut Vec<Problem>) -> bool {
    if let Err(e) = name.parse::<AccountId>() {
        p.push(Problem::new(path, e.to_string()));
        return false;
    }
    let Some(accounts) = accounts else { return true };
    if accounts.iter().any(|a| a.to_string() == name) {
        return true;
    }
    let names: Vec<String> = accounts.iter().map(ToString::to_string).collect();
    p.push(Problem::new(
        path,
        format!("unknown account `{name}`{}", did_you_mean(name, names.iter().map(String::as_str))),
    ));
    false
}

fn check_unit(v: Option<f64>, path: &str, p: &mut Vec<Problem>) {
    if let Some(x) = v
        && !(0.0..=1.0).contains(&x)
    {
        p.push(Problem::new(path, format!("{x} is not between 0 and 1")));
    }
}

fn check_terms(terms: &[String], path: &str, p: &mut Vec<Problem>) {
    for (i, t) in terms.iter().enumerate() {
        if normalize::fold_term(t).is_empty() {
            p.push(Problem::new(format!("{path}[{i}]"), "must not be empty"));
        }
    }
}

fn check_pattern(pattern: &str, path: &str, p: &mut Vec<Problem>) {
    match detectors::compile_regex(pattern) {
        Err(e) => p.push(Problem::new(path, format!("invalid regex: {e}"))),
        Ok(re) => {
            if re.is_match("") {
                p.push(Problem::new(
                    path,
                    "the pattern matches the empty string; it must match at least one character",
                ));
            }
        }
    }
}

fn valid_kind(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase())
        && k.len() <= 64
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// Checks that a template uses only `{var}` from `vars`, with balanced braces.
fn check_template(t: &str, vars: &[&str]) -> Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("unbalanced `}`".to_string());
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { return Err("unbalanced `{`".to_string()) };
        let var = &after[..close];
        if !vars.contains(&var) {
            let allowed: Vec<String> = vars.iter().map(|v| format!("{{{v}}}")).collect();
            return Err(format!("unknown variable `{{{var}}}` (allowed: {})", allowed.join(", ")));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// ", did you mean `x`?" for the closest option, or "".
pub(crate) fn did_you_mean<'a>(word: &str, options: impl IntoIterator<Item = &'a str>) -> String {
    let best = options
        .into_iter()
        .map(|o| (strsim::levenshtein(word, o), o))
        .filter(|(d, o)| *d <= 2.max(o.chars().count() / 3))
        .min_by_key(|(d, o)| (*d, *o));
    match best {
        Some((_, o)) => format!(", did you mean `{o}`?"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("telegram.frontdesk", ["telegram.front_desk", "email.clinic"]),
            ", did you mean `telegram.front_desk`?"
        );
        assert_eq!(did_you_mean("medicaton", ["medication", "mrn"]), ", did you mean `medication`?");
        assert_eq!(did_you_mean("zzz", ["medication"]), "");
    }

    #[test]
    fn templates() {
        assert!(check_template("Call {clinic}: {contact}", &["clinic", "contact"]).is_ok());
        assert!(check_template("Hi {name}", &["clinic"]).is_err());
        assert!(check_template("oops {clinic", &["clinic"]).is_err());
        assert!(check_template("oops }", &["clinic"]).is_err());
        assert_eq!(quote_key("telegram.front_desk"), "\"telegram.front_desk\"");
        assert_eq!(quote_key("medication"), "medication");
    }
}
