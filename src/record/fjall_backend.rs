//! The embedded backend of the record store: fjall 3 (an LSM tree, maintained), used as it
//! comes, with nothing of ours in front of it (the boundary it implements: [`super::engine`]).
//!
//! **Why fjall** (issue #14, figures in `docs/records.md`): sled 0.34 (beta, unmaintained) cost a
//! third of the daemon's CPU, grew without bound in memory and on disk, and left a store that
//! would not open after a full disk; our write-ahead log in front of it wrote every byte twice.
//! fjall writes each batch once to its journal and later into sorted tables, checksums both, and
//! is crash-consistent by itself.
//!
//! **Writes.** A transaction is one of fjall's single-writer transactions (reads see its own
//! writes; writers take turns, so read-modify-write such as the chain's heads needs no lock of
//! ours), committed as one atomic batch and handed to the OS at once (a crash of the process
//! loses nothing committed). `persist` makes everything committed durable with one
//! `fdatasync`.
//!
//! **Nothing lost quietly.** fjall cuts a journal at its first undecodable batch, which is right
//! for a torn tail after a crash but would also hide a flipped byte in the middle. So every
//! transaction also bumps a commit counter stored in the same batch, and after each persist the
//! counter is written to a small *witness* file beside the engine ([`WITNESS_FILE`]). Opening
//! compares the two: a store that holds fewer commits than were made durable was cut, and is
//! refused with [`EngineError::Corrupt`] instead of opening without them.

use super::engine::{Backend, Bytes, ENGINE_DIR, EngineError, Entries, Scan, TreeId, TxOps, WITNESS_FILE, id_of};
use fjall::{KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Where the commit counter lives, in the `meta` tree.
const COMMITS: &[u8] = b"commits";

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

/// The fjall engine of one store.
pub struct FjallBackend {
    db: SingleWriterTxDatabase,
    trees: Vec<(&'static str, SingleWriterTxKeyspace)>,
    meta: SingleWriterTxKeyspace,
    /// Commits made (each transaction that wrote), as stored in `meta`.
    commits: AtomicU64,
    /// The counter as of the last persist: the witness holds it.
    durable: AtomicU64,
    /// One persist at a time, so the witness never goes backwards.
    persisting: Mutex<()>,
    /// Set when a commit failed: fjall is poisoned from then on, and the next persist says so
    /// (the flusher then stops the daemon; see `flusher`).
    failed: AtomicBool,
    witness: Witness,
}

impl FjallBackend {
    /// Opens (or creates) the engine in `<data_dir>/store` with a block cache of `cache_mb` MiB,
    /// and checks it holds every commit the witness says was made durable.
    pub fn open(data_dir: &Path, cache_mb: u32) -> Result<FjallBackend, EngineError> {
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
            // One background worker (flushes, then compactions). With two, fjall 3.1's first
            // worker hands every compaction it receives back to the queue while the second one
            // compacts, and so spins: perf showed that loop (`worker_tick`, `flume` sends) as 40%
            // of fjall's CPU and 11% of the daemon's under load.
            .worker_threads(1)
            // The journal is the only copy of what memtables hold until they are flushed: keep
            // it at fjall's smallest bound so it is rotated (and its space returned) early.
            .max_journaling_size(64 << 20);
        // fjall asserts on some damaged journal entries while recovering (seen with single
        // flipped bytes: `tests/e2e/record_store.rs`); a damaged store must be a clear refusal, not
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
                // file cut to nothing: `tests/e2e/record_store.rs`), not from the disk.
                EngineError::Io(io)
                    if io.kind() == std::io::ErrorKind::InvalidInput || io.raw_os_error() == Some(22) =>
                {
                    EngineError::Corrupt(format!("a file it names cannot be read back ({io})"))
                }
                e => e,
            })?;
        // Every tree the store has, and its `meta`, opened once: a tree's id is its position here.
        let mut trees = Vec::with_capacity(super::TREES.len() + 1);
        for name in std::iter::once("meta").chain(super::TREES) {
            trees.push((name, db.keyspace(name, tree_options)?));
        }
        let meta = trees[0].1.clone();
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
        Ok(FjallBackend {
            db,
            trees,
            meta,
            commits: AtomicU64::new(commits),
            durable: AtomicU64::new(commits),
            persisting: Mutex::new(()),
            failed: Default::default(),
            witness,
        })
    }

    fn ks(&self, tree: TreeId) -> &SingleWriterTxKeyspace {
        // Ids come only from `tree`, which returns positions in this fixed list.
        keyspace(&self.trees, tree)
    }
}

/// A tree's id: its position in the fixed list every handle (the engine, its snapshots) shares.
fn tree_id(trees: &[(&'static str, SingleWriterTxKeyspace)], name: &str) -> Result<TreeId, EngineError> {
    trees
        .iter()
        .position(|(n, _)| *n == name)
        .map(TreeId)
        .ok_or_else(|| EngineError::Corrupt(format!("the store has no tree `{name}`")))
}

/// The keyspace of a tree id (ids come only from [`tree_id`] over the same list).
fn keyspace<'a>(trees: &'a [(&'static str, SingleWriterTxKeyspace)], tree: TreeId) -> &'a SingleWriterTxKeyspace {
    &trees[tree.0.min(trees.len() - 1)].1
}

fn entries(it: fjall::Iter) -> Entries<'static> {
    Box::new(it.map(|g| g.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(EngineError::from)))
}

impl Backend for FjallBackend {
    fn tree(&self, name: &str) -> Result<TreeId, EngineError> {
        tree_id(&self.trees, name)
    }

    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        Ok(self.ks(tree).get(key)?.map(|v| v.to_vec()))
    }

    fn scan(&self, tree: TreeId, which: Scan) -> Entries<'_> {
        let ks = self.ks(tree).inner();
        match which {
            Scan::All => entries(ks.iter()),
            Scan::Prefix(p) => entries(ks.prefix(p)),
            Scan::Range(from, to) => entries(ks.range::<Vec<u8>, _>((from, to))),
        }
    }

    fn transact(&self, body: &mut dyn FnMut(&mut dyn TxOps) -> bool) -> Result<(), EngineError> {
        let mut tx = FjallTx { wtx: self.db.write_tx(), backend: self, wrote: false };
        if !body(&mut tx) || !tx.wrote {
            return Ok(());
        }
        let mut wtx = tx.wtx;
        let n = self.commits.load(Ordering::Acquire) + 1;
        wtx.insert(&self.meta, COMMITS, n.to_be_bytes());
        if let Err(e) = wtx.commit() {
            self.failed.store(true, Ordering::Release);
            return Err(e.into());
        }
        self.commits.store(n, Ordering::Release);
        Ok(())
    }

    fn persist(&self) -> Result<(), EngineError> {
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

    fn close(&self) -> Result<(), EngineError> {
        self.persist()?;
        self.db.persist(PersistMode::SyncAll)?;
        self.witness.sync()
    }

    fn disk_space(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn snapshot(&self) -> Result<std::sync::Arc<dyn Backend>, EngineError> {
        Ok(std::sync::Arc::new(FjallSnapshot { snap: self.db.read_tx(), trees: self.trees.clone() }))
    }
}

/// A read-only view of a [`FjallBackend`] at one sequence number.
struct FjallSnapshot {
    snap: fjall::Snapshot,
    trees: Vec<(&'static str, SingleWriterTxKeyspace)>,
}

impl FjallSnapshot {
    fn ks(&self, tree: TreeId) -> &fjall::Keyspace {
        keyspace(&self.trees, tree).inner()
    }
}

impl Backend for FjallSnapshot {
    fn tree(&self, name: &str) -> Result<TreeId, EngineError> {
        tree_id(&self.trees, name)
    }

    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        Ok(self.snap.get(self.ks(tree), key)?.map(|v| v.to_vec()))
    }

    fn scan(&self, tree: TreeId, which: Scan) -> Entries<'_> {
        let ks = self.ks(tree);
        match which {
            Scan::All => entries(self.snap.iter(ks)),
            Scan::Prefix(p) => entries(self.snap.prefix(ks, p)),
            Scan::Range(from, to) => entries(self.snap.range::<Vec<u8>, _>(ks, (from, to))),
        }
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

    fn snapshot(&self) -> Result<std::sync::Arc<dyn Backend>, EngineError> {
        Ok(std::sync::Arc::new(FjallSnapshot { snap: self.snap.clone(), trees: self.trees.clone() }))
    }
}

/// One fjall write transaction.
struct FjallTx<'a> {
    wtx: fjall::SingleWriterWriteTx<'a>,
    backend: &'a FjallBackend,
    wrote: bool,
}

impl TxOps for FjallTx<'_> {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        Ok(self.wtx.get(self.backend.ks(tree).inner(), key)?.map(|v| v.to_vec()))
    }

    fn insert(&mut self, tree: TreeId, key: &[u8], value: &[u8]) {
        self.wtx.insert(self.backend.ks(tree), key, value);
        self.wrote = true;
    }

    fn remove(&mut self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        self.wrote = true;
        Ok(self.wtx.take(self.backend.ks(tree), key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, tree: TreeId, prefix: &[u8]) -> Result<Vec<(Bytes, Bytes)>, EngineError> {
        entries(self.wtx.prefix(self.backend.ks(tree).inner(), prefix)).collect()
    }
}

/// How every tree is created. Memtables of at most 2 MiB (fjall's default is 64 MiB per tree):
/// with eighteen trees the default would let memory grow by hundreds of megabytes before the
/// first flush, and at 8 MiB the daemon stayed above issue #14's target of under 100 MB after
/// 250k messages. fjall keeps these sizes from a tree's creation, so older stores keep theirs.
fn tree_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES).compaction_strategy(std::sync::Arc::new(
        fjall::compaction::Leveled::default().with_table_target_size(TABLE_BYTES),
    ))
}

/// Tables of 16 MiB (fjall's default is 64): a compaction holds the blocks of what it merges
/// until its output table is written (heaptrack: 32 MB of compaction blocks at the daemon's peak
/// with 64 MiB tables), so smaller tables bound that peak.
const TABLE_BYTES: u64 = 16 << 20;

/// See [`tree_options`].
const MEMTABLE_BYTES: u64 = 2 << 20;
