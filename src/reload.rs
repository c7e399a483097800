//! SIGHUP: read the config file again, check it as start-up and `check-config` do, and apply it
//! to the running daemon, or refuse it whole and keep running the old one.
//!
//! **Checked first, applied only if everything passes.** The new file is parsed and validated
//! (every problem, with its TOML path), the policy compiled, every account built (so a missing
//! secret is found now, not when a message arrives), and the listen address of each added or
//! changed receiver tried. Any problem refuses the reload; each is logged as `check-config`
//! prints it (config problems never quote values, so the log stays PHI-free).
//!
//! **What a reload applies:** routes, policy, directory (and its file), `[router]`, `[outbox]`
//! (read by the workers at each decision), `daemon.shutdown_timeout_secs`, and accounts: an
//! added account starts; a removed one's receiver stops gracefully and its worker stops after
//! the sends in hand (its unsent rows stay in the store for a later config); a changed one
//! (its TOML section differs) is stopped and started again. The router takes the new routes
//! and policy between two batches, so no batch mixes configs.
//!
//! **What needs a restart:** the settings of things built once per process (the store, the
//! store's keys, the log subscriber, the router's queue, the admin and ops listeners, the
//! status timer) -- see
//! [`restart_only`]. A reload that changes one is *refused* with a message naming the key,
//! rather than applied in part: after `Configuration reloaded.` the daemon runs exactly what the
//! file says, and an operator never has to guess which half of an edit is live.

use crate::accounts::AccountConfig;
use crate::config::Config;
use crate::outbox::Workers;
use crate::policy::Policy;
use crate::receivers::Receivers;
use crate::record::Store;
use crate::router::identify::Directory;
use crate::router::plan::Planner;
use carebridge_contract::config::{BuildContext, Problem};
use carebridge_contract::{AccountId, Inbound, Outbound};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tracing::{error, info, warn};

/// A value that a reload replaces while others read it (the config the admin API checks ids
/// against). Readers take a snapshot; a reload swaps in a new one.
#[derive(Debug)]
pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<T> Live<T> {
    /// Starts with `value`.
    pub fn new(value: Arc<T>) -> Self {
        Live(Arc::new(RwLock::new(value)))
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the value for every holder.
    pub fn set(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = value;
    }
}

/// Which accounts a reload adds, removes and changes (its TOML section differs).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AccountChanges {
    /// In the new config only.
    pub added: Vec<AccountId>,
    /// In the old config only.
    pub removed: Vec<AccountId>,
    /// In both, with a different section: restarted.
    pub changed: Vec<AccountId>,
}

/// Compares the accounts of two configs by their sections as written.
pub fn account_changes(old: &Config, new: &Config) -> AccountChanges {
    let mut c = AccountChanges::default();
    for id in new.accounts.keys() {
        if !old.accounts.contains_key(id) {
            c.added.push(id.clone());
        } else if old.sections.get(id) != new.sections.get(id) {
            c.changed.push(id.clone());
        }
    }
    c.removed = old.accounts.keys().filter(|id| !new.accounts.contains_key(*id)).cloned().collect();
    c
}

/// The settings a running daemon cannot change, each as a problem naming its key if `new`
/// differs from `old` there: the store is open in `data_dir` with its keys, the log subscriber, the router's
/// queue, the status timer, the ops listener and the admin listener (with its token) are made
/// once per process.
pub fn restart_only(old: &Config, new: &Config) -> Vec<Problem> {
    let (o, n) = (&old.daemon, &new.daemon);
    let mut keys: Vec<&str> = Vec::new();
    if o.data_dir != n.data_dir {
        keys.push("daemon.data_dir");
    }
    if old.store.key_file != new.store.key_file {
        keys.push("store.key_file");
    }
    if old.store.cache_mb != new.store.cache_mb {
        keys.push("store.cache_mb");
    }
    if o.log_format != n.log_format {
        keys.push("daemon.log_format");
    }
    if o.log_level != n.log_level {
        keys.push("daemon.log_level");
    }
    if o.queue_capacity != n.queue_capacity {
        keys.push("daemon.queue_capacity");
    }
    if o.status_interval_secs != n.status_interval_secs {
        keys.push("daemon.status_interval_secs");
    }
    if old.admin.listen != new.admin.listen {
        keys.push("admin.listen");
    }
    if old.admin.token_env != new.admin.token_env {
        keys.push("admin.token_env");
    }
    if old.admin.token_file != new.admin.token_file {
        keys.push("admin.token_file");
    }
    let ops = |c: &Config| c.ops.as_ref().map(|o| (o.listen, o.allow_non_loopback));
    match (ops(old), ops(new)) {
        (a, b) if a.map(|o| o.0) != b.map(|o| o.0) => keys.push("ops.listen"),
        (a, b) if a != b => keys.push("ops.allow_non_loopback"),
        _ => {}
    }
    keys.into_iter()
        .map(|k| {
            Problem::new(k, "cannot change while the daemon runs: it requires a restart (the running value stays)")
        })
        .collect()
}

/// The addresses an account's receiver listens on, with the key that sets each.
fn listen_addrs(account: &AccountConfig) -> Vec<(&'static str, SocketAddr)> {
    match account {
        AccountConfig::Webhook(c) => c.listen.map(|a| ("listen", a)).into_iter().collect(),
        AccountConfig::Telegram(c) if c.mode == carebridge_telegram::Mode::Webhook => c
            .webhook_listen
            .as_deref()
            .and_then(|a| a.parse().ok())
            .map(|a| ("webhook_listen", a))
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// A new config that passed every check, with the parts a reload starts.
pub struct Candidate {
    /// The new config.
    pub config: Arc<Config>,
    /// Its compiled policy.
    pub policy: Arc<Policy>,
    /// Accounts added, removed, changed.
    pub changes: AccountChanges,
    /// Senders of added and changed accounts.
    pub senders: BTreeMap<AccountId, Arc<dyn Outbound>>,
    /// Receivers of added and changed accounts.
    pub receivers: BTreeMap<AccountId, Box<dyn Inbound>>,
    /// Every account of the new config that can send (for the planner's notices).
    pub can_send: BTreeSet<AccountId>,
}

/// Reads the file `current` came from and checks it fully; every problem found, or the
/// candidate to apply.
pub fn check(current: &Config) -> Result<Candidate, Vec<Problem>> {
    let Some(file) = &current.file else {
        return Err(vec![Problem::new(
            "(reload)",
            "the daemon runs the embedded default config: there is no file to read again (restart with --config)",
        )]);
    };
    let new = Config::load(file).map_err(|e| e.0)?;
    let mut problems = new.validate();
    problems.extend(restart_only(current, &new));
    let policy = if problems.iter().any(|p| p.path.starts_with("policy")) {
        None
    } else {
        match Policy::compile(&new.policy) {
            Ok(p) => Some(Arc::new(p)),
            Err(p) => {
                problems.extend(p);
                None
            }
        }
    };
    let changes = account_changes(current, &new);

    // Build every account, as start-up does: a secret that is missing now is found now.
    let fresh: BTreeSet<&AccountId> = changes.added.iter().chain(&changes.changed).collect();
    let mut senders = BTreeMap::new();
    let mut receivers = BTreeMap::new();
    let mut can_send = BTreeSet::new();
    let has_problems = |problems: &[Problem], id: &AccountId| {
        let path = id.to_string();
        problems.iter().any(|p| p.path == path || p.path.starts_with(&format!("{path}.")))
    };
    for (id, account) in &new.accounts {
        if has_problems(&problems, id) {
            continue;
        }
        let path = id.to_string();
        let cx = BuildContext { account: id.clone(), config_dir: new.config_dir.clone() };
        if account.sends() {
            match account.build_outbound(&cx) {
                Ok(Some(s)) => {
                    can_send.insert(id.clone());
                    if fresh.contains(id) {
                        senders.insert(id.clone(), s);
                    }
                }
                Ok(None) => {}
                Err(e) => problems.push(Problem::new(path.clone(), format!("building the sender: {e}"))),
            }
        }
        if account.receives() {
            match account.build_inbound(&cx) {
                Ok(Some(r)) if fresh.contains(id) => {
                    receivers.insert(id.clone(), r);
                }
                Ok(_) => {}
                Err(e) => problems.push(Problem::new(path.clone(), format!("building the receiver: {e}"))),
            }
        }
    }

    // A new listener must be able to bind, or the reload would stop the daemon (a receiver
    // that cannot run is fatal). Addresses that an account being stopped holds are freed first.
    let freed: BTreeSet<SocketAddr> = changes
        .removed
        .iter()
        .chain(&changes.changed)
        .filter_map(|id| current.accounts.get(id))
        .flat_map(|a| listen_addrs(a).into_iter().map(|(_, addr)| addr))
        .collect();
    for id in &fresh {
        let Some(account) = new.accounts.get(*id) else { continue };
        if has_problems(&problems, id) {
            continue;
        }
        for (key, addr) in listen_addrs(account) {
            if freed.contains(&addr) {
                continue;
            }
            if let Err(e) = std::net::TcpListener::bind(addr) {
                problems.push(Problem::new(format!("{id}.{key}"), format!("cannot listen on {addr}: {}", e.kind())));
            }
        }
    }

    match policy {
        Some(policy) if problems.is_empty() => {
            Ok(Candidate { config: Arc::new(new), policy, changes, senders, receivers, can_send })
        }
        _ => Err(problems),
    }
}

/// Everything a reload changes in the running daemon.
pub struct Reloader {
    /// The config in force; the admin API reads the same cell.
    pub current: Live<Config>,
    /// The store (for the new planner).
    pub store: Store,
    /// The running receivers.
    pub receivers: Receivers,
    /// The running outbox workers.
    pub workers: Workers,
    /// Where the router takes new planners from.
    pub planners: std::sync::mpsc::Sender<Planner>,
}

impl Reloader {
    /// Reads the config file again and applies it, or refuses it and logs why.
    pub async fn reload(&mut self) {
        let current = self.current.get();
        let file = current.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "(embedded)".into());
        info!(file = %file, "Reloading the configuration.");
        match check(&current) {
            Ok(candidate) => self.apply(candidate).await,
            Err(problems) => {
                error!(
                    file = %file,
                    problems = problems.len(),
                    "Configuration reload refused. The running configuration stays in force."
                );
                for p in &problems {
                    error!("  - {p}");
                }
            }
        }
    }

    async fn apply(&mut self, c: Candidate) {
        let new = c.config;
        let within = Duration::from_secs(new.daemon.shutdown_timeout_secs);
        let ch = &c.changes;
        for id in &ch.added {
            info!(account = %id, "Account added.");
        }
        for id in &ch.changed {
            info!(account = %id, "Account changed; restarting it.");
        }
        for id in &ch.removed {
            info!(account = %id, "Account removed; its unsent deliveries stay in the store.");
        }

        // 1. Senders first, so the new routes find their workers: the retry settings for all,
        //    then changed accounts' workers restart (after their sends in hand) and added ones start.
        self.workers.set_settings(new.outbox.clone());
        for id in &ch.changed {
            if !c.senders.contains_key(id) {
                self.workers.stop(id, within).await;
            }
        }
        for (id, sender) in c.senders {
            if let Err(e) = self.workers.start(id.clone(), sender).await {
                error!(account = %id, error = %e, "Cannot load the outbox of the account; its deliveries wait for a restart.");
            }
        }

        // 2. The router (from its next batch) and the admin API switch to the new config.
        let planner = Planner {
            store: self.store.clone(),
            config: new.clone(),
            policy: c.policy,
            directory: Directory::new(&new.directory),
            senders: c.can_send,
        };
        if self.planners.send(planner).is_err() {
            warn!("The router has stopped; the new routes take effect at the next start.");
        }
        self.current.set(new.clone());

        // 3. Receivers: removed and changed ones stop (a listener frees its port), then added
        //    and changed ones start.
        for id in ch.removed.iter().chain(&ch.changed) {
            self.receivers.stop(id, within).await;
        }
        for (id, task) in c.receivers {
            self.receivers.start(id, task);
        }

        // 4. Removed accounts' workers finish the sends in hand; the rest waits in the store.
        for id in &ch.removed {
            self.workers.stop(id, within).await;
        }
        info!(
            accounts_added = ch.added.len(),
            accounts_removed = ch.removed.len(),
            accounts_changed = ch.changed.len(),
            accounts = new.accounts.len(),
            routes = new.routes.len(),
            rules = new.policy.rule.len(),
            "Configuration reloaded."
        );
    }
}

/// SIGHUP as a stream; never fires where there are no Unix signals.
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Starts listening. From here on SIGHUP no longer terminates the process.
    pub fn new() -> Hangups {
        #[cfg(unix)]
        {
            let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| warn!(error = %e, "Cannot listen for SIGHUP; reloading is unavailable."))
                .ok();
            Hangups { signal }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    /// The next SIGHUP.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal
            && s.recv().await.is_some()
        {
            info!(signal = "SIGHUP", "Signal received.");
            return;
        }
        std::future::pending::<()>().await
    }
}

impl Default for Hangups {
    fn default() -> Self {
        Hangups::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[daemon]
data_dir = "data"
[webhook.a]
listen = "127.0.0.1:1"
secret_env = "S"
[webhook.b]
url = "http://127.0.0.1:2/"
secret_env = "S"
[[route]]
name = "a-to-b"
from = ["webhook.a"]
to = ["webhook.b"]
"#;

    fn parse(text: &str) -> Config {
        Config::from_toml(text, Path::new(".")).unwrap()
    }

    fn ids(v: &[AccountId]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn accounts_are_added_removed_and_changed_by_their_section() {
        let old = parse(BASE);
        let new = parse(&format!(
            "{}\n[webhook.c]\nurl = \"http://127.0.0.1:3/\"\nsecret_env = \"S\"\n",
            BASE.replace("listen = \"127.0.0.1:1\"", "listen = \"127.0.0.1:9\"")
                .replace("[webhook.b]\nurl = \"http://127.0.0.1:2/\"\nsecret_env = \"S\"\n", "")
        ));
        let c = account_changes(&old, &new);
        assert_eq!(ids(&c.added), ["webhook.c"]);
        assert_eq!(ids(&c.removed), ["webhook.b"]);
        assert_eq!(ids(&c.changed), ["webhook.a"]);
    }

    #[test]
    fn the_same_section_in_another_order_or_layout_is_unchanged() {
        let old = parse(BASE);
        let new = parse(&BASE.replace(
            "[webhook.a]\nlisten = \"127.0.0.1:1\"\nsecret_env = \"S\"\n",
            "[webhook.a]\nsecret_env   =   \"S\"  # the shared secret\nlisten = \"127.0.0.1:1\"\n",
        ));
        assert_eq!(account_changes(&old, &new), AccountChanges::default());
        assert!(restart_only(&old, &new).is_empty());
    }

    #[test]
    fn routes_policy_and_directory_are_not_account_changes() {
        let old = parse(BASE);
        let new = parse(&format!(
            "{BASE}\n[[directory.patient]]\nid = \"p-1\"\naddresses = []\n[[policy.rule]]\nid = \"clinic.hold\"\naction = \"hold\"\n[router]\nunknown_sender = \"record_only\"\n[outbox]\nmax_attempts = 3\n"
        ));
        assert_eq!(account_changes(&old, &new), AccountChanges::default());
        assert!(restart_only(&old, &new).is_empty(), "{:?}", restart_only(&old, &new));
    }

    #[test]
    fn settings_built_once_per_process_are_named_as_needing_a_restart() {
        let old = parse(BASE);
        let new = parse(&BASE.replace(
            "[daemon]\ndata_dir = \"data\"\n",
            "[daemon]\ndata_dir = \"elsewhere\"\nlog_format = \"json\"\nqueue_capacity = 7\nshutdown_timeout_secs = 5\n[admin]\nlisten = \"127.0.0.1:4\"\ntoken_env = \"T\"\n[store]\ncache_mb = 64\n",
        ));
        let p = restart_only(&old, &new);
        let keys: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            keys,
            [
                "daemon.data_dir",
                "store.cache_mb",
                "daemon.log_format",
                "daemon.queue_capacity",
                "admin.listen",
                "admin.token_env"
            ]
        );
        assert!(p.iter().all(|p| p.message.contains("requires a restart")));
    }

    #[test]
    fn a_file_that_cannot_be_used_is_refused_with_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, BASE).unwrap();
        let current = Config::load(&file).unwrap();
        // Two bad account sections: both are reported, not just the first.
        std::fs::write(
            &file,
            BASE.replace("listen = \"127.0.0.1:1\"", "listen = \"127.0.0.1:99999\"")
                .replace("url = \"http://127.0.0.1:2/\"", "url = \"http://127.0.0.1:2/\"\nsurprise = 1"),
        )
        .unwrap();
        let problems = check(&current).err().unwrap();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        // Each names the key, not only the account (issue 15, item 4).
        assert_eq!(paths, ["webhook.a.listen", "webhook.b.surprise"], "{problems:?}");
        assert!(problems[1].message.contains("surprise"), "{problems:?}");

        // Valid TOML, but data_dir moved and a secret is missing.
        std::fs::write(
            &file,
            BASE.replace("data_dir = \"data\"", "data_dir = \"other\"")
                .replace("secret_env = \"S\"", "secret_env = \"CAREBRIDGE_RELOAD_TEST_UNSET\""),
        )
        .unwrap();
        let problems = check(&current).err().unwrap();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["daemon.data_dir", "webhook.a", "webhook.b"], "{problems:?}");
        assert!(problems[1].message.contains("CAREBRIDGE_RELOAD_TEST_UNSET"), "{problems:?}");
    }

    #[test]
    fn the_embedded_default_has_no_file_to_reload() {
        let current = Config::default_config().unwrap();
        let problems = check(&current).err().unwrap();
        assert!(problems[0].message.contains("no file"), "{problems:?}");
    }
}
