//! The privacy officer's view of the patient's file: list, show, export (JSON lines or FHIR R4),
//! verify the chain, read the audit trail, purge what retention allows. Every read of a patient's
//! records leaves an audit entry before the data is returned.
//!
//! These are the record's half of the officer's operations ([`crate::officer`]), which the CLI
//! (on a stopped daemon's store) and the admin API (while it runs) both go through.

use crate::record::chain::Report;
use crate::record::retention::{self, PurgeReport};
use crate::record::schema::RecordV1;
use crate::record::settings::RetentionConfig;
use crate::record::{Actor, OutboxKey, Store, StoreError, now_ms};
use carebridge_contract::RecordId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Why a records operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request was wrong (unknown format, purge inside retention).
    #[error("{0}")]
    Invalid(String),
}

/// Export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line: each record with its events, then the patient's audit trail.
    Jsonl,
    /// A FHIR R4 `Bundle` of `Communication` resources.
    Fhir,
}

/// One line of `records list`: enough to choose what to open, no content.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Record id.
    pub record: String,
    /// Unix milliseconds recorded.
    pub recorded_at_ms: u64,
    /// The account it came in on.
    pub account: String,
    /// `patient`, `staff` or `unknown`.
    pub sender: String,
    /// Inbound class.
    pub class: String,
    /// Destinations and what was decided for each (`webhook.ehr:allow`).
    pub decisions: Vec<String>,
    /// Events appended since.
    pub events: usize,
}

fn summary(store: &Store, r: &RecordV1) -> Result<Summary, StoreError> {
    Ok(Summary {
        record: r.id.to_string(),
        recorded_at_ms: r.recorded_at_ms,
        account: r.source.account.to_string(),
        sender: match r.sender {
            crate::record::schema::SenderV1::Patient { .. } => "patient",
            crate::record::schema::SenderV1::Staff { .. } => "staff",
            crate::record::schema::SenderV1::Unknown => "unknown",
        }
        .into(),
        class: serde_json::to_value(r.class).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        decisions: r.decisions.iter().map(|d| format!("{}:{}", d.account, d.action)).collect(),
        events: store.events(r.id)?.len(),
    })
}

/// Records no patient's file holds yet (unverified senders), for triage: summaries, no content
/// (audited as `records.unassigned`).
pub fn unassigned(store: &Store, actor: &Actor) -> Result<Vec<Summary>, RecordsError> {
    let recs = store.unassigned_records()?;
    store.audit(actor, "records.unassigned", None, recs.iter().map(|r| r.id).collect(), None)?;
    recs.iter().map(|r| summary(store, r).map_err(RecordsError::from)).collect()
}

/// Attaches a record without a patient to `patient`'s file (a directory id), audited as
/// `records.assign` in that patient's chain, and recorded as an `assigned` event of the record.
pub fn assign(
    store: &Store,
    config: &crate::config::Config,
    actor: &Actor,
    id: RecordId,
    patient: &str,
) -> Result<Vec<OutboxKey>, RecordsError> {
    if !config.directory.patient.iter().any(|p| p.id == patient) {
        return Err(RecordsError::Invalid(format!(
            "unknown patient id `{patient}` (add the patient to the directory first)"
        )));
    }
    let requeued = store.assign_record(id, patient, &actor.name).map_err(|e| match e {
        crate::record::triage::AssignError::Store(e) => RecordsError::Store(e),
        other => RecordsError::Invalid(other.to_string()),
    })?;
    store.audit(actor, "records.assign", Some(patient), vec![id], None)?;
    Ok(requeued)
}

/// Lists one patient's records (audited as `records.list`).
pub fn list(store: &Store, actor: &Actor, patient: &str) -> Result<Vec<Summary>, RecordsError> {
    let recs = store.patient_records(patient)?;
    store.audit(actor, "records.list", Some(patient), recs.iter().map(|r| r.id).collect(), None)?;
    recs.iter().map(|r| summary(store, r).map_err(RecordsError::from)).collect()
}

/// One record in full with its events (audited as `records.show`). Contains PHI.
pub fn show(store: &Store, actor: &Actor, id: RecordId) -> Result<Option<Value>, RecordsError> {
    let Some(r) = store.record(id)? else { return Ok(None) };
    let r = store.with_attachment_data(r)?;
    let events = store.events(id)?;
    store.audit(actor, "records.show", r.patient_id.as_deref(), vec![id], None)?;
    Ok(Some(json!({ "record": r, "events": events })))
}

/// Exports one patient's records (audited as `records.export`, before the data is produced, so
/// the export itself appears in the trail it contains).
pub fn export(store: &Store, actor: &Actor, patient: &str, format: Format) -> Result<String, RecordsError> {
    let recs = store.patient_records(patient)?;
    let detail = match format {
        Format::Jsonl => "jsonl",
        Format::Fhir => "fhir-r4",
    };
    store.audit(actor, "records.export", Some(patient), recs.iter().map(|r| r.id).collect(), Some(detail.into()))?;
    let mut with_events = Vec::with_capacity(recs.len());
    for r in recs {
        let ev = store.events(r.id)?;
        with_events.push((store.with_attachment_data(r)?, ev));
    }
    Ok(match format {
        Format::Jsonl => {
            let mut out = String::new();
            for (r, ev) in &with_events {
                out.push_str(&json!({ "type": "record", "record": r, "events": ev }).to_string());
                out.push('\n');
            }
            for a in store.audit_entries(Some(patient))? {
                out.push_str(&json!({ "type": "audit", "audit": a }).to_string());
                out.push('\n');
            }
            out
        }
        Format::Fhir => {
            let mut s = serde_json::to_string_pretty(&crate::record::fhir::bundle(patient, &with_events, now_ms()))
                .map_err(|e| RecordsError::Invalid(format!("FHIR serialisation: {e}")))?;
            s.push('\n');
            s
        }
    })
}

/// The audit trail (of one patient, or all), itself audited as `records.audit`.
pub fn audit_trail(store: &Store, actor: &Actor, patient: Option<&str>) -> Result<Vec<Value>, RecordsError> {
    let entries = store.audit_entries(patient)?;
    store.audit(actor, "records.audit", patient, vec![], None)?;
    Ok(entries.into_iter().map(|a| json!(a)).collect())
}

/// Checks the chain. Reads no PHI (tombstones aside), so it is not audited.
pub fn verify(store: &Store) -> Result<Report, RecordsError> {
    Ok(store.verify()?)
}

/// Purges what retention allows (`older_than_days` may only lengthen it). Audited as
/// `records.purge` with the counts.
pub fn purge(
    store: &Store,
    actor: &Actor,
    retention_cfg: &RetentionConfig,
    older_than_days: Option<u32>,
    dry_run: bool,
) -> Result<PurgeReport, RecordsError> {
    let cutoffs = retention::cutoffs(retention_cfg, older_than_days, now_ms())
        .map_err(|e| RecordsError::Invalid(e.to_string()))?;
    let report = store.purge(cutoffs, &actor.name, dry_run)?;
    if !dry_run {
        let detail = format!(
            "records={} events={} quarantined={} audit={} tombstones={}",
            report.records, report.events, report.quarantined, report.audit, report.tombstones
        );
        store.audit(actor, "records.purge", None, vec![], Some(detail))?;
    }
    Ok(report)
}
