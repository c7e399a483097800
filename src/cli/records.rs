//! `carebridge records …` and `carebridge keys …`: each records command is one officer
//! request ([`crate::officer`]), sent to the running daemon or carried out on the store.
use super::backend::backend;
use crate::config::ValidConfig;
use crate::officer::Request;
use crate::record::Keyring;
use crate::records::Format;
use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use serde_json::{Value, json};
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

/// Runs a `records` command.
pub fn records(config: &ValidConfig, actor: String, command: RecordsCommand) -> Result<ExitCode> {
    let request = match &command {
        RecordsCommand::List { patient } => Request::RecordsList { actor, patient: patient.clone() },
        RecordsCommand::Unassigned => Request::RecordsUnassigned { actor },
        RecordsCommand::Assign { id, patient } => {
            Request::RecordsAssign { actor, id: id.clone(), patient: patient.clone() }
        }
        RecordsCommand::Show { id } => Request::RecordsShow { actor, id: id.clone() },
        RecordsCommand::Export { patient, format, .. } => {
            Request::RecordsExport { actor, patient: patient.clone(), format: *format }
        }
        RecordsCommand::Audit { patient } => Request::RecordsAudit { actor, patient: patient.clone() },
        RecordsCommand::Verify => Request::RecordsVerify,
        RecordsCommand::Purge { older_than_days, dry_run } => {
            Request::RecordsPurge { actor, older_than_days: *older_than_days, dry_run: *dry_run }
        }
    };
    let answer = backend(config)?.call(request)?;
    print_answer(&command, answer)
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
