//! The embedded engine under the record store: fjall 3 (an LSM tree, maintained), used as it
//! comes, with nothing of ours in front of it.
//!
//! **Why fjall** (issue #14, figures in `docs/records.md`): sled 0.34 (beta, unmaintained) cost a
//! third of the daemon's CPU, grew without bound in memory and on disk, and left a store that
//! would not open after a full disk; our write-ahead log in front of it wrote every byte twice.
//! fjall writes each batch once to its journal and later into sorted tables, checksums both, and
//! is crash-consistent by itself.
//!
//! **Writes.** [`Engine::transact`] runs a closure in one of fjall's single-writer transactions
//! (reads see the transaction's own writes; writers take turns, so read-modify-write such as the
//! chain's heads needs no lock of ours) and commits it as one atomic batch, handed to the OS at
//! once (a crash of the process loses nothing committed). [`Engine::persist`] makes everything
//! committed durable with one `fdatasync` (group commit: the flusher calls it once for every
//! batch waiting), and only then may receipts go out.
//!
//! **Nothing lost quietly.** fjall cuts a journal at its first undecodable batch, which is right
//! for a torn tail after a crash but would also hide a flipped byte in the middle. So every
//! transaction also bumps a commit counter stored in the same batch, and after each persist the
//! counter is written to a small *witness* file beside the engine ([`WITNESS_FILE`]). Opening
//! compares the two: a store that holds fewer commits than were made durable was cut, and is
//! refused with [`EngineError::Corrupt`] instead of opening without them.

use fjall::{KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes read from the engine (reference-counted, cheap to clone).
pub type Bytes = fjall::Slice;

/// The engine's directory inside the data directory.
pub const ENGINE_DIR: &str = "store";

/// The witness of the last durable commit, beside [`ENGINE_DIR`]: 8 bytes of the commit counter
/// and a CRC-32 of them.
pub const WITNESS_FILE: &str = "store.durable";

/// Where the commit counter lives, in the `meta` tree.
const COMMITS: &[u8] = b"commits";

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

impl From<fjall::Error> for EngineError {
    fn from(e: fjall::Error) -> Self {
        match e {
            fjall::Error::Io(io) => io.into(),
            fjall::Error::Storage(fjall::LsmError::Io(io)) => io.into(),
            fjall::Error::Poisoned => EngineError::Poisoned,
            fjall::Error::Locked => EngineError::Locked,
            fjall::Error::JournalRecovery(r) => EngineError::Corrupt(format!("its journal fails its check ({r:?})")),
            fjall::Error::Storage(fjall::LsmError::ChecksumMismatch { .. }) => {
                EngineError::Corrupt("a block of its tables fails its checksum".into())
            }
            other => EngineError::Corrupt(format!("the engine cannot decode its files ({other:?})")),
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

impl<E> From<fjall::Error> for TxError<E> {
    fn from(e: fjall::Error) -> Self {
        TxError::Storage(e.into())
    }
}

/// A named tree (a fjall keyspace). Its name is also the sealing context of its values.
#[derive(Clone)]
pub struct Tr {
    pub(crate) name: &'static str,
    ks: SingleWriterTxKeyspace,
}

/// Key-value pairs in key order, from a tree or a transaction.
pub struct Entries(fjall::Iter);

impl Iterator for Entries {
    type Item = Result<(Bytes, Bytes), EngineError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|g| g.into_inner().map_err(EngineError::from))
    }
}

impl DoubleEndedIterator for Entries {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|g| g.into_inner().map_err(EngineError::from))
    }
}

impl Tr {
    /// The newest committed value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, EngineError> {
        Ok(self.ks.get(key)?)
    }

    /// Whether `key` holds a value.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, EngineError> {
        Ok(self.ks.contains_key(key)?)
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> Entries {
        Entries(self.ks.inner().iter())
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Entries {
        Entries(self.ks.inner().prefix(prefix))
    }

    /// The entries in a key range, in key order.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Entries {
        Entries(self.ks.inner().range(range))
    }

    /// How many entries the tree holds (walks it: for small trees and audits).
    pub fn len(&self) -> Result<usize, EngineError> {
        Ok(self.ks.inner().len()?)
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> Result<bool, EngineError> {
        Ok(self.ks.inner().is_empty()?)
    }
}

/// A transaction in progress (see [`Engine::transact`]).
pub struct Tx<'a> {
    wtx: RefCell<fjall::SingleWriterWriteTx<'a>>,
    wrote: std::cell::Cell<bool>,
}

impl<'a> Tx<'a> {
    /// The transaction's view of one tree.
    pub fn on<'t>(&'t self, tr: &'t Tr) -> TxTree<'t, 'a> {
        TxTree { tx: self, tr }
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
        Ok(self.tx.wtx.borrow().get(self.tr.ks.inner(), key)?)
    }

    /// Writes `value` under `key`.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), EngineError> {
        self.tx.wtx.borrow_mut().insert(&self.tr.ks, key.as_ref(), value.as_ref());
        self.tx.wrote.set(true);
        Ok(())
    }

    /// Removes `key`, returning what it held.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, EngineError> {
        let old = self.tx.wtx.borrow_mut().take(&self.tr.ks, key.as_ref())?;
        self.tx.wrote.set(true);
        Ok(old)
    }

    /// The entries under `prefix` as of this transaction, in key order (materialised).
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Vec<(Bytes, Bytes)>, EngineError> {
        Entries(self.tx.wtx.borrow().prefix(self.tr.ks.inner(), prefix)).collect()
    }
}

/// The witness file: the commit counter as of the last durable persist.
struct Witness {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl Witness {
    fn read(path: &Path) -> Result<Option<u64>, EngineError> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_end(&mut bytes).map_err(EngineError::from)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if bytes.len() != 12 || crc32fast::hash(&bytes[..8]).to_be_bytes() != bytes[8..12] {
            return Err(EngineError::Corrupt(format!("{} is damaged", path.display())));
        }
        Ok(Some(u64::from_be_bytes(bytes[..8].try_into().unwrap_or([0; 8]))))
    }

    /// Overwrites the witness in place. Not synced: written after the engine's own sync, it only
    /// needs to survive a crash of the process (the page cache does); after a power loss it may
    /// lag, never lead.
    fn write(&self, commits: u64) -> Result<(), EngineError> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(OpenOptions::new().create(true).truncate(false).write(true).open(&self.path)?);
        }
        let file = f.as_mut().ok_or(EngineError::Poisoned)?;
        let mut buf = [0u8; 12];
        buf[..8].copy_from_slice(&commits.to_be_bytes());
        let crc = crc32fast::hash(&buf[..8]);
        buf[8..].copy_from_slice(&crc.to_be_bytes());
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&buf)?;
        Ok(())
    }

    fn sync(&self) -> Result<(), EngineError> {
        if let Some(f) = self.file.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f.sync_all()?;
        }
        Ok(())
    }
}

/// The engine of one store. Shared by every clone of the store.
pub struct Engine {
    db: SingleWriterTxDatabase,
    meta: Tr,
    /// Commits made (each transaction that wrote), as stored in `meta`.
    commits: AtomicU64,
    /// The counter as of the last persist: the witness holds it.
    durable: AtomicU64,
    /// One persist at a time, so the witness never goes backwards.
    persisting: Mutex<()>,
    /// Set when a commit failed: fjall is poisoned from then on, and the next persist says so
    /// (the flusher then ends the process; see `flusher`).
    failed: std::sync::atomic::AtomicBool,
    witness: Witness,
}

impl Engine {
    /// Opens (or creates) the engine in `<data_dir>/store` with a block cache of `cache_mb` MiB,
    /// and checks it holds every commit the witness says was made durable.
    pub fn open(data_dir: &Path, cache_mb: u32) -> Result<Engine, EngineError> {
        let path = data_dir.join(ENGINE_DIR);
        let witness_path = data_dir.join(WITNESS_FILE);
        let witnessed = Witness::read(&witness_path)?;
        if witnessed.is_some() && !path.exists() {
            return Err(EngineError::Corrupt(format!(
                "{} records durable commits but the engine's directory {} is missing",
                witness_path.display(),
                path.display()
            )));
        }
        if !path.exists() {
            // A new engine: make its directory's entry durable before anything is written in it.
            std::fs::create_dir_all(&path)?;
            File::open(data_dir).and_then(|d| d.sync_all())?;
        }
        let builder = SingleWriterTxDatabase::builder(&path)
            .cache_size(u64::from(cache_mb) << 20)
            // Two background workers (flushes, compactions): the machine's other cores are the
            // router's and the adapters'.
            .worker_threads(2)
            // The journal is the only copy of what memtables hold until they are flushed: keep
            // it at fjall's smallest bound so it is rotated (and its space returned) early.
            .max_journaling_size(64 << 20);
        // fjall asserts on some damaged journal entries while recovering (seen with single
        // flipped bytes: `tests/record_store.rs`); a damaged store must be a clear refusal, not
        // a crash.
        let db = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.open()))
            .map_err(|_| {
                EngineError::Corrupt(format!(
                    "its journal in {} cannot be read back (fjall stopped on it)",
                    path.display()
                ))
            })?
            .map_err(|e| match EngineError::from(e) {
                // At open, a missing file is one the engine's own records name: damage, not a
                // passing I/O condition a restart would cure.
                EngineError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                    EngineError::Corrupt(format!("a file it names is missing ({io})"))
                }
                // `EINVAL` at open comes from a file's own content (seen with a keyspace's
                // file cut to nothing: `tests/record_store.rs`), not from the disk.
                EngineError::Io(io)
                    if io.kind() == std::io::ErrorKind::InvalidInput || io.raw_os_error() == Some(22) =>
                {
                    EngineError::Corrupt(format!("a file it names cannot be read back ({io})"))
                }
                e => e,
            })?;
        let meta = Tr { name: "meta", ks: db.keyspace("meta", tree_options)? };
        let commits = meta.get(COMMITS)?.map(|v| id_of(&v)).unwrap_or(0);
        if let Some(w) = witnessed
            && commits < w
        {
            return Err(EngineError::Corrupt(format!(
                "it holds {commits} commits but {w} were made durable, so part of its journal is unreadable \
                 (carebridge does not cut it to fit)"
            )));
        }
        // What recovery replayed from the journal is in the OS's cache, not necessarily on disk:
        // make it durable before anything is sent on its strength.
        db.persist(PersistMode::SyncAll)?;
        let witness = Witness { path: witness_path, file: Mutex::new(None) };
        witness.write(commits)?;
        witness.sync()?;
        Ok(Engine {
            db,
            meta,
            commits: AtomicU64::new(commits),
            durable: AtomicU64::new(commits),
            persisting: Mutex::new(()),
            failed: Default::default(),
            witness,
        })
    }

    /// The tree `name`, created if new.
    pub fn tree(&self, name: &'static str) -> Result<Tr, EngineError> {
        Ok(Tr { name, ks: self.db.keyspace(name, tree_options)? })
    }

    /// Runs `f` in one transaction: its reads see its own writes, and if it returns `Ok` its writes
    /// are committed as one atomic batch (none if it aborts). Transactions take turns. Durable
    /// after the next [`Engine::persist`].
    pub fn transact<R, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<R, TxError<E>>) -> Result<R, TxError<E>> {
        let tx = Tx { wtx: RefCell::new(self.db.write_tx()), wrote: std::cell::Cell::new(false) };
        let r = f(&tx)?;
        if tx.wrote.get() {
            let mut wtx = tx.wtx.into_inner();
            let n = self.commits.load(Ordering::Acquire) + 1;
            wtx.insert(&self.meta.ks, COMMITS, n.to_be_bytes());
            if let Err(e) = wtx.commit() {
                self.failed.store(true, Ordering::Release);
                return Err(e.into());
            }
            self.commits.store(n, Ordering::Release);
        }
        Ok(r)
    }

    /// Writes one value outside any transaction (the store's own bookkeeping in `meta`).
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

    /// Makes every committed transaction durable (one `fdatasync` for all of them), then records
    /// that in the witness. Receipts may go out once it returns.
    pub fn persist(&self) -> Result<(), EngineError> {
        let _one = self.persisting.lock().unwrap_or_else(|e| e.into_inner());
        if self.failed.load(Ordering::Acquire) {
            return Err(EngineError::Poisoned);
        }
        let commits = self.commits.load(Ordering::Acquire);
        if commits == self.durable.load(Ordering::Acquire) {
            return Ok(());
        }
        self.db.persist(PersistMode::SyncData)?;
        self.witness.write(commits)?;
        self.durable.store(commits, Ordering::Release);
        Ok(())
    }

    /// The last [`Engine::persist`], made crash-proof for a power loss too (on close).
    pub fn close(&self) -> Result<(), EngineError> {
        self.persist()?;
        self.db.persist(PersistMode::SyncAll)?;
        self.witness.sync()
    }

    /// Bytes on disk (tables, journals).
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

/// How every tree is created. Memtables of at most 8 MiB (fjall's default is 64 MiB per tree):
/// with eighteen trees the default would let memory grow by hundreds of megabytes before the
/// first flush, against issue #14's target of under 100 MB after 250k messages.
fn tree_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
}

/// See [`tree_options`].
const MEMTABLE_BYTES: u64 = 8 << 20;

/// A big-endian `u64` (0 if the bytes are not 8 long).
pub fn id_of(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}
