//! Leases: inputs that allow one consumer at a time (one IMAP IDLE per mailbox, one `getUpdates`
//! per bot) run on one instance at a time when several share a PostgreSQL store (issue #18).
//!
//! A lease is a session-level advisory lock (`pg_try_advisory_lock`) held on a connection of its
//! own: the database frees it the moment that connection ends, so a holder killed with `kill -9`
//! gives it up at once (the kernel closes its socket), and one whose machine vanished gives it up
//! once the server's TCP keepalives (set per session from the take-over time) find it gone.
//! Standbys ask again every sixth of the take-over time. The holder checks its connection as
//! often, and gives the input up (its `lost` token) when a check fails, before the server can
//! have handed the lease to another instance: never two consumers at once. Take-over is thus
//! bounded by [`DEFAULT_TAKEOVER`] (configurable: `[store.postgres] takeover_secs`).
//!
//! Webhook listeners need no lease: every instance runs them behind the clinic's load balancer.

use crate::record::pg_backend::PgSettings;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The default bound on how long an input stays without a consumer after its holder died.
pub const DEFAULT_TAKEOVER: Duration = Duration::from_secs(15);

/// The first key of every lease's advisory lock (the two-key form: apart from the store's own
/// one-key locks).
const LEASE_CLASS: i32 = 0x6362;

/// Why a lease could not be asked for (PHI-free: it names the failure, never the connection
/// string).
#[derive(Debug, thiserror::Error)]
#[error("lease: the database cannot be reached: {0}")]
pub struct LeaseError(String);

/// Where leases are taken: the store's database.
#[derive(Clone)]
pub struct Leases {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    takeover: Duration,
}

/// A lease held: the input may run until `lost` fires (or the lease is dropped, which gives it
/// up).
pub struct Lease {
    /// Cancelled when this instance may no longer be sure it holds the lease.
    pub lost: CancellationToken,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Ends the watcher and with it the connection, which frees the lock.
        self.watcher.abort();
    }
}

/// The lock's second key for a lease name (stable across versions and machines).
pub fn lock_key(name: &str) -> i32 {
    let d = <sha2::Sha256 as sha2::Digest>::digest(name.as_bytes());
    i32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

impl Leases {
    /// Leases on the database `settings` names, taken over within `takeover` of a holder's
    /// death.
    pub fn new(settings: &PgSettings, takeover: Duration) -> Result<Leases, LeaseError> {
        let tls = crate::record::pg_backend::tls_connector(settings.ca_file.as_deref())
            .map_err(|e| LeaseError(e.to_string()))?;
        let mut config = settings.config.clone();
        config.application_name("carebridge-lease");
        config.connect_timeout(takeover / 3);
        config.keepalives(true);
        config.keepalives_idle(takeover / 3);
        Ok(Leases { config, tls, takeover })
    }

    /// How often a standby asks, and the holder checks.
    fn every(&self) -> Duration {
        (self.takeover / 6).max(Duration::from_millis(200))
    }

    /// One try: the lease if nobody holds it.
    pub async fn try_acquire(&self, name: &str) -> Result<Option<Lease>, LeaseError> {
        let (client, conn) = self.config.connect(self.tls.clone()).await.map_err(|e| LeaseError(e.to_string()))?;
        let mut conn = tokio::spawn(conn);
        // The server finds a vanished holder within two thirds of the take-over time.
        let idle = (self.takeover.as_secs() / 3).max(1);
        let interval = (self.takeover.as_secs() / 9).max(1);
        client
            .batch_execute(&format!(
                "SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; SET tcp_keepalives_count = 3"
            ))
            .await
            .map_err(|e| LeaseError(e.to_string()))?;
        let held: bool = client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LEASE_CLASS, &lock_key(name)])
            .await
            .map_err(|e| LeaseError(e.to_string()))?
            .get(0);
        if !held {
            return Ok(None);
        }
        let lost = CancellationToken::new();
        let every = self.every();
        let watcher = tokio::spawn({
            let lost = lost.clone();
            let name = name.to_string();
            async move {
                loop {
                    tokio::select! {
                        _ = &mut conn => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                    match tokio::time::timeout(every, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        _ => break,
                    }
                }
                warn!(lease = %name, "Lease lost: the connection holding it failed; giving the input up.");
                lost.cancel();
            }
        });
        Ok(Some(Lease { lost, watcher }))
    }

    /// Waits until this instance holds the lease `name`; `None` if `stop` fires first.
    pub async fn acquire(&self, name: &str, stop: &CancellationToken) -> Option<Lease> {
        let mut waiting_logged = false;
        loop {
            match self.try_acquire(name).await {
                Ok(Some(lease)) => {
                    info!(lease = %name, "Lease taken: this instance runs the input.");
                    return Some(lease);
                }
                Ok(None) if !waiting_logged => {
                    info!(lease = %name, "Another instance holds the lease; standing by.");
                    waiting_logged = true;
                }
                Ok(None) => {}
                Err(e) => warn!(lease = %name, error = %e, "Could not ask for the lease; trying again."),
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(self.every()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::record::pg_backend::testing;

    fn leases(db: &str) -> Option<(Leases, PgSettings)> {
        let dsn = testing::dsn()?;
        let settings = testing::database(&dsn, db).unwrap();
        Some((Leases::new(&settings, Duration::from_secs(3)).unwrap(), settings))
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_standby_takes_over_when_it_dies() {
        let Some((a, settings)) = leases("cb_lease_takeover") else {
            eprintln!("skipping: {} is not set", testing::DSN_VAR);
            return;
        };
        let b = a.clone();
        let held = a.try_acquire("email.front-desk").await.unwrap().expect("a free lease is taken");
        assert!(b.try_acquire("email.front-desk").await.unwrap().is_none(), "never two holders");
        let other = b.try_acquire("telegram.bot").await.unwrap();
        assert!(other.is_some(), "leases of other inputs are independent");
        // The holder's connection dies (as when its process is killed): the database frees the
        // lock, the holder learns it lost it, and the standby waiting for it gets it.
        let stop = CancellationToken::new();
        let standby = tokio::spawn(async move { b.acquire("email.front-desk", &stop).await });
        testing::execute(
            &settings,
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 \
             AND classid = 25442 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .unwrap();
        // A guard against a hang, not a timing assertion.
        let guard = Duration::from_secs(60);
        tokio::time::timeout(guard, held.lost.cancelled()).await.expect("the holder notices");
        let taken = tokio::time::timeout(guard, standby).await.unwrap().unwrap();
        assert!(taken.is_some(), "the standby takes the lease over");
        drop(held);
    }

    #[tokio::test]
    async fn a_lease_dropped_is_free_again() {
        let Some((a, _)) = leases("cb_lease_drop") else {
            eprintln!("skipping: {} is not set", testing::DSN_VAR);
            return;
        };
        let held = a.try_acquire("telegram.bot").await.unwrap().unwrap();
        drop(held);
        let stop = CancellationToken::new();
        let again = tokio::time::timeout(Duration::from_secs(60), a.acquire("telegram.bot", &stop)).await.unwrap();
        assert!(again.is_some());
    }
}
