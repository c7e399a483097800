//! `[store]`: where the record store's key file is, and how long each kind of entry is kept.
//!
//! ```toml
//! [store]
//! key_file = "/etc/carebridge/store.key"  # default: <data_dir>/store.key, created at first start
//! cache_mb = 32                           # the engine's block cache
//! backend = "embedded"                    # or "postgres": several instances, one store
//! [store.postgres]                        # only with backend = "postgres"
//! url_env = "CAREBRIDGE_DATABASE_URL"     # or url_file = "/etc/carebridge/database.url"; never inline
//! ca_file = "/etc/carebridge/db-ca.pem"   # optional: a private CA for the server's certificate
//! pool_size = 8                           # connections this instance opens
//! takeover_secs = 15                      # a polling input's take-over after its instance died
//! [store.retention]
//! exchanges_days = 3650                   # messages and what happened to them
//! quarantine_days = 90                    # input that could not be parsed
//! audit_days = 3650                       # who read or exported what
//! ```

use super::Keyring;
use anyhow::{Context, Result};
use carebridge_contract::config::Problem;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tracing::warn;

/// `[store]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The key file (see [`super::keys`]); relative paths resolve from the config file's
    /// directory. Unset: `<data_dir>/store.key`, generated at first start — convenient, but a
    /// copy of the data directory then carries its key: set it for a clinic.
    pub key_file: Option<PathBuf>,
    /// The most the engine (fjall) keeps of the store's blocks in memory, in MiB. See
    /// [`DEFAULT_CACHE_MB`].
    pub cache_mb: u32,
    /// `[store.retention]`.
    pub retention: RetentionConfig,
    /// Where the store lives: the embedded engine in the data directory, or a PostgreSQL
    /// database several instances share (issue #18, `docs/scale-out.md`).
    pub backend: BackendKind,
    /// `[store.postgres]`: read only with `backend = "postgres"`.
    pub postgres: Option<PostgresConfig>,
}

/// `[store] backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// fjall, in `<data_dir>/store`: one instance.
    #[default]
    Embedded,
    /// PostgreSQL: one or more instances on one database.
    Postgres,
}

/// `[store.postgres]`: how to reach the database. The connection string (it holds the password)
/// comes from a file or the environment, never from the config itself.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// A file holding the connection string (relative paths resolve from the config file's
    /// directory), e.g. `postgresql://carebridge:…@db.clinic.internal/carebridge?sslmode=require`.
    pub url_file: Option<PathBuf>,
    /// An environment variable holding the connection string.
    pub url_env: Option<String>,
    /// Extra CA certificates (PEM) for the server's certificate, beside the web roots.
    pub ca_file: Option<PathBuf>,
    /// The most connections this instance opens.
    pub pool_size: u32,
    /// How long a polling input (IMAP IDLE, `getUpdates`) may stay without a consumer after
    /// the instance running it died, before another takes over (`crate::lease`).
    pub takeover_secs: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig { url_file: None, url_env: None, ca_file: None, pool_size: 8, takeover_secs: 15 }
    }
}

/// 32 MiB: the daemon reads back little of what it writes (dedup and threading look-ups hit the
/// newest entries, still in the engine's memtables), so a small cache keeps memory flat as the
/// store grows (issue #14's target: idle RSS < 64 MB with a million records).
pub const DEFAULT_CACHE_MB: u32 = 32;

/// Below this the engine re-reads its index blocks constantly; above, a typo (GiB for MiB).
const CACHE_MB_RANGE: std::ops::RangeInclusive<u32> = 4..=65_536;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            key_file: None,
            cache_mb: DEFAULT_CACHE_MB,
            retention: RetentionConfig::default(),
            backend: BackendKind::Embedded,
            postgres: None,
        }
    }
}

/// `[store.retention]`: how long entries are kept before `carebridge records purge` may remove
/// them. These are also the floors below which a purge is refused.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Exchanges and their events (Ontario physicians: ten years).
    pub exchanges_days: u32,
    /// Quarantined input (junk, malformed requests).
    pub quarantine_days: u32,
    /// Audit entries (reads, exports, purges).
    pub audit_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { exchanges_days: 3650, quarantine_days: 90, audit_days: 3650 }
    }
}

impl StoreConfig {
    /// Pure checks, every problem with its path.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        for (key, days) in [
            ("store.retention.exchanges_days", self.retention.exchanges_days),
            ("store.retention.quarantine_days", self.retention.quarantine_days),
            ("store.retention.audit_days", self.retention.audit_days),
        ] {
            if days == 0 {
                p.push(Problem::new(key, "must be at least 1 day"));
            }
        }
        if !CACHE_MB_RANGE.contains(&self.cache_mb) {
            p.push(Problem::new(
                "store.cache_mb",
                format!(
                    "must be between {} and {} (MiB of the engine's block cache; default {DEFAULT_CACHE_MB})",
                    CACHE_MB_RANGE.start(),
                    CACHE_MB_RANGE.end()
                ),
            ));
        }
        match (self.backend, &self.postgres) {
            (BackendKind::Postgres, None) => p.push(Problem::new(
                "store.postgres",
                "backend = \"postgres\" needs a [store.postgres] table with url_file or url_env",
            )),
            (BackendKind::Postgres, Some(pg)) => {
                if pg.url_file.is_some() == pg.url_env.is_some() {
                    p.push(Problem::new(
                        "store.postgres.url_file",
                        "set exactly one of url_file and url_env (the connection string is never written in the config)",
                    ));
                }
                if pg.url_env.as_deref().is_some_and(str::is_empty) {
                    p.push(Problem::new("store.postgres.url_env", "must name an environment variable"));
                }
                if !(3..=600).contains(&pg.takeover_secs) {
                    p.push(Problem::new("store.postgres.takeover_secs", "must be between 3 and 600 seconds"));
                }
                if !(2..=256).contains(&pg.pool_size) {
                    p.push(Problem::new("store.postgres.pool_size", "must be between 2 and 256"));
                }
            }
            (BackendKind::Embedded, Some(_)) => p.push(Problem::new(
                "store.postgres",
                "is read only with store.backend = \"postgres\" (the store is embedded now)",
            )),
            (BackendKind::Embedded, None) => {}
        }
        if self.retention.audit_days < self.retention.exchanges_days {
            p.push(Problem::new(
                "store.retention.audit_days",
                "must be at least store.retention.exchanges_days: the trail of who read a record must outlive it",
            ));
        }
        p
    }

    /// How to reach the PostgreSQL store, if the config names one: the connection string read
    /// from its file or variable and parsed (its text is never logged or echoed: it holds the
    /// password). A missing or unparsable one is configuration to fix (exit 2).
    pub fn postgres_settings(&self, config_dir: &Path) -> Result<Option<super::pg_backend::PgSettings>> {
        let (BackendKind::Postgres, Some(pg)) = (self.backend, &self.postgres) else { return Ok(None) };
        let fail = |m: String| anyhow::Error::from(crate::exit::ConfigFailure(m));
        let url = match (&pg.url_file, &pg.url_env) {
            (Some(f), _) => {
                let path = if f.is_absolute() { f.clone() } else { config_dir.join(f) };
                std::fs::read_to_string(&path).map_err(|e| {
                    fail(format!("store.postgres.url_file {} cannot be read: {}", path.display(), e.kind()))
                })?
            }
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| fail(format!("store.postgres.url_env: the environment variable {var} is not set")))?,
            (None, None) => return Err(fail("store.postgres: set url_file or url_env".into())),
        };
        let config: tokio_postgres::Config = url.trim().parse().map_err(|_| {
            fail("store.postgres: the connection string is not a valid PostgreSQL URL or key=value string".into())
        })?;
        let ca_file = pg.ca_file.as_ref().map(|f| if f.is_absolute() { f.clone() } else { config_dir.join(f) });
        Ok(Some(super::pg_backend::PgSettings { config, ca_file, pool_size: pg.pool_size as usize }))
    }

    /// The take-over time of leases (`[store.postgres] takeover_secs`).
    pub fn takeover(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.postgres.as_ref().map(|p| p.takeover_secs).unwrap_or(15)))
    }

    /// Leases for the polling inputs, when the store is shared ([`crate::lease`]).
    pub fn leases(&self, config_dir: &Path) -> Result<Option<crate::lease::Leases>> {
        let Some(settings) = self.postgres_settings(config_dir)? else { return Ok(None) };
        Ok(Some(crate::lease::Leases::new(&settings, self.takeover())?))
    }

    /// Where the key file is for this config.
    pub fn key_path(&self, config_dir: &Path, data_dir: &Path) -> PathBuf {
        match &self.key_file {
            Some(f) if f.is_absolute() => f.clone(),
            Some(f) => config_dir.join(f),
            None => data_dir.join("store.key"),
        }
    }

    /// Loads the keys. The default key file is generated only on a first start (no store yet); a
    /// configured key file must exist (`carebridge keys generate`), and so must the key of an
    /// existing store: inventing a key in the wrong place would lock the clinic out of its
    /// records.
    pub fn keyring(&self, config_dir: &Path, data_dir: &Path) -> Result<Keyring> {
        let path = self.key_path(config_dir, data_dir);
        if path.exists() {
            return Keyring::load(&path).map_err(anyhow::Error::from);
        }
        // Configuration the administrator must fix: exit 2 (`crate::exit`), not 1, so the
        // supervisor does not restart into the same failure.
        if self.key_file.is_some() {
            return Err(crate::exit::ConfigFailure(format!(
                "the key file {} does not exist; create it with `carebridge keys generate --file {}`",
                path.display(),
                path.display()
            ))
            .into());
        }
        if super::has_store(data_dir) {
            return Err(crate::exit::ConfigFailure(format!(
                "the store in {} exists but its key file {} does not: restore the key file from backup; \
                 if the store predates encryption (schema v1), create one with \
                 `carebridge keys generate --file {}` and start again to encrypt it",
                data_dir.display(),
                path.display(),
                path.display()
            ))
            .into());
        }
        warn!(
            key_file = %path.display(),
            "Generating the record store's key inside the data directory; set store.key_file to keep it apart."
        );
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        Keyring::generate(&path).map_err(anyhow::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_must_be_positive_and_audit_must_outlive_exchanges() {
        let c: StoreConfig =
            toml::from_str("[retention]\nexchanges_days = 0\nquarantine_days = 5\naudit_days = 0\n").unwrap();
        let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["store.retention.exchanges_days", "store.retention.audit_days"]);
        let c: StoreConfig = toml::from_str("[retention]\nexchanges_days = 3650\naudit_days = 365\n").unwrap();
        assert_eq!(c.validate().len(), 1);
        assert!(toml::from_str::<StoreConfig>("keyfile = \"x\"\n").is_err(), "unknown keys are refused");
    }

    #[test]
    fn the_cache_defaults_to_32_mib_and_must_be_sensible() {
        let c: StoreConfig = toml::from_str("").unwrap();
        assert_eq!(c.cache_mb, DEFAULT_CACHE_MB);
        assert!(c.validate().is_empty());
        for bad in [0, 3, 100_000] {
            let c: StoreConfig = toml::from_str(&format!("cache_mb = {bad}\n")).unwrap();
            let problems = c.validate();
            assert_eq!(problems.len(), 1, "{bad}");
            assert_eq!(problems[0].path, "store.cache_mb");
        }
    }

    #[test]
    fn postgres_needs_exactly_one_source_of_its_connection_string() {
        let ok: StoreConfig = toml::from_str("backend = \"postgres\"\n[postgres]\nurl_env = \"DB_URL\"\n").unwrap();
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
        let cases = [
            ("backend = \"postgres\"\n", "store.postgres"),
            ("backend = \"postgres\"\n[postgres]\n", "store.postgres.url_file"),
            ("backend = \"postgres\"\n[postgres]\nurl_env = \"A\"\nurl_file = \"f\"\n", "store.postgres.url_file"),
            ("backend = \"postgres\"\n[postgres]\nurl_env = \"A\"\npool_size = 1\n", "store.postgres.pool_size"),
            ("[postgres]\nurl_env = \"A\"\n", "store.postgres"),
        ];
        for (toml_text, path) in cases {
            let c: StoreConfig = toml::from_str(toml_text).unwrap();
            let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
            assert_eq!(paths, [path], "{toml_text}");
        }
        // Never inline: a `url` key is refused outright.
        assert!(toml::from_str::<StoreConfig>("[postgres]\nurl = \"postgresql://u:p@h/db\"\n").is_err());
        assert!(toml::from_str::<StoreConfig>("backend = \"mysql\"\n").is_err());
    }

    #[test]
    fn the_connection_string_comes_from_its_file_and_is_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db.url"), "postgresql://cb:s3cret@127.0.0.1:5/records\n").unwrap();
        let c: StoreConfig = toml::from_str("backend = \"postgres\"\n[postgres]\nurl_file = \"db.url\"\n").unwrap();
        let pg = c.postgres_settings(dir.path()).unwrap().unwrap();
        assert_eq!(pg.config.get_dbname(), Some("records"));
        assert!(!format!("{pg:?}").contains("s3cret"), "the password stays out of debug output");
        std::fs::write(dir.path().join("db.url"), "postgresql://cb:s3cret@[bad\n").unwrap();
        let e = format!("{:#}", c.postgres_settings(dir.path()).unwrap_err());
        assert!(e.contains("not a valid") && !e.contains("s3cret"), "{e}");
        let none = StoreConfig::default();
        assert!(none.postgres_settings(dir.path()).unwrap().is_none());
    }

    #[test]
    fn a_configured_key_file_must_exist_but_the_default_is_generated() {
        let dir = tempfile::tempdir().unwrap();
        let c = StoreConfig { key_file: Some("keys/store.key".into()), ..Default::default() };
        let e = c.keyring(dir.path(), &dir.path().join("data")).unwrap_err().to_string();
        assert!(e.contains("carebridge keys generate"), "{e}");
        let d = StoreConfig::default();
        d.keyring(dir.path(), &dir.path().join("data")).unwrap();
        assert!(dir.path().join("data/store.key").exists());
    }
}
