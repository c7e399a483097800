//! The command line: `run`, `check-config`, `print-default-config`, `policy explain`, `review`,
//! `outbox`, `link`, `consent`, `export`. Errors are reported with context here, at the edge (`anyhow`).

mod backend;
mod records;

use crate::config::{Config, ConfigErrors, DEFAULT_TOML, ValidConfig};
use crate::officer::{DeadAction, Request, Verdict};
use crate::policy::{Audience, CheckInput, Class, Direction};
use crate::record::Store;
use anyhow::{Context, Result, anyhow, bail};
use backend::backend;
use carebridge_contract::AccountId;
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// carebridge: bridges patients' email, Telegram and web messages to the clinic, privacy-checked
/// and recorded in the patient's file before anything is forwarded.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (until SIGTERM/SIGINT). Without --config, runs the embedded default.
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a config file and print every problem; exits non-zero if there is any.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
        /// Skip environment checks (secrets present, remote services reachable).
        #[arg(long)]
        no_environment: bool,
    },
    /// Print the embedded default config.
    PrintDefaultConfig,
    /// Privacy policy tools.
    Policy {
        /// What to do.
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The review queue of held messages.
    Review {
        /// The TOML config file (for the admin API address or the store).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Who reads a held message (`show`, recorded in the audit trail); default: your login
        /// name.
        #[arg(long, global = true)]
        actor: Option<String>,
        /// What to do.
        #[command(subcommand)]
        command: ReviewCommand,
    },
    /// Dead letters: deliveries given up on (permanent failure or too many attempts).
    Outbox {
        /// The TOML config file (for the admin API address or the store).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// What to do.
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Issue a one-time code that links a patient's chat (Telegram: `/start CODE`).
    Link {
        /// The TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The patient's directory id.
        #[arg(long)]
        patient: String,
        /// The account the code is for (`telegram.front_desk`).
        #[arg(long)]
        account: String,
        /// Consent purpose granted by linking.
        #[arg(long, default_value = "clinical")]
        purpose: String,
    },
    /// Record or withdraw a patient's consent for a channel.
    Consent {
        /// The TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// `grant` or `withdraw`.
        action: String,
        /// The patient's directory id.
        #[arg(long)]
        patient: String,
        /// The account.
        #[arg(long)]
        account: String,
        /// Purpose.
        #[arg(long, default_value = "clinical")]
        purpose: String,
        /// Where the consent came from (`paper-form`, `phone`).
        #[arg(long, default_value = "cli")]
        source: String,
        /// Who records it (the audit trail's actor); default: your login name.
        #[arg(long)]
        actor: Option<String>,
    },
    /// The patient's file: list, show, export (JSON lines or FHIR), audit trail, verify, purge.
    /// Every read is recorded in the audit trail.
    Records {
        /// The TOML config file (for the admin API address or the store).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Who is reading (recorded in the audit trail); default: your login name.
        #[arg(long, global = true)]
        actor: Option<String>,
        /// What to do.
        #[command(subcommand)]
        command: records::RecordsCommand,
    },
    /// The record store itself: `migrate` turns an earlier carebridge's store (sled) into the
    /// current one.
    Store {
        /// What to do.
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The record store's encryption keys.
    Keys {
        /// What to do.
        #[command(subcommand)]
        command: records::KeysCommand,
    },
    /// Print the record store as JSON lines (records with their events, quarantined input, dead
    /// letters, held messages)
    /// for the privacy officer. The daemon must be stopped. Output contains PHI.
    Export {
        /// The TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Who exports (the audit trail's actor); default: your login name.
        #[arg(long)]
        actor: Option<String>,
    },
}

/// `store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Convert the store of an earlier carebridge (sled, in `<data_dir>/db` and `wal/`) into the
    /// current one, verify it, and keep the old files in `<data_dir>/pre-migration/`. The daemon
    /// must be stopped. Harmless to run again.
    Migrate {
        /// The TOML config file (its `data_dir` and key file).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Instead: copy the whole store into PostgreSQL (from `<data_dir>`) or back into an
        /// empty `<data_dir>` (from `[store.postgres]`); the config needs `backend = "postgres"`.
        /// Verified against the source's chain; the source is left as it was.
        #[arg(long, value_enum)]
        into: Option<crate::record::transfer::Target>,
    },
}

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run the policy on a message from stdin and print the decision as JSON.
    Explain {
        /// The TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The account the message arrives on (in) or leaves by (out).
        #[arg(long)]
        channel: String,
        /// The patient (consents in force are read from the store if the daemon is stopped;
        /// otherwise none are assumed).
        #[arg(long)]
        patient: Option<String>,
        /// Direction of travel.
        #[arg(long, default_value = "out")]
        direction: String,
        /// Who reads it (out only): patient or staff.
        #[arg(long, default_value = "patient")]
        audience: String,
    },
}

/// `review` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// List held deliveries (ids and rules only).
    List,
    /// Show one held delivery, with its text.
    Show {
        /// Delivery id (`dlv-…`).
        id: String,
    },
    /// Approve: the delivery is sent.
    Approve {
        /// Delivery id.
        id: String,
        /// Who approves (recorded in the patient's file); default: your login name.
        #[arg(long)]
        by: Option<String>,
    },
    /// Reject: the author is notified per the rule.
    Reject {
        /// Delivery id.
        id: String,
        /// Who rejects (recorded in the patient's file); default: your login name.
        #[arg(long)]
        by: Option<String>,
    },
}

/// `outbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List dead letters (ids, account, reason, attempts, time; no message content).
    List,
    /// Send a dead letter again: back in the outbox, attempts reset, same delivery id.
    Retry {
        /// Delivery id (`dlv-…`).
        id: String,
        /// Who decided (recorded in the patient's file); default: your login name.
        #[arg(long)]
        by: Option<String>,
    },
    /// Drop a dead letter for good (recorded in the patient's file).
    Drop {
        /// Delivery id.
        id: String,
        /// Who decided (recorded in the patient's file); default: your login name.
        #[arg(long)]
        by: Option<String>,
    },
}

/// The exit status when the reader of our standard output went away (`… | head`): what a shell
/// reports for a process ended by SIGPIPE (128 + 13), as `seq 1 1000000 | head` gives.
pub const EXIT_BROKEN_PIPE: u8 = 141;

/// Entry point; maps errors to exit codes ([`crate::exit::code_of`]: 1 = failed, 2 = invalid or
/// unusable config (also a missing secret or key file, found only at start) or a store the
/// administrator must act on, 65 = the record store is damaged, 71 = out of file descriptors,
/// 74 = the record store cannot be written: disk full or an I/O error, which a supervisor
/// should retry; 141 = standard output was closed by its reader, see [`EXIT_BROKEN_PIPE`]).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    quiet_on_broken_pipe();
    let dispatched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(cli)));
    let dispatched = match dispatched {
        Ok(d) => d,
        Err(payload) if is_broken_pipe_panic(payload.as_ref()) => return ExitCode::from(EXIT_BROKEN_PIPE),
        Err(payload) => std::panic::resume_unwind(payload),
    };
    match dispatched {
        Ok(code) => code,
        Err(e) if e.chain().any(is_broken_pipe_error) => ExitCode::from(EXIT_BROKEN_PIPE),
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ConfigErrors>() {
                eprintln!("carebridge: {c}");
                return ExitCode::from(crate::exit::CONFIG);
            }
            eprintln!("carebridge: error: {e:#}");
            ExitCode::from(crate::exit::code_of(&e))
        }
    }
}

/// Rust ignores SIGPIPE, so a write to a closed pipe fails with `BrokenPipe` and `println!`
/// (used by every command that prints) panics on it: `carebridge records list | head` printed a
/// panic and exited 101. A reader that has seen enough is not an error: this hook keeps that one
/// panic silent, and [`main`] turns it into [`EXIT_BROKEN_PIPE`] after unwinding, so the store
/// is still closed properly. Every other panic is reported as before.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe_panic(info.payload()) {
            default(info);
        }
    }));
}

/// Whether a panic is std's "failed printing to stdout: Broken pipe" (the message `print!`
/// panics with; there is no typed error to match, only its text).
fn is_broken_pipe_panic(payload: &(dyn std::any::Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    text.starts_with("failed printing to stdout") && text.contains("Broken pipe")
}

/// Whether an error (from a `writeln!` on stdout) is the reader having closed the pipe.
fn is_broken_pipe_error(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn load(path: Option<&Path>) -> Result<ValidConfig> {
    Ok(match path {
        Some(p) => ValidConfig::load(p)?,
        None => ValidConfig::default_config()?,
    })
}

/// `store migrate`: see [`crate::record::import`].
fn store_migrate(config: &Config) -> Result<ExitCode> {
    let data_dir = &config.daemon.data_dir;
    let keys = config.store.keyring(&config.config_dir, data_dir).context("loading the record store's key file")?;
    match crate::record::import::migrate(data_dir, keys, config.store.cache_mb)
        .with_context(|| format!("migrating the record store in {}", data_dir.display()))?
    {
        None => println!("{}: nothing to migrate (no store of an earlier carebridge here)", data_dir.display()),
        Some(m) => {
            let total: usize = m.entries.iter().map(|(_, n)| n).sum();
            println!(
                "{}: migrated {total} entries from schema v{} ({} write-ahead log records); the chain verifies: {} entries, head {}; old files kept in {}",
                data_dir.display(),
                m.from_schema,
                m.wal_records,
                m.chain_entries,
                m.chain_head,
                m.kept_at.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    // One crypto provider for every rustls user (IMAP TLS builds its own ClientConfig).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Run { config } => {
            let config = load(config.as_deref())?;
            crate::telemetry::init(config.daemon.log_format, &config.daemon.log_level);
            runtime()?.block_on(crate::daemon::run(config, crate::daemon::signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file, no_environment } => {
            let config = load(Some(&file))?;
            if !no_environment {
                check_environment(&config)?;
            }
            println!("{}: ok ({} accounts, {} routes)", file.display(), config.accounts.len(), config.routes.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::PrintDefaultConfig => {
            print!("{DEFAULT_TOML}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command: PolicyCommand::Explain { config, channel, patient, direction, audience } } => {
            let config = load(config.as_deref())?;
            explain(&config, &channel, patient.as_deref(), &direction, &audience)
        }
        Command::Records { config, actor, command } => {
            let config = load(config.as_deref())?;
            let actor = who_acts(actor)?;
            records::check_actor(&actor)?;
            records::records(&config, actor, command)
        }
        Command::Keys { command } => records::keys(command),
        Command::Store { command: StoreCommand::Migrate { config, into } } => {
            let config = load(config.as_deref())?;
            match into {
                None => store_migrate(&config),
                Some(into) => {
                    let c = crate::record::transfer::run(&config, into)?;
                    println!(
                        "copied {} entries into {into:?}; the chain verifies: {} entries, head {}",
                        c.entries, c.chain_entries, c.chain_head
                    );
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Review { config, actor, command } => {
            let config = load(config.as_deref())?;
            let command = match command {
                ReviewCommand::Approve { id, by } => ReviewCommand::Approve { id, by: Some(who_acts(by)?) },
                ReviewCommand::Reject { id, by } => ReviewCommand::Reject { id, by: Some(who_acts(by)?) },
                other => other,
            };
            let actor = match &command {
                ReviewCommand::Show { .. } => who_acts(actor)?,
                _ => String::new(),
            };
            review(&config, command, &actor)
        }
        Command::Outbox { config, command } => {
            let config = load(config.as_deref())?;
            let command = match command {
                OutboxCommand::Retry { id, by } => OutboxCommand::Retry { id, by: Some(who_acts(by)?) },
                OutboxCommand::Drop { id, by } => OutboxCommand::Drop { id, by: Some(who_acts(by)?) },
                other => other,
            };
            outbox(&config, command)
        }
        Command::Link { config, patient, account, purpose } => {
            let config = load(config.as_deref())?;
            let out = backend(&config)?.call(Request::LinkCode { patient_id: patient, account, purpose })?;
            println!("{}", out["code"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Command::Consent { config, action, patient, account, purpose, source, actor } => {
            let config = load(config.as_deref())?;
            let grant = match action.as_str() {
                "grant" => true,
                "withdraw" => false,
                other => bail!("unknown consent action `{other}` (grant or withdraw)"),
            };
            let actor = who_acts(actor)?;
            backend(&config)?.call(Request::Consent { patient_id: patient, account, purpose, grant, source, actor })?;
            println!("ok");
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { config, actor } => {
            let config = load(config.as_deref())?;
            export(&config, &who_acts(actor)?)
        }
    }
}

/// The environment checks of `check-config`: every account's secrets and files are read, its
/// remote side is reached (SMTP and IMAP log in, webhook and Telegram senders connect), and the
/// record store's key file is checked as `run` would load it (present, a key file, readable only
/// by its owner). Every problem is reported once, as a configuration error (exit 2).
///
/// Everything runs inside the runtime: lettre's SMTP pool spawns a task when it is built and
/// when it is dropped, which panicked ("there is no reactor running") outside one.
fn check_environment(config: &Config) -> Result<()> {
    let rt = runtime()?;
    let mut problems: Vec<carebridge_contract::config::Problem> = Vec::new();
    let mut push = |path: String, message: String| {
        if !problems.iter().any(|p| p.path == path && p.message == message) {
            problems.push(carebridge_contract::config::Problem::new(path, message));
        }
    };
    rt.block_on(async {
        for (id, account) in &config.accounts {
            let cx = carebridge_contract::config::BuildContext {
                account: id.clone(),
                config_dir: config.config_dir.clone(),
            };
            match account.build_outbound(&cx) {
                Ok(Some(sender)) => {
                    if let Err(e) = sender.healthcheck().await {
                        push(id.to_string(), e.to_string());
                    }
                }
                Ok(None) => {}
                Err(e) => push(id.to_string(), e.to_string()),
            }
            if account.receives()
                && let Err(e) = account.check_inbound(&cx).await
            {
                push(id.to_string(), e.to_string());
            }
        }
    });
    let key = config.store.key_path(&config.config_dir, &config.daemon.data_dir);
    if key.exists() {
        if let Err(e) = crate::record::Keyring::load(&key) {
            push("store.key_file".into(), e.to_string());
        }
    } else if config.store.key_file.is_some() {
        push(
            "store.key_file".into(),
            format!(
                "the key file {} does not exist; create it with `carebridge keys generate --file {}`",
                key.display(),
                key.display()
            ),
        );
    } else if config.daemon.data_dir.join("db").exists() {
        push(
            "store.key_file".into(),
            format!(
                "the store in {} exists but its key file {} does not: restore the key file from backup",
                config.daemon.data_dir.display(),
                key.display()
            ),
        );
    }
    if problems.is_empty() { Ok(()) } else { Err(ConfigErrors(problems).into()) }
}

/// Who is acting, for the audit trail: `given` (`--actor`, `--by`), else the login name (SUDO_USER,
/// USER, LOGNAME), else the name of the process's user id in /etc/passwd (under systemd, cron or
/// `docker exec` the variables are often unset, and the trail said "unknown"). With none of
/// these the command refuses: every audited action names a real actor.
pub(crate) fn who_acts(given: Option<String>) -> Result<String> {
    if let Some(name) = given {
        if name.trim().is_empty() {
            bail!("--actor/--by must not be empty");
        }
        return Ok(name);
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(name) = var("SUDO_USER").or_else(|| var("USER")).or_else(|| var("LOGNAME")).or_else(os_user_name) {
        return Ok(name);
    }
    bail!(
        "cannot tell who is acting: USER and LOGNAME are unset and this user id has no name; \
         say who you are with --actor (records, review show, consent, export) or --by (review, outbox)"
    )
}

/// The name /etc/passwd gives the user id this process runs as (the owner of /proc/self).
fn os_user_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let entry_uid: u32 = fields.nth(1)?.parse().ok()?;
        (entry_uid == uid && !name.is_empty()).then(|| name.to_string())
    })
}

/// The store for `export`, which streams every patient's file from the store itself: there
/// must be one (see `record::open_existing`).
fn open_store(config: &Config) -> Result<Store> {
    crate::record::open_existing(config, config.file.is_some())
}

/// `review list|show|approve|reject`: one officer request each.
fn review(config: &ValidConfig, command: ReviewCommand, actor: &str) -> Result<ExitCode> {
    let request = match command {
        ReviewCommand::List => Request::ReviewList,
        ReviewCommand::Show { id } => Request::ReviewShow { delivery: id, actor: actor.to_string() },
        ReviewCommand::Approve { id, by } => {
            Request::ReviewDecide { delivery: id, verdict: Verdict::Approve, by: by.unwrap_or_default() }
        }
        ReviewCommand::Reject { id, by } => {
            Request::ReviewDecide { delivery: id, verdict: Verdict::Reject, by: by.unwrap_or_default() }
        }
    };
    println!("{}", serde_json::to_string_pretty(&backend(config)?.call(request)?)?);
    Ok(ExitCode::SUCCESS)
}

/// `outbox list|retry|drop`: one officer request each.
fn outbox(config: &ValidConfig, command: OutboxCommand) -> Result<ExitCode> {
    let request = match command {
        OutboxCommand::List => Request::DeadList,
        OutboxCommand::Retry { id, by } => {
            Request::DeadAction { delivery: id, action: DeadAction::Retry, by: by.unwrap_or_default() }
        }
        OutboxCommand::Drop { id, by } => {
            Request::DeadAction { delivery: id, action: DeadAction::Drop, by: by.unwrap_or_default() }
        }
    };
    println!("{}", serde_json::to_string_pretty(&backend(config)?.call(request)?)?);
    Ok(ExitCode::SUCCESS)
}

fn explain(
    config: &ValidConfig,
    channel: &str,
    patient: Option<&str>,
    direction: &str,
    audience: &str,
) -> Result<ExitCode> {
    let account: AccountId = channel.parse().map_err(|e| anyhow!("--channel: {e}"))?;
    if !config.accounts.contains_key(&account) {
        bail!("--channel: unknown account `{account}`");
    }
    let direction = match direction {
        "in" => Direction::In,
        "out" => Direction::Out,
        other => bail!("--direction must be in or out, not `{other}`"),
    };
    let audience = match audience {
        "patient" => Audience::Patient,
        "staff" => Audience::Staff,
        other => bail!("--audience must be patient or staff, not `{other}`"),
    };
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).context("reading the message from stdin (it must be UTF-8)")?;
    let consents = match patient {
        Some(p) => crate::record::open_existing(config, true)
            .ok()
            .map(|s| s.consents(p, &account.to_string()).unwrap_or_default())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let policy = config.policy();
    let input = CheckInput {
        text: &text,
        direction,
        account: &account,
        audience,
        consents: &consents,
        conversation_class: Class::None,
        has_attachments: false,
    };
    // The documented, stable format (docs/policy.md): auditors diff it.
    println!("{}", policy.explanation(&input).to_json_string());
    Ok(ExitCode::SUCCESS)
}

fn export(config: &Config, actor: &str) -> Result<ExitCode> {
    let store = open_store(config)?;
    // The whole store is every patient's file: the read is audited before anything is printed.
    let actor = crate::record::Actor { name: actor.to_string(), via: "cli" };
    store.audit(&actor, "store.export", None, vec![], None)?;
    store.flush_blocking()?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    for r in store.records() {
        let r = store.with_attachment_data(r?)?;
        let events = store.events(r.id)?;
        writeln!(out, "{}", serde_json::json!({ "type": "record", "record": r, "events": events }))?;
    }
    for q in store.quarantine_entries()? {
        writeln!(out, "{}", serde_json::json!({ "type": "quarantined", "quarantined": q }))?;
    }
    for d in store.dead_letters()? {
        writeln!(out, "{}", serde_json::json!({ "type": "dead_letter", "dead_letter": d }))?;
    }
    for h in store.held()? {
        writeln!(out, "{}", serde_json::json!({ "type": "held", "held": h }))?;
    }
    Ok(ExitCode::SUCCESS)
}
