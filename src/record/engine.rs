//! The store's boundary with its storage engine: what the record store needs of one, as two
//! small traits ([`Backend`], [`TxOps`]), and the handles the store works with ([`Engine`],
//! [`Tr`], [`Tx`]). No engine type crosses it: keys and values are bytes, trees are named, and
//! a transaction is a closure over a [`Tx`]. The embedded backend is fjall
//! ([`super::fjall_backend`]); a second one (PostgreSQL, issue #18) implements the same two
//! traits, and the store's tests (`src/record/tests.rs`) run against every backend they list.
//!
//! **What a backend promises.** Transactions take turns and are atomic: reads inside one see its
//! own writes, and its writes become visible all together when it commits, or not at all.
//! Committed writes survive a crash of the process; [`Backend::persist`] makes every committed
//! transaction durable (group commit: the flusher calls it once for everything waiting), and
//! only then may receipts go out (a server backend's commit is durable when it returns, so its
//! persist has nothing to do). A backend reports damage as [`EngineError::Corrupt`], never by
//! returning less than it holds.

use std::cell::{Cell, RefCell};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

/// Bytes read from a backend.
pub type Bytes = Vec<u8>;

/// The engine's directory inside the data directory.
pub const ENGINE_DIR: &str = "store";

/// The witness of the last durable commit, beside [`ENGINE_DIR`] (see `fjall_backend`).
pub const WITNESS_FILE: &str = "store.durable";

/// Why the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The operating system refused a read or write (disk full, `EIO`): the store may work again
    /// once the cause is gone.
    #[error("store I/O failed: {0}")]
    Io(std::io::Error),
    /// A write failed earlier in this process; fjall takes no more writes until it is reopened.
    #[error(
        "an earlier write to the store failed (disk full or I/O error); it takes no writes until carebridge restarts"
    )]
    Poisoned,
    /// The store's files are damaged: a checksum failed, or the store holds less than was made
    /// durable. Nothing is cut away to make it open.
    #[error("the record store's files are damaged: {0}; restore the data directory from a backup (docs/operations.md)")]
    Corrupt(String),
    /// Another process holds the engine's lock.
    #[error("the record store is locked by another process")]
    Locked,
    /// The process has no file descriptor left (`EMFILE`, `ENFILE`): not the disk's fault, so not
    /// exit 74 (which tells the operator to free space), but an exhausted limit (exit 71: raise
    /// `LimitNOFILE`, or find what holds the descriptors). A restart clears it.
    #[error("the process has run out of file descriptors (too many open files): {0}")]
    Descriptors(std::io::Error),
    /// A database server (the PostgreSQL backend) cannot be reached, or refused the operation:
    /// not fatal; the next operation tries again (inbound answers "unavailable" meanwhile).
    /// The reason names the failure, never a value or the connection string.
    #[error("the record store's database is unavailable: {0}")]
    Unavailable(String),
    /// The database's schema is newer than this binary's.
    #[error("the record store's database schema version {found} is newer than this program's {supported}")]
    Newer {
        /// In the database.
        found: u32,
        /// Known here.
        supported: u32,
    },
}

impl EngineError {
    /// Disk full or an I/O error: worth a restart once the cause is gone (exit 74).
    pub fn is_io(&self) -> bool {
        matches!(self, EngineError::Io(_) | EngineError::Poisoned)
    }
}

fn io_is_corruption(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof)
}

/// `EMFILE` (this process's limit) or `ENFILE` (the system's): "Too many open files".
pub fn io_is_fd_exhaustion(e: &std::io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(e.raw_os_error(), Some(ENFILE | EMFILE))
}

impl From<std::io::Error> for EngineError {
    fn from(e: std::io::Error) -> Self {
        if io_is_corruption(&e) {
            EngineError::Corrupt(format!("{e}"))
        } else if io_is_fd_exhaustion(&e) {
            EngineError::Descriptors(e)
        } else {
            EngineError::Io(e)
        }
    }
}

/// What a transaction's closure may fail with: its own reason (the transaction is rolled back and
/// the reason returned), or the engine's.
#[derive(Debug)]
pub enum TxError<E> {
    /// The closure gave up; nothing was written.
    Abort(E),
    /// The engine failed.
    Storage(EngineError),
}

impl<E> From<EngineError> for TxError<E> {
    fn from(e: EngineError) -> Self {
        TxError::Storage(e)
    }
}

/// A tree's number in its backend (its position in the backend's fixed list of trees).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeId(pub usize);

/// Which entries of a tree a scan returns, in key order.
#[derive(Clone, Debug)]
pub enum Scan {
    /// Every entry.
    All,
    /// The entries whose keys start with these bytes.
    Prefix(Vec<u8>),
    /// The entries between two bounds.
    Range(Bound<Vec<u8>>, Bound<Vec<u8>>),
}

/// Key-value pairs in key order.
pub type Entries<'a> = Box<dyn DoubleEndedIterator<Item = Result<(Bytes, Bytes), EngineError>> + 'a>;

/// What the record store needs of a storage engine.
pub trait Backend: Send + Sync {
    /// The number of tree `name` (one of the store's fixed trees, or `meta`).
    fn tree(&self, name: &str) -> Result<TreeId, EngineError>;
    /// The newest committed value of `key`.
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError>;
    /// Entries of `tree`, in key order, as committed.
    fn scan(&self, tree: TreeId, which: Scan) -> Entries<'_>;
    /// Runs `body` in one transaction; commits its writes if it returns `true` (and wrote), rolls
    /// them back otherwise.
    fn transact(&self, body: &mut dyn FnMut(&mut dyn TxOps) -> bool) -> Result<(), EngineError>;
    /// Makes every committed transaction durable.
    fn persist(&self) -> Result<(), EngineError>;
    /// The last persist, on close (safe against a power loss too).
    fn close(&self) -> Result<(), EngineError>;
    /// Bytes on disk.
    fn disk_space(&self) -> u64;
    /// A read-only view of everything committed so far, fixed: later commits do not show in it
    /// (what `records verify` walks while the daemon writes).
    fn snapshot(&self) -> Result<Arc<dyn Backend>, EngineError>;
    /// A block of ids no other instance sharing this backend will hand out, or `None` when ids
    /// are this process's alone (the embedded backend: the store keeps a dense counter in
    /// `meta`, see `Store::transact`).
    fn reserve_ids(&self) -> Result<Option<std::ops::Range<u64>>, EngineError> {
        Ok(None)
    }
    /// Whether the backend answers now (a server backend: one round trip; the embedded one has
    /// nothing to reach, its writability is the flusher's to tell).
    fn probe(&self) -> Result<(), EngineError> {
        Ok(())
    }
    /// The keys under `prefix` of `tree` first written after place `after` in the one order of
    /// commits across instances, each with its place, in that order (a row written again keeps
    /// its place). `None`: the backend keeps no such order, and key order is commit order (the
    /// embedded store's keys come from its one dense counter).
    fn keys_in_commit_order(
        &self,
        _tree: TreeId,
        _prefix: &[u8],
        _after: u64,
    ) -> Result<Option<Vec<(u64, Bytes)>>, EngineError> {
        Ok(None)
    }
    /// With [`Backend::reserve_ids`]: an id above every id any instance was handed (`None`: the
    /// store's own counter knows).
    fn ids_used(&self) -> Result<Option<u64>, EngineError> {
        Ok(None)
    }
    /// With [`Backend::reserve_ids`]: makes every later block start above `used` (a store copied
    /// in keeps its ids, and new ones must not collide with them).
    fn raise_ids(&self, _used: u64) -> Result<(), EngineError> {
        Ok(())
    }
}

/// One transaction's reads and writes (see [`Backend::transact`]).
pub trait TxOps {
    /// The value of `key` as of this transaction.
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError>;
    /// Writes `value` under `key`.
    fn insert(&mut self, tree: TreeId, key: &[u8], value: &[u8]);
    /// Removes `key`, returning what it held.
    fn remove(&mut self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError>;
    /// The entries under `prefix` as of this transaction, in key order.
    fn scan_prefix(&self, tree: TreeId, prefix: &[u8]) -> Result<Vec<(Bytes, Bytes)>, EngineError>;
    /// A hint that the transaction is about to read these keys: a server backend reads them in
    /// one round trip now instead of one each later (the embedded one reads from memory anyway).
    fn prefetch(&mut self, _keys: &[(TreeId, &[u8])]) -> Result<(), EngineError> {
        Ok(())
    }
}

/// A named tree. Its name is also the sealing context of its values.
#[derive(Clone)]
pub struct Tr {
    pub(crate) name: &'static str,
    id: TreeId,
    backend: Arc<dyn Backend>,
}

impl Tr {
    /// The newest committed value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, EngineError> {
        self.backend.get(self.id, key.as_ref())
    }

    /// Whether `key` holds a value.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, EngineError> {
        Ok(self.get(key)?.is_some())
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> Entries<'_> {
        self.backend.scan(self.id, Scan::All)
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Entries<'_> {
        self.backend.scan(self.id, Scan::Prefix(prefix.as_ref().to_vec()))
    }

    /// The entries from `from` on, in key order.
    pub fn range_from(&self, from: impl AsRef<[u8]>) -> Entries<'_> {
        self.backend.scan(self.id, Scan::Range(Bound::Included(from.as_ref().to_vec()), Bound::Unbounded))
    }

    /// See [`Backend::keys_in_commit_order`].
    pub fn keys_in_commit_order(
        &self,
        prefix: impl AsRef<[u8]>,
        after: u64,
    ) -> Result<Option<Vec<(u64, Bytes)>>, EngineError> {
        self.backend.keys_in_commit_order(self.id, prefix.as_ref(), after)
    }

    /// How many entries the tree holds (walks it: for small trees and audits).
    pub fn len(&self) -> Result<usize, EngineError> {
        let mut n = 0;
        for e in self.iter() {
            e?;
            n += 1;
        }
        Ok(n)
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> Result<bool, EngineError> {
        Ok(self.iter().next().transpose()?.is_none())
    }
}

/// A transaction in progress (see [`Engine::transact`]).
pub struct Tx<'a> {
    ops: RefCell<&'a mut dyn TxOps>,
    wrote: Cell<bool>,
}

impl<'a> Tx<'a> {
    /// The transaction's view of one tree.
    pub fn on<'t>(&'t self, tr: &'t Tr) -> TxTree<'t, 'a> {
        TxTree { tx: self, tr }
    }

    /// Reads these keys ahead, together (see [`TxOps::prefetch`]): later reads of them cost no
    /// round trip on a server backend.
    pub fn prefetch(&self, keys: &[(&Tr, &[u8])]) -> Result<(), EngineError> {
        let keys: Vec<(TreeId, &[u8])> = keys.iter().map(|(tr, k)| (tr.id, *k)).collect();
        self.ops.borrow_mut().prefetch(&keys)
    }
}

/// One tree inside a transaction: reads see the transaction's own writes.
pub struct TxTree<'t, 'a> {
    tx: &'t Tx<'a>,
    tr: &'t Tr,
}

impl TxTree<'_, '_> {
    /// The value of `key` as of this transaction.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, EngineError> {
        self.tx.ops.borrow().get(self.tr.id, key.as_ref())
    }

    /// Writes `value` under `key`.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), EngineError> {
        self.tx.ops.borrow_mut().insert(self.tr.id, key.as_ref(), value.as_ref());
        self.tx.wrote.set(true);
        Ok(())
    }

    /// Removes `key`, returning what it held.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, EngineError> {
        let old = self.tx.ops.borrow_mut().remove(self.tr.id, key.as_ref())?;
        self.tx.wrote.set(true);
        Ok(old)
    }

    /// The entries under `prefix` as of this transaction, in key order (materialised).
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Vec<(Bytes, Bytes)>, EngineError> {
        self.tx.ops.borrow().scan_prefix(self.tr.id, prefix.as_ref())
    }
}

/// The store's handle on its backend. Shared by every clone of the store.
pub struct Engine {
    backend: Arc<dyn Backend>,
    meta: Tr,
}

impl Engine {
    /// Opens (or creates) the embedded backend (fjall) in `<data_dir>/store` with a block cache of
    /// `cache_mb` MiB.
    pub fn open(data_dir: &Path, cache_mb: u32) -> Result<Engine, EngineError> {
        Engine::over(Arc::new(super::fjall_backend::FjallBackend::open(data_dir, cache_mb)?))
    }

    /// Connects to the PostgreSQL backend and brings its schema up to date.
    pub fn open_postgres(settings: &super::pg_backend::PgSettings) -> Result<Engine, EngineError> {
        Engine::over(Arc::new(super::pg_backend::PgBackend::open(settings)?))
    }

    /// A block of ids unique across instances, or `None` (see [`Backend::reserve_ids`]).
    pub fn reserve_ids(&self) -> Result<Option<std::ops::Range<u64>>, EngineError> {
        self.backend.reserve_ids()
    }

    /// See [`Backend::ids_used`].
    pub fn ids_used(&self) -> Result<Option<u64>, EngineError> {
        self.backend.ids_used()
    }

    /// See [`Backend::probe`].
    pub fn probe(&self) -> Result<(), EngineError> {
        self.backend.probe()
    }

    /// See [`Backend::raise_ids`].
    pub fn raise_ids(&self, used: u64) -> Result<(), EngineError> {
        self.backend.raise_ids(used)
    }

    /// The store's handle on `backend`.
    pub fn over(backend: Arc<dyn Backend>) -> Result<Engine, EngineError> {
        let meta = Tr { name: "meta", id: backend.tree("meta")?, backend: backend.clone() };
        Ok(Engine { backend, meta })
    }

    /// The tree `name`.
    pub fn tree(&self, name: &'static str) -> Result<Tr, EngineError> {
        Ok(Tr { name, id: self.backend.tree(name)?, backend: self.backend.clone() })
    }

    /// Runs `f` in one transaction: its reads see its own writes, and if it returns `Ok` its
    /// writes are committed as one atomic batch (none if it aborts). Transactions take turns.
    /// Durable after the next [`Engine::persist`].
    pub fn transact<R, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<R, TxError<E>>) -> Result<R, TxError<E>> {
        let mut f = Some(f);
        let mut out: Option<Result<R, TxError<E>>> = None;
        self.backend.transact(&mut |ops| {
            let Some(f) = f.take() else { return false };
            let tx = Tx { ops: RefCell::new(ops), wrote: Cell::new(false) };
            let r = f(&tx);
            let commit = r.is_ok() && tx.wrote.get();
            out = Some(r);
            commit
        })?;
        out.unwrap_or_else(|| Err(TxError::Storage(EngineError::Poisoned)))
    }

    /// Writes one value outside any other transaction (the store's own bookkeeping in `meta`).
    pub fn put_meta(&self, key: &[u8], value: &[u8]) -> Result<(), TxError<()>> {
        self.transact(|tx| {
            tx.on(&self.meta).insert(key, value)?;
            Ok(())
        })
    }

    /// The `meta` tree (for writes inside a transaction).
    pub fn meta_tree(&self) -> &Tr {
        &self.meta
    }

    /// A value of `meta`.
    pub fn meta(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        self.meta.get(key)
    }

    /// Makes every committed transaction durable. Receipts may go out once it returns.
    pub fn persist(&self) -> Result<(), EngineError> {
        self.backend.persist()
    }

    /// The last persist, on close.
    pub fn close(&self) -> Result<(), EngineError> {
        self.backend.close()
    }

    /// Bytes on disk.
    pub fn disk_space(&self) -> u64 {
        self.backend.disk_space()
    }

    /// A read-only handle on everything committed so far, as of now (see [`Backend::snapshot`]).
    pub fn snapshot(&self) -> Result<Engine, EngineError> {
        Engine::over(self.backend.snapshot()?)
    }
}

/// A big-endian `u64` (0 if the bytes are not 8 long).
pub fn id_of(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}
