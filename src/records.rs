//! The privacy officer's view of the patient's file: list, show, export (JSON lines or FHIR R4),
//! verify the chain, read the audit trail, purge what retention allows. Every read of a patient's
//! records leaves an audit entry before the data is returned.
//!
//! The same functions serve the CLI when it opens the store itself (the daemon is stopped) and
//! the admin API when the daemon runs (it holds the store's lock), so both paths audit alike.

use crate::record::chain::Report;
use crate::record::retention::{self, PurgeReport};
use crate::record::schema::RecordV1;
use crate::record::settings::RetentionConfig;
use crate::record::{Actor, Store, StoreError, now_ms};
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
) -> Result<(), RecordsError> {
    if !config.directory.patient.iter().any(|p| p.id == patient) {
        return Err(RecordsError::Invalid(format!(
            "unknown patient id `{patient}` (add the patient to the directory first)"
        )));
    }
    store.assign_record(id, patient, &actor.name).map_err(|e| match e {
        crate::record::triage::AssignError::Store(e) => RecordsError::Store(e),
        other => RecordsError::Invalid(other.to_string()),
    })?;
    store.audit(actor, "records.assign", Some(patient), vec![id], None)?;
    Ok(())
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

/// The admin API's routes for the above (merged into [`crate::admin::router`]). The caller
/// names the actor; every change and audit entry is flushed before the answer.
pub mod http {
    use super::*;
    use crate::admin::{State, authorised, err, store_err};
    use axum::extract::{Path, Query, State as AxState};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};

    /// Query of the read routes.
    #[derive(Debug, Deserialize)]
    pub struct ReadQuery {
        /// Who reads.
        pub actor: String,
        /// Whose file.
        pub patient: Option<String>,
        /// Export format.
        pub format: Option<Format>,
    }

    /// Body of `POST /admin/records/{id}/assign`.
    #[derive(Debug, Deserialize)]
    pub struct AssignBody {
        /// Who assigns.
        pub actor: String,
        /// The patient's directory id.
        pub patient: String,
    }

    /// Body of `POST /admin/records/purge`.
    #[derive(Debug, Deserialize)]
    pub struct PurgeBody {
        /// Who purges.
        pub actor: String,
        /// Only entries older than this many days (never inside retention).
        pub older_than_days: Option<u32>,
        /// Count only.
        #[serde(default)]
        pub dry_run: bool,
    }

    /// `GET /admin/records?patient=&actor=`, `GET /admin/records/{id}?actor=`,
    /// `GET /admin/records/export?patient=&format=&actor=`, `GET /admin/records/audit?actor=[&patient=]`,
    /// `POST /admin/records/verify`, `POST /admin/records/purge`.
    pub fn routes() -> Router<State> {
        Router::new()
            .route("/admin/records", get(list_h))
            .route("/admin/records/export", get(export_h))
            .route("/admin/records/audit", get(audit_h))
            .route("/admin/records/verify", post(verify_h))
            .route("/admin/records/purge", post(purge_h))
            .route("/admin/records/unassigned", get(unassigned_h))
            .route("/admin/records/{id}", get(show_h))
            .route("/admin/records/{id}/assign", post(assign_h))
    }

    /// Who reads, as the audit trail records it: a real name, never empty (issue #15, item 15).
    fn actor(q: &str) -> Result<Actor, RecordsError> {
        if q.trim().is_empty() {
            return Err(RecordsError::Invalid("`actor` is required: who reads or changes the record".into()));
        }
        Ok(Actor { name: q.to_string(), via: "admin-api" })
    }

    fn fail(e: RecordsError) -> Response {
        match e {
            RecordsError::Store(e) => store_err(e),
            RecordsError::Invalid(m) => err(StatusCode::BAD_REQUEST, m),
        }
    }

    /// Runs a blocking store operation, flushes (the audit entry must be durable before the data
    /// leaves), and answers.
    async fn run<T: Serialize + Send + 'static>(
        s: State,
        f: impl FnOnce(&Store) -> Result<T, RecordsError> + Send + 'static,
    ) -> Response {
        let store = s.store.clone();
        let r = tokio::task::spawn_blocking(move || f(&store)).await;
        match r {
            Ok(Ok(v)) => {
                s.flusher.flush().await;
                Json(v).into_response()
            }
            Ok(Err(e)) => fail(e),
            Err(_) => err(StatusCode::INTERNAL_SERVER_ERROR, "the request failed"),
        }
    }

    async fn list_h(AxState(s): AxState<State>, h: HeaderMap, Query(q): Query<ReadQuery>) -> Response {
        if !authorised(&s, &h) {
            return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        let Some(patient) = q.patient else { return err(StatusCode::BAD_REQUEST, "patient is required") };
        run(s, move |st| list(st, &actor(&q.actor)?, &patient)).await
    }

    async fn show_h(
        AxState(s): AxState<State>,
        h: HeaderMap,
        Path(id): Path<String>,
        Query(q): Query<ReadQuery>,
    ) -> Response {
        if !authorised(&s, &h) {
            return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        let Ok(id) = id.parse::<RecordId>() else { return err(StatusCode::BAD_REQUEST, "not a record id") };
        run(s, move |st| show(st, &actor(&q.actor)?, id)?.ok_or_else(|| RecordsError::Invalid("no such record".into())))
            .await
    }

    async fn export_h(AxState(s): AxState<State>, h: HeaderMap, Query(q): Query<ReadQuery>) -> Response {
        if !authorised(&s, &h) {
            return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        let Some(patient) = q.patient else { return err(StatusCode::BAD_REQUEST, "patient is required") };
        let format = q.format.unwrap_or(Format::Jsonl);
        run(s, move |st| export(st, &actor(&q.actor)?, &patient, format).map(|data| json!({ "data": data }))).await
    }

    async fn audit_h(AxState(s): AxState<State>, h: HeaderMap, Query(q): Query<ReadQuery>) -> Response {
        if !authorised(&s, &h) {
            return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        run(s, move |st| audit_trail(st, &actor(&q.actor)?, q.patient.as_deref())).await
    }

    async fn unassigned_h(AxState(s): AxState<State>, h: HeaderMap, Query(q): Query<ReadQuery>) -> Response {
        if !authorised(&s, &h) {
            return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        run(s, move |st| unassigned(st, &actor(&q.actor)?)).await
    }

    async fn assign_h(
        AxState(s): AxState<State>,
        h: HeaderMap,
        Path(id): Path<String>,
        Json(b): Json<AssignBody>,
    ) -> Response {
        if !authorised(&s, &h) {
            return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        let Ok(id) = id.parse::<RecordId>() else { return err(StatusCode::BAD_REQUEST, "not a record id") };
        let config = s.config.get();
        run(s, move |st| {
            assign(st, &config, &actor(&b.actor)?, id, &b.patient)
                .map(|()| json!({ "record": id.to_string(), "patient": b.patient }))
        })
        .await
    }

    async fn verify_h(AxState(s): AxState<State>, h: HeaderMap) -> Response {
        if !authorised(&s, &h) {
            return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        run(s, verify).await
    }

    async fn purge_h(AxState(s): AxState<State>, h: HeaderMap, Json(b): Json<PurgeBody>) -> Response {
        if !authorised(&s, &h) {
            return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        let retention = s.config.get().store.retention.clone();
        run(s, move |st| purge(st, &actor(&b.actor)?, &retention, b.older_than_days, b.dry_run)).await
    }
}

/// `carebridge records …` and `carebridge keys …`.
pub mod cli {
    use super::*;
    use crate::config::Config;
    use crate::record::Keyring;
    use anyhow::{Result, anyhow, bail};
    use clap::Subcommand;
    use std::path::PathBuf;
    use std::process::ExitCode;

    /// `records` subcommands. Each goes through the admin API when the daemon runs (it holds the
    /// store), or opens the store itself when it does not; both record the same audit entry.
    #[derive(Debug, Subcommand)]
    pub enum RecordsCommand {
        /// List a patient's records (ids, times, channels, decisions; no content).
        List {
            /// The patient's directory id.
            #[arg(long)]
            patient: String,
        },
        /// List records no patient's file holds yet (messages from unverified senders), for
        /// triage: ids, times, channels, decisions; no content.
        Unassigned,
        /// Attach a record without a patient to a patient's file (audited; the record gets an
        /// `assigned` event, its conversation the patient).
        Assign {
            /// Record id (`rec-…`).
            id: String,
            /// The patient's directory id.
            #[arg(long)]
            patient: String,
        },
        /// Show one record with its events. Output contains PHI.
        Show {
            /// Record id (`rec-…`).
            id: String,
        },
        /// Export a patient's records. Output contains PHI.
        Export {
            /// The patient's directory id.
            #[arg(long)]
            patient: String,
            /// `jsonl` or `fhir` (a FHIR R4 Bundle of Communication resources).
            #[arg(long, value_enum, default_value = "jsonl")]
            format: Format,
            /// Write to this file (mode 0600) instead of stdout.
            #[arg(long)]
            out: Option<PathBuf>,
        },
        /// Print the audit trail (of one patient, or all).
        Audit {
            /// The patient's directory id.
            #[arg(long)]
            patient: Option<String>,
        },
        /// Check the hash chain; exits non-zero at the first break.
        Verify,
        /// Remove entries older than their retention (`[store.retention]`), leaving tombstones.
        Purge {
            /// Only entries older than this many days; refused if inside any retention period.
            #[arg(long)]
            older_than_days: Option<u32>,
            /// Count what would go; change nothing.
            #[arg(long)]
            dry_run: bool,
        },
    }

    /// `keys` subcommands.
    #[derive(Debug, Subcommand)]
    pub enum KeysCommand {
        /// Create a new key file (mode 0600). Refuses to overwrite one.
        Generate {
            /// Where.
            #[arg(long)]
            file: PathBuf,
        },
        /// Add a new key to a key file and make it the one new values are sealed with; older keys
        /// stay to read older values. Restart (or reload) the daemon afterwards.
        Rotate {
            /// The key file.
            #[arg(long)]
            file: PathBuf,
        },
        /// List the keys of a key file (ids, dates, which is active; never the keys).
        List {
            /// The key file.
            #[arg(long)]
            file: PathBuf,
        },
    }

    /// Percent-encodes a query value.
    pub fn query_value(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    /// Runs a `records` command.
    pub fn records(config: &Config, actor: String, command: RecordsCommand) -> Result<ExitCode> {
        let a = query_value(&actor);
        let (method, path, body) = match &command {
            RecordsCommand::List { patient } => {
                ("GET", format!("/admin/records?actor={a}&patient={}", query_value(patient)), None)
            }
            RecordsCommand::Show { id } => ("GET", format!("/admin/records/{}?actor={a}", query_value(id)), None),
            RecordsCommand::Unassigned => ("GET", format!("/admin/records/unassigned?actor={a}"), None),
            RecordsCommand::Assign { id, patient } => (
                "POST",
                format!("/admin/records/{}/assign", query_value(id)),
                Some(json!({ "actor": actor, "patient": patient })),
            ),
            RecordsCommand::Export { patient, format, .. } => {
                let f = if *format == Format::Fhir { "fhir" } else { "jsonl" };
                ("GET", format!("/admin/records/export?actor={a}&patient={}&format={f}", query_value(patient)), None)
            }
            RecordsCommand::Audit { patient } => {
                let p = patient.as_deref().map(|p| format!("&patient={}", query_value(p))).unwrap_or_default();
                ("GET", format!("/admin/records/audit?actor={a}{p}"), None)
            }
            RecordsCommand::Verify => ("POST", "/admin/records/verify".to_string(), None),
            RecordsCommand::Purge { older_than_days, dry_run } => (
                "POST",
                "/admin/records/purge".to_string(),
                Some(json!({ "actor": actor, "older_than_days": older_than_days, "dry_run": dry_run })),
            ),
        };
        let answer = match crate::cli::admin_call(config, method, &path, body)? {
            Some(v) => v,
            None => direct(config, &actor, &command)?,
        };
        print_answer(&command, answer)
    }

    fn direct(config: &Config, actor: &str, command: &RecordsCommand) -> Result<Value> {
        let store = crate::record::open_existing(config, config.file.is_some())?;
        let actor = Actor { name: actor.to_string(), via: "cli" };
        let v = match command {
            RecordsCommand::List { patient } => json!(list(&store, &actor, patient)?),
            RecordsCommand::Unassigned => json!(unassigned(&store, &actor)?),
            RecordsCommand::Assign { id, patient } => {
                let rid: RecordId = id.parse().map_err(|_| anyhow!("{id} is not a record id (rec-…)"))?;
                assign(&store, config, &actor, rid, patient)?;
                json!({ "record": rid.to_string(), "patient": patient })
            }
            RecordsCommand::Show { id } => {
                let id: RecordId = id.parse().map_err(|_| anyhow!("{id} is not a record id (rec-…)"))?;
                show(&store, &actor, id)?.ok_or_else(|| anyhow!("no such record"))?
            }
            RecordsCommand::Export { patient, format, .. } => {
                json!({ "data": export(&store, &actor, patient, *format)? })
            }
            RecordsCommand::Audit { patient } => json!(audit_trail(&store, &actor, patient.as_deref())?),
            RecordsCommand::Verify => json!(verify(&store)?),
            RecordsCommand::Purge { older_than_days, dry_run } => {
                json!(purge(&store, &actor, &config.store.retention, *older_than_days, *dry_run)?)
            }
        };
        store.flush_blocking()?;
        Ok(v)
    }

    fn print_answer(command: &RecordsCommand, v: Value) -> Result<ExitCode> {
        match command {
            RecordsCommand::Export { out, .. } => {
                let data = v["data"].as_str().ok_or_else(|| anyhow!("the export came back empty"))?;
                match out {
                    Some(path) => write_private(path, data)?,
                    None => print!("{data}"),
                }
            }
            RecordsCommand::List { .. } | RecordsCommand::Audit { .. } | RecordsCommand::Unassigned => {
                for line in v.as_array().into_iter().flatten() {
                    println!("{line}");
                }
            }
            RecordsCommand::Verify => {
                println!("{}", serde_json::to_string_pretty(&v)?);
                if !v["first_break"].is_null() {
                    eprintln!(
                        "carebridge: the chain is broken at journal entry {}: {}",
                        v["first_break"]["seq"],
                        v["first_break"]["reason"].as_str().unwrap_or("?")
                    );
                    return Ok(ExitCode::from(3));
                }
            }
            _ => println!("{}", serde_json::to_string_pretty(&v)?),
        }
        Ok(ExitCode::SUCCESS)
    }

    fn write_private(path: &std::path::Path, data: &str) -> Result<()> {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut f = o.open(path).map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
        f.write_all(data.as_bytes()).map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
        Ok(())
    }

    /// Runs a `keys` command.
    pub fn keys(command: KeysCommand) -> Result<ExitCode> {
        match command {
            KeysCommand::Generate { file } => {
                let k = Keyring::generate(&file)?;
                println!("{}: new key file, key {} active", file.display(), k.active_id());
            }
            KeysCommand::Rotate { file } => {
                let id = Keyring::rotate(&file)?;
                println!("{}: key {id} added and active; older keys kept for reading", file.display());
            }
            KeysCommand::List { file } => {
                let k = Keyring::load(&file)?;
                for i in k.info() {
                    println!("{}", json!(i));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Refuses an empty actor name early (the audit trail needs one).
    pub fn check_actor(actor: &str) -> Result<()> {
        if actor.trim().is_empty() {
            bail!("--actor must not be empty");
        }
        Ok(())
    }
}
