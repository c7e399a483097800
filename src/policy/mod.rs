//! The privacy policy engine: for one message on one hop, decides what may go out on which
//! channel, for which patient, with what consent.
//!
//! The engine is pure (no I/O, no clock), deterministic, and total: it never panics, whatever
//! the text. Everything expensive (regexes, keyword automata, rules) is compiled once by
//! [`Policy::compile`]; [`Policy::check`] then runs per hop.
//!
//! The model (docs/policy.md has the full reference):
//! 1. **Detect**: detectors (regex + validator + context words + score, or keyword lists) find
//!    spans; overlapping findings are resolved (highest score, then most sensitive class).
//! 2. **Classify**: the text's [`Class`] is the highest class of its findings.
//! 3. **Decide**: inbound is always accepted (and recorded by the router); outbound is held
//!    against the channel's ceiling (by [`Trust`], audience and consent), the conversation's
//!    class, attachments, and configured rules. The most restrictive [`Action`] wins and the
//!    [`Decision`] names every rule id that produced it.
//!
//! # Layout
//! - [`config`]: the `[policy]` TOML section and its validation.
//! - `detectors`: the built-in detector families and the user's own, compiled into one engine.
//! - `classify`: findings to classes.
//! - `decide`: ceilings, consent, built-in and configured rules.
//! - [`explain`]: the stable JSON of `carebridge policy explain`, and PHI-free log fields.
//! - [`notices`]: the PHI-free notices (English and French).

mod classify;
pub mod config;
mod decide;
mod detectors;
pub mod explain;
pub mod notices;
mod resolved;
mod safe;
mod validate;

#[cfg(test)]
mod tests;

pub use config::{Locale, PolicyConfig};
pub use explain::{Explanation, LogFields};

use carebridge_contract::AccountId;
use carebridge_contract::config::Problem;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// How far a channel can be trusted with PHI. Ordered: `Insecure < EmailPlain < Secure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// Social / SMS: anything can be read by the platform.
    Insecure,
    /// Ordinary email.
    EmailPlain,
    /// A channel the clinic controls end to end (EHR webhook over TLS).
    Secure,
}

impl Trust {
    /// The name used in TOML and in rule ids (`builtin.ceiling.insecure`).
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Insecure => "insecure",
            Trust::EmailPlain => "email_plain",
            Trust::Secure => "secure",
        }
    }

    /// All levels, lowest first.
    pub const ALL: [Trust; 3] = [Trust::Insecure, Trust::EmailPlain, Trust::Secure];
}

/// Which way a message is going relative to the clinic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From outside into carebridge (checked against the source account).
    In,
    /// From carebridge to a destination (checked against the destination account).
    Out,
}

/// Who will read an outbound message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// The patient (or whoever holds the patient's address on that channel).
    Patient,
    /// Clinic staff or systems (inbox, staff chat, EHR).
    Staff,
}

/// Sensitivity class of a text, ordered: `none < contact < identifier < clinical < sensitive`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Nothing found.
    #[default]
    None,
    /// Contact details.
    Contact,
    /// Identifiers (health numbers, SIN, MRN).
    Identifier,
    /// Clinical content (medications, results, diagnoses, prescription requests).
    Clinical,
    /// Sensitive clinical content.
    Sensitive,
}

impl Class {
    /// The name used in TOML, JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::None => "none",
            Class::Contact => "contact",
            Class::Identifier => "identifier",
            Class::Clinical => "clinical",
            Class::Sensitive => "sensitive",
        }
    }
}

/// A consent in force for one patient on one account, snapshotted into each record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentGrant {
    /// The account consented to.
    pub account: String,
    /// Purpose (`clinical`, `admin`, …). Only purposes listed in `policy.consent_purposes`
    /// (default `["clinical"]`) raise a channel's ceiling.
    pub purpose: String,
    /// How it was given (`telegram-link`, `cli`, …).
    pub source: String,
    /// Unix seconds.
    pub granted_at: u64,
}

impl ConsentGrant {
    /// The consents in force once this one is given: it replaces an earlier grant for the same
    /// purpose on the same account, and leaves the others. The rule lives here, with the policy
    /// that reads consents; the store only applies it, atomically with whatever else it writes.
    pub fn merged_into(self, mut in_force: Vec<ConsentGrant>) -> Vec<ConsentGrant> {
        in_force.retain(|g| g.purpose != self.purpose);
        in_force.push(self);
        in_force
    }
}

/// What the engine is asked. Its `Debug` does not print the text.
#[derive(Clone)]
pub struct CheckInput<'a> {
    /// The text to check.
    pub text: &'a str,
    /// Direction of travel.
    pub direction: Direction,
    /// The account the message arrives on (In) or leaves by (Out).
    pub account: &'a AccountId,
    /// Who reads it (Out only; Staff for In).
    pub audience: Audience,
    /// Consents in force for this patient on `account` (empty when unknown patient). Grants
    /// for other accounts are ignored.
    pub consents: &'a [ConsentGrant],
    /// Highest class seen so far in the conversation (so a reply to a prescription request is
    /// treated as clinical even if its own words are not). Ignored for In.
    pub conversation_class: Class,
    /// Whether the message carries attachments (never scanned, so they count as
    /// `policy.attachment_class`, default `clinical`, on Out).
    pub has_attachments: bool,
}

/// One detector hit (byte offsets into the UTF-8 text, always on char boundaries).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable detector kind (`sin`, `health_number_on`, …).
    pub kind: String,
    /// Byte offset of the start.
    pub start: usize,
    /// Byte offset of the end (exclusive).
    pub end: usize,
    /// Confidence 0..=1, in steps of 0.01 (serialised rounded, e.g. `0.65`).
    #[serde(serialize_with = "explain::serialize_score")]
    pub score: f32,
}

/// What to do, least restrictive first; [`Action::severity`] (and `Ord`) rank them so "most
/// restrictive wins" is a `max`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Send as is.
    Allow,
    /// Send with the findings masked (`Decision::rendered`).
    Redact,
    /// Do not send here; send on `to` (if the patient has an address there) and a PHI-free
    /// "you have a secure message" notice here.
    Reroute {
        /// The secure account to use instead, if configured.
        to: Option<String>,
    },
    /// Keep for clinician review.
    Hold,
    /// Do not send; tell the sender (PHI-free notice) how to reach the clinic securely.
    Block,
}

impl Action {
    /// 0 (allow) to 4 (block): the higher, the more restrictive.
    pub fn severity(&self) -> u8 {
        match self {
            Action::Allow => 0,
            Action::Redact => 1,
            Action::Reroute { .. } => 2,
            Action::Hold => 3,
            Action::Block => 4,
        }
    }

    /// The action's name as in TOML, JSON and logs (`reroute`, without its target).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Redact => "redact",
            Action::Reroute { .. } => "reroute",
            Action::Hold => "hold",
            Action::Block => "block",
        }
    }
}

impl PartialOrd for Action {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Action {
    /// By severity; two reroutes compare by target so the order stays total and consistent
    /// with `Eq`.
    fn cmp(&self, other: &Self) -> Ordering {
        self.severity().cmp(&other.severity()).then_with(|| match (self, other) {
            (Action::Reroute { to: a }, Action::Reroute { to: b }) => a.cmp(b),
            _ => Ordering::Equal,
        })
    }
}

/// Who a decision's notice is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeTarget {
    /// The reader of this hop, on this hop's account (the patient for a rerouted reply; the
    /// staff channel for a rerouted forward).
    Recipient,
    /// The author of the message, on the account they wrote from (the patient for an inbound
    /// advisory or a blocked/held forward; the clinician for a blocked/held reply).
    Sender,
}

/// The engine's answer. `rules` names every rule that produced it (for the record and logs).
/// Its `Debug` prints neither the rendered text nor finding offsets; log
/// [`Decision::log_fields`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The action (most restrictive of all matching rules).
    #[serde(flatten)]
    pub action: Action,
    /// Ids of the rules that produced `action` (never empty; built-in ids start `builtin.`).
    pub rules: Vec<String>,
    /// The class of the text itself (what the router remembers as the conversation's class).
    pub class: Class,
    /// The findings, sorted by start, non-overlapping.
    pub findings: Vec<Finding>,
    /// The text to send when the action is `Redact`.
    pub rendered: Option<String>,
    /// The PHI-free notice, localised: for Reroute (to the recipient), Block and Hold (to the
    /// sender: sent if the review rejects the message), and for inbound messages carrying PHI
    /// on a channel that is not secure (an advisory to the sender). See `notice_to`.
    pub notice: Option<String>,
    /// Who `notice` is for (set exactly when `notice` is).
    #[serde(default)]
    pub notice_to: Option<NoticeTarget>,
    /// The class the decision was based on: `class`, raised by the conversation's class and by
    /// attachments on outbound hops.
    #[serde(default)]
    pub effective_class: Class,
    /// Every rule that applied to this hop and the action it proposed, in evaluation order:
    /// `rules` are only those that won. A reviewer about to approve what one rule held must see
    /// that another would have rerouted it (`review show`).
    #[serde(default)]
    pub applied: Vec<AppliedRule>,
}

/// One rule that applied to a hop (see [`Decision::applied`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRule {
    /// The rule id.
    pub rule: String,
    /// The action it proposed (`allow`, `redact`, `reroute`, `hold`, `block`).
    pub action: String,
}

impl Decision {
    /// A summary safe for operational logs: action, class, rule ids, finding counts per kind.
    /// Never span text or offsets.
    pub fn log_fields(&self) -> LogFields<'_> {
        LogFields::of(self)
    }

    /// Whether the text may go out on this hop unchanged.
    pub fn is_allowed(&self) -> bool {
        self.action == Action::Allow
    }

    /// The text to deliver on this hop, if any: the original for Allow, the redacted text for
    /// Redact, nothing otherwise.
    pub fn body_to_send<'t>(&'t self, original: &'t str) -> Option<&'t str> {
        match self.action {
            Action::Allow => Some(original),
            Action::Redact => self.rendered.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Debug for CheckInput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckInput")
            .field("text", &format_args!("<redacted {} bytes>", self.text.len()))
            .field("direction", &self.direction)
            .field("account", &self.account.to_string())
            .field("audience", &self.audience)
            .field("consents", &self.consents.len())
            .field("conversation_class", &self.conversation_class)
            .field("has_attachments", &self.has_attachments)
            .finish()
    }
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields = self.log_fields();
        f.debug_struct("Decision")
            .field("action", &self.action)
            .field("rules", &self.rules)
            .field("class", &self.class)
            .field("effective_class", &self.effective_class)
            .field("findings", &format_args!("{}", fields.kinds_joined()))
            .field("rendered", &self.rendered.as_ref().map(|_| "<redacted>"))
            .field("notice_to", &self.notice_to)
            .finish()
    }
}

/// What the detectors found in one text (see [`Policy::scan`]).
pub struct Scan<'t> {
    /// The text scanned.
    text: &'t str,
    /// The findings; `None` for a text longer than `detection.max_text_bytes` (not scanned).
    hits: Option<Vec<detectors::Hit>>,
}

impl fmt::Debug for Scan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scan")
            .field("text", &format_args!("<redacted {} bytes>", self.text.len()))
            .field("findings", &self.hits.as_ref().map(Vec::len))
            .finish()
    }
}

/// The compiled policy. Cheap to clone (the compiled state is shared).
#[derive(Clone, Debug)]
pub struct Policy {
    inner: Arc<decide::Compiled>,
}

impl Policy {
    /// Compiles detectors and rules once. Fails with every problem found (bad regexes, unknown
    /// kinds, …); account names are only checked by [`PolicyConfig::validate`], which knows the
    /// configured accounts.
    pub fn compile(config: &PolicyConfig) -> Result<Policy, Vec<Problem>> {
        let problems = config.check(None);
        if !problems.is_empty() {
            return Err(problems);
        }
        Policy::compile_validated(config)
    }

    /// Compiles a section [`PolicyConfig::validate`] has accepted, without checking it again
    /// ([`crate::config::ValidConfig`]).
    pub(crate) fn compile_validated(config: &PolicyConfig) -> Result<Policy, Vec<Problem>> {
        decide::Compiled::new(config).map(|c| Policy { inner: Arc::new(c) })
    }

    /// An account's trust, ceilings, locale and safety net, as this policy resolved them.
    pub(crate) fn settings(&self, account: &AccountId) -> resolved::AccountSettings {
        self.inner.settings(account)
    }

    /// The trust level of an account (configured, or the channel kind's default: Telegram and
    /// webhooks insecure, email `email_plain`).
    pub fn trust(&self, account: &AccountId) -> Trust {
        self.inner.trust(account)
    }

    /// The highest class `account` may carry for `audience`, given the consents in force.
    pub fn ceiling(&self, account: &AccountId, audience: Audience, consents: &[ConsentGrant]) -> Class {
        self.inner.ceiling(account, audience, consents).0
    }

    /// The notice a reroute leaves on `account` for `audience` ("you have a new secure message";
    /// for staff, "read it in the secure inbox"), in the account's locale. For a held delivery
    /// that approval sends to the secure account instead (`crate::review`).
    pub fn reroute_notice(&self, account: &AccountId, audience: Audience) -> String {
        self.inner.reroute_notice(account, audience)
    }

    /// Decides. Pure, total, deterministic.
    pub fn check(&self, input: &CheckInput<'_>) -> Decision {
        self.inner.check(input)
    }

    /// Runs the detectors over `text` once, for [`Policy::check_scanned`]: the router decides
    /// every hop of a message (inbound, each destination) on the same text, and the detectors
    /// are most of the cost of a check.
    pub fn scan<'t>(&self, text: &'t str) -> Scan<'t> {
        self.inner.scan(text)
    }

    /// [`Policy::check`] with the findings of an earlier [`Policy::scan`]. The same decision
    /// as `check`: a scan of another text than `input.text` is ignored and the text scanned
    /// afresh.
    pub fn check_scanned(&self, input: &CheckInput<'_>, scan: &Scan<'_>) -> Decision {
        if scan.text == input.text { self.inner.decide(input, scan) } else { self.inner.check(input) }
    }

    /// The stable JSON of `carebridge policy explain` (see docs/policy.md, "Explain format").
    pub fn explain(&self, input: &CheckInput<'_>) -> serde_json::Value {
        self.explanation(input).to_json()
    }

    /// The explanation as a typed value (what [`Policy::explain`] serialises).
    pub fn explanation(&self, input: &CheckInput<'_>) -> Explanation {
        Explanation::new(&self.check(input), input.text)
    }

    /// The detector kinds this policy runs (built-in and custom), with their classes, in
    /// evaluation order. For docs and `check-config` output.
    pub fn kinds(&self) -> Vec<(String, Class)> {
        self.inner.kinds()
    }
}
