//! The one way a config becomes running parts. Start-up is a reload from nothing: both draw a
//! [`Blueprint`] from a config ([`draw`]) and hand it to [`Running::apply`], so what runs after a
//! SIGHUP is, by construction, what would run after a restart with the same file.
//!
//! **Drawn first, applied whole.** [`draw`] compiles the policy and builds every account (a
//! missing secret is found now, not when a message arrives); it starts nothing. Against a
//! running config it also refuses settings that need a restart and listen addresses that
//! cannot be bound, since a receiver that cannot run would stop the daemon. Any problem
//! refuses the whole blueprint.
//!
//! **Applied in the order that keeps records safe:** senders (outbox workers) first, so the new
//! routes find their workers; then the router's planner and the config the admin API reads;
//! then receivers, so nothing is received before the router can plan it; last, the workers of
//! removed accounts finish the sends in hand (their unsent rows stay in the store).

use crate::accounts::AccountConfig;
use crate::config::{Config, ValidConfig};
use crate::outbox::Workers;
use crate::receivers::{Rebuild, Receivers};
use crate::record::{Store, StoreError};
use crate::reload::{AccountChanges, Live, account_changes, restart_only};
use crate::router::identify::Directory;
use crate::router::plan::Planner;
use carebridge_contract::config::{BuildContext, Problem};
use carebridge_contract::{AccountId, Inbound, Outbound};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// A config that passed every check, with the parts that applying it starts.
pub struct Blueprint {
    /// The config, with its compiled policy.
    pub config: Arc<ValidConfig>,
    /// Accounts added, removed and changed against the running config (all added at start-up).
    pub changes: AccountChanges,
    /// Senders of the added and changed accounts.
    pub senders: BTreeMap<AccountId, Arc<dyn Outbound>>,
    /// Receivers of the added and changed accounts.
    pub receivers: BTreeMap<AccountId, Box<dyn Inbound>>,
    /// How to build each of those receivers again (a poller that lost its lease and took it
    /// back runs anew: `receivers`).
    pub rebuilds: BTreeMap<AccountId, Rebuild>,
    /// Every account of the config that can send (for the planner's notices).
    pub can_send: BTreeSet<AccountId>,
}

/// Checks `new` and builds what it needs: against `running` (a reload), only the accounts
/// whose section changed are built anew; from nothing (start-up, `running` = `None`), all.
/// Every problem found, or the blueprint to apply.
pub fn draw(new: ValidConfig, running: Option<&Config>) -> Result<Blueprint, Vec<Problem>> {
    let mut problems = Vec::new();
    if let Some(old) = running {
        problems.extend(restart_only(old, &new));
    }
    let changes = match running {
        Some(old) => account_changes(old, &new),
        None => AccountChanges { added: new.accounts.keys().cloned().collect(), ..AccountChanges::default() },
    };

    // Build every account, new or not: a secret that went missing is found now.
    let fresh: BTreeSet<&AccountId> = changes.added.iter().chain(&changes.changed).collect();
    let mut senders = BTreeMap::new();
    let mut receivers = BTreeMap::new();
    let mut rebuilds = BTreeMap::new();
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
                    let (account, cx) = (account.clone(), cx.clone());
                    let rebuild: Rebuild = Arc::new(move || match account.build_inbound(&cx) {
                        Ok(Some(r)) => Ok(r),
                        Ok(None) => Err("the account no longer has a receiver".into()),
                        Err(e) => Err(e.to_string()),
                    });
                    rebuilds.insert(id.clone(), rebuild);
                }
                Ok(_) => {}
                Err(e) => problems.push(Problem::new(path.clone(), format!("building the receiver: {e}"))),
            }
        }
    }

    // While the daemon runs, a new listener must be able to bind, or the reload would stop it
    // (a receiver that cannot run is fatal). Addresses an account being stopped holds are freed
    // first. At start-up a receiver that cannot bind stops the daemon anyway, with its cause.
    if let Some(old) = running {
        let freed: BTreeSet<SocketAddr> = changes
            .removed
            .iter()
            .chain(&changes.changed)
            .filter_map(|id| old.accounts.get(id))
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
                    problems
                        .push(Problem::new(format!("{id}.{key}"), format!("cannot listen on {addr}: {}", e.kind())));
                }
            }
        }
    }

    if problems.is_empty() {
        Ok(Blueprint { config: Arc::new(new), changes, senders, receivers, rebuilds, can_send })
    } else {
        Err(problems)
    }
}

/// The addresses an account's receiver listens on, with the key that sets each.
pub(crate) fn listen_addrs(account: &AccountConfig) -> Vec<(&'static str, SocketAddr)> {
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

/// The parts a blueprint changes in the running daemon: made empty at start-up, filled by the
/// first [`Running::apply`], changed by each reload.
pub struct Running {
    /// The config in force; the admin API reads the same cell.
    pub current: Live<ValidConfig>,
    /// The store (for the planners).
    pub store: Store,
    /// The running receivers.
    pub receivers: Receivers,
    /// The running outbox workers.
    pub workers: Workers,
    /// Where the router takes its planners from.
    pub planners: std::sync::mpsc::Sender<Planner>,
}

impl Running {
    /// Starts, stops and restarts what `b` says, in the order of the module docs. Returns the
    /// accounts whose outbox could not be loaded (their deliveries wait for a restart): fatal at
    /// start-up, logged at a reload.
    pub async fn apply(&mut self, b: Blueprint) -> Vec<(AccountId, StoreError)> {
        let new = b.config;
        let within = Duration::from_secs(new.daemon.shutdown_timeout_secs);
        let ch = &b.changes;
        let mut failed = Vec::new();

        // 1. Senders: the retry settings for all, then changed accounts' workers restart (after
        //    their sends in hand) and added ones start.
        self.workers.set_settings(new.outbox.clone());
        for id in &ch.changed {
            if !b.senders.contains_key(id) {
                self.workers.stop(id, within).await;
            }
        }
        for (id, sender) in b.senders {
            if let Err(e) = self.workers.start(id.clone(), sender).await {
                failed.push((id, e));
            }
        }

        // 2. The router (from its next batch) and the admin API switch to the config.
        let planner = Planner {
            store: self.store.clone(),
            config: new.clone(),
            directory: Directory::new(&new.directory),
            senders: b.can_send,
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
        let mut rebuilds = b.rebuilds;
        for (id, task) in b.receivers {
            let rebuild = rebuilds.remove(&id);
            self.receivers.start(id, task, rebuild);
        }

        // 4. Removed accounts' workers finish the sends in hand; the rest waits in the store.
        for id in &ch.removed {
            self.workers.stop(id, within).await;
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const TWO_ACCOUNTS: &str = r#"
[daemon]
data_dir = "data"
[webhook.form]
listen = "127.0.0.1:0"
secret_file = "secret"
[webhook.ehr]
url = "http://127.0.0.1:9/"
secret_file = "secret"
[[route]]
name = "form-to-ehr"
from = ["webhook.form"]
to = ["webhook.ehr"]
"#;

    /// Parsed with relative files resolving in `dir`, which holds the webhooks' shared secret.
    fn parse_in(dir: &Path, text: &str) -> ValidConfig {
        std::fs::write(dir.join("secret"), "s3cret-for-tests-only-32-bytes!!").unwrap();
        ValidConfig::new(Config::from_toml(text, dir).unwrap()).unwrap()
    }

    fn names<T>(m: &BTreeMap<AccountId, T>) -> Vec<String> {
        m.keys().map(ToString::to_string).collect()
    }

    #[test]
    fn start_up_builds_what_a_reload_from_no_accounts_builds() {
        let dir = tempfile::tempdir().unwrap();
        let parse = |text: &str| parse_in(dir.path(), text);
        let start = draw(parse(TWO_ACCOUNTS), None).map_err(|p| format!("{p:?}")).unwrap();
        assert_eq!(start.changes.added.len(), 2);
        assert!(start.changes.removed.is_empty() && start.changes.changed.is_empty());
        assert_eq!(names(&start.senders), ["webhook.ehr"]);
        assert_eq!(names(&start.receivers), ["webhook.form"]);

        let nothing = parse("[daemon]\ndata_dir = \"data\"\n");
        let reload = draw(parse(TWO_ACCOUNTS), Some(&nothing)).map_err(|p| format!("{p:?}")).unwrap();
        assert_eq!(reload.changes, start.changes);
        assert_eq!(names(&reload.senders), names(&start.senders));
        assert_eq!(names(&reload.receivers), names(&start.receivers));
        assert_eq!(reload.can_send, start.can_send);

        // Against itself, nothing is rebuilt, but every sender is still known to the planner.
        let same = draw(parse(TWO_ACCOUNTS), Some(&parse(TWO_ACCOUNTS))).map_err(|p| format!("{p:?}")).unwrap();
        assert_eq!(same.changes, AccountChanges::default());
        assert!(same.senders.is_empty() && same.receivers.is_empty());
        assert_eq!(same.can_send, start.can_send);
    }

    #[test]
    fn a_secret_missing_at_start_up_is_a_problem_naming_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let text = TWO_ACCOUNTS.replace("secret_file = \"secret\"", "secret_env = \"CAREBRIDGE_ASSEMBLY_TEST_UNSET\"");
        let problems = draw(parse_in(dir.path(), &text), None).err().unwrap();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["webhook.ehr", "webhook.form"], "{problems:?}");
        assert!(problems.iter().all(|p| p.message.contains("CAREBRIDGE_ASSEMBLY_TEST_UNSET")), "{problems:?}");
    }
}
