//! The privacy policy engine: pure (no I/O), deterministic, never panics.
//!
//! INTERFACE STUB written by the router's author so the router compiles; the full engine
//! (detectors, classes, channel trust, consent, actions) replaces the body, keeping these
//! signatures (or extending them in agreement with `router/`).

use carebridge_contract::AccountId;
use carebridge_contract::config::Problem;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `[policy]` section of the TOML file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Per-account trust overrides, keyed by account id (`telegram.front_desk = "insecure"`).
    #[serde(default)]
    pub channels: BTreeMap<String, Trust>,
}

impl PolicyConfig {
    /// Pure validation; `accounts` are the configured account ids (for did-you-mean).
    pub fn validate(&self, accounts: &[AccountId]) -> Vec<Problem> {
        let mut p = Vec::new();
        for k in self.channels.keys() {
            if !accounts.iter().any(|a| a.to_string() == *k) {
                p.push(Problem::new(format!("policy.channels.{k}"), "unknown account"));
            }
        }
        p
    }
}

/// How far a channel can be trusted with PHI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// Social / SMS: anything can be read by the platform.
    Insecure,
    /// Ordinary email.
    EmailPlain,
    /// A channel the clinic controls end to end (EHR webhook over TLS).
    Secure,
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

/// Sensitivity class of a text, ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

/// A consent in force for one patient on one account, snapshotted into each record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentGrant {
    /// The account consented to.
    pub account: String,
    /// Purpose (`clinical`, `admin`, …).
    pub purpose: String,
    /// How it was given (`telegram-link`, `cli`, …).
    pub source: String,
    /// Unix seconds.
    pub granted_at: u64,
}

/// What the engine is asked.
#[derive(Clone, Debug)]
pub struct CheckInput<'a> {
    /// The text to check.
    pub text: &'a str,
    /// Direction of travel.
    pub direction: Direction,
    /// The account the message arrives on (In) or leaves by (Out).
    pub account: &'a AccountId,
    /// Who reads it (Out only; Staff for In).
    pub audience: Audience,
    /// Consents in force for this patient on `account` (empty when unknown patient).
    pub consents: &'a [ConsentGrant],
    /// Highest class seen so far in the conversation (so a reply to a prescription request is
    /// treated as clinical even if its own words are not).
    pub conversation_class: Class,
    /// Whether the message carries attachments.
    pub has_attachments: bool,
}

/// One detector hit (byte offsets into the UTF-8 text).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable detector kind (`sin`, `health_number_on`, …).
    pub kind: String,
    /// Byte offset of the start.
    pub start: usize,
    /// Byte offset of the end (exclusive).
    pub end: usize,
    /// Confidence 0..=1.
    pub score: f32,
}

/// What to do, most restrictive last.
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

/// The engine's answer. `rules` names every rule that produced it (for the record and logs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The action (most restrictive of all matching rules).
    #[serde(flatten)]
    pub action: Action,
    /// Rule ids that produced it.
    pub rules: Vec<String>,
    /// The class of the text.
    pub class: Class,
    /// The findings.
    pub findings: Vec<Finding>,
    /// The text to send when the action is `Redact`.
    pub rendered: Option<String>,
    /// The PHI-free notice to send for Block / Reroute, localised.
    pub notice: Option<String>,
}

/// The compiled policy.
#[derive(Clone, Debug)]
pub struct Policy {
    config: PolicyConfig,
}

impl Policy {
    /// Compiles detectors and rules once.
    pub fn compile(config: &PolicyConfig) -> Result<Policy, Vec<Problem>> {
        Ok(Policy { config: config.clone() })
    }

    /// The trust level of an account (configured, or the channel kind's default).
    pub fn trust(&self, account: &AccountId) -> Trust {
        if let Some(t) = self.config.channels.get(&account.to_string()) {
            return *t;
        }
        match account.kind() {
            carebridge_contract::ChannelKind::Telegram => Trust::Insecure,
            carebridge_contract::ChannelKind::Email => Trust::EmailPlain,
            carebridge_contract::ChannelKind::Webhook => Trust::Insecure,
        }
    }

    /// Decides. Pure, total.
    pub fn check(&self, input: &CheckInput<'_>) -> Decision {
        let _ = self.trust(input.account);
        Decision {
            action: Action::Allow,
            rules: vec!["stub-allow".into()],
            class: Class::None,
            findings: Vec::new(),
            rendered: None,
            notice: None,
        }
    }
}
