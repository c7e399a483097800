//! The `[policy]` section of the TOML file, as written: its schema.
//!
//! Every key is optional: no `[policy]` at all gives the defaults of docs/policy.md (Telegram
//! and webhooks insecure, email `email_plain`; contact details only on insecure channels;
//! clinical content on plain email only with consent; every built-in detector on). Defaults
//! are resolved at compile time, so the structs below hold exactly what the file says.
//!
//! Its validation is [`super::validate`]; what it means per account, resolved once at compile
//! time, is [`super::resolved`].

use super::{Audience, Class, Direction, Trust};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;
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
