//! The one TOML file: parsing (serde, unknown keys rejected) and a pure validation pass that
//! reports **every** problem at once with its TOML path.
//!
//! Loading has two steps. [`Config::from_toml`] parses the text and rejects inline secrets before
//! serde sees them (so the message says what to do instead of "unknown field"); each account's
//! table is parsed separately into its adapter's config type so one bad account does not hide
//! the problems of the others. [`Config::validate`] then checks cross-references (routes, the
//! directory, the policy) without touching the network or the disk.

use crate::accounts::AccountConfig;
use crate::policy::{Policy, PolicyConfig};
use carebridge_contract::config::Problem;
use carebridge_contract::{AccountId, Address, AddressKind, ChannelKind};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The config the daemon runs with when none is given: a local store under `./data`, a webhook
/// listener and a webhook sink on loopback, no outside accounts.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Keys that would hold a secret if written inline. Their `_env` / `_file` forms are the only way.
const SECRET_WORDS: &[&str] = &["password", "token", "secret", "api_key", "private_key", "passphrase"];

/// Why the config cannot be used: every problem found, each with its TOML path.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in the configuration:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<Problem>);

/// A config that passed every check, with its policy compiled: the only form the daemon and the
/// commands run. [`ValidConfig::new`] is the one way to make one, so "validate before use" is a
/// type, not something each caller must remember; the policy section is checked once, with the
/// account list, and compiled once (each account's trust and ceilings resolved there).
#[derive(Clone, Debug)]
pub struct ValidConfig {
    config: Config,
    policy: Arc<Policy>,
}

impl ValidConfig {
    /// Checks `config` ([`Config::validate`]: every problem, with its TOML path) and compiles
    /// its policy.
    pub fn new(config: Config) -> Result<ValidConfig, ConfigErrors> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        let policy = Policy::compile_validated(&config.policy).map_err(ConfigErrors)?;
        Ok(ValidConfig { config, policy: Arc::new(policy) })
    }

    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> Result<ValidConfig, ConfigErrors> {
        ValidConfig::new(Config::load(path)?)
    }

    /// The embedded default config, checked.
    pub fn default_config() -> Result<ValidConfig, ConfigErrors> {
        ValidConfig::new(Config::default_config()?)
    }

    /// The compiled policy.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }
}

impl std::ops::Deref for ValidConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

/// `[daemon]`: process-wide settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Where the record store lives, relative to the working directory (or absolute).
    pub data_dir: PathBuf,
    /// `human` or `json` log lines.
    pub log_format: LogFormat,
    /// Default log filter (`RUST_LOG` overrides it).
    pub log_level: String,
    /// How long shutdown may take before stragglers are abandoned (they stay in the outbox).
    pub shutdown_timeout_secs: u64,
    /// Capacity of the router's queue: adapters wait (and HTTP answers 503) when it is full.
    pub queue_capacity: usize,
    /// Seconds between `Status.` log lines (queue depth, outbox pending, dead letters).
    pub status_interval_secs: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            log_format: LogFormat::Human,
            log_level: "info".into(),
            shutdown_timeout_secs: 30,
            queue_capacity: 1024,
            status_interval_secs: 60,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[router]`: what happens to messages the directory cannot place.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// What to do with a message from an address the directory does not know: `forward` it
    /// along its routes marked unverified (a new patient writing in), or `record_only`.
    pub unknown_sender: UnknownSender,
    /// PHI-free reply to an unknown sender on a chat channel (Telegram): how to link their chat.
    /// Unset: the built-in text in `policy.locale` (`crate::router::notices`).
    pub unlinked_notice: Option<String>,
    /// PHI-free reply confirming a successful link. Unset: the built-in text in `policy.locale`.
    pub linked_notice: Option<String>,
    /// Outbox rows pending above which the router stops accepting (`Receipt::Unavailable`).
    pub max_outbox_pending: u64,
    /// Unprompted notices (how to link a chat; the advice to use a secure channel) go to one
    /// sender at most once in this many seconds, however many messages they send. 0 = always.
    pub notice_interval_secs: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            unknown_sender: UnknownSender::Forward,
            unlinked_notice: None,
            linked_notice: None,
            max_outbox_pending: 1_000_000,
            notice_interval_secs: 24 * 3600,
        }
    }
}

/// See [`RouterConfig::unknown_sender`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSender {
    /// Forward along the routes, marked unverified.
    Forward,
    /// Record only; staff see it in the record store.
    RecordOnly,
}

/// `[outbox]`: retry schedule of every delivery.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// First retry delay.
    pub retry_initial_ms: u64,
    /// Longest retry delay (the backoff doubles up to it, with jitter).
    pub retry_max_secs: u64,
    /// Attempts after which a delivery is dead-lettered.
    pub max_attempts: u32,
    /// Sends in flight at once per destination account. Deliveries to the same recipient (or,
    /// for the account's default destination, in the same conversation) are always sent one
    /// after the other in order; 1 makes the whole account strictly FIFO.
    pub max_in_flight: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self { retry_initial_ms: 500, retry_max_secs: 300, max_attempts: 12, max_in_flight: 8 }
    }
}

/// `[admin]`: the loopback HTTP API the CLI uses while the daemon runs (the store is locked by
/// the daemon, so `review` and `link` go through it).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address; `None` disables the admin API.
    pub listen: Option<std::net::SocketAddr>,
    /// Bearer token, from the environment.
    pub token_env: Option<String>,
    /// Bearer token, from a file (relative to the config file).
    pub token_file: Option<PathBuf>,
}

/// `[ops]`: the operations endpoint (`/healthz`, `/readyz`, `/metrics`; see `crate::ops`). It
/// has no authentication, and says nothing but ids, states and counts; without this section it
/// is not served.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Listen address, e.g. `127.0.0.1:9187`.
    pub listen: std::net::SocketAddr,
    /// Serve on an address other than loopback. Off by default: the endpoint is unauthenticated,
    /// so exposing it beyond the host must be a deliberate choice (behind a firewall that only
    /// lets the monitoring host in).
    #[serde(default)]
    pub allow_non_loopback: bool,
}

/// `[[route]]`: messages from any `from` account go to every `to` account.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for logs and errors.
    pub name: String,
    /// Inbound accounts.
    pub from: Vec<String>,
    /// Outbound accounts (the clinic side: inbox, staff chat, EHR).
    pub to: Vec<String>,
}

/// `[directory]`: who is who. Addresses are `kind:value` (`email:ann@x.test`, `telegram:42`,
/// `phone:+14165550199`, `opaque:abc`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// A TOML file with more `[[patient]]` / `[[staff]]` entries (relative to the config file).
    pub file: Option<PathBuf>,
    /// Patients.
    #[serde(default)]
    pub patient: Vec<PersonConfig>,
    /// Clinicians and staff: only they can answer a patient through carebridge.
    #[serde(default)]
    pub staff: Vec<PersonConfig>,
}

/// One directory entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonConfig {
    /// Internal id (`p-0001`): the key of the patient's file. Not an external identifier.
    pub id: String,
    /// Addresses on any channel.
    pub addresses: Vec<String>,
    /// The patient's medical record number in the clinic's EMR, for a `fhir` account with
    /// `patient_identifier = "mrn"`. PHI: never logged or echoed in an error.
    #[serde(default)]
    pub mrn: Option<String>,
    /// The patient's health number, for a `fhir` account with `patient_identifier =
    /// "health_number"`. PHI: never logged or echoed in an error.
    #[serde(default)]
    pub health_number: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectoryFile {
    #[serde(default)]
    patient: Vec<PersonConfig>,
    #[serde(default)]
    staff: Vec<PersonConfig>,
}

/// Only the account tables, read again when another section failed, so their problems are
/// reported in the same run.
#[derive(Debug, Default, Deserialize)]
struct AccountTables {
    #[serde(default)]
    email: BTreeMap<String, toml::Table>,
    #[serde(default)]
    telegram: BTreeMap<String, toml::Table>,
    #[serde(default)]
    webhook: BTreeMap<String, toml::Table>,
    #[serde(default)]
    fhir: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: DaemonConfig,
    #[serde(default)]
    router: RouterConfig,
    #[serde(default)]
    outbox: OutboxConfig,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    ops: Option<OpsConfig>,
    #[serde(default)]
    store: crate::record::StoreConfig,
    #[serde(default, rename = "route")]
    routes: Vec<RouteConfig>,
    #[serde(default)]
    directory: DirectoryConfig,
    #[serde(default)]
    policy: PolicyConfig,
    #[serde(default)]
    email: BTreeMap<String, toml::Table>,
    #[serde(default)]
    telegram: BTreeMap<String, toml::Table>,
    #[serde(default)]
    webhook: BTreeMap<String, toml::Table>,
    #[serde(default)]
    fhir: BTreeMap<String, toml::Table>,
}

/// The whole configuration, as parsed. Nothing runs it as it is: [`ValidConfig::new`] checks it
/// and compiles its policy, and the daemon and the commands take only a [`ValidConfig`].
#[derive(Clone, Debug)]
pub struct Config {
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[router]`.
    pub router: RouterConfig,
    /// `[outbox]`.
    pub outbox: OutboxConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[ops]`; `None` = not served.
    pub ops: Option<OpsConfig>,
    /// `[store]`: the key file and retention.
    pub store: crate::record::StoreConfig,
    /// `[[route]]`.
    pub routes: Vec<RouteConfig>,
    /// `[directory]` plus the directory file's entries.
    pub directory: DirectoryConfig,
    /// `[policy]`.
    pub policy: PolicyConfig,
    /// Every account, by id.
    pub accounts: BTreeMap<AccountId, AccountConfig>,
    /// The directory of the config file (relative secret and directory files resolve from it).
    pub config_dir: PathBuf,
    /// The file it was read from, which SIGHUP reads again; `None` for the embedded default.
    pub file: Option<PathBuf>,
    /// Each account's table as written, so a reload restarts exactly the accounts whose
    /// section changed.
    pub sections: BTreeMap<AccountId, toml::Table>,
}

impl Config {
    /// Reads and parses a config file (and its directory file, if any).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![Problem::new(path.display().to_string(), format!("cannot read: {e}"))]))?;
        // An empty file (or only comments) parses as "everything default, no accounts": a daemon
        // that receives nothing. That is a wrong path or a truncated copy, not a config.
        if text.parse::<toml::Table>().is_ok_and(|t| t.is_empty()) {
            return Err(ConfigErrors(vec![Problem::new(
                path.display().to_string(),
                "the file is empty: nothing to run (start from `carebridge print-default-config`)",
            )]));
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut config = Config::from_toml(&text, &dir)?;
        config.file = Some(path.to_path_buf());
        Ok(config)
    }

    /// The embedded default config (see [`DEFAULT_TOML`]).
    pub fn default_config() -> Result<Config, ConfigErrors> {
        Config::from_toml(DEFAULT_TOML, Path::new("."))
    }

    /// Parses TOML text; `config_dir` is where relative paths resolve.
    pub fn from_toml(text: &str, config_dir: &Path) -> Result<Config, ConfigErrors> {
        let value: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![Problem::new("(file)", toml_message(&e, text))]))?;
        let mut problems = Vec::new();
        find_inline_secrets(&value, "", &mut problems);
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        // Every section's parse and type errors, each with its TOML path, not only the first one
        // as line and column; the accounts' tables are parsed (and reported) below even if
        // another section is wrong.
        let raw: Option<RawConfig> = deserialize_all(toml::Value::Table(value), "", &mut problems);
        let Some(raw) = raw else {
            // Accounts are still parsed for their own problems when the tables themselves parsed.
            if let Ok(accounts) = toml::from_str::<AccountTables>(text) {
                for (kind, tables) in [
                    (ChannelKind::Email, accounts.email),
                    (ChannelKind::Telegram, accounts.telegram),
                    (ChannelKind::Webhook, accounts.webhook),
                    (ChannelKind::Fhir, accounts.fhir),
                ] {
                    for (name, table) in tables {
                        if let Err(mut more) = AccountConfig::parse(kind, table, &format!("{kind}.{name}")) {
                            problems.append(&mut more);
                        }
                    }
                }
            }
            return Err(ConfigErrors(problems));
        };
        let mut accounts = BTreeMap::new();
        let mut sections = BTreeMap::new();
        for (kind, tables) in [
            (ChannelKind::Email, raw.email),
            (ChannelKind::Telegram, raw.telegram),
            (ChannelKind::Webhook, raw.webhook),
            (ChannelKind::Fhir, raw.fhir),
        ] {
            for (name, table) in tables {
                let path = format!("{kind}.{name}");
                let id = match AccountId::new(kind, &name) {
                    Ok(id) => id,
                    Err(e) => {
                        problems.push(Problem::new(path, e.to_string()));
                        continue;
                    }
                };
                match AccountConfig::parse(kind, table.clone(), &path) {
                    Ok(c) => {
                        accounts.insert(id.clone(), c);
                        sections.insert(id, table);
                    }
                    Err(mut more) => problems.append(&mut more),
                }
            }
        }
        let mut directory = raw.directory;
        if let Some(file) = &directory.file {
            let full = config_dir.join(file);
            match std::fs::read_to_string(&full)
                .map_err(|e| e.to_string())
                .and_then(|t| toml::from_str::<DirectoryFile>(&t).map_err(|e| toml_message(&e, &t)))
            {
                Ok(f) => {
                    directory.patient.extend(f.patient);
                    directory.staff.extend(f.staff);
                }
                Err(e) => problems.push(Problem::new("directory.file", format!("{}: {e}", full.display()))),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        for account in accounts.values_mut() {
            if let AccountConfig::Fhir(f) = account {
                f.patient_values = patient_values(&directory, f.patient_identifier);
            }
        }
        Ok(Config {
            daemon: raw.daemon,
            router: raw.router,
            outbox: raw.outbox,
            admin: raw.admin,
            ops: raw.ops,
            store: raw.store,
            routes: raw.routes,
            directory,
            policy: raw.policy,
            accounts,
            config_dir: config_dir.to_path_buf(),
            file: None,
            sections,
        })
    }

    /// Pure validation of everything: returns every problem found (empty = usable).
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let d = &self.daemon;
        if d.queue_capacity == 0 {
            p.push(Problem::new("daemon.queue_capacity", "must be at least 1"));
        }
        if d.shutdown_timeout_secs == 0 {
            p.push(Problem::new("daemon.shutdown_timeout_secs", "must be at least 1"));
        }
        if d.status_interval_secs == 0 {
            p.push(Problem::new("daemon.status_interval_secs", "must be at least 1"));
        }
        p.extend(self.store.validate());
        if tracing_subscriber::EnvFilter::try_new(&d.log_level).is_err() {
            p.push(Problem::new("daemon.log_level", format!("`{}` is not a log filter (try `info`)", d.log_level)));
        }
        if self.outbox.max_attempts == 0 {
            p.push(Problem::new("outbox.max_attempts", "must be at least 1"));
        }
        if self.outbox.max_in_flight == 0 || self.outbox.max_in_flight > 256 {
            p.push(Problem::new("outbox.max_in_flight", "must be between 1 and 256"));
        }
        if self.outbox.retry_initial_ms == 0 {
            p.push(Problem::new("outbox.retry_initial_ms", "must be at least 1"));
        }
        if self.outbox.retry_max_secs == 0 {
            p.push(Problem::new("outbox.retry_max_secs", "must be at least 1"));
        }
        if self.admin.listen.is_some() {
            carebridge_contract::config::check_secret(
                "admin",
                "token",
                &self.admin.token_env,
                &self.admin.token_file,
                true,
                &mut p,
            );
        }
        if let Some(ops) = &self.ops
            && !ops.listen.ip().is_loopback()
            && !ops.allow_non_loopback
        {
            p.push(Problem::new(
                "ops.listen",
                format!(
                    "{} is not a loopback address and the ops endpoint has no authentication: \
                     use 127.0.0.1, or set ops.allow_non_loopback = true behind a firewall",
                    ops.listen
                ),
            ));
        }
        for (id, account) in &self.accounts {
            p.extend(account.validate(&id.to_string()));
        }
        self.validate_listeners(&mut p);
        self.validate_routes(&mut p);
        self.validate_directory(&mut p);
        self.validate_patient_identifiers(&mut p);
        let ids: Vec<AccountId> = self.accounts.keys().cloned().collect();
        p.extend(self.policy.validate(&ids));
        p
    }

    /// Two listeners on one address would fail at start ("address in use") or, worse, one of
    /// them would bind and the other's clients would reach the wrong service: refused here,
    /// naming both keys. An unspecified address (`0.0.0.0`, `::`) overlaps every address on its
    /// port; port 0 (any free port) never clashes.
    fn validate_listeners(&self, p: &mut Vec<Problem>) {
        let mut listeners: Vec<(String, std::net::SocketAddr)> = Vec::new();
        if let Some(ops) = &self.ops {
            listeners.push(("ops.listen".into(), ops.listen));
        }
        if let Some(addr) = self.admin.listen {
            listeners.push(("admin.listen".into(), addr));
        }
        for (id, account) in &self.accounts {
            if let Some((key, addr)) = account.listen_addr() {
                listeners.push((format!("{id}.{key}"), addr));
            }
        }
        for (i, (path, addr)) in listeners.iter().enumerate() {
            let clash = listeners[..i].iter().find(|(_, other)| {
                addr.port() != 0
                    && addr.port() == other.port()
                    && (addr.ip() == other.ip() || addr.ip().is_unspecified() || other.ip().is_unspecified())
            });
            if let Some((first, other)) = clash {
                p.push(Problem::new(
                    path.clone(),
                    format!("{addr} is already the address of `{first}` ({other}): each listener needs its own"),
                ));
            }
        }
    }

    fn validate_routes(&self, p: &mut Vec<Problem>) {
        let names: Vec<String> = self.accounts.keys().map(|a| a.to_string()).collect();
        let mut seen = BTreeSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let path = format!("route[{i}]");
            if r.name.is_empty() {
                p.push(Problem::new(format!("{path}.name"), "must not be empty"));
            } else if !seen.insert(r.name.clone()) {
                p.push(Problem::new(format!("{path}.name"), format!("duplicate route name `{}`", r.name)));
            }
            if r.from.is_empty() {
                p.push(Problem::new(format!("{path}.from"), "lists no account"));
            }
            if r.to.is_empty() {
                p.push(Problem::new(format!("{path}.to"), "lists no account"));
            }
            for (field, list, need_in) in [("from", &r.from, true), ("to", &r.to, false)] {
                for a in list {
                    let Some(account) = a.parse::<AccountId>().ok().and_then(|id| self.accounts.get(&id)) else {
                        let hint =
                            did_you_mean(a, &names).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
                        p.push(Problem::new(
                            format!("{path}.{field}"),
                            format!("route `{}`: unknown account `{a}`{hint}", r.name),
                        ));
                        continue;
                    };
                    if need_in && !account.receives() {
                        p.push(Problem::new(
                            format!("{path}.from"),
                            format!(
                                "route `{}`: account `{a}` does not receive messages (no inbound side configured)",
                                r.name
                            ),
                        ));
                    }
                    if !need_in && !account.sends() {
                        p.push(Problem::new(
                            format!("{path}.to"),
                            format!("route `{}`: account `{a}` cannot send (no outbound side configured)", r.name),
                        ));
                    }
                    if !need_in && let Some(key) = account.missing_forward_destination() {
                        p.push(Problem::new(
                            format!("{path}.to"),
                            format!(
                                "route `{}`: `{a}` has no `{key}`, so forwards to it could never be delivered \
                                 (set `{a}.{key}`)",
                                r.name
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// A `fhir` account that files patients by their MRN or health number needs one for every
    /// patient of the directory: a patient without it could not be found in the EMR. Values are
    /// never echoed (PHI).
    fn validate_patient_identifiers(&self, p: &mut Vec<Problem>) {
        for (id, account) in &self.accounts {
            let AccountConfig::Fhir(f) = account else { continue };
            let Some(key) = f.patient_identifier.directory_key() else { continue };
            for (i, person) in self.directory.patient.iter().enumerate() {
                let value = if key == "mrn" { &person.mrn } else { &person.health_number };
                match value.as_deref().map(str::trim) {
                    None | Some("") => p.push(Problem::new(
                        format!("directory.patient[{i}].{key}"),
                        format!("required: {id} files patients by it (patient_identifier = \"{key}\")"),
                    )),
                    Some(v) if v.contains('|') || v.chars().any(char::is_control) => p.push(Problem::new(
                        format!("directory.patient[{i}].{key}"),
                        "must not contain `|` or control characters (it is searched as system|value)",
                    )),
                    Some(_) => {}
                }
            }
        }
        for (i, person) in self.directory.staff.iter().enumerate() {
            if person.mrn.is_some() || person.health_number.is_some() {
                p.push(Problem::new(format!("directory.staff[{i}]"), "`mrn` and `health_number` are for patients"));
            }
        }
    }

    fn validate_directory(&self, p: &mut Vec<Problem>) {
        let mut ids = BTreeSet::new();
        let mut addrs: BTreeMap<String, String> = BTreeMap::new();
        for (section, list) in [("patient", &self.directory.patient), ("staff", &self.directory.staff)] {
            for (i, person) in list.iter().enumerate() {
                let path = format!("directory.{section}[{i}]");
                if person.id.is_empty()
                    || person.id.len() > 64
                    || !person.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    p.push(Problem::new(
                        format!("{path}.id"),
                        "must be 1-64 characters of letters, digits, `-`, `_`, `.`",
                    ));
                }
                if !ids.insert(person.id.clone()) {
                    p.push(Problem::new(format!("{path}.id"), format!("duplicate directory id `{}`", person.id)));
                }
                for (j, a) in person.addresses.iter().enumerate() {
                    match parse_address(a) {
                        Ok(addr) => {
                            let key = addr.key().into_inner();
                            if let Some(other) = addrs.insert(key, person.id.clone()) {
                                // The address itself is PHI: name the entries, not the value.
                                p.push(Problem::new(
                                    format!("{path}.addresses[{j}]"),
                                    format!("address already belongs to `{other}`"),
                                ));
                            }
                        }
                        Err(e) => p.push(Problem::new(format!("{path}.addresses[{j}]"), e)),
                    }
                }
            }
        }
    }

    /// The accounts a route sends messages from `source` to.
    pub fn destinations(&self, source: &AccountId) -> Vec<AccountId> {
        let mut out: Vec<AccountId> = Vec::new();
        for r in &self.routes {
            if r.from.iter().any(|f| f == &source.to_string()) {
                for id in r.to.iter().filter_map(|t| t.parse::<AccountId>().ok()) {
                    if !out.contains(&id) {
                        out.push(id);
                    }
                }
            }
        }
        out
    }

    /// The `fhir` accounts that file a conversation begun on `origin`: those on its routes that
    /// can send (a clinician's answer and every notice of the conversation go there too).
    pub fn filing_accounts(&self, origin: &AccountId) -> Vec<AccountId> {
        self.destinations(origin)
            .into_iter()
            .filter(|a| a.kind() == ChannelKind::Fhir && self.accounts.get(a).is_some_and(|c| c.sends()))
            .collect()
    }
}

/// Directory id → the value a `fhir` account files the patient under (`mrn`, `health_number`).
fn patient_values(
    directory: &DirectoryConfig,
    which: carebridge_fhir::PatientIdentifier,
) -> BTreeMap<String, carebridge_contract::Redacted<String>> {
    directory
        .patient
        .iter()
        .filter_map(|p| {
            let v = match which {
                carebridge_fhir::PatientIdentifier::DirectoryId => None,
                carebridge_fhir::PatientIdentifier::Mrn => p.mrn.clone(),
                carebridge_fhir::PatientIdentifier::HealthNumber => p.health_number.clone(),
            };
            v.map(|v| (p.id.clone(), carebridge_contract::Redacted::new(v)))
        })
        .collect()
}

/// Parses a directory address `kind:value`.
pub fn parse_address(s: &str) -> Result<Address, String> {
    let (kind, value) = s.split_once(':').ok_or("must be `kind:value` (email:, telegram:, phone: or opaque:)")?;
    let kind = match kind {
        "email" => AddressKind::Email,
        "telegram" => AddressKind::Telegram,
        "phone" => AddressKind::Phone,
        "opaque" => AddressKind::Opaque,
        _ => return Err(format!("unknown address kind `{kind}` (email, telegram, phone or opaque)")),
    };
    let ok = match kind {
        AddressKind::Email => value.contains('@') && !value.starts_with('@') && !value.ends_with('@'),
        AddressKind::Telegram => value.parse::<i64>().is_ok(),
        AddressKind::Phone => value.starts_with('+') && value.chars().filter(char::is_ascii_digit).count() >= 7,
        AddressKind::Opaque => !value.trim().is_empty(),
    };
    if !ok {
        // Never echo the value: directory addresses are PHI.
        return Err(format!("not a valid {} address", kind.as_str()));
    }
    Ok(Address::new(kind, value))
}

/// The closest candidate within a small edit distance (two edits, or a third of the
/// candidate's length), for "did you mean" hints; ties go to the first in sort order. The one
/// suggestion rule for every config message (accounts, keys, policy kinds and rule ids).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.chars().count() / 3))
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

/// [`closest`] among owned names.
pub fn did_you_mean<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    closest(word, candidates.iter().map(String::as_str))
}

fn find_inline_secrets(table: &toml::Table, prefix: &str, problems: &mut Vec<Problem>) {
    for (k, v) in table {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) => find_inline_secrets(t, &path, problems),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(t) = item {
                        find_inline_secrets(t, &format!("{path}[{i}]"), problems);
                    }
                }
            }
            _ => {
                let lower = k.to_ascii_lowercase();
                let is_ref = lower.ends_with("_env") || lower.ends_with("_file");
                if !is_ref && SECRET_WORDS.iter().any(|w| lower == *w || lower.ends_with(&format!("_{w}"))) {
                    problems.push(Problem::new(
                        path,
                        format!("secrets are never written inline: use `{k}_env` (an environment variable) or `{k}_file` (a file readable only by carebridge)"),
                    ));
                }
            }
        }
    }
}

/// serde's "invalid type: string `…`, expected …" quotes the value, which could be a patient's
/// address from the directory, and config errors end up in the journal: drop quoted values after
/// "invalid type"/"invalid value", keep key names (which are ours) elsewhere.
fn hide_values(msg: &str) -> String {
    for lead in ["invalid type: ", "invalid value: "] {
        let Some(rest) = msg.strip_prefix(lead) else { continue };
        // The value ends before ", expected …"; serde quotes integers with backticks and strings
        // with double quotes (`string "twelve"`).
        let (value_part, tail) = rest.split_once(", expected").map_or((rest, ""), |(v, t)| (v, t));
        for quote in ['`', '"'] {
            if let (Some(open), Some(close)) = (value_part.find(quote), value_part.rfind(quote))
                && close > open
            {
                let expected = if tail.is_empty() { String::new() } else { format!(", expected{tail}") };
                return format!("{lead}{}(value not shown){}{expected}", &value_part[..open], &value_part[close + 1..]);
            }
        }
    }
    msg.to_string()
}

/// At most this many problems are collected from one table before giving up on it.
const MAX_PROBLEMS_PER_TABLE: usize = 50;

/// Deserializes `value` into `T`, reporting every parse or type error with the TOML path of its
/// key (`daemon.data_dri`, `outbox.max_attempts`, `webhook.in.listen`) under `prefix`.
///
/// serde stops at the first error, so after each one the offending key is taken out and the rest
/// is tried again (its default then applies to what is left), until the table parses or an error
/// cannot be isolated to a key (a missing required field, a bad array element). Returns `None`
/// if there was any problem: a config with an error is never used.
pub fn deserialize_all<T: serde::de::DeserializeOwned>(
    mut value: toml::Value,
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let mut reported: Vec<Vec<String>> = Vec::new();
    for _ in 0..MAX_PROBLEMS_PER_TABLE {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) if reported.is_empty() => return Some(t),
            Ok(_) => return None,
            Err(e) => e,
        };
        let mut segments: Vec<String> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(format!("[{index}]")),
                _ => None,
            })
            .collect();
        let message = hide_values(e.inner().message().trim());
        let named =
            backticked_after(&message, "unknown field ").or_else(|| backticked_after(&message, "missing field "));
        // serde_path_to_error ends the path with an unknown field's name, not a missing one's.
        if let Some(field) = &named
            && segments.last() != Some(field)
        {
            segments.push(field.clone());
        }
        if message.starts_with("missing field") && reported.contains(&segments) {
            // Follows from a key taken out after its own error: already reported.
            return None;
        }
        let mut message = message;
        if let Some(field) = backticked_after(&message, "unknown field ") {
            let expected = backticked_words(message.split_once("expected").map_or("", |(_, rest)| rest));
            if let Some(hint) = did_you_mean(&field, &expected) {
                message = format!("{message} (did you mean `{hint}`?)");
            }
        }
        problems.push(Problem::new(join_path(prefix, &segments), message));
        let removable = !e.inner().message().starts_with("missing field");
        reported.push(segments.clone());
        if !removable || !remove_key(&mut value, &segments) {
            return None;
        }
    }
    None
}

/// `prefix` and path segments as one TOML path: `route[0].name`, `daemon.data_dir`.
fn join_path(prefix: &str, segments: &[String]) -> String {
    let mut out = prefix.to_string();
    for s in segments {
        if !s.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(s);
    }
    if out.is_empty() { "(file)".to_string() } else { out }
}

/// Takes the key at `segments` out of `value`; false if the path does not end in a table key
/// (an array element cannot be taken out without shifting the indices of later problems).
fn remove_key(value: &mut toml::Value, segments: &[String]) -> bool {
    let Some((last, parents)) = segments.split_last() else { return false };
    if last.starts_with('[') {
        return false;
    }
    let mut at = value;
    for s in parents {
        let next = match (s.strip_prefix('[').and_then(|i| i.strip_suffix(']')), at) {
            (Some(i), toml::Value::Array(items)) => i.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            (None, toml::Value::Table(t)) => t.get_mut(s),
            _ => None,
        };
        match next {
            Some(n) => at = n,
            None => return false,
        }
    }
    match at {
        toml::Value::Table(t) => t.remove(last).is_some(),
        _ => false,
    }
}

/// The first backticked word after `lead` at the start of `message` (serde's "unknown field
/// `x`, expected …" and "missing field `x`").
fn backticked_after(message: &str, lead: &str) -> Option<String> {
    let rest = message.strip_prefix(lead)?;
    backticked_words(rest).into_iter().next()
}

/// Every `word` between backticks in `text`.
fn backticked_words(text: &str) -> Vec<String> {
    text.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// A toml error with its line and column but without the echoed source line (it could contain
/// PHI from the directory).
pub fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let msg = hide_values(e.message().trim());
    match e.span() {
        Some(span) if span.start <= text.len() => {
            let before = &text[..span.start];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map(|l| l.chars().count() + 1).unwrap_or(1);
            format!("{msg} (line {line}, column {col})")
        }
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, dir: &Path) -> Result<Config, ConfigErrors> {
        Config::from_toml(text, dir)
    }

    #[test]
    fn only_a_config_without_problems_becomes_a_valid_config_with_its_policy() {
        let dir = Path::new(".");
        let bad = parse("[webhook.a]\nurl = \"http://127.0.0.1:1/\"\nsecret_env = \"S\"\n[policy.channels]\n\"webhook.b\" = \"secure\"\n", dir).unwrap();
        let problems = ValidConfig::new(bad).err().unwrap().0;
        assert_eq!(problems.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), ["policy.channels.\"webhook.b\""]);

        let good = parse("[webhook.a]\nurl = \"http://127.0.0.1:1/\"\nsecret_env = \"S\"\n[policy.channels]\n\"webhook.a\" = \"secure\"\n", dir).unwrap();
        let valid = ValidConfig::new(good).unwrap();
        let a: AccountId = "webhook.a".parse().unwrap();
        assert_eq!(valid.policy().trust(&a), crate::policy::Trust::Secure);
        assert_eq!(valid.accounts.len(), 1, "the config reads through");
    }

    #[test]
    fn a_fhir_account_filing_by_mrn_needs_every_patients_mrn_and_never_echoes_one() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[fhir.emr]\nbase_url = \"https://emr.example/fhir\"\npatient_identifier_system = \"urn:mrn\"\n\
                    patient_identifier = \"mrn\"\n[fhir.emr.bearer]\ntoken_file = \"t\"\n\
                    [[directory.patient]]\nid = \"p-1\"\naddresses = []\nmrn = \"MRN-SECRET-1\"\n\
                    [[directory.patient]]\nid = \"p-2\"\naddresses = []\n";
        let c = parse(text, dir.path()).unwrap();
        let problems = ValidConfig::new(c).err().unwrap().0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "directory.patient[1].mrn");
        assert!(problems[0].to_string().contains("fhir.emr"), "{}", problems[0]);
        let ok = parse(&format!("{text}mrn = \"MRN-2\"\n"), dir.path()).unwrap();
        let AccountConfig::Fhir(f) = &ok.accounts[&"fhir.emr".parse().unwrap()] else { panic!() };
        assert_eq!(f.patient_value("p-1").unwrap().expose(), "MRN-SECRET-1");
        assert!(!format!("{f:?}").contains("MRN-SECRET-1"), "the account keeps it redacted");
        assert!(ValidConfig::new(ok).is_ok());
    }

    #[test]
    fn the_directory_can_live_in_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("people.toml"),
            "[[patient]]\nid = \"p-2\"\naddresses = [\"phone:+14165550100\"]\n",
        )
        .unwrap();
        let c = parse(
            "[directory]\nfile = \"people.toml\"\n[[directory.patient]]\nid = \"p-1\"\naddresses = []\n",
            dir.path(),
        )
        .unwrap();
        let ids: Vec<&str> = c.directory.patient.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["p-1", "p-2"]);
        assert!(c.validate().is_empty(), "{:?}", c.validate());

        let missing = parse("[directory]\nfile = \"nope.toml\"\n", dir.path()).unwrap_err();
        assert_eq!(missing.0[0].path, "directory.file");
    }

    #[test]
    fn inline_secrets_are_found_at_any_depth_and_refs_are_not() {
        let err =
            parse("[email.x]\naddress = \"a@b.c\"\n[email.x.imap]\npassword = \"p\"\n", Path::new(".")).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].path, "email.x.imap.password");
        assert!(err.0[0].message.contains("password_env"));
        let ok = parse("[admin]\nlisten = \"127.0.0.1:1\"\ntoken_env = \"T\"\n", Path::new(".")).unwrap();
        assert!(ok.validate().is_empty());
    }

    #[test]
    fn routes_resolve_to_unique_destinations_in_order() {
        let text = r#"
[webhook.a]
listen = "127.0.0.1:1"
secret_env = "S"
[webhook.b]
url = "http://127.0.0.1:2/"
secret_env = "S"
[webhook.c]
url = "http://127.0.0.1:3/"
secret_env = "S"
[[route]]
name = "one"
from = ["webhook.a"]
to = ["webhook.b", "webhook.c"]
[[route]]
name = "two"
from = ["webhook.a"]
to = ["webhook.b"]
"#;
        let c = parse(text, Path::new(".")).unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let a: AccountId = "webhook.a".parse().unwrap();
        let got: Vec<String> = c.destinations(&a).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["webhook.b", "webhook.c"]);
    }

    #[test]
    fn config_errors_never_quote_values() {
        let err = parse("[[directory.patient]]\nid = \"p-1\"\naddresses = [4165550199]\n", Path::new(".")).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("4165550199"), "{text}");
        // Named by its path (issue 15, item 4), not by line and column.
        assert!(text.contains("directory.patient[0].addresses[0]: invalid type"), "{text}");
        let err = parse("[[directory.patient]]\nid = \"p-1\"\naddresses = 4165550199\n", Path::new(".")).unwrap_err();
        assert!(!err.to_string().contains("4165550199"), "{err}");
        let err = parse("[outbox]\nmax_attempts = \"Ann Example\"\n", Path::new(".")).unwrap_err();
        assert!(!err.to_string().contains("Ann"), "strings are hidden too: {err}");
    }

    #[test]
    fn ops_is_optional_loopback_by_default_and_strict_about_keys() {
        let none = parse("", Path::new(".")).unwrap();
        assert!(none.ops.is_none());
        let local = parse("[ops]\nlisten = \"127.0.0.1:9187\"\n", Path::new(".")).unwrap();
        assert!(local.validate().is_empty(), "{:?}", local.validate());
        assert_eq!(local.ops.as_ref().map(|o| o.listen.port()), Some(9187));

        let open = parse("[ops]\nlisten = \"0.0.0.0:9187\"\n", Path::new(".")).unwrap();
        let problems = open.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "ops.listen");
        assert!(problems[0].message.contains("allow_non_loopback"), "{}", problems[0].message);
        let allowed = parse("[ops]\nlisten = \"0.0.0.0:9187\"\nallow_non_loopback = true\n", Path::new(".")).unwrap();
        assert!(allowed.validate().is_empty());

        let typo = parse("[ops]\nlisten = \"127.0.0.1:1\"\nallow_nonloopback = true\n", Path::new(".")).unwrap_err();
        assert!(typo.to_string().contains("allow_nonloopback"), "{typo}");
    }

    #[test]
    fn did_you_mean_only_suggests_close_names() {
        let names = vec!["email.clinic".to_string(), "webhook.forms".to_string()];
        assert_eq!(did_you_mean("email.clinc", &names), Some("email.clinic"));
        assert_eq!(did_you_mean("telegram.bot", &names), None);
    }
}
