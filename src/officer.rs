//! The operations staff and the privacy officer run on the record — review held deliveries,
//! retry or drop dead letters, issue link codes, record consents, read, export, verify and purge
//! the patient's file — each written once, as a [`Request`] that [`execute`] carries out on the
//! store.
//!
//! **Why one layer.** Two front ends reach these operations: the admin API while the daemon runs
//! (it holds the store's lock), and the CLI on the store itself when the daemon is stopped. Both
//! build the same `Request` and get the same answer from the same code, so a check (a real actor,
//! a known patient, a configured account) or an audit entry cannot exist on one path and not the
//! other. The CLI sends its request as JSON to `POST /admin/request`; the admin API's documented
//! routes are a table from URL to `Request`, nothing more (`crate::admin`).
//!
//! [`execute`] blocks on the store: the admin API calls it through `spawn_blocking`. The caller
//! makes the answer durable (flush) before it replies, then wakes the outbox rows it names.

use crate::config::{Config, ValidConfig};
use crate::policy::ConsentGrant;
use crate::record::schema::LinkCodeV1;
use crate::record::{Actor, OutboxKey, Store, StoreError, now_ms};
use crate::records::{self, Format, RecordsError};
use crate::review::{OnApproval, ReviewError};
use crate::router::plan::{LINK_CODE_TTL_MS, link_code_hash};
use carebridge_contract::{AccountId, DeliveryId, RecordId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::info;

/// One operation on the record, with who asks for it. Ids are as typed (`dlv-…`, `rec-…`) and
/// checked by [`execute`], so both front ends refuse a bad one with the same message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Counts: records, outbox, dead letters, quarantine, held (no PHI).
    Status,
    /// Held deliveries, as listed (no PHI).
    ReviewList,
    /// One held delivery in full, with what approving would do (PHI; audited).
    ReviewShow {
        /// Delivery id.
        delivery: String,
        /// Who reads.
        actor: String,
    },
    /// Approve (the policy is asked again) or reject a held delivery.
    ReviewDecide {
        /// Delivery id.
        delivery: String,
        /// Approve or reject.
        verdict: Verdict,
        /// Who decided.
        by: String,
    },
    /// Dead letters, oldest first (no PHI).
    DeadList,
    /// Requeue or drop a dead letter.
    DeadAction {
        /// Delivery id.
        delivery: String,
        /// Retry or drop.
        action: DeadAction,
        /// Who decided.
        by: String,
    },
    /// A one-time code linking a patient's Telegram chat to their file.
    LinkCode {
        /// Directory id.
        patient_id: String,
        /// Account id (`telegram.front_desk`).
        account: String,
        /// Consent purpose the link grants.
        #[serde(default = "default_purpose")]
        purpose: String,
    },
    /// Grant or withdraw a consent.
    Consent {
        /// Directory id.
        patient_id: String,
        /// Account id.
        account: String,
        /// Purpose.
        #[serde(default = "default_purpose")]
        purpose: String,
        /// Grant (true) or withdraw (false).
        grant: bool,
        /// Where the consent came from (`paper-form`, `phone`), for the record.
        #[serde(default = "default_source")]
        source: String,
        /// Who recorded it.
        actor: String,
    },
    /// A patient's records (no content; audited).
    RecordsList {
        /// Who reads.
        actor: String,
        /// Whose file.
        patient: String,
    },
    /// Records no patient's file holds yet (audited).
    RecordsUnassigned {
        /// Who reads.
        actor: String,
    },
    /// Attach a record without a patient to a patient's file (audited).
    RecordsAssign {
        /// Who assigns.
        actor: String,
        /// Record id.
        id: String,
        /// The patient's directory id.
        patient: String,
    },
    /// One record with its events (PHI; audited).
    RecordsShow {
        /// Who reads.
        actor: String,
        /// Record id.
        id: String,
    },
    /// A patient's records as JSON lines or FHIR (PHI; audited).
    RecordsExport {
        /// Who reads.
        actor: String,
        /// Whose file.
        patient: String,
        /// `jsonl` or `fhir`.
        format: Format,
    },
    /// The audit trail, of one patient or all (audited).
    RecordsAudit {
        /// Who reads.
        actor: String,
        /// Whose file; all when absent.
        patient: Option<String>,
    },
    /// Check the hash chain.
    RecordsVerify,
    /// Remove what retention allows, leaving tombstones.
    RecordsPurge {
        /// Who purges.
        actor: String,
        /// Only entries older than this many days.
        older_than_days: Option<u32>,
        /// Count only.
        #[serde(default)]
        dry_run: bool,
    },
}

/// A review decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Send what the policy allows now.
    Approve,
    /// Do not send; its author is told.
    Reject,
}

/// What to do with a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadAction {
    /// Requeue it.
    Retry,
    /// Give it up for good (the record keeps why).
    Drop,
}

/// The consent purpose of a link or consent that names none.
pub(crate) fn default_purpose() -> String {
    "clinical".into()
}
/// Where a consent came from when the request does not say.
pub(crate) fn default_source() -> String {
    "admin".into()
}

impl Request {
    /// Whether the request may create the store on a new install (before the daemon's first
    /// start, a link code or a consent can already be recorded); the others read or change a
    /// store that must exist.
    pub fn may_create_store(&self) -> bool {
        matches!(self, Request::LinkCode { .. } | Request::Consent { .. })
    }
}

/// What an operation answered, and the outbox rows it queued (to wake once durable).
#[derive(Debug)]
pub struct Answer {
    /// The JSON answer.
    pub value: Value,
    /// Rows queued for delivery.
    pub queued: Vec<OutboxKey>,
}

impl Answer {
    fn of(value: Value) -> Answer {
        Answer { value, queued: Vec::new() }
    }
}

/// Why an operation was refused or failed. No PHI: ids and the reason only.
#[derive(Debug, thiserror::Error)]
pub enum OfficerError {
    /// The request is wrong: a missing actor, an unknown patient or account, a malformed id.
    #[error("{0}")]
    Invalid(String),
    /// Nothing has that id.
    #[error("{0}")]
    NotFound(String),
    /// The policy does not allow it now (approving what may not be sent): nothing changed.
    #[error("{0}")]
    Refused(String),
    /// The store failed.
    #[error("{0}")]
    Store(StoreError),
}

impl From<StoreError> for OfficerError {
    fn from(e: StoreError) -> Self {
        OfficerError::Store(e)
    }
}

impl From<RecordsError> for OfficerError {
    fn from(e: RecordsError) -> Self {
        match e {
            RecordsError::Store(e) => OfficerError::Store(e),
            RecordsError::Invalid(m) => OfficerError::Invalid(m),
        }
    }
}

impl From<ReviewError> for OfficerError {
    fn from(e: ReviewError) -> Self {
        match e {
            ReviewError::Store(e) => OfficerError::Store(e),
            ReviewError::Refused(m) => OfficerError::Refused(m),
        }
    }
}

/// Carries out `request` on `store`. `via` names the front end in the audit trail (`cli`,
/// `admin-api`). The caller flushes before answering.
pub fn execute(
    store: &Store,
    config: &ValidConfig,
    via: &'static str,
    request: Request,
) -> Result<Answer, OfficerError> {
    let actor = |name: &str, what: &str| -> Result<Actor, OfficerError> {
        if name.trim().is_empty() {
            return Err(OfficerError::Invalid(format!("`actor` is required: {what}")));
        }
        Ok(Actor { name: name.to_string(), via })
    };
    let decided_by = |by: &str| -> Result<(), OfficerError> {
        // A decision is in the patient's file: it names who made it, never a placeholder.
        if by.trim().is_empty() {
            return Err(OfficerError::Invalid("`by` is required: who decided".into()));
        }
        Ok(())
    };
    match request {
        Request::Status => {
            let st = store.stats();
            Ok(Answer::of(json!({
                "records": st.records, "outbox_pending": st.outbox_pending, "dead_letters": st.dead,
                "quarantined": st.quarantined, "held_for_review": st.held,
            })))
        }
        Request::ReviewList => Ok(Answer::of(json!(review_list(store)?))),
        Request::ReviewShow { delivery, actor: who } => {
            let id = delivery_id(&delivery)?;
            let actor = actor(&who, "who reads the held message")?;
            let shown = crate::review::show(store, config, id, &actor)?;
            Ok(Answer::of(shown.ok_or_else(|| OfficerError::NotFound("no such held delivery".into()))?))
        }
        Request::ReviewDecide { delivery, verdict, by } => {
            let id = delivery_id(&delivery)?;
            decided_by(&by)?;
            // Approval asks the policy again for the hop (`crate::review`); rejection need not.
            let done = match verdict {
                Verdict::Approve => crate::review::approve(store, config, id, &by)?.map(|(o, keys)| (Some(o), keys)),
                Verdict::Reject => crate::review::reject(store, config, id, &by)?.map(|keys| (None, keys)),
            };
            let (outcome, queued) = done.ok_or_else(|| OfficerError::NotFound("no such held delivery".into()))?;
            let rerouted = match outcome {
                Some(OnApproval::Reroute(to)) => Some(to.to_string()),
                _ => None,
            };
            let verdict = if verdict == Verdict::Approve { "approved" } else { "rejected" };
            info!(delivery_id = %id, verdict, rerouted_to = ?rerouted, via, "Held delivery reviewed.");
            Ok(Answer {
                value: json!({ "delivery": id.to_string(), "verdict": verdict, "rerouted_to": rerouted }),
                queued,
            })
        }
        Request::DeadList => Ok(Answer::of(json!(dead_list(store)?))),
        Request::DeadAction { delivery, action, by } => {
            let id = delivery_id(&delivery)?;
            decided_by(&by)?;
            let missing = || OfficerError::NotFound("no such dead letter".into());
            let (outcome, queued) = match action {
                DeadAction::Retry => {
                    let key = store.retry_dead(id, &by)?.ok_or_else(missing)?;
                    info!(delivery_id = %id, account = %key.account, via, "Dead letter requeued.");
                    ("requeued", vec![key])
                }
                DeadAction::Drop => {
                    let record = store.drop_dead(id, &by)?.ok_or_else(missing)?;
                    info!(delivery_id = %id, record_id = %record, via, "Dead letter dropped.");
                    ("dropped", Vec::new())
                }
            };
            Ok(Answer { value: json!({ "delivery": id.to_string(), "outcome": outcome }), queued })
        }
        Request::LinkCode { patient_id, account, purpose } => {
            let account = check_request(config, &patient_id, &account, true).map_err(OfficerError::Invalid)?;
            let code = create_link_code(store, &patient_id, &account, &purpose)?;
            info!(account = %account, patient = %store.patient_ref(&patient_id), via, "Link code issued.");
            Ok(Answer::of(json!({ "code": code, "expires_in_secs": LINK_CODE_TTL_MS / 1000 })))
        }
        Request::Consent { patient_id, account, purpose, grant, source, actor: who } => {
            check_request(config, &patient_id, &account, false).map_err(OfficerError::Invalid)?;
            let actor = actor(&who, "who records the consent")?;
            apply_consent(store, &actor, &patient_id, &account, &purpose, grant, &source)?;
            info!(account = %account, patient = %store.patient_ref(&patient_id), granted = grant, via, "Consent updated.");
            Ok(Answer::of(json!({ "ok": true })))
        }
        Request::RecordsList { actor: who, patient } => {
            Ok(Answer::of(json!(records::list(store, &actor(&who, READS)?, &patient)?)))
        }
        Request::RecordsUnassigned { actor: who } => {
            Ok(Answer::of(json!(records::unassigned(store, &actor(&who, READS)?)?)))
        }
        Request::RecordsAssign { actor: who, id, patient } => {
            let rid = record_id(&id)?;
            let queued = records::assign(store, config, &actor(&who, READS)?, rid, &patient)?;
            // Its `fhir` filings that gave up for want of a patient go again, under this one.
            Ok(Answer {
                value: json!({ "record": rid.to_string(), "patient": patient, "refiled": queued.len() }),
                queued,
            })
        }
        Request::RecordsShow { actor: who, id } => {
            let rid = record_id(&id)?;
            let shown = records::show(store, &actor(&who, READS)?, rid)?;
            Ok(Answer::of(shown.ok_or_else(|| OfficerError::NotFound("no such record".into()))?))
        }
        Request::RecordsExport { actor: who, patient, format } => {
            let data = records::export(store, &actor(&who, READS)?, &patient, format)?;
            Ok(Answer::of(json!({ "data": data })))
        }
        Request::RecordsAudit { actor: who, patient } => {
            Ok(Answer::of(json!(records::audit_trail(store, &actor(&who, READS)?, patient.as_deref())?)))
        }
        Request::RecordsVerify => Ok(Answer::of(json!(records::verify(store)?))),
        Request::RecordsPurge { actor: who, older_than_days, dry_run } => {
            let actor = actor(&who, READS)?;
            let report = records::purge(store, &actor, &config.store.retention, older_than_days, dry_run)?;
            Ok(Answer::of(json!(report)))
        }
    }
}

const READS: &str = "who reads or changes the record";

fn delivery_id(s: &str) -> Result<DeliveryId, OfficerError> {
    s.parse().map_err(|_| OfficerError::Invalid(format!("`{s}` is not a delivery id (dlv-…)")))
}

fn record_id(s: &str) -> Result<RecordId, OfficerError> {
    s.parse().map_err(|_| OfficerError::Invalid(format!("`{s}` is not a record id (rec-…)")))
}

/// One held delivery, as listed (no PHI: ids, account, rules, time).
#[derive(Debug, Serialize, Deserialize)]
pub struct HeldSummary {
    /// Delivery id.
    pub delivery: String,
    /// Record id.
    pub record: String,
    /// Destination account.
    pub account: String,
    /// Rules that held it.
    pub rules: Vec<String>,
    /// Unix milliseconds held.
    pub held_at_ms: u64,
}

/// One dead letter, as listed (no PHI: ids, account, kind, the PHI-free reason, counts, time).
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadSummary {
    /// Delivery id.
    pub delivery: String,
    /// Record id.
    pub record: String,
    /// Destination account.
    pub account: String,
    /// `forward`, `reply` or `notice`.
    pub kind: carebridge_contract::DeliveryKind,
    /// Why it was given up (PHI-free, as the adapter reported it).
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// Unix milliseconds dead-lettered.
    pub dead_at_ms: u64,
}

/// Lists dead letters, oldest first.
pub fn dead_list(store: &Store) -> Result<Vec<DeadSummary>, StoreError> {
    Ok(store
        .dead_letters()?
        .into_iter()
        .map(|d| DeadSummary {
            delivery: d.item.delivery.id.to_string(),
            record: d.item.delivery.record_id.to_string(),
            account: d.item.delivery.account.to_string(),
            kind: d.item.delivery.kind.into(),
            reason: d.reason,
            attempts: d.item.attempts,
            dead_at_ms: d.at_ms,
        })
        .collect())
}

/// Lists held deliveries.
pub fn review_list(store: &Store) -> Result<Vec<HeldSummary>, StoreError> {
    Ok(store
        .held()?
        .into_iter()
        .map(|h| HeldSummary {
            delivery: h.item.delivery.id.to_string(),
            record: h.item.delivery.record_id.to_string(),
            account: h.item.delivery.account.to_string(),
            rules: h.rules,
            held_at_ms: h.at_ms,
        })
        .collect())
}

/// Checks that a link or consent request names a patient of the directory and a configured
/// account, with a did-you-mean for near misses; for a link (`linking`), also that the account
/// links chats by code: only Telegram does (`/start CODE`); email and webhook senders are matched
/// by their address in the directory, so a code for them could never be used. Before, a
/// misspelt account ("ok") or an unknown patient was recorded as given and silently did nothing.
pub fn check_request(config: &Config, patient_id: &str, account: &str, linking: bool) -> Result<AccountId, String> {
    let names: Vec<String> = config.accounts.keys().map(ToString::to_string).collect();
    let hint = |word: &str, candidates: &[String]| {
        crate::config::did_you_mean(word, candidates).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default()
    };
    let id = account
        .parse::<AccountId>()
        .ok()
        .filter(|id| config.accounts.contains_key(id))
        .ok_or_else(|| format!("unknown account `{account}`{}", hint(account, &names)))?;
    if linking && id.kind() != carebridge_contract::ChannelKind::Telegram {
        return Err(format!(
            "`{id}` is a {} account: link codes are for Telegram (`/start CODE`); {} senders are \
             recognised by their address in the directory",
            id.kind().as_str(),
            id.kind().as_str()
        ));
    }
    if !config.directory.patient.iter().any(|p| p.id == patient_id) {
        let ids: Vec<String> = config.directory.patient.iter().map(|p| p.id.clone()).collect();
        return Err(format!(
            "unknown patient id `{patient_id}`{} (add the patient to the directory first)",
            hint(patient_id, &ids)
        ));
    }
    Ok(id)
}

/// Creates a one-time link code for a patient on an account. Only the code's hash is stored.
pub fn create_link_code(
    store: &Store,
    patient_id: &str,
    account: &AccountId,
    purpose: &str,
) -> Result<String, StoreError> {
    // 10 characters from an alphabet without look-alikes: ~50 bits, single use, expires.
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let code: String = (0..10).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect();
    store.put_link_code(
        &link_code_hash(&code),
        &LinkCodeV1 {
            v: 1,
            patient_id: patient_id.to_string(),
            account: account.to_string(),
            purpose: purpose.to_string(),
            expires_at_ms: now_ms() + LINK_CODE_TTL_MS,
        },
    )?;
    Ok(code)
}

/// Records a consent's grant or withdrawal, in the patient's chain like a read.
fn apply_consent(
    store: &Store,
    actor: &Actor,
    patient_id: &str,
    account: &str,
    purpose: &str,
    grant: bool,
    source: &str,
) -> Result<(), StoreError> {
    let action = if grant { "consent.grant" } else { "consent.withdraw" };
    let detail = format!("account={account} purpose={purpose} source={source}");
    store.audit(actor, action, Some(patient_id), vec![], Some(detail))?;
    if grant {
        store.grant_consent(
            patient_id,
            ConsentGrant {
                account: account.to_string(),
                purpose: purpose.to_string(),
                source: source.to_string(),
                granted_at: now_ms() / 1000,
            },
        )
    } else {
        store.withdraw_consent(patient_id, account).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_travel_as_tagged_json_and_unknown_fields_are_refused() {
        let r = Request::ReviewDecide { delivery: "dlv-7".into(), verdict: Verdict::Approve, by: "dr.lee".into() };
        let wire = serde_json::to_value(&r).unwrap();
        assert_eq!(wire, json!({ "op": "review_decide", "delivery": "dlv-7", "verdict": "approve", "by": "dr.lee" }));
        assert_eq!(serde_json::from_value::<Request>(wire).unwrap(), r);
        let link: Request =
            serde_json::from_value(json!({ "op": "link_code", "patient_id": "p-1", "account": "telegram.front" }))
                .unwrap();
        assert!(matches!(link, Request::LinkCode { ref purpose, .. } if purpose == "clinical"));
        assert!(link.may_create_store() && !Request::RecordsVerify.may_create_store());
        assert!(
            serde_json::from_value::<Request>(
                json!({ "op": "records_list", "actor": "a", "patient": "p-1", "extra": 1 })
            )
            .is_err()
        );
        assert!(serde_json::from_value::<Request>(json!({ "op": "format_disk" })).is_err());
    }
}
