//! The record store: the patient's file, over one embedded engine ([`engine`]: fjall). Only this
//! module touches the engine, and no engine type leaves it.
//!
//! Every exchange is written as **one atomic batch** together with its dedup index entry, its
//! conversation, its native-id references and its outbox rows (a transactional outbox), so
//! "recorded but never queued" and "queued but not recorded" cannot happen. Nothing written here
//! is durable until [`Flusher`] has persisted the engine (one `fdatasync` for every batch
//! waiting); receipts and outbox wake-ups go out only after.
//!
//! **At rest** (schema v3): every value that can hold PHI is versioned JSON ([`schema`]) sealed
//! with XChaCha20-Poly1305 under the key file's active key ([`keys`]); every tree key that would
//! hold an address, a patient id or a channel's message id is blinded with a keyed HMAC. Every
//! entry of the patient's file (exchange, event, quarantined input, audit entry, tombstone) is
//! chained in the PHI-free `journal` ([`chain`]). A store of an earlier carebridge (sled, schema
//! v1 or v2) is refused at start and turned into this one by `carebridge store migrate`
//! ([`import`]).
//!
//! Trees: `records`, `by_source`, `conversations`, `by_native`, `outbox`, `dead`, `events`,
//! `quarantine`, `review`, `links`, `link_codes`, `consents`, `notices`, `audit`, `tombstones`,
//! `journal`, `chain_heads`, `blobs` (attachments' bytes, once per record), `meta`. Ids are
//! big-endian `u64`s.

mod audit;
pub mod chain;
mod correspondence;
mod dead;
mod dictionary;
pub mod engine;
pub mod fhir;
mod filing;
mod fjall_backend;
pub mod flusher;
pub mod import;
pub mod keys;
mod legacy;
mod migrate;
pub mod pg_backend;
pub mod retention;
mod review;
pub mod schema;
pub mod settings;
#[cfg(test)]
mod tests;
pub mod transfer;
pub mod triage;

pub use audit::Actor;
pub use flusher::Flusher;
pub use keys::Keyring;
pub use settings::{BackendKind, StoreConfig};

use crate::policy::ConsentGrant;
use carebridge_contract::{AccountId, RecordId, SourceKey};
use chain::{Append, ChainKey, Kind};
use engine::{Engine, EngineError, Tr, Tx, TxError, id_of};
use schema::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why the store failed. Callers answer `Receipt::Unavailable` and log loudly: the source keeps
/// the message and redelivers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine reported an I/O error or damaged files.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A stored value could not be decoded (unknown version, corruption).
    #[error("store value under `{tree}` could not be decoded: {reason}")]
    Decode {
        /// The tree.
        tree: &'static str,
        /// serde's message (about the shape, not the content).
        reason: String,
    },
    /// The store was written by a newer carebridge.
    #[error("store schema version {found} is newer than this program's {supported}")]
    Schema {
        /// On disk.
        found: u32,
        /// Known here.
        supported: u32,
    },
    /// The data directory is in use by another carebridge.
    #[error("the data directory {0} is locked by another running carebridge")]
    Locked(String),
    /// The data directory holds a store of an earlier carebridge (sled), not yet migrated.
    #[error(
        "the data directory {0} holds a record store of an earlier carebridge (sled); run `carebridge store migrate --config <file>` once to convert it (the old files are kept aside)"
    )]
    OldStore(String),
    /// Reading the old store during a migration failed.
    #[error(transparent)]
    Legacy(#[from] legacy::LegacyError),
    /// A sealed value could not be opened: altered, moved, or the wrong key file.
    #[error("a value under `{tree}` could not be opened: {source}")]
    Sealed {
        /// The tree.
        tree: &'static str,
        /// Why.
        source: keys::KeyError,
    },
    /// A transaction gave up (a value it needed did not decode).
    #[error("a store transaction was aborted: {0}")]
    Aborted(&'static str),
    /// `store migrate` stopped before changing anything the daemon would use.
    #[error("the migration stopped: {0}")]
    Migration(String),
}

impl StoreError {
    /// An operating-system I/O error (disk full, `EIO`): the store cannot be written now but may
    /// be after a restart (exit 74), unlike a damaged or newer store.
    pub fn is_io(&self) -> bool {
        matches!(self, StoreError::Engine(e) if e.is_io())
    }

    /// The store's files are damaged, or hold less than was made durable (exit 65): nothing is
    /// cut away to make it open; restore from backup.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            StoreError::Engine(EngineError::Corrupt(_)) | StoreError::Sealed { .. } | StoreError::Decode { .. }
        )
    }
}

/// The exit code of a daemon or command that found the record store damaged (sysexits'
/// `EX_DATAERR`): a restart will not help; restore from backup (`docs/operations.md`).
pub const EXIT_STORE_DAMAGED: u8 = 65;

impl StoreError {
    /// The process ran out of file descriptors: neither the disk nor the store is at fault.
    pub fn is_fd_exhaustion(&self) -> bool {
        matches!(self, StoreError::Engine(EngineError::Descriptors(_)))
    }

    /// The exit code this error ends the process with (`docs/operations.md`): 74 disk full or
    /// I/O (a restart may help), 71 out of file descriptors (a restart may help; the limit or a
    /// flood of connections is the cause, not the disk), 65 damaged store (it will not), 2
    /// something the administrator must change (an old store to migrate, a newer store, the
    /// wrong key file), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            e if e.is_fd_exhaustion() => flusher::EXIT_NO_DESCRIPTORS as u8,
            e if e.is_io() => flusher::EXIT_STORE_UNWRITABLE as u8,
            StoreError::OldStore(_) | StoreError::Schema { .. } | StoreError::Sealed { tree: "meta", .. } => 2,
            e if e.is_corrupt() => EXIT_STORE_DAMAGED,
            _ => 1,
        }
    }
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Engine(e.into())
    }
}
/// A key into the outbox: destination account plus FIFO sequence number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxKey {
    /// The sending account.
    pub account: AccountId,
    /// Monotonic sequence: FIFO order per account.
    pub seq: u64,
}

impl OutboxKey {
    fn encode(&self) -> Vec<u8> {
        let mut k = self.account.to_string().into_bytes();
        k.push(0);
        k.extend_from_slice(&self.seq.to_be_bytes());
        k
    }
}

/// What one attempt did to its outbox row (see [`Store::apply_outbox`]).
#[derive(Debug)]
pub enum OutboxUpdate {
    /// Sent: the row goes; the channel's ids for it are remembered.
    Sent {
        /// The row.
        key: OutboxKey,
        /// Its content.
        item: OutboxItemV1,
        /// The channel's ids for what was sent.
        native_ids: Vec<String>,
        /// Appended to the record.
        events: Vec<EventKind>,
    },
    /// Failed, to be retried: the row is rewritten (attempts, not before).
    Retry {
        /// The row.
        key: OutboxKey,
        /// Its new content.
        item: OutboxItemV1,
        /// Appended to the record.
        events: Vec<EventKind>,
    },
    /// Given up: the row moves to the dead letters.
    Dead {
        /// The row.
        key: OutboxKey,
        /// Its content.
        item: OutboxItemV1,
        /// Why (PHI-free).
        reason: String,
        /// Appended to the record.
        events: Vec<EventKind>,
    },
    /// Held back (consent withdrawn): the row moves to the review queue.
    Review {
        /// The row.
        key: OutboxKey,
        /// Its content.
        item: OutboxItemV1,
        /// The rule that held it.
        rule: String,
        /// Appended to the record.
        events: Vec<EventKind>,
    },
}

impl OutboxUpdate {
    fn key(&self) -> &OutboxKey {
        match self {
            OutboxUpdate::Sent { key, .. }
            | OutboxUpdate::Retry { key, .. }
            | OutboxUpdate::Dead { key, .. }
            | OutboxUpdate::Review { key, .. } => key,
        }
    }

    fn item(&self) -> &OutboxItemV1 {
        match self {
            OutboxUpdate::Sent { item, .. }
            | OutboxUpdate::Retry { item, .. }
            | OutboxUpdate::Dead { item, .. }
            | OutboxUpdate::Review { item, .. } => item,
        }
    }

    fn events(&self) -> &[EventKind] {
        match self {
            OutboxUpdate::Sent { events, .. }
            | OutboxUpdate::Retry { events, .. }
            | OutboxUpdate::Dead { events, .. }
            | OutboxUpdate::Review { events, .. } => events,
        }
    }
}

/// Everything one inbound message writes, prepared by the router and committed atomically.
#[derive(Debug)]
pub struct Exchange {
    /// The record.
    pub record: RecordV1,
    /// The conversation, new or updated (class).
    pub conversation: ConversationV1,
    /// Channel-native ids that now point at this conversation (`kind\0native`).
    pub native_refs: Vec<(String, NativeRefV1)>,
    /// Deliveries to queue.
    pub outbox: Vec<(OutboxKey, OutboxItemV1)>,
    /// Deliveries held for review.
    pub review: Vec<ReviewItemV1>,
    /// A link redeemed by this message: the address key, the link, the code's hash and the
    /// consent the link grants.
    pub link: Option<(String, LinkV1, String, ConsentGrant)>,
    /// Unprompted notices sent with this exchange (`kind\0account\0address`), stamped with the
    /// time so the router sends them at most once per interval.
    pub notice_marks: Vec<String>,
}

/// What [`Store::commit_exchanges`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// Written.
    New,
    /// The source key was already recorded under this id; nothing written.
    Duplicate(RecordId),
}

/// Counts for the `Status.` log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// The chain's last entry (logging it anchors the chain: see [`chain`]).
    pub chain_seq: u64,
    /// Its hash, hex.
    pub chain_head: String,
    /// Records.
    pub records: usize,
    /// Outbox rows waiting.
    pub outbox_pending: usize,
    /// Dead letters.
    pub dead: usize,
    /// Quarantined inputs.
    pub quarantined: usize,
    /// Deliveries held for review.
    pub held: usize,
}

/// The store. Cheap to clone (the engine and its trees are reference-counted).
#[derive(Clone)]
pub struct Store {
    db: Arc<Engine>,
    records: Tr,
    by_source: Tr,
    conversations: Tr,
    by_native: Tr,
    outbox: Tr,
    dead: Tr,
    events: Tr,
    quarantine: Tr,
    review: Tr,
    links: Tr,
    link_codes: Tr,
    consents: Tr,
    notices: Tr,
    audit: Tr,
    tombstones: Tr,
    journal: Tr,
    chain_heads: Tr,
    blobs: Tr,
    ids: Arc<AtomicU64>,
    /// On a backend shared by several instances: the block of ids this instance reserved and
    /// has not handed out yet (`None`: the dense counter `ids`; see [`Store::next_id`]).
    id_block: Option<Arc<std::sync::Mutex<std::ops::Range<u64>>>>,
    keys: Arc<Keyring>,
    chain_key: ChainKey,
    log_key: [u8; 32],
}

/// Tree names, which are also the sealing context of their values.
mod t {
    pub const RECORDS: &str = "records";
    pub const BY_NATIVE: &str = "by_native";
    pub const CONVERSATIONS: &str = "conversations";
    pub const OUTBOX: &str = "outbox";
    pub const DEAD: &str = "dead";
    pub const EVENTS: &str = "events";
    pub const QUARANTINE: &str = "quarantine";
    pub const REVIEW: &str = "review";
    pub const LINKS: &str = "links";
    pub const LINK_CODES: &str = "link_codes";
    pub const CONSENTS: &str = "consents";
    pub const AUDIT: &str = "audit";
    pub const TOMBSTONES: &str = "tombstones";
    pub const BLOBS: &str = "blobs";
}

/// Every tree of the store but `meta`, by name.
pub(crate) const TREES: [&str; 18] = [
    "records",
    "by_source",
    "conversations",
    "by_native",
    "outbox",
    "dead",
    "events",
    "quarantine",
    "review",
    "links",
    "link_codes",
    "consents",
    "notices",
    "audit",
    "tombstones",
    "journal",
    "chain_heads",
    "blobs",
];

/// Opens the store a config names, with its key file: what `run` and every CLI command that
/// reads the store do.
pub fn open_configured(config: &crate::config::Config) -> anyhow::Result<Store> {
    use anyhow::Context;
    let data_dir = &config.daemon.data_dir;
    let keys = config.store.keyring(&config.config_dir, data_dir).context("loading the record store's key file")?;
    if let Some(pg) = config.store.postgres_settings(&config.config_dir)? {
        return Store::open_postgres(keys, &pg).context("opening the record store in PostgreSQL");
    }
    Store::open_with_cache(data_dir, keys, config.store.cache_mb)
        .with_context(|| format!("opening the record store in {}", data_dir.display()))
}

/// Opens the store a config names for a command (not `run`): there must already be one. A
/// command run in the wrong directory, or without `--config`, would otherwise create an empty
/// store and a new key file, print nothing and succeed, as if the clinic had no records.
pub fn open_existing(config: &crate::config::Config, config_given: bool) -> anyhow::Result<Store> {
    let data_dir = &config.daemon.data_dir;
    // A PostgreSQL store is the database's: nothing of it is in the data directory.
    if config.store.backend == settings::BackendKind::Embedded && !has_store(data_dir) {
        let hint = if config_given {
            "check `[daemon] data_dir` in the config, or start the daemon once to create the store"
        } else {
            "no --config was given, so the embedded default's ./data was looked in: pass --config with the clinic's config file"
        };
        return Err(crate::exit::ConfigFailure(format!("no record store in {}: {hint}", data_dir.display())).into());
    }
    open_configured(config)
}

/// Whether `data_dir` holds a record store (this version's, or an earlier one to migrate).
pub fn has_store(data_dir: &Path) -> bool {
    data_dir.join(engine::ENGINE_DIR).exists() || legacy::present(data_dir)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own types always serialize (no maps with non-string keys, no failing impls).
    serde_json::to_vec(v).unwrap_or_default()
}

/// Decodes plain (already opened, or schema-v1) JSON.
fn dec<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    // serde's message can quote the offending value (PHI in a record): keep only its category
    // and position, since this error is logged.
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
        tree,
        reason: format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()),
    })
}

fn join(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn id_of32(v: &[u8]) -> u32 {
    v.try_into().map(u32::from_be_bytes).unwrap_or(u32::MAX)
}

fn abort<E>(e: E) -> TxError<E> {
    TxError::Abort(e)
}

/// Where the id counter and the store's own settings live in `meta`.
const NEXT_ID: &[u8] = b"next_id";
const SCHEMA_KEY: &[u8] = b"schema_version";

impl Store {
    /// Opens (or creates) the store in `dir`, sealing with `keys`. Fails at once if another
    /// process holds it, if it was written by a newer carebridge, if it is an earlier
    /// carebridge's store not yet migrated, if its files are damaged, or if `keys` cannot open it
    /// (the wrong key file). The engine's cache is [`settings::DEFAULT_CACHE_MB`].
    pub fn open(dir: &Path, keys: Keyring) -> Result<Store, StoreError> {
        Store::open_with_cache(dir, keys, settings::DEFAULT_CACHE_MB)
    }

    /// [`Store::open`] with the engine's block cache at most `cache_mb` MiB (`[store] cache_mb`).
    pub fn open_with_cache(dir: &Path, keys: Keyring, cache_mb: u32) -> Result<Store, StoreError> {
        if legacy::present(dir) {
            return Err(StoreError::OldStore(dir.display().to_string()));
        }
        let store = Store::open_engine(dir, keys, cache_mb)?;
        store.check_schema(dir)?;
        store.check_key()?;
        Ok(store)
    }

    /// Opens (or creates) the store in the PostgreSQL database `settings` names, sealing with
    /// `keys`: the schema is brought up to date first (refused when the database is newer than
    /// this binary), then the key canary proves every instance shares the key file.
    pub fn open_postgres(keys: Keyring, settings: &pg_backend::PgSettings) -> Result<Store, StoreError> {
        let db = Engine::open_postgres(settings).map_err(|e| match e {
            EngineError::Newer { found, supported } => StoreError::Schema { found, supported },
            e => StoreError::Engine(e),
        })?;
        let store = Store::over_engine(db, keys)?;
        store.check_schema(Path::new("the PostgreSQL database"))?;
        store.check_key()?;
        Ok(store)
    }

    /// Checks the store's schema version (setting it on a new store).
    fn check_schema(&self, dir: &Path) -> Result<(), StoreError> {
        let store = self;
        match store.db.meta(SCHEMA_KEY)?.map(|v| id_of32(&v)) {
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StoreError::Schema { found, supported: SCHEMA_VERSION });
            }
            Some(found) if found < SCHEMA_VERSION => {
                // Only an interrupted import leaves an older version in this engine.
                return Err(StoreError::OldStore(dir.display().to_string()));
            }
            Some(_) => {}
            None => store.set_schema_version(SCHEMA_VERSION)?,
        }
        Ok(())
    }

    /// Opens the engine in `dir` and the store's trees in it, with no check of its version or
    /// its key (the import's first step).
    fn open_engine(dir: &Path, keys: Keyring, cache_mb: u32) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Engine(e.into()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The patient's file: nobody but the carebridge user.
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let db = Engine::open(dir, cache_mb).map_err(|e| match e {
            EngineError::Locked => StoreError::Locked(dir.display().to_string()),
            e => StoreError::Engine(e),
        })?;
        Store::over_engine(db, keys)
    }

    /// The store's trees over an open engine.
    fn over_engine(db: Engine, keys: Keyring) -> Result<Store, StoreError> {
        // Read and written in one transaction: instances sharing a backend that start at once
        // agree on one key.
        let log_key: [u8; 32] = db
            .transact(|tx| {
                let meta = tx.on(db.meta_tree());
                match meta.get(b"log_key")? {
                    Some(k) if k.len() == 32 => Ok(k.as_slice().try_into().unwrap_or([0; 32])),
                    _ => {
                        let k: [u8; 32] = rand::random();
                        meta.insert(b"log_key", k)?;
                        Ok::<_, TxError<()>>(k)
                    }
                }
            })
            .map_err(tx_err)?;
        let next = db.meta(NEXT_ID)?.map(|v| id_of(&v)).unwrap_or(0);
        let id_block = db.reserve_ids()?.map(|block| Arc::new(std::sync::Mutex::new(block)));
        let t = |n: &'static str| db.tree(n);
        Ok(Store {
            records: t("records")?,
            by_source: t("by_source")?,
            conversations: t("conversations")?,
            by_native: t("by_native")?,
            outbox: t("outbox")?,
            dead: t("dead")?,
            events: t("events")?,
            quarantine: t("quarantine")?,
            review: t("review")?,
            links: t("links")?,
            link_codes: t("link_codes")?,
            consents: t("consents")?,
            notices: t("notices")?,
            audit: t("audit")?,
            tombstones: t("tombstones")?,
            journal: t("journal")?,
            chain_heads: t("chain_heads")?,
            blobs: t("blobs")?,
            ids: Arc::new(AtomicU64::new(next)),
            id_block,
            chain_key: ChainKey::from_keys(&keys),
            keys: Arc::new(keys),
            log_key,
            db: Arc::new(db),
        })
    }

    fn set_schema_version(&self, v: u32) -> Result<(), StoreError> {
        self.db.put_meta(SCHEMA_KEY, &v.to_be_bytes()).map_err(tx_err)
    }

    /// Runs `f` as one transaction of the engine (see [`Engine::transact`]), storing the id
    /// counter with it: every id a durable write uses was handed out before that write, so the
    /// counter on disk is always past every id on disk, and ids stay dense across restarts.
    fn transact<R, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<R, TxError<E>>) -> Result<R, TxError<E>> {
        self.db.transact(|tx| {
            let r = f(tx)?;
            if self.id_block.is_none() {
                tx.on(self.db.meta_tree()).insert(NEXT_ID, self.ids.load(Ordering::Acquire).to_be_bytes())?;
            }
            Ok(r)
        })
    }

    /// Proves the key file fits this store: a canary sealed at creation must open. A wrong key
    /// file is refused at startup instead of failing on the first old record.
    fn check_key(&self) -> Result<(), StoreError> {
        match self.db.meta(b"key_canary")? {
            Some(c) => {
                self.keys
                    .open("meta", b"key_canary", &c)
                    .map_err(|source| StoreError::Sealed { tree: "meta", source })?;
            }
            None => {
                self.db
                    .put_meta(b"key_canary", &self.keys.seal("meta", b"key_canary", b"carebridge"))
                    .map_err(tx_err)?;
            }
        }
        Ok(())
    }
    /// Seals a value of `tree`, compressed first unless the tree's rows are transient: an outbox
    /// row lives until its delivery is made (usually well under a second), so compressing it
    /// would cost the router's thread about 10 µs for bytes the store drops again at once.
    fn seal<T: Serialize>(&self, tree: &str, key: &[u8], v: &T) -> Vec<u8> {
        if tree == t::OUTBOX {
            self.keys.seal(tree, key, &enc(v))
        } else {
            self.keys.seal_compressible(tree, key, &enc(v))
        }
    }

    fn unseal<T: DeserializeOwned>(&self, tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
        let plain = self.keys.open(tree, key, bytes).map_err(|source| StoreError::Sealed { tree, source })?;
        dec(tree, &plain)
    }

    /// A sealed value of `tree`, opened (the tree's name is its sealing context).
    fn get_sealed<T: DeserializeOwned>(&self, tree: &Tr, key: &[u8]) -> Result<Option<T>, StoreError> {
        tree.get(key)?.map(|v| self.unseal(tree.name, key, &v)).transpose()
    }

    /// Every value of `tree`, opened, in key order.
    fn all_sealed<T: DeserializeOwned>(&self, tree: &Tr) -> Result<Vec<T>, StoreError> {
        tree.iter().map(|r| r.map_err(StoreError::from).and_then(|(k, v)| self.unseal(tree.name, &k, &v))).collect()
    }

    /// The blinded key of a patient: their chain head and journal references.
    pub(crate) fn patient_key(&self, patient_id: &str) -> Vec<u8> {
        self.keys.blind("patient", patient_id.as_bytes())
    }

    fn source_key(&self, s: &SourceKey) -> Vec<u8> {
        self.keys.blind("source", &join(&s.account.to_string(), &s.native_id))
    }

    fn native_key(&self, kind: &str, native: &str) -> Vec<u8> {
        self.keys.blind("native", &join(kind, native))
    }

    fn link_key(&self, address_key: &str) -> Vec<u8> {
        self.keys.blind("address", address_key.as_bytes())
    }

    fn consent_key(&self, patient_id: &str, account: &str) -> Vec<u8> {
        self.keys.blind("consent", &join(patient_id, account))
    }

    fn notice_key(&self, mark: &str) -> Vec<u8> {
        self.keys.blind("notice", mark.as_bytes())
    }

    /// A fresh id (records, deliveries, outbox sequence, events), never handed out twice. On the
    /// embedded backend dense and monotonic (see [`Store::transact`]); on a backend several
    /// instances share, unique across them and monotonic within this instance: taken from a
    /// block this instance reserved ([`engine::Backend::reserve_ids`]), a new block once it is
    /// used up (ids left in a block at a restart are skipped, never reused).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        let Some(block) = &self.id_block else { return Ok(self.ids.fetch_add(1, Ordering::AcqRel) + 1) };
        let mut block = block.lock().unwrap_or_else(|e| e.into_inner());
        if block.is_empty() {
            *block = self.db.reserve_ids()?.ok_or(StoreError::Aborted("the backend stopped reserving ids"))?;
        }
        let id = block.start;
        block.start += 1;
        Ok(id)
    }

    /// Makes everything written so far durable: one `fdatasync` for all of it. Blocking: the
    /// flusher's, the CLI's.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.persist()?;
        Ok(())
    }

    /// The last flush, on close: also safe against a power loss for the engine's metadata.
    pub fn close(&self) -> Result<(), StoreError> {
        self.db.close()?;
        Ok(())
    }

    /// Whether the store's database answers now (always, for the embedded store): what
    /// `/readyz` asks besides the flusher, since a server's outage shows in no flush.
    pub fn probe(&self) -> Result<(), StoreError> {
        Ok(self.db.probe()?)
    }

    /// Bytes the store takes on disk.
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space()
    }
    pub fn patient_ref(&self, patient_id: &str) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.log_key) {
            Ok(m) => m,
            Err(_) => return "p?".into(),
        };
        mac.update(patient_id.as_bytes());
        let out = mac.finalize().into_bytes();
        format!("p#{}", hex::encode(&out[..6]))
    }

    /// The record a source key was recorded under, if any.
    pub fn lookup_source(&self, source: &SourceKey) -> Result<Option<RecordId>, StoreError> {
        Ok(self.by_source.get(self.source_key(source))?.map(|v| RecordId(id_of(&v))))
    }

    /// A record.
    pub fn record(&self, id: RecordId) -> Result<Option<RecordV1>, StoreError> {
        self.get_sealed(&self.records, &id.0.to_be_bytes())
    }

    /// All records, oldest first (for audits and tests).
    pub fn records(&self) -> impl Iterator<Item = Result<RecordV1, StoreError>> + '_ {
        self.records.iter().map(|r| r.map_err(StoreError::from).and_then(|(k, v)| self.unseal(t::RECORDS, &k, &v)))
    }

    /// Events appended to a record, oldest first.
    pub fn events(&self, id: RecordId) -> Result<Vec<EventV1>, StoreError> {
        self.events
            .scan_prefix(id.0.to_be_bytes())
            .map(|r| r.map_err(StoreError::from).and_then(|(k, v)| self.unseal(t::EVENTS, &k, &v)))
            .collect()
    }

    /// A conversation by token.
    pub fn conversation(&self, token: &str) -> Result<Option<ConversationV1>, StoreError> {
        self.get_sealed(&self.conversations, token.as_bytes())
    }

    /// What a channel-native id (of a given channel kind) points at.
    pub fn native_ref(&self, kind: &str, native: &str) -> Result<Option<NativeRefV1>, StoreError> {
        self.get_sealed(&self.by_native, &self.native_key(kind, native))
    }

    /// The patient an address was linked to (by code), if any.
    pub fn linked_patient(&self, address_key: &str) -> Result<Option<LinkV1>, StoreError> {
        self.get_sealed(&self.links, &self.link_key(address_key))
    }

    /// Consents in force for a patient on an account.
    pub fn consents(&self, patient_id: &str, account: &str) -> Result<Vec<ConsentGrant>, StoreError> {
        Ok(self.get_sealed(&self.consents, &self.consent_key(patient_id, account))?.unwrap_or_default())
    }

    /// Records a consent (CLI / admin API). Durable after the next flush.
    pub fn grant_consent(&self, patient_id: &str, grant: ConsentGrant) -> Result<(), StoreError> {
        let key = self.consent_key(patient_id, &grant.account);
        self.transact(|tx| {
            let consents = tx.on(&self.consents);
            let in_force: Vec<ConsentGrant> = match consents.get(&key)? {
                Some(v) => self.unseal(t::CONSENTS, &key, &v).map_err(abort)?,
                None => Vec::new(),
            };
            consents.insert(key.as_slice(), self.seal(t::CONSENTS, &key, &grant.clone().merged_into(in_force)))?;
            Ok(())
        })
        .map_err(tx_store_err)
    }

    /// Withdraws all consents of a patient on an account.
    pub fn withdraw_consent(&self, patient_id: &str, account: &str) -> Result<bool, StoreError> {
        let key = self.consent_key(patient_id, account);
        self.transact(|tx| Ok::<_, TxError<()>>(tx.on(&self.consents).remove(&key)?.is_some())).map_err(tx_err)
    }

    /// When an unprompted notice with this mark last went out (unix ms).
    pub fn notice_sent_at(&self, mark: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.notices.get(self.notice_key(mark))?.map(|v| id_of(&v)))
    }

    /// Stores a link code (only its hash is kept).
    pub fn put_link_code(&self, code_hash: &str, code: &LinkCodeV1) -> Result<(), StoreError> {
        let value = self.seal(t::LINK_CODES, code_hash.as_bytes(), code);
        self.transact(|tx| {
            tx.on(&self.link_codes).insert(code_hash.as_bytes(), value.as_slice())?;
            Ok::<(), TxError<()>>(())
        })
        .map_err(tx_err)
    }

    /// Looks up a link code by its hash.
    pub fn link_code(&self, code_hash: &str) -> Result<Option<LinkCodeV1>, StoreError> {
        self.get_sealed(&self.link_codes, code_hash.as_bytes())
    }

    /// Writes a batch of exchanges in **one** transaction: each one whole or (if its source key is
    /// already recorded, also earlier in the same batch) not at all, reported per exchange. Each
    /// record is sealed and appended to the global and the patient's chain.
    ///
    /// One transaction per batch, not per message: one batch for the engine's journal and one
    /// commit counter bump for everything the router planned together.
    pub fn commit_exchanges(&self, batch: &[Exchange]) -> Result<Vec<Committed>, StoreError> {
        // Sealed before the transaction (writers take turns): sealing is most of a write's cost.
        struct Prepared {
            skey: Vec<u8>,
            rkey: [u8; 8],
            record: Vec<u8>,
            conv: Vec<u8>,
            patient: Option<Vec<u8>>,
            native: Vec<(Vec<u8>, Vec<u8>)>,
            outbox: Vec<(Vec<u8>, Vec<u8>)>,
            review: Vec<(Vec<u8>, Vec<u8>)>,
            link: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
            notices: Vec<Vec<u8>>,
            blobs: Vec<([u8; 12], Vec<u8>)>,
        }
        // Every notice queued with an exchange is also an event of its record (`correspondence`).
        let notice_evs: Vec<Vec<PreparedEvent>> = batch
            .iter()
            .map(|ex| self.prepare_notice_events(ex.record.patient_id.as_deref(), ex.outbox.iter().map(|(_, i)| i)))
            .collect::<Result<_, _>>()?;
        let prepared: Vec<Prepared> = batch
            .iter()
            .map(|ex| {
                let rkey = ex.record.id.0.to_be_bytes();
                Prepared {
                    skey: self.source_key(&ex.record.source),
                    rkey,
                    record: self.seal(t::RECORDS, &rkey, &ex.record),
                    conv: self.seal(t::CONVERSATIONS, ex.conversation.token.as_bytes(), &ex.conversation),
                    patient: ex.record.patient_id.as_deref().map(|p| self.patient_key(p)),
                    native: ex
                        .native_refs
                        .iter()
                        .map(|(k, v)| {
                            let (kind, native) = k.split_once('\0').unwrap_or(("", k));
                            let key = self.native_key(kind, native);
                            let val = self.seal(t::BY_NATIVE, &key, v);
                            (key, val)
                        })
                        .collect(),
                    outbox: ex
                        .outbox
                        .iter()
                        .map(|(k, v)| {
                            let key = k.encode();
                            let val = self.seal(t::OUTBOX, &key, v);
                            (key, val)
                        })
                        .collect(),
                    review: ex
                        .review
                        .iter()
                        .map(|item| {
                            let key = item.item.delivery.id.0.to_be_bytes().to_vec();
                            let val = self.seal(t::REVIEW, &key, item);
                            (key, val)
                        })
                        .collect(),
                    link: ex.link.as_ref().map(|(addr, link, _, _)| {
                        let key = self.link_key(addr);
                        let val = self.seal(t::LINKS, &key, link);
                        (key, val, self.consent_key(&link.patient_id, &link.account))
                    }),
                    notices: ex.notice_marks.iter().map(|m| self.notice_key(m)).collect(),
                    blobs: ex
                        .record
                        .attachments
                        .iter()
                        .filter_map(|a| Some((a.blob?.key(), a.data()?)))
                        .map(|(key, data)| (key, self.keys.seal(t::BLOBS, &key, data)))
                        .collect(),
                }
            })
            .collect();
        let r = self.transact(|tx| {
            let (records, by_source, conversations, by_native, outbox, review, links, link_codes, consents) = (
                &tx.on(&self.records),
                &tx.on(&self.by_source),
                &tx.on(&self.conversations),
                &tx.on(&self.by_native),
                &tx.on(&self.outbox),
                &tx.on(&self.review),
                &tx.on(&self.links),
                &tx.on(&self.link_codes),
                &tx.on(&self.consents),
            );
            let (notices, journal, heads) = (&tx.on(&self.notices), &tx.on(&self.journal), &tx.on(&self.chain_heads));
            let blobs = &tx.on(&self.blobs);
            let events = tx.on(&self.events);
            // What the loop reads (de-duplication, chain heads, the count), in one go: on a
            // server backend one round trip instead of one per message.
            let mut ahead: Vec<(&Tr, &[u8])> =
                vec![(&self.chain_heads, chain::GLOBAL_HEAD), (&self.chain_heads, RECORDS_COUNT)];
            for p in &prepared {
                ahead.push((&self.by_source, p.skey.as_slice()));
                if let Some(patient) = &p.patient {
                    ahead.push((&self.chain_heads, patient.as_slice()));
                }
            }
            tx.prefetch(&ahead)?;
            let mut results = Vec::with_capacity(batch.len());
            for ((ex, p), notice_events) in batch.iter().zip(&prepared).zip(&notice_evs) {
                if let Some(existing) = by_source.get(&p.skey)? {
                    results.push(Committed::Duplicate(RecordId(id_of(&existing))));
                    continue;
                }
                records.insert(p.rkey, p.record.as_slice())?;
                chain::append(
                    &self.chain_key,
                    journal,
                    heads,
                    Append {
                        kind: Kind::Record,
                        key: &p.rkey,
                        sealed: &p.record,
                        patient: p.patient.as_deref(),
                        at_ms: ex.record.recorded_at_ms,
                    },
                )?;
                for e in notice_events {
                    events.insert(e.key.as_slice(), e.body.as_slice())?;
                    chain::append(&self.chain_key, journal, heads, e.append())?;
                }
                by_source.insert(p.skey.as_slice(), p.rkey)?;
                conversations.insert(ex.conversation.token.as_bytes(), p.conv.as_slice())?;
                for (k, v) in &p.native {
                    by_native.insert(k.as_slice(), v.as_slice())?;
                }
                for (k, v) in &p.blobs {
                    blobs.insert(k, v.as_slice())?;
                }
                for (k, v) in &p.outbox {
                    outbox.insert(k.as_slice(), v.as_slice())?;
                }
                for (k, v) in &p.review {
                    review.insert(k.as_slice(), v.as_slice())?;
                }
                if let (Some((_, _, code_hash, grant)), Some((lkey, lval, ckey))) = (&ex.link, &p.link) {
                    links.insert(lkey.as_slice(), lval.as_slice())?;
                    link_codes.remove(code_hash.as_bytes())?;
                    // A consent value that does not open fails the batch (the router answers
                    // unavailable), rather than being replaced by the new grant alone.
                    let in_force: Vec<ConsentGrant> = match consents.get(ckey)? {
                        Some(v) => self.unseal(t::CONSENTS, ckey, &v).map_err(TxError::Abort)?,
                        None => Vec::new(),
                    };
                    consents
                        .insert(ckey.as_slice(), self.seal(t::CONSENTS, ckey, &grant.clone().merged_into(in_force)))?;
                }
                for mark in &p.notices {
                    notices.insert(mark.as_slice(), now_ms().to_be_bytes())?;
                }
                results.push(Committed::New);
            }
            let new = results.iter().filter(|r| **r == Committed::New).count();
            if new > 0 {
                add_records(heads, new as i64)?;
            }
            Ok::<_, TxError<StoreError>>(results)
        });
        r.map_err(tx_store_err)
    }

    /// Stores malformed input in quarantine (sealed, chained), unless its source key was already
    /// seen.
    pub fn commit_quarantine(&self, q: &QuarantineV1) -> Result<Committed, StoreError> {
        let skey = self.source_key(&q.source);
        let qkey = q.id.0.to_be_bytes();
        let value = self.seal(t::QUARANTINE, &qkey, q);
        let r = self.transact(|tx| {
            let (quarantine, by_source, journal, heads) =
                (&tx.on(&self.quarantine), &tx.on(&self.by_source), &tx.on(&self.journal), &tx.on(&self.chain_heads));
            {
                if let Some(existing) = by_source.get(&skey)? {
                    return Err(abort(RecordId(id_of(&existing))));
                }
                quarantine.insert(qkey, value.as_slice())?;
                chain::append(
                    &self.chain_key,
                    journal,
                    heads,
                    Append { kind: Kind::Quarantine, key: &qkey, sealed: &value, patient: None, at_ms: q.at_ms },
                )?;
                by_source.insert(skey.as_slice(), qkey)?;
                Ok(())
            }
        });
        match r {
            Ok(()) => Ok(Committed::New),
            Err(TxError::Abort(id)) => Ok(Committed::Duplicate(id)),
            Err(TxError::Storage(e)) => Err(e.into()),
        }
    }

    /// Quarantined inputs, oldest first (for the privacy officer's export).
    pub fn quarantine_entries(&self) -> Result<Vec<QuarantineV1>, StoreError> {
        self.all_sealed(&self.quarantine)
    }

    /// Outbox keys of one account, FIFO order.
    pub fn outbox_keys(&self, account: &AccountId) -> Result<Vec<OutboxKey>, StoreError> {
        let prefix = join(&account.to_string(), "");
        // Every committed row, durable or not yet: a worker started while the router runs waits
        // for a flush before it sends what it found (see `outbox::Workers::start`).
        self.outbox
            .scan_prefix(&prefix)
            .map(|r| {
                let (k, _) = r?;
                Ok(OutboxKey { account: account.clone(), seq: id_of(&k[prefix.len()..]) })
            })
            .collect()
    }

    /// The outbox rows of one account committed after place `after` (0: all), in the order they
    /// were committed across every instance sharing the store, with the place of the last one
    /// (`after` if none): what the holder of an account's delivery lease reads, so it sends
    /// each recipient's rows in the order they were recorded (`outbox`). A row written again (a
    /// retry) keeps its place. On the embedded store key order is commit order, and the place
    /// is the row's sequence number.
    pub fn outbox_keys_after(&self, account: &AccountId, after: u64) -> Result<(Vec<OutboxKey>, u64), StoreError> {
        let prefix = join(&account.to_string(), "");
        let key_of = |k: &[u8]| OutboxKey { account: account.clone(), seq: id_of(&k[prefix.len()..]) };
        let placed: Vec<(u64, OutboxKey)> = match self.outbox.keys_in_commit_order(&prefix, after)? {
            Some(rows) => rows.iter().map(|(place, k)| (*place, key_of(k))).collect(),
            None => self.outbox_keys(account)?.into_iter().filter(|k| k.seq > after).map(|k| (k.seq, k)).collect(),
        };
        let last = placed.last().map_or(after, |(place, _)| *place);
        Ok((placed.into_iter().map(|(_, k)| k).collect(), last))
    }

    /// One outbox row.
    pub fn outbox_item(&self, key: &OutboxKey) -> Result<Option<OutboxItemV1>, StoreError> {
        self.get_sealed(&self.outbox, &key.encode())
    }

    /// Prepares an event for [`chain::append`]: its key, sealed body and patient.
    fn prepare_event(
        &self,
        record: RecordId,
        patient: Option<&str>,
        kind: &EventKind,
    ) -> Result<PreparedEvent, StoreError> {
        let key = self.event_key(record)?;
        let at_ms = now_ms();
        let body = self.seal(t::EVENTS, &key, &EventV1 { v: 1, at_ms, kind: kind.clone() });
        Ok(PreparedEvent { key, body, patient: patient.map(|p| self.patient_key(p)), at_ms })
    }

    /// Applies what a worker's attempts did to their outbox rows, all in one transaction (one
    /// per completed group of sends, not per send). Each update also appends its events to the record (chained); a sent
    /// delivery's channel ids are remembered so replies to it find the conversation.
    pub fn apply_outbox(&self, updates: &[OutboxUpdate]) -> Result<(), StoreError> {
        struct Prepared {
            okey: Vec<u8>,
            events: Vec<PreparedEvent>,
            row: Option<Vec<u8>>,
            native: Vec<(Vec<u8>, Vec<u8>)>,
            moved: Option<(Vec<u8>, Vec<u8>)>,
        }
        let mut prepared = Vec::with_capacity(updates.len());
        for u in updates {
            let item = u.item();
            let okey = u.key().encode();
            let mut events = Vec::new();
            for e in u.events() {
                events.push(self.prepare_event(item.delivery.record_id, item.patient_id.as_deref(), e)?);
            }
            let did = item.delivery.id.0.to_be_bytes().to_vec();
            let (row, native, moved) = match u {
                OutboxUpdate::Retry { item, .. } => (Some(self.seal(t::OUTBOX, &okey, item)), vec![], None),
                OutboxUpdate::Sent { item, native_ids, .. } => {
                    let kind = item.delivery.account.kind().as_str();
                    let nref = NativeRefV1 {
                        v: 1,
                        conversation: item.delivery.conversation.expose().clone(),
                        record: item.delivery.record_id,
                    };
                    let native = native_ids
                        .iter()
                        .map(|n| {
                            let k = self.native_key(kind, n);
                            let v = self.seal(t::BY_NATIVE, &k, &nref);
                            (k, v)
                        })
                        .collect();
                    (None, native, None)
                }
                OutboxUpdate::Dead { item, reason, .. } => {
                    let d = DeadLetterV1 { v: 1, at_ms: now_ms(), item: item.clone(), reason: reason.clone() };
                    let v = self.seal(t::DEAD, &did, &d);
                    (None, vec![], Some((did, v)))
                }
                OutboxUpdate::Review { item, rule, .. } => {
                    let r = ReviewItemV1 {
                        v: 1,
                        at_ms: now_ms(),
                        item: item.clone(),
                        rules: vec![rule.clone()],
                        reject_notice: None,
                    };
                    let v = self.seal(t::REVIEW, &did, &r);
                    (None, vec![], Some((did, v)))
                }
            };
            prepared.push(Prepared { okey, events, row, native, moved });
        }
        self.transact(|tx| {
            let (outbox, events, by_native, dead, review, journal, heads) = (
                &tx.on(&self.outbox),
                &tx.on(&self.events),
                &tx.on(&self.by_native),
                &tx.on(&self.dead),
                &tx.on(&self.review),
                &tx.on(&self.journal),
                &tx.on(&self.chain_heads),
            );
            // What the loop reads (each row, the chain heads), in one go (see `commit_exchanges`).
            let mut ahead: Vec<(&Tr, &[u8])> = vec![(&self.chain_heads, chain::GLOBAL_HEAD)];
            for p in &prepared {
                ahead.push((&self.outbox, p.okey.as_slice()));
                ahead.extend(p.events.iter().filter_map(|e| Some((&self.chain_heads, e.patient.as_deref()?))));
            }
            tx.prefetch(&ahead)?;
            for (u, p) in updates.iter().zip(&prepared) {
                for e in &p.events {
                    events.insert(e.key.as_slice(), e.body.as_slice())?;
                    chain::append(&self.chain_key, journal, heads, e.append())?;
                }
                // On a store several instances share, another instance may have sent this row
                // meanwhile (a live holder losing its delivery lease: `outbox_lease`): the attempt stays in the record, but a
                // row already gone is neither brought back for a retry nor moved.
                let present = outbox.remove(p.okey.as_slice())?.is_some();
                if let (OutboxUpdate::Retry { .. }, Some(row), true) = (u, &p.row, present) {
                    outbox.insert(p.okey.as_slice(), row.as_slice())?;
                }
                for (k, v) in &p.native {
                    by_native.insert(k.as_slice(), v.as_slice())?;
                }
                if let Some((k, v)) = &p.moved
                    && present
                {
                    match u {
                        OutboxUpdate::Dead { .. } => dead.insert(k.as_slice(), v.as_slice())?,
                        _ => review.insert(k.as_slice(), v.as_slice())?,
                    };
                }
            }
            Ok::<(), TxError<()>>(())
        })
        .map_err(tx_err)
    }

    /// Dead letters, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterV1>, StoreError> {
        self.all_sealed(&self.dead)
    }

    /// Deliveries held for review, oldest first.
    pub fn held(&self) -> Result<Vec<ReviewItemV1>, StoreError> {
        self.all_sealed(&self.review)
    }

    fn event_key(&self, record: RecordId) -> Result<Vec<u8>, StoreError> {
        let mut k = record.0.to_be_bytes().to_vec();
        k.extend_from_slice(&self.next_id()?.to_be_bytes());
        Ok(k)
    }

    /// The bytes of one attachment: from its blob (checked against the SHA-256 the record holds),
    /// or inline in a value written before blobs existed.
    fn attachment_data(&self, a: &AttachmentV1) -> Result<Vec<u8>, StoreError> {
        if let Some(d) = a.data() {
            return Ok(d.to_vec());
        }
        let Some(blob) = a.blob else { return Ok(Vec::new()) };
        let key = blob.key();
        let sealed = self.blobs.get(key)?.ok_or(StoreError::Decode {
            tree: t::BLOBS,
            reason: format!("the attachment {} of record {} is missing", blob.index, blob.record),
        })?;
        let data =
            self.keys.open(t::BLOBS, &key, &sealed).map_err(|source| StoreError::Sealed { tree: t::BLOBS, source })?;
        if !a.sha256.is_empty() && hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)) != a.sha256 {
            return Err(StoreError::Decode {
                tree: t::BLOBS,
                reason: format!("the attachment {} of record {} does not match its hash", blob.index, blob.record),
            });
        }
        Ok(data)
    }

    /// The contract's [`Delivery`] for a stored one, its attachments' bytes read from their
    /// blobs: what the outbox hands the channel.
    pub fn delivery_to_send(&self, d: &DeliveryV1) -> Result<carebridge_contract::Delivery, StoreError> {
        let attachments = d
            .attachments
            .iter()
            .map(|a| {
                Ok(carebridge_contract::Attachment {
                    filename: a.filename.clone(),
                    content_type: a.content_type.clone(),
                    data: carebridge_contract::Redacted::new(self.attachment_data(a)?),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(d.to_contract(attachments))
    }

    /// `record` with its attachments' bytes (base64) filled in from their blobs: what the privacy
    /// officer's `records show` and exports print.
    pub fn with_attachment_data(&self, mut record: RecordV1) -> Result<RecordV1, StoreError> {
        use base64::Engine as _;
        for a in &mut record.attachments {
            let data = self.attachment_data(a)?;
            a.data_base64 = Some(base64::engine::general_purpose::STANDARD.encode(&data));
            a.inline = Some(carebridge_contract::Redacted::new(data));
        }
        Ok(record)
    }

    /// Walks the journal and checks every link ([`chain::verify`]).
    /// Then reads every block of every other tree too, so a damaged table anywhere in the store
    /// fails the check (the chain covers only the patient's file, not the indexes and queues).
    ///
    /// Everything is read from one snapshot, so a daemon writing meanwhile (through the admin
    /// API) never shows as a break: a head read after later commits than the journal walk saw
    /// would look like a journal cut short.
    pub fn verify(&self) -> Result<chain::Report, StoreError> {
        let snapshot = self.db.snapshot()?;
        let report = chain::verify(&snapshot, &self.keys)?;
        for name in TREES.iter().filter(|n| !chain::CHAINED_TREES.contains(n)) {
            for entry in snapshot.tree(name)?.iter() {
                entry?;
            }
        }
        Ok(report)
    }

    /// The head of the global chain (sequence number, hash in hex), PHI-free: logged in the
    /// status line so that logs anchor the chain.
    pub fn chain_head(&self) -> Result<(u64, String), StoreError> {
        Ok(chain::global_head(&self.chain_heads)?)
    }

    /// Counts for the status line: O(1) for records (a counter), O(n) for the other trees, which
    /// stay small (they drain).
    pub fn stats(&self) -> Stats {
        let (chain_seq, chain_head) = self.chain_head().unwrap_or_default();
        Stats {
            chain_seq,
            chain_head,
            records: match self.chain_heads.get(RECORDS_COUNT) {
                Ok(Some(v)) => id_of(&v) as usize,
                _ => self.records.len().unwrap_or(0),
            },
            outbox_pending: self.outbox.len().unwrap_or(0),
            dead: self.dead.len().unwrap_or(0),
            quarantined: self.quarantine.len().unwrap_or(0),
            held: self.review.len().unwrap_or(0),
        }
    }
}

/// The number of records, kept beside the chain heads (every transaction that adds or purges
/// records already holds that tree), because counting a tree walks it.
const RECORDS_COUNT: &[u8] = b"records_count";

fn add_records(heads: &engine::TxTree<'_, '_>, delta: i64) -> Result<(), EngineError> {
    let now = heads.get(RECORDS_COUNT)?.map(|v| id_of(&v)).unwrap_or(0);
    heads.insert(RECORDS_COUNT, now.saturating_add_signed(delta).to_be_bytes())?;
    Ok(())
}

/// An event ready to write: its key, sealed body, patient (blinded) and time.
pub(crate) struct PreparedEvent {
    key: Vec<u8>,
    body: Vec<u8>,
    patient: Option<Vec<u8>>,
    at_ms: u64,
}

impl PreparedEvent {
    fn append(&self) -> Append<'_> {
        Append {
            kind: Kind::Event,
            key: &self.key,
            sealed: &self.body,
            patient: self.patient.as_deref(),
            at_ms: self.at_ms,
        }
    }
}

/// A transaction that aborted with a store error (a stored value that did not open).
fn tx_store_err(e: TxError<StoreError>) -> StoreError {
    match e {
        TxError::Storage(e) => StoreError::Engine(e),
        TxError::Abort(e) => e,
    }
}

fn tx_err(e: TxError<()>) -> StoreError {
    match e {
        TxError::Storage(e) => StoreError::Engine(e),
        TxError::Abort(()) => StoreError::Aborted("a value it needed was missing"),
    }
}
