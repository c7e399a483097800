//! The PostgreSQL backend of the record store (issue #18): what lets several carebridge
//! instances share one patient's file, and the file survive the loss of a machine. It implements
//! the same boundary as the embedded one ([`super::engine`]), so everything above it — sealing,
//! blinded keys, the key canary, the chains — stays in carebridge: the database holds ciphertext
//! and blinded keys only.
//!
//! **Layout.** One table, `kv (tree, key, value)`, primary key `(tree, key)`: the trees of the
//! embedded store as rows, keys and values as `bytea` (PostgreSQL orders `bytea` byte by byte, as
//! fjall orders its keys). The schema is versioned ([`MIGRATIONS`]) and brought up to date at
//! start in one transaction, under an advisory lock so two instances starting at once do not race;
//! a database newer than this binary is refused.
//!
//! **Transactions take turns across instances.** Every write transaction first takes one
//! transaction-scoped advisory lock (the "global head row": [`WRITE_LOCK`]), so the chains' heads,
//! the record counter and the de-duplication look-up (`by_source`) are read and written by one
//! transaction at a time across every instance: two instances receiving the same redelivery
//! record it once, and the global chain stays one chain. Its cost is measured in
//! `docs/scale-out.md`. Writes are buffered in the transaction and sent in two statements at
//! commit; `synchronous_commit = on` for each, so a commit that returned is durable and
//! [`Backend::persist`] has nothing left to do (receipts go out after COMMIT returned).
//!
//! **Ids.** The store's ids must be unique across instances (a receiver drops repeats by
//! Idempotency-Key, which is the delivery id). Each instance reserves blocks of
//! [`ID_BLOCK`] ids from one sequence ([`Backend::reserve_ids`]); the embedded store keeps its
//! dense counter.
//!
//! **Sync over async.** The store's boundary is synchronous (fjall is). The backend owns a small
//! tokio runtime that drives the connections (deadpool-postgres, TLS by tokio-postgres-rustls on
//! the ring provider); queries are channel messages to those connection tasks, awaited with
//! `futures::executor::block_on`, which may be called from any thread, an async worker included.
//!
//! **When the database is unreachable** every operation fails with
//! [`EngineError::Unavailable`]: the router answers "unavailable" (503, no ack), `/readyz` says
//! why, and the next operation tries a fresh connection, so the daemon recovers by itself.

use super::engine::{Backend, Bytes, EngineError, Entries, Scan, TreeId, TxOps};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::types::ToSql;

/// The schema, one migration per version (version = position + 1). Append only: a released
/// migration never changes.
pub const MIGRATIONS: &[&str] = &[
    // 1: the trees as rows; ids in blocks from one sequence (see `ID_BLOCK`).
    "CREATE TABLE kv (
         tree  text  NOT NULL,
         key   bytea NOT NULL,
         value bytea NOT NULL,
         PRIMARY KEY (tree, key)
     );
     CREATE SEQUENCE carebridge_ids AS bigint INCREMENT BY 1024 MINVALUE 1 START WITH 1;",
    // 2: every row's place in the one order of commits (see `COMMIT_ORDER`): numbered when it is
    // first written, under the write lock, and kept when it is written again (an upsert), so the
    // delivery lease's holder reads an account's outbox in the order its rows were committed.
    "CREATE SEQUENCE carebridge_commit_order AS bigint MINVALUE 1 START WITH 1;
     ALTER TABLE kv ADD COLUMN ord bigint NOT NULL DEFAULT nextval('carebridge_commit_order');
     CREATE INDEX kv_outbox_in_commit_order ON kv (ord) WHERE tree = 'outbox';",
];

/// How many ids one reservation takes (the sequence's increment, migration 1).
pub const ID_BLOCK: u64 = 1024;

/// The advisory lock every write transaction takes first (`pg_advisory_xact_lock`): the one
/// order of every commit, across instances. (Leases take session locks in another key space.)
pub const WRITE_LOCK: i64 = 0x6362_0001;

/// The tree whose rows are read in commit order ([`Backend::keys_in_commit_order`]; the partial
/// index of migration 2 covers it alone).
const COMMIT_ORDER: &str = "outbox";

/// The advisory lock the migrations run under, so two instances starting at once take turns.
const MIGRATION_LOCK: i64 = 0x6362_0002;

/// How long an operation waits for a connection from the pool (or a new one) before it answers
/// "unavailable".
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many rows a scan reads per round trip.
const PAGE: i64 = 512;

/// How to reach the database (resolved from `[store.postgres]`: see `settings`).
#[derive(Clone)]
pub struct PgSettings {
    /// Parsed from the connection string (which is never logged: it may hold a password).
    pub config: tokio_postgres::Config,
    /// Extra CA certificates (PEM) to trust beside the web roots.
    pub ca_file: Option<PathBuf>,
    /// The most connections this instance opens.
    pub pool_size: usize,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds the password: name the database only.
        f.debug_struct("PgSettings")
            .field("dbname", &self.config.get_dbname())
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL error as the store reports it: the server's message and SQLSTATE (which name
/// constraints and columns, never values), or what failed on the connection.
fn pg(e: tokio_postgres::Error) -> EngineError {
    match e.as_db_error() {
        // 53100: disk full on the database server.
        Some(db) if db.code() == &tokio_postgres::error::SqlState::DISK_FULL => {
            EngineError::Unavailable(format!("the database server's disk is full ({})", db.code().code()))
        }
        Some(db) => EngineError::Unavailable(format!("the database refused: {} ({})", db.message(), db.code().code())),
        None if e.is_closed() => EngineError::Unavailable("the connection to the database was closed".into()),
        None => EngineError::Unavailable(format!("the database cannot be reached ({e})")),
    }
}

fn block<F: Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// The runtime that drives the connections; shut down without waiting when the last handle
/// goes (a runtime dropped inside an async context would panic).
struct Driver(Option<tokio::runtime::Runtime>);

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Driver {
    fn handle(&self) -> &tokio::runtime::Handle {
        // Set at construction, taken only in `drop`.
        self.0.as_ref().map(|rt| rt.handle()).expect("the driver runtime lives as long as its handles")
    }
}

/// The PostgreSQL backend of one store.
pub struct PgBackend {
    pool: Pool,
    driver: Arc<Driver>,
    trees: Vec<&'static str>,
}

impl PgBackend {
    /// Connects, brings the schema up to date (refusing a database newer than this binary), and
    /// returns the backend.
    pub fn open(settings: &PgSettings) -> Result<PgBackend, EngineError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("carebridge-pg")
            .enable_all()
            .build()
            .map_err(EngineError::from)?;
        let driver = Arc::new(Driver(Some(rt)));
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(settings.ca_file.as_deref())?);
        let mut config = settings.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("carebridge");
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| EngineError::Unavailable(format!("the connection pool could not be built: {e}")))?;
        let trees = std::iter::once("meta").chain(super::TREES).collect();
        let backend = PgBackend { pool, driver, trees };
        backend.migrate()?;
        Ok(backend)
    }

    /// A connection from the pool (a new one if none is idle).
    fn client(&self) -> Result<Object, EngineError> {
        // Awaited here, inside the driver's context (a new connection registers with its
        // reactor and timers, which its worker threads drive): no task per call.
        let _driver = self.driver.handle().enter();
        block(self.pool.get()).map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => pg(e),
            other => EngineError::Unavailable(format!("no connection to the database ({other})")),
        })
    }

    /// Applies the migrations this database lacks, all in one transaction.
    fn migrate(&self) -> Result<(), EngineError> {
        let mut client = self.client()?;
        let tx = block(client.transaction()).map_err(pg)?;
        block(tx.query("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])).map_err(pg)?;
        block(tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS carebridge_migrations (
                 version    integer     PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        ))
        .map_err(pg)?;
        let found: i32 =
            block(tx.query_one("SELECT coalesce(max(version), 0) FROM carebridge_migrations", &[])).map_err(pg)?.get(0);
        let supported = MIGRATIONS.len() as u32;
        let found = u32::try_from(found).unwrap_or(0);
        if found > supported {
            return Err(EngineError::Newer { found, supported });
        }
        for (n, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            block(tx.batch_execute(sql)).map_err(pg)?;
            let version = n as i32 + 1;
            block(tx.execute("INSERT INTO carebridge_migrations (version) VALUES ($1)", &[&version])).map_err(pg)?;
        }
        block(tx.commit()).map_err(pg)
    }

    fn name(&self, tree: TreeId) -> &'static str {
        tree_name(&self.trees, tree)
    }
}

/// The name of a tree id (ids are positions in the backend's fixed list).
fn tree_name(trees: &[&'static str], tree: TreeId) -> &'static str {
    trees[tree.0.min(trees.len() - 1)]
}

fn tree_id(trees: &[&'static str], name: &str) -> Result<TreeId, EngineError> {
    trees
        .iter()
        .position(|n| *n == name)
        .map(TreeId)
        .ok_or_else(|| EngineError::Corrupt(format!("the store has no tree `{name}`")))
}

/// The rustls client config: web roots plus the extra CAs, on the ring provider (never OpenSSL,
/// never aws-lc).
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, EngineError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let bytes = std::fs::read(path).map_err(EngineError::from)?;
        for cert in rustls_pemfile::certs(&mut bytes.as_slice()) {
            let cert = cert.map_err(|_| {
                EngineError::Unavailable(format!("store.postgres.ca_file `{}` is not valid PEM", path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                EngineError::Unavailable(format!(
                    "store.postgres.ca_file `{}`: certificate rejected: {e}",
                    path.display()
                ))
            })?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| EngineError::Unavailable(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The TLS connector of every connection to the store's database (the leases' too).
pub fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, EngineError> {
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(ca_file)?))
}

/// The smallest key greater than every key starting with `prefix` (none: no upper bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A scan's bounds, as key ranges.
fn bounds(which: Scan) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    match which {
        Scan::All => (Bound::Unbounded, Bound::Unbounded),
        Scan::Prefix(p) => {
            let end = prefix_end(&p).map(Bound::Excluded).unwrap_or(Bound::Unbounded);
            (Bound::Included(p), end)
        }
        Scan::Range(from, to) => (from, to),
    }
}

/// Where reads go: the pool (read committed, each page on its own), or one snapshot's
/// connection (repeatable read: every page from the same instant).
trait Reader: Send + Sync {
    fn rows(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>, EngineError>;
}

impl Reader for PgBackend {
    fn rows(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>, EngineError> {
        let client = self.client()?;
        let stmt = block(client.prepare_cached(sql)).map_err(pg)?;
        block(client.query(&stmt, params)).map_err(pg)
    }
}

/// One page of a scan: entries of `tree` within the bounds, in key order, at most [`PAGE`] (or
/// all of them).
fn page(
    reader: &dyn Reader,
    tree: &str,
    lower: &Bound<Vec<u8>>,
    upper: &Bound<Vec<u8>>,
    limit: Option<i64>,
) -> Result<Vec<(Bytes, Bytes)>, EngineError> {
    let mut sql = String::from("SELECT key, value FROM kv WHERE tree = $1");
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tree];
    let lower_key;
    let upper_key;
    match lower {
        Bound::Included(k) => {
            lower_key = k.as_slice();
            params.push(&lower_key);
            sql.push_str(&format!(" AND key >= ${}", params.len()));
        }
        Bound::Excluded(k) => {
            lower_key = k.as_slice();
            params.push(&lower_key);
            sql.push_str(&format!(" AND key > ${}", params.len()));
        }
        Bound::Unbounded => {}
    }
    match upper {
        Bound::Included(k) => {
            upper_key = k.as_slice();
            params.push(&upper_key);
            sql.push_str(&format!(" AND key <= ${}", params.len()));
        }
        Bound::Excluded(k) => {
            upper_key = k.as_slice();
            params.push(&upper_key);
            sql.push_str(&format!(" AND key < ${}", params.len()));
        }
        Bound::Unbounded => {}
    }
    sql.push_str(" ORDER BY key");
    let limit_value;
    if let Some(l) = limit {
        limit_value = l;
        params.push(&limit_value);
        sql.push_str(&format!(" LIMIT ${}", params.len()));
    }
    Ok(reader.rows(&sql, &params)?.into_iter().map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1))).collect())
}

/// A scan read page by page going forwards; going backwards reads the rest at once.
struct Paged<'a> {
    reader: &'a dyn Reader,
    tree: &'static str,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    buf: VecDeque<(Bytes, Bytes)>,
    /// Everything between the bounds is in `buf`.
    done: bool,
    /// The error that ended the scan (reported once).
    failed: bool,
}

impl Paged<'_> {
    fn fill(&mut self, limit: Option<i64>) -> Result<(), EngineError> {
        let rows = page(self.reader, self.tree, &self.lower, &self.upper, limit)?;
        if limit.is_none_or(|l| (rows.len() as i64) < l) {
            self.done = true;
        }
        if let Some((k, _)) = rows.last() {
            self.lower = Bound::Excluded(k.clone());
        }
        self.buf.extend(rows);
        Ok(())
    }
}

impl Iterator for Paged<'_> {
    type Item = Result<(Bytes, Bytes), EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.buf.is_empty()
            && !self.done
            && let Err(e) = self.fill(Some(PAGE))
        {
            self.failed = true;
            return Some(Err(e));
        }
        self.buf.pop_front().map(Ok)
    }
}

impl DoubleEndedIterator for Paged<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if !self.done
            && let Err(e) = self.fill(None)
        {
            self.failed = true;
            return Some(Err(e));
        }
        self.buf.pop_back().map(Ok)
    }
}

fn scan<'a>(reader: &'a dyn Reader, tree: &'static str, which: Scan) -> Entries<'a> {
    let (lower, upper) = bounds(which);
    Box::new(Paged { reader, tree, lower, upper, buf: VecDeque::new(), done: false, failed: false })
}

fn get(reader: &dyn Reader, tree: &str, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
    Ok(reader
        .rows("SELECT value FROM kv WHERE tree = $1 AND key = $2", &[&tree, &key])?
        .first()
        .map(|r| r.get::<_, Vec<u8>>(0)))
}

impl Backend for PgBackend {
    fn tree(&self, name: &str) -> Result<TreeId, EngineError> {
        tree_id(&self.trees, name)
    }

    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        get(self, self.name(tree), key)
    }

    fn scan(&self, tree: TreeId, which: Scan) -> Entries<'_> {
        scan(self, self.name(tree), which)
    }

    fn transact(&self, body: &mut dyn FnMut(&mut dyn TxOps) -> bool) -> Result<(), EngineError> {
        let mut client = self.client()?;
        let tx = block(client.transaction()).map_err(pg)?;
        // Durable when COMMIT returns, whatever the server's default; then the one order of
        // every commit across instances (see the module docs).
        // One round trip for both (a simple query may hold several statements).
        block(
            tx.batch_execute(&format!("SET LOCAL synchronous_commit = on; SELECT pg_advisory_xact_lock({WRITE_LOCK})")),
        )
        .map_err(pg)?;
        let mut ops = PgTx { tx: &tx, trees: &self.trees, writes: BTreeMap::new(), read: Default::default() };
        if !body(&mut ops) || ops.writes.is_empty() {
            return block(tx.rollback()).map_err(pg);
        }
        let mut up = (Vec::new(), Vec::new(), Vec::new());
        let mut del = (Vec::new(), Vec::new());
        for ((tree, key), value) in &ops.writes {
            let name = tree_name(&self.trees, TreeId(*tree));
            match value {
                Some(v) => {
                    up.0.push(name);
                    up.1.push(key.as_slice());
                    up.2.push(v.as_slice());
                }
                None => {
                    del.0.push(name);
                    del.1.push(key.as_slice());
                }
            }
        }
        // Prepared once per connection, and sent together (the client pipelines them).
        let upsert = async {
            if up.0.is_empty() {
                return Ok(0);
            }
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO kv (tree, key, value)
                     SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])
                     ON CONFLICT (tree, key) DO UPDATE SET value = EXCLUDED.value",
                )
                .await?;
            tx.execute(&stmt, &[&up.0, &up.1, &up.2]).await
        };
        let delete = async {
            if del.0.is_empty() {
                return Ok(0);
            }
            let stmt = tx
                .prepare_cached("DELETE FROM kv WHERE (tree, key) IN (SELECT * FROM unnest($1::text[], $2::bytea[]))")
                .await?;
            tx.execute(&stmt, &[&del.0, &del.1]).await
        };
        block(futures::future::try_join(upsert, delete)).map_err(pg)?;
        block(tx.commit()).map_err(pg)
    }

    fn persist(&self) -> Result<(), EngineError> {
        // Every transaction was durable when its COMMIT returned (`synchronous_commit = on`).
        Ok(())
    }

    fn close(&self) -> Result<(), EngineError> {
        self.pool.close();
        Ok(())
    }

    fn disk_space(&self) -> u64 {
        self.rows("SELECT pg_database_size(current_database())", &[])
            .ok()
            .and_then(|r| r.first().map(|r| r.get::<_, i64>(0)))
            .map(|n| n.max(0) as u64)
            .unwrap_or(0)
    }

    fn snapshot(&self) -> Result<Arc<dyn Backend>, EngineError> {
        let client = self.client()?;
        block(client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")).map_err(pg)?;
        // The first statement fixes the snapshot's instant.
        block(client.query("SELECT 1", &[])).map_err(pg)?;
        Ok(Arc::new(PgSnapshot {
            inner: Arc::new(SnapshotConn { client: Mutex::new(Some(client)), _driver: self.driver.clone() }),
            trees: self.trees.clone(),
        }))
    }

    fn reserve_ids(&self) -> Result<Option<std::ops::Range<u64>>, EngineError> {
        let start: i64 = self.rows("SELECT nextval('carebridge_ids')", &[])?.first().map(|r| r.get(0)).unwrap_or(0);
        let start = u64::try_from(start).map_err(|_| EngineError::Corrupt("the id sequence went negative".into()))?;
        Ok(Some(start..start + ID_BLOCK))
    }

    fn probe(&self) -> Result<(), EngineError> {
        self.rows("SELECT 1", &[]).map(|_| ())
    }

    fn keys_in_commit_order(
        &self,
        tree: TreeId,
        prefix: &[u8],
        after: u64,
    ) -> Result<Option<Vec<(u64, Bytes)>>, EngineError> {
        let name = self.name(tree);
        if name != COMMIT_ORDER {
            return Ok(None);
        }
        // Every write transaction numbers its rows while it holds the write lock, and a row is
        // visible before the lock passes on: once a place is seen, no row with an earlier one
        // can appear later, so "after the last place read" misses nothing.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let end = prefix_end(prefix);
        let rows = match &end {
            Some(end) => self.rows(
                "SELECT ord, key FROM kv WHERE tree = $1 AND ord > $2 AND key >= $3 AND key < $4 ORDER BY ord",
                &[&name, &after, &prefix, &end.as_slice()],
            )?,
            None => self.rows(
                "SELECT ord, key FROM kv WHERE tree = $1 AND ord > $2 AND key >= $3 ORDER BY ord",
                &[&name, &after, &prefix],
            )?,
        };
        Ok(Some(rows.into_iter().map(|r| (u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), r.get(1))).collect()))
    }

    fn ids_used(&self) -> Result<Option<u64>, EngineError> {
        // The last block handed out ends below last_value + ID_BLOCK.
        let last: i64 = self.rows("SELECT last_value FROM carebridge_ids", &[])?.first().map(|r| r.get(0)).unwrap_or(0);
        Ok(Some(u64::try_from(last).unwrap_or(0) + ID_BLOCK))
    }

    fn raise_ids(&self, used: u64) -> Result<(), EngineError> {
        let next = i64::try_from(used.saturating_add(1))
            .map_err(|_| EngineError::Corrupt("an id is past the sequence's range".into()))?;
        // Never lowers it: blocks already handed out stay behind.
        self.rows(
            "SELECT setval('carebridge_ids', greatest($1, (SELECT last_value + $2 FROM carebridge_ids)), false)",
            &[&next, &(ID_BLOCK as i64)],
        )?;
        Ok(())
    }
}

/// The connection a snapshot reads through, in its repeatable-read transaction. Closed (not
/// returned to the pool) when the last handle goes, so its open transaction ends with it.
struct SnapshotConn {
    client: Mutex<Option<Object>>,
    _driver: Arc<Driver>,
}

impl Drop for SnapshotConn {
    fn drop(&mut self) {
        if let Some(obj) = self.client.lock().unwrap_or_else(|e| e.into_inner()).take() {
            drop(Object::take(obj));
        }
    }
}

impl Reader for SnapshotConn {
    fn rows(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>, EngineError> {
        let guard = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let client = guard.as_ref().ok_or_else(|| EngineError::Unavailable("the snapshot was closed".into()))?;
        block(client.query(sql, params)).map_err(pg)
    }
}

/// A read-only view of the database at one instant.
struct PgSnapshot {
    inner: Arc<SnapshotConn>,
    trees: Vec<&'static str>,
}

impl Backend for PgSnapshot {
    fn tree(&self, name: &str) -> Result<TreeId, EngineError> {
        tree_id(&self.trees, name)
    }

    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        get(&*self.inner, tree_name(&self.trees, tree), key)
    }

    fn scan(&self, tree: TreeId, which: Scan) -> Entries<'_> {
        scan(&*self.inner, tree_name(&self.trees, tree), which)
    }

    fn transact(&self, _: &mut dyn FnMut(&mut dyn TxOps) -> bool) -> Result<(), EngineError> {
        Err(EngineError::Corrupt("a snapshot of the store is read-only".into()))
    }

    fn persist(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn close(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn disk_space(&self) -> u64 {
        0
    }

    fn snapshot(&self) -> Result<Arc<dyn Backend>, EngineError> {
        Ok(Arc::new(PgSnapshot { inner: self.inner.clone(), trees: self.trees.clone() }))
    }
}

/// One write transaction: reads go to the database (under the write lock, so nobody else's
/// commit comes between them), writes wait in `writes` (the final value per key; `None`
/// removes) and go in two statements at commit.
struct PgTx<'a, 'c> {
    tx: &'a deadpool_postgres::Transaction<'c>,
    trees: &'a [&'static str],
    writes: BTreeMap<(usize, Vec<u8>), Option<Vec<u8>>>,
    /// Values read ahead ([`TxOps::prefetch`]), absent ones as `None`. Still true when read
    /// later: the transaction holds the write lock, so no other writer changes them meanwhile.
    read: std::collections::HashMap<(usize, Vec<u8>), Option<Vec<u8>>>,
}

impl PgTx<'_, '_> {
    fn db_get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        let name = tree_name(self.trees, tree);
        let stmt = block(self.tx.prepare_cached("SELECT value FROM kv WHERE tree = $1 AND key = $2")).map_err(pg)?;
        Ok(block(self.tx.query_opt(&stmt, &[&name, &key])).map_err(pg)?.map(|r| r.get::<_, Vec<u8>>(0)))
    }
}

impl TxOps for PgTx<'_, '_> {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        let at = (tree.0, key.to_vec());
        match self.writes.get(&at).or_else(|| self.read.get(&at)) {
            Some(known) => Ok(known.clone()),
            None => self.db_get(tree, key),
        }
    }

    fn prefetch(&mut self, keys: &[(TreeId, &[u8])]) -> Result<(), EngineError> {
        let wanted: Vec<(usize, &[u8])> = keys
            .iter()
            .map(|(t, k)| (t.0, *k))
            .filter(|(t, k)| {
                let at = (*t, k.to_vec());
                !self.writes.contains_key(&at) && !self.read.contains_key(&at)
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = wanted.iter().map(|(t, _)| tree_name(self.trees, TreeId(*t))).collect();
        let ks: Vec<&[u8]> = wanted.iter().map(|(_, k)| *k).collect();
        let stmt = block(self.tx.prepare_cached(
            "SELECT tree, key, value FROM kv WHERE (tree, key) IN (SELECT * FROM unnest($1::text[], $2::bytea[]))",
        ))
        .map_err(pg)?;
        for (t, k) in &wanted {
            self.read.insert((*t, k.to_vec()), None);
        }
        for row in block(self.tx.query(&stmt, &[&names, &ks])).map_err(pg)? {
            let tree = tree_id(self.trees, row.get::<_, &str>(0))?;
            self.read.insert((tree.0, row.get::<_, Vec<u8>>(1)), Some(row.get::<_, Vec<u8>>(2)));
        }
        Ok(())
    }

    fn insert(&mut self, tree: TreeId, key: &[u8], value: &[u8]) {
        self.writes.insert((tree.0, key.to_vec()), Some(value.to_vec()));
    }

    fn remove(&mut self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        let old = self.get(tree, key)?;
        self.writes.insert((tree.0, key.to_vec()), None);
        Ok(old)
    }

    fn scan_prefix(&self, tree: TreeId, prefix: &[u8]) -> Result<Vec<(Bytes, Bytes)>, EngineError> {
        let name = tree_name(self.trees, tree);
        let stmt = block(self.tx.prepare_cached(
            "SELECT key, value FROM kv WHERE tree = $1 AND key >= $2 AND ($3::bytea IS NULL OR key < $3) ORDER BY key",
        ))
        .map_err(pg)?;
        let end = prefix_end(prefix);
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = block(self.tx.query(&stmt, &[&name, &prefix, &end]))
            .map_err(pg)?
            .into_iter()
            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
            .collect();
        let from = (tree.0, prefix.to_vec());
        for ((t, k), v) in self.writes.range(from..) {
            if *t != tree.0 || !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().collect())
    }
}

/// Test and tooling helpers: a database per test, created on the server a DSN names.
pub mod testing {
    use super::*;

    /// The DSN of the test server (`tests/run.sh` sets it), if any.
    pub const DSN_VAR: &str = "CAREBRIDGE_TEST_POSTGRES";
    /// Set by `tests/run.sh`: the PostgreSQL tests must run, not skip.
    pub const REQUIRE_VAR: &str = "CAREBRIDGE_REQUIRE_POSTGRES";

    /// The test server's DSN; `None` (the caller skips, saying so) when it is not set and not
    /// required; panics when it is required but missing.
    pub fn dsn() -> Option<String> {
        match std::env::var(DSN_VAR) {
            Ok(d) if !d.is_empty() => Some(d),
            _ if std::env::var_os(REQUIRE_VAR).is_some() => {
                panic!("{REQUIRE_VAR} is set but {DSN_VAR} is not: tests/run.sh starts PostgreSQL and sets both")
            }
            _ => None,
        }
    }

    /// Settings for database `name` on the server `dsn` names, creating the database if it does
    /// not exist yet.
    pub fn database(dsn: &str, name: &str) -> Result<PgSettings, String> {
        let base: tokio_postgres::Config = dsn.parse().map_err(|e| format!("bad DSN: {e}"))?;
        let admin = base.clone();
        let db = name.to_string();
        // On a thread of its own, so it may be called from anywhere.
        std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let (client, conn) = admin.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let exists = client
                    .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some();
                if !exists {
                    // A name made of [a-z0-9_] by the caller; CREATE DATABASE takes no parameters.
                    client.batch_execute(&format!("CREATE DATABASE \"{db}\"")).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .join()
        .map_err(|_| "the database set-up thread panicked".to_string())??;
        let mut config = base;
        config.dbname(name);
        Ok(PgSettings { config, ca_file: None, pool_size: 4 })
    }

    /// Runs `sql` on the database `settings` names (for tests that age or break a database).
    pub fn execute(settings: &PgSettings, sql: &str) -> Result<(), String> {
        let config = settings.config.clone();
        let sql = sql.to_string();
        std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let (client, conn) = config.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                client.batch_execute(&sql).await.map_err(|e| e.to_string())
            })
        })
        .join()
        .map_err(|_| "the SQL thread panicked".to_string())?
    }

    /// `pg_dump` of the whole database `settings` names, as text (what a backup holds).
    pub fn dump(settings: &PgSettings) -> Result<String, String> {
        let c = &settings.config;
        let host = match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        let pg_dump = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path().join("bin/pg_dump")))
            .find(|p| p.exists())
            .unwrap_or_else(|| "pg_dump".into());
        let out = std::process::Command::new(pg_dump)
            .args(["-h", &host, "-p", &port.to_string(), "-U", c.get_user().unwrap_or("postgres")])
            .args(["-d", c.get_dbname().unwrap_or("postgres")])
            .output()
            .map_err(|e| format!("pg_dump: {e}"))?;
        if !out.status.success() {
            return Err(format!("pg_dump failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
