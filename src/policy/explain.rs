//! What a decision looks like from outside: the stable JSON of `carebridge policy explain` (for
//! auditors and the privacy officer) and the PHI-free summary for operational logs.
//!
//! Explain format (stable; docs/policy.md, "Explain format"):
//!
//! ```json
//! {"findings":[{"kind":"sin","start":12,"end":23,"score":0.65}],
//!  "class":"identifier",
//!  "decision":{"action":"redact","rules":["builtin.redact.insecure"]},
//!  "rendered":"My SIN is [sin]."}
//! ```
//!
//! Offsets are UTF-8 byte offsets into the input. `decision.to` appears for `reroute` only.
//! `rendered` is what this hop would deliver on its channel: the text (allow), the masked
//! text (redact), the notice to the recipient (reroute), or `null` (hold, block).
//!
//! The log summary ([`LogFields`]) carries the action, class, rule ids and finding counts per
//! kind — never text, offsets or matched values (offsets plus the original would rebuild the
//! value; they belong in the record store, not in logs).

use super::{Action, Class, Decision};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// A score as JSON: rounded to hundredths (so `0.65`, not `0.6499999761581421`).
pub(crate) fn serialize_score<S: Serializer>(score: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round_score(*score))
}

fn round_score(score: f32) -> f64 {
    if score.is_finite() { (f64::from(score) * 100.0).round() / 100.0 } else { 0.0 }
}

/// One finding in the explain output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExplainedFinding {
    /// Detector kind.
    pub kind: String,
    /// Byte offset of the start.
    pub start: usize,
    /// Byte offset of the end (exclusive).
    pub end: usize,
    /// Score, rounded to hundredths.
    pub score: f64,
}

/// The decision part of the explain output: `{"action": "...", "to": ..., "rules": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExplainedDecision {
    /// The action (and `to` for a reroute).
    #[serde(flatten)]
    pub action: Action,
    /// The rule ids that produced it.
    pub rules: Vec<String>,
}

/// The explain output of one check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    /// The findings, sorted by start.
    pub findings: Vec<ExplainedFinding>,
    /// The class of the text.
    pub class: Class,
    /// The action and its rules.
    pub decision: ExplainedDecision,
    /// What this hop would deliver on its channel (see the module docs).
    pub rendered: Option<String>,
}

impl Explanation {
    /// Builds the explanation of `decision` for the checked `text`.
    pub fn new(decision: &Decision, text: &str) -> Explanation {
        let rendered = match &decision.action {
            Action::Allow => Some(text.to_string()),
            Action::Redact => decision.rendered.clone(),
            Action::Reroute { .. } => decision.notice.clone(),
            Action::Hold | Action::Block => None,
        };
        Explanation {
            findings: decision
                .findings
                .iter()
                .map(|f| ExplainedFinding {
                    kind: f.kind.clone(),
                    start: f.start,
                    end: f.end,
                    score: round_score(f.score),
                })
                .collect(),
            class: decision.class,
            decision: ExplainedDecision { action: decision.action.clone(), rules: decision.rules.clone() },
            rendered,
        }
    }

    /// As a JSON value (keys: `findings`, `class`, `decision`, `rendered`). Note that
    /// `serde_json::Value` sorts keys when printed; [`Explanation::to_json_string`] keeps the
    /// documented order.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The one-line JSON printed by `carebridge policy explain`, keys in the documented order.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "null".to_string())
    }
}

/// A decision summary safe for operational logs. Display:
/// `action=reroute class=clinical findings=2 kinds=medication:1,prescription_request:1
/// rules=builtin.ceiling.insecure,builtin.insecure.clinical`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFields<'a> {
    /// The action's name (`reroute`, without the target).
    pub action: &'static str,
    /// The reroute target account, if any (an account id: no PHI).
    pub to: Option<&'a str>,
    /// The class of the text.
    pub class: Class,
    /// The class the decision was based on.
    pub effective_class: Class,
    /// How many findings.
    pub findings: usize,
    /// Findings per kind.
    pub kinds: BTreeMap<&'a str, usize>,
    /// The rule ids.
    pub rules: &'a [String],
}

impl<'a> LogFields<'a> {
    /// The summary of a decision.
    pub fn of(d: &'a Decision) -> LogFields<'a> {
        let mut kinds = BTreeMap::new();
        for f in &d.findings {
            *kinds.entry(f.kind.as_str()).or_insert(0) += 1;
        }
        let to = match &d.action {
            Action::Reroute { to } => to.as_deref(),
            _ => None,
        };
        LogFields {
            action: d.action.name(),
            to,
            class: d.class,
            effective_class: d.effective_class,
            findings: d.findings.len(),
            kinds,
            rules: &d.rules,
        }
    }

    /// The rule ids joined with commas (for a single log field).
    pub fn rules_joined(&self) -> String {
        self.rules.join(",")
    }

    /// The kind counts as `kind:n,kind:n` (for a single log field).
    pub fn kinds_joined(&self) -> String {
        self.kinds.iter().map(|(k, n)| format!("{k}:{n}")).collect::<Vec<_>>().join(",")
    }
}

impl fmt::Display for LogFields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "action={}", self.action)?;
        if let Some(to) = self.to {
            write!(f, " to={to}")?;
        }
        write!(
            f,
            " class={} effective_class={} findings={} kinds={} rules={}",
            self.class.as_str(),
            self.effective_class.as_str(),
            self.findings,
            self.kinds_joined(),
            self.rules_joined()
        )
    }
}
