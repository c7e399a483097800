//! SIGHUP: read the config file again, check it as start-up and `check-config` do, and apply it
//! to the running daemon, or refuse it whole and keep running the old one.
//!
//! **Checked first, applied only if everything passes**, by the same code start-up uses
//! ([`crate::assembly`]): the new file is parsed and validated (every problem, with its TOML
//! path), the policy compiled, every account built (so a missing secret is found now, not when a
//! message arrives), and the listen address of each added or changed receiver tried. Any problem
//! refuses the reload; each is logged as `check-config` prints it (config problems never quote
//! values, so the log stays PHI-free).
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
use crate::assembly::{self, Blueprint, Running};
use crate::config::{Config, ValidConfig};
use carebridge_contract::AccountId;
use carebridge_contract::config::Problem;
use std::sync::{Arc, PoisonError, RwLock};
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
        } else if old.sections.get(id) != new.sections.get(id) || patient_values_changed(old, new, id) {
            c.changed.push(id.clone());
        }
    }
    c.removed = old.accounts.keys().filter(|id| !new.accounts.contains_key(*id)).cloned().collect();
    c
}

/// Whether a `fhir` account's patients' identifier values (from the directory, not its own
/// table) changed: its sender is built anew with them.
fn patient_values_changed(old: &Config, new: &Config, id: &AccountId) -> bool {
    match (old.accounts.get(id), new.accounts.get(id)) {
        (Some(AccountConfig::Fhir(a)), Some(AccountConfig::Fhir(b))) => {
            let values = |c: &carebridge_fhir::Config| -> Vec<(String, String)> {
                c.patient_values.iter().map(|(k, v)| (k.clone(), v.expose().clone())).collect()
            };
            values(a) != values(b)
        }
        _ => false,
    }
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

/// Reads the file `current` came from and draws its blueprint against the running config
/// ([`crate::assembly::draw`]): every problem found, or what to apply.
pub fn check(current: &Config) -> Result<Blueprint, Vec<Problem>> {
    let Some(file) = &current.file else {
        return Err(vec![Problem::new(
            "(reload)",
            "the daemon runs the embedded default config: there is no file to read again (restart with --config)",
        )]);
    };
    // Problems in the file itself first; those of building its accounts once it is valid.
    let new = Config::load(file).map_err(|e| e.0)?;
    let restart = restart_only(current, &new);
    match ValidConfig::new(new) {
        Ok(valid) => assembly::draw(valid, Some(current)),
        Err(e) => Err(e.0.into_iter().chain(restart).collect()),
    }
}

impl Running {
    /// Reads the config file again and applies it, or refuses it and logs why.
    pub async fn reload(&mut self) {
        let current = self.current.get();
        let file = current.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "(embedded)".into());
        info!(file = %file, "Reloading the configuration.");
        let blueprint = match check(&current) {
            Ok(b) => b,
            Err(problems) => {
                error!(
                    file = %file,
                    problems = problems.len(),
                    "Configuration reload refused. The running configuration stays in force."
                );
                for p in &problems {
                    error!("  - {p}");
                }
                return;
            }
        };
        let ch = &blueprint.changes;
        for id in &ch.added {
            info!(account = %id, "Account added.");
        }
        for id in &ch.changed {
            info!(account = %id, "Account changed; restarting it.");
        }
        for id in &ch.removed {
            info!(account = %id, "Account removed; its unsent deliveries stay in the store.");
        }
        let (added, removed, changed) = (ch.added.len(), ch.removed.len(), ch.changed.len());
        let (accounts, routes, rules) =
            (blueprint.config.accounts.len(), blueprint.config.routes.len(), blueprint.config.policy.rule.len());
        for (id, e) in self.apply(blueprint).await {
            error!(account = %id, error = %e, "Cannot load the outbox of the account; its deliveries wait for a restart.");
        }
        info!(
            accounts_added = added,
            accounts_removed = removed,
            accounts_changed = changed,
            accounts,
            routes,
            rules,
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
