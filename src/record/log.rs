//! The record store's write-ahead log: what makes a write durable, in front of sled.
//!
//! **Why.** sled's transactions take a global write lock that waits for any flush in progress,
//! so with sled alone the router, the outbox workers and the flusher took turns (issue #7's
//! profile: the router thread idle two thirds of the time, waiting). Here every write is one
//! *log record* (all its tree writes, whole or not at all), appended under a short mutex to an
//! in-memory buffer; the flusher writes and `fdatasync`s the buffer once for many records (group
//! commit); only then are the records applied to sled, with plain inserts, on a thread of
//! their own ([`super::flusher`]). sled is the
//! index that reads use; the log is what survives a crash.
//!
//! **Crash safety.** sled is never ahead of the log: a record reaches sled only after its bytes
//! are on disk, so whatever sled persisted on its own is a replay of durable records. A
//! *checkpoint* (every [`CHECKPOINT_EVERY`] while writes come in) flushes sled and then writes the
//! last applied sequence number to `wal/checkpoint`; opening the store replays every record after
//! it, in order. Replaying is idempotent (every write is a whole value or a removal), and a torn
//! last record (a crash mid-write) fails its CRC and is cut off; it was never acknowledged.
//!
//! **Reads.** Until the flusher applies a record, its writes live in an *overlay* that point reads
//! ([`Log::read`]) consult before sled, so the router sees its own exchanges at once. Scans see
//! only applied (durable) writes; [`Log::pending_removal`] lets the outbox skip a row whose
//! removal is not applied yet.
//!
//! **No PHI.** A record carries exactly the bytes sled gets: sealed values, blinded keys and
//! PHI-free journal entries, never plaintext.
//!
//! Layout of one record (big-endian): `magic (4) | body_len (4) | crc32 (4) of seq and body |
//! seq (8) | body`; the body is its writes, each `tree_len (1) | tree | op (1: 1 insert, 0
//! remove) | key_len (4) | key | [value_len (4) | value]`. Segments are `wal/<first seq>.log`.

use rustc_hash::FxHashMap as HashMap;
use sled::IVec;
use sled::transaction::{ConflictableTransactionError, TransactionError, UnabortableTransactionError};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tracing::{info, warn};

/// How often a checkpoint runs while records are applied: it bounds both the log's size and the
/// replay after a crash, and costs one sled flush. Short, so each flush is small: at 2 s the
/// flushes' bursts of writes delayed the log's `fdatasync` (pipeline bench p99 at 32
/// connections: 18 ms with 2 s here and 25 ms between applies, 10 ms with 500 ms and 10 ms;
/// one run each, both knobs changed at once).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// A segment is closed (and removed at the next checkpoint) once it holds this much. Segments
/// are written full of zeros when created: overwriting allocated blocks lets `fdatasync` skip
/// the file-size update an append needs (a journal commit on ext4), which measured about 1.5×
/// cheaper idle and more under load.
const SEGMENT_BYTES: u64 = 16 << 20;

/// Unsynced bytes after which a writer syncs itself: bounds memory for callers with no flusher
/// (the CLI, a bulk import).
const BUFFER_LIMIT: usize = 32 << 20;

const MAGIC: u32 = 0xC5B2_10C0;
const HEADER: usize = 4 + 4 + 4 + 8;

/// A tree with its name: sled's handle (reads, scans) plus the name its writes carry in the log
/// and, for sealed trees, the sealing context of its values.
#[derive(Clone)]
pub struct Tr {
    pub(crate) name: &'static str,
    pub(crate) tree: sled::Tree,
}

impl Tr {
    /// Opens `name` in `db`.
    pub fn open(db: &sled::Db, name: &'static str) -> Result<Tr, sled::Error> {
        Ok(Tr { name, tree: db.open_tree(name)? })
    }
}

impl std::ops::Deref for Tr {
    type Target = sled::Tree;
    fn deref(&self) -> &sled::Tree {
        &self.tree
    }
}

/// One write of a record. It carries its tree's handle, so applying it needs no lookup by name
/// (a tree the log did not know of could otherwise be skipped).
struct Op {
    tree: Tr,
    key: IVec,
    value: Option<IVec>,
}

/// Writes committed but not yet applied to sled, per tree: the record's sequence number and the
/// value (`None`: removed).
type Overlay = HashMap<&'static str, HashMap<IVec, (u64, Option<IVec>)>>;

/// What writers append to, under [`Log::writer`].
#[derive(Default)]
struct Pending {
    next_seq: u64,
    buf: Vec<u8>,
    records: Vec<(u64, Vec<Op>)>,
}

/// The open segment and the closed ones not yet removed, under [`Log::segments`] (held by the
/// one syncing).
struct Segments {
    file: File,
    first: u64,
    size: u64,
    closed: Vec<(u64, PathBuf)>,
}

/// Why the log failed. Both end in `StoreError`.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Writing, syncing or reading the log failed.
    #[error("write-ahead log {what}: {source}")]
    Io {
        /// What was being done (PHI-free).
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Applying to sled, or a checkpoint's flush, failed.
    #[error("store I/O: {0}")]
    Sled(#[from] sled::Error),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> LogError {
    move |source| LogError::Io { what, source }
}

/// The log of one store. Shared by every clone of the store.
pub struct Log {
    dir: PathBuf,
    db: sled::Db,
    writer: Mutex<Pending>,
    overlay: RwLock<Overlay>,
    segments: Mutex<Segments>,
    /// Durable records not yet applied to sled, oldest first.
    unapplied: Mutex<Vec<(u64, Vec<Op>)>>,
    /// Held while applying, so records reach sled in order; not `unapplied`'s lock, which the
    /// flusher must get at once.
    applying: Mutex<()>,
    applied: AtomicU64,
    checkpointed: AtomicU64,
    /// Tests simulate a crash: dropped without the final sync.
    #[cfg(test)]
    crashed: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Log {
    /// Opens the log in `<data_dir>/wal` for `db`: replays every record after the last
    /// checkpoint into sled, flushes, and starts a fresh segment.
    pub fn open(data_dir: &Path, db: &sled::Db) -> Result<Log, LogError> {
        let dir = data_dir.join("wal");
        std::fs::create_dir_all(&dir).map_err(io("creating its directory"))?;
        let checkpoint = read_checkpoint(&dir)?;
        let (last, replayed) = replay(&dir, db, checkpoint)?;
        if replayed > 0 {
            info!(records = replayed, from_seq = checkpoint + 1, to_seq = last, "Replayed the write-ahead log.");
            db.flush()?;
            write_checkpoint(&dir, last)?;
        }
        for (_, path) in segment_files(&dir)? {
            std::fs::remove_file(&path).map_err(io("removing a replayed segment"))?;
        }
        let first = last + 1;
        let file = create_segment(&dir, first)?;
        Ok(Log {
            dir,
            db: db.clone(),
            writer: Mutex::new(Pending { next_seq: first, ..Default::default() }),
            overlay: RwLock::new(HashMap::default()),
            segments: Mutex::new(Segments { file, first, size: 0, closed: Vec::new() }),
            unapplied: Mutex::new(Vec::new()),
            applying: Mutex::new(()),
            applied: AtomicU64::new(last),
            checkpointed: AtomicU64::new(last),
            #[cfg(test)]
            crashed: Default::default(),
        })
    }

    /// A point read: the newest committed value, applied or not.
    pub fn read(&self, tr: &Tr, key: &[u8]) -> Result<Option<IVec>, sled::Error> {
        if let Some((_, v)) =
            self.overlay.read().unwrap_or_else(|e| e.into_inner()).get(tr.name).and_then(|t| t.get(key))
        {
            return Ok(v.clone());
        }
        tr.tree.get(key)
    }

    /// Whether `key` was removed from `tr` by a record not yet applied (a scan still sees it).
    pub fn pending_removal(&self, tr: &Tr, key: &[u8]) -> bool {
        matches!(
            self.overlay.read().unwrap_or_else(|e| e.into_inner()).get(tr.name).and_then(|t| t.get(key)),
            Some((_, None))
        )
    }

    /// The entries of `tr` under `prefix`, in key order, as of every committed record (applied
    /// or not): what a listing shows right after a change. Materialised: for the small trees
    /// (dead letters, held deliveries, a record's events), not for whole-store walks.
    pub fn scan(&self, tr: &Tr, prefix: &[u8]) -> Result<Vec<(IVec, IVec)>, sled::Error> {
        let mut all = std::collections::BTreeMap::new();
        for r in tr.tree.scan_prefix(prefix) {
            let (k, v) = r?;
            all.insert(k, v);
        }
        if let Some(t) = self.overlay.read().unwrap_or_else(|e| e.into_inner()).get(tr.name) {
            for (k, (_, v)) in t.iter().filter(|(k, _)| k.starts_with(prefix)) {
                match v {
                    Some(v) => all.insert(k.clone(), v.clone()),
                    None => all.remove(k),
                };
            }
        }
        Ok(all.into_iter().collect())
    }

    /// How many entries `tr` holds as of every committed record (a gauge; sled's `len` walks
    /// the tree, so for small trees only).
    pub fn count(&self, tr: &Tr) -> usize {
        let mut n = tr.tree.len() as i64;
        if let Some(t) = self.overlay.read().unwrap_or_else(|e| e.into_inner()).get(tr.name) {
            for (k, (_, v)) in t {
                let there = tr.tree.contains_key(k).unwrap_or(false);
                n += match (v.is_some(), there) {
                    (true, false) => 1,
                    (false, true) => -1,
                    _ => 0,
                };
            }
        }
        n.max(0) as usize
    }

    /// Runs `f` as one record: its reads see every earlier record, its writes become one log
    /// record if it returns `Ok` (none if it aborts). Records are serialised by a mutex, so a
    /// read-modify-write inside `f` (the chain's heads) sees no interleaving. Durable, and
    /// visible to scans, after the next [`Log::sync`].
    pub fn transact<R, E>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<R, ConflictableTransactionError<E>>,
    ) -> Result<R, TransactionError<E>> {
        let mut w = lock(&self.writer);
        let tx = Tx { log: self, ops: RefCell::new(Vec::new()), local: RefCell::new(HashMap::default()) };
        let r = match f(&tx) {
            Ok(r) => r,
            Err(ConflictableTransactionError::Abort(e)) => return Err(TransactionError::Abort(e)),
            Err(ConflictableTransactionError::Storage(e)) => return Err(TransactionError::Storage(e)),
            Err(_) => return Err(TransactionError::Storage(sled::Error::Unsupported("conflict".into()))),
        };
        let ops: Vec<Op> = tx.ops.into_inner().into_iter().flatten().collect();
        if ops.is_empty() {
            return Ok(r);
        }
        let seq = w.next_seq;
        w.next_seq += 1;
        encode(&mut w.buf, seq, &ops);
        {
            let mut ov = self.overlay.write().unwrap_or_else(|e| e.into_inner());
            for op in &ops {
                ov.entry(op.tree.name).or_default().insert(op.key.clone(), (seq, op.value.clone()));
            }
        }
        w.records.push((seq, ops));
        let full = w.buf.len() > BUFFER_LIMIT;
        drop(w);
        if full {
            self.sync().map_err(|e| TransactionError::Storage(into_sled(e)))?;
        }
        Ok(r)
    }

    /// Makes every committed record durable and applies it to sled: [`Log::make_durable`], then
    /// [`Log::apply_durable`]. The CLI's and the final one on close.
    pub fn sync(&self) -> Result<(), LogError> {
        self.make_durable()?;
        self.apply_durable()?;
        // Without the daemon's apply thread, which checkpoints (a bulk import, the CLI), bound
        // the log here.
        if lock(&self.segments).closed.len() >= 4 {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes every committed record durable: one write and one `fdatasync` for all of them
    /// (group commit). Once it returns, receipts may go out; the records are still only in the
    /// overlay until [`Log::apply_durable`]. One caller at a time (the segment's lock).
    pub fn make_durable(&self) -> Result<(), LogError> {
        let mut seg = lock(&self.segments);
        let (buf, records) = {
            let mut w = lock(&self.writer);
            (std::mem::take(&mut w.buf), std::mem::take(&mut w.records))
        };
        let Some(&(last, _)) = records.last() else { return Ok(()) };
        seg.file.write_all(&buf).map_err(io("writing"))?;
        seg.file.sync_data().map_err(io("syncing"))?;
        seg.size += buf.len() as u64;
        lock(&self.unapplied).extend(records);
        if seg.size >= SEGMENT_BYTES {
            let next = last + 1;
            seg.file = create_segment(&self.dir, next)?;
            let closed = (seg.first, segment_path(&self.dir, seg.first));
            seg.closed.push(closed);
            seg.first = next;
            seg.size = 0;
        }
        Ok(())
    }

    /// Applies every durable record to sled, in order, and drops it from the overlay.
    pub fn apply_durable(&self) -> Result<(), LogError> {
        let order = lock(&self.applying);
        let records = std::mem::take(&mut *lock(&self.unapplied));
        let Some(&(last, _)) = records.last() else { return Ok(()) };
        self.apply(&records)?;
        {
            let mut ov = self.overlay.write().unwrap_or_else(|e| e.into_inner());
            for (seq, ops) in &records {
                for op in ops {
                    if let Some(t) = ov.get_mut(op.tree.name)
                        && t.get(&op.key).is_some_and(|(s, _)| s == seq)
                    {
                        t.remove(&op.key);
                    }
                }
            }
        }
        self.applied.store(last, Ordering::Release);
        drop(order);
        Ok(())
    }

    /// Applies records to sled: the last write of each key only, journal entries first and the
    /// chain's heads last, so a concurrent `verify` (which reads the head, then the journal, then
    /// the bodies) never sees a head without its entries or a body without its entry.
    fn apply(&self, records: &[(u64, Vec<Op>)]) -> Result<(), sled::Error> {
        let mut last: HashMap<(&str, &[u8]), (usize, usize)> = HashMap::default();
        for (i, (_, ops)) in records.iter().enumerate() {
            for (j, op) in ops.iter().enumerate() {
                last.insert((op.tree.name, op.key.as_ref()), (i, j));
            }
        }
        let phase = |tree: &str| match tree {
            "journal" => 0,
            "chain_heads" => 2,
            _ => 1,
        };
        for p in 0..3 {
            for (i, (_, ops)) in records.iter().enumerate() {
                for (j, op) in ops.iter().enumerate() {
                    if phase(op.tree.name) != p || last.get(&(op.tree.name, op.key.as_ref())) != Some(&(i, j)) {
                        continue;
                    }
                    match &op.value {
                        Some(v) => op.tree.insert(&op.key, v.clone())?,
                        None => op.tree.remove(&op.key)?,
                    };
                }
            }
        }
        Ok(())
    }

    /// Flushes sled and records how far the log is applied, then removes the segments that are
    /// wholly before that. Nothing to do if nothing was applied since the last one.
    pub fn checkpoint(&self) -> Result<(), LogError> {
        let applied = self.applied.load(Ordering::Acquire);
        if applied <= self.checkpointed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.db.flush()?;
        write_checkpoint(&self.dir, applied)?;
        self.checkpointed.store(applied, Ordering::Release);
        let mut seg = lock(&self.segments);
        let mut next_first: Vec<u64> = seg.closed.iter().skip(1).map(|(f, _)| *f).collect();
        next_first.push(seg.first);
        let mut keep = Vec::new();
        for ((first, path), next) in std::mem::take(&mut seg.closed).into_iter().zip(next_first) {
            if next.saturating_sub(1) <= applied {
                std::fs::remove_file(&path).map_err(io("removing a checkpointed segment"))?;
            } else {
                keep.push((first, path));
            }
        }
        seg.closed = keep;
        Ok(())
    }
}

impl Drop for Log {
    /// The last handle of a store (the CLI's, the daemon's at shutdown) leaves nothing behind
    /// unapplied.
    fn drop(&mut self) {
        #[cfg(test)]
        if self.crashed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.sync().and_then(|()| self.checkpoint()) {
            warn!(error = %e, "Could not sync the write-ahead log on close; it is replayed on the next start.");
        }
    }
}

fn into_sled(e: LogError) -> sled::Error {
    match e {
        LogError::Sled(e) => e,
        LogError::Io { source, .. } => sled::Error::Io(source),
    }
}

/// One record being written by [`Log::transact`].
pub struct Tx<'a> {
    log: &'a Log,
    /// In order; a key written again leaves a hole where it was first written, so the record
    /// carries each key once, at its last position.
    ops: RefCell<Vec<Option<Op>>>,
    local: RefCell<HashMap<&'static str, HashMap<IVec, usize>>>,
}

impl<'a> Tx<'a> {
    /// The view of `tr` inside this record.
    pub fn on<'b>(&'b self, tr: &'b Tr) -> TxTree<'b, 'a> {
        TxTree { tx: self, tr }
    }

    fn put(&self, tree: &Tr, key: &[u8], value: Option<IVec>) {
        let key = IVec::from(key);
        let mut ops = self.ops.borrow_mut();
        let mut local = self.local.borrow_mut();
        let slots = local.entry(tree.name).or_default();
        if let Some(&i) = slots.get(&key) {
            ops[i] = None;
        }
        slots.insert(key.clone(), ops.len());
        ops.push(Some(Op { tree: tree.clone(), key, value }));
    }
}

/// A tree as seen inside one record: reads see the record's own writes.
pub struct TxTree<'b, 'a> {
    tx: &'b Tx<'a>,
    tr: &'b Tr,
}

impl TxTree<'_, '_> {
    /// The current value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>, UnabortableTransactionError> {
        let key = key.as_ref();
        if let Some(&i) = self.tx.local.borrow().get(self.tr.name).and_then(|t| t.get(key))
            && let Some(op) = &self.tx.ops.borrow()[i]
        {
            return Ok(op.value.clone());
        }
        self.tx.log.read(self.tr, key).map_err(UnabortableTransactionError::Storage)
    }

    /// Writes `key`.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl Into<IVec>) -> Result<(), UnabortableTransactionError> {
        self.tx.put(self.tr, key.as_ref(), Some(value.into()));
        Ok(())
    }

    /// Removes `key`, returning what it held.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>, UnabortableTransactionError> {
        let old = self.get(key.as_ref())?;
        if old.is_some() {
            self.tx.put(self.tr, key.as_ref(), None);
        }
        Ok(old)
    }
}

fn encode(buf: &mut Vec<u8>, seq: u64, ops: &[Op]) {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC.to_be_bytes());
    buf.extend_from_slice(&[0; 8]); // body_len, crc: filled below
    buf.extend_from_slice(&seq.to_be_bytes());
    for op in ops {
        buf.push(op.tree.name.len() as u8);
        buf.extend_from_slice(op.tree.name.as_bytes());
        buf.push(u8::from(op.value.is_some()));
        buf.extend_from_slice(&(op.key.len() as u32).to_be_bytes());
        buf.extend_from_slice(&op.key);
        if let Some(v) = &op.value {
            buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
            buf.extend_from_slice(v);
        }
    }
    let body_len = (buf.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + 12..]);
    buf[start + 4..start + 8].copy_from_slice(&body_len.to_be_bytes());
    buf[start + 8..start + 12].copy_from_slice(&crc.to_be_bytes());
}

/// One decoded write: tree name, key, value.
type Decoded<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

fn decode_body(mut b: &[u8]) -> Option<Vec<Decoded<'_>>> {
    let mut out = Vec::new();
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn len32(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    while !b.is_empty() {
        let tl = *take(&mut b, 1)?.first()? as usize;
        let tree = std::str::from_utf8(take(&mut b, tl)?).ok()?;
        let op = *take(&mut b, 1)?.first()?;
        let kl = len32(&mut b)?;
        let key = take(&mut b, kl)?;
        let value = match op {
            1 => {
                let vl = len32(&mut b)?;
                Some(take(&mut b, vl)?)
            }
            0 => None,
            _ => return None,
        };
        out.push((tree, key, value));
    }
    Some(out)
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

/// Segment files, oldest first.
fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io("listing its directory"))? {
        let path = e.map_err(io("listing its directory"))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

fn create_segment(dir: &Path, first: u64) -> Result<File, LogError> {
    let tmp = dir.join("segment.tmp");
    let mut file =
        OpenOptions::new().create(true).truncate(true).write(true).open(&tmp).map_err(io("creating a segment"))?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..SEGMENT_BYTES >> 20 {
        file.write_all(&zeros).map_err(io("creating a segment"))?;
    }
    file.sync_all().map_err(io("creating a segment"))?;
    std::fs::rename(&tmp, segment_path(dir, first)).map_err(io("creating a segment"))?;
    sync_dir(dir)?;
    use std::io::Seek;
    file.rewind().map_err(io("creating a segment"))?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing its directory"))
}

/// Replays every intact record after `checkpoint` into sled, in order. Returns the last sequence
/// number seen (the checkpoint if none) and how many records were replayed. A record that fails
/// its check ends the log: it (and anything after it) was never synced, so never acknowledged.
fn replay(dir: &Path, db: &sled::Db, checkpoint: u64) -> Result<(u64, usize), LogError> {
    let mut last = checkpoint;
    let mut replayed = 0;
    let mut trees: HashMap<String, sled::Tree> = HashMap::default();
    let files = segment_files(dir)?;
    for (n, (_, path)) in files.iter().enumerate() {
        let mut bytes = Vec::new();
        File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io("reading a segment"))?;
        let mut at = 0;
        let mut torn = false;
        while at < bytes.len() {
            let Some(rec) = record_at(&bytes[at..]) else {
                // Zeros are the unwritten rest of a segment; anything else is a torn record.
                torn = bytes[at..].iter().take(HEADER).any(|&b| b != 0);
                break;
            };
            let (seq, body, len) = rec;
            if seq > checkpoint {
                let Some(ops) = decode_body(body) else {
                    torn = true;
                    break;
                };
                for (tree, key, value) in ops {
                    let t = match trees.get(tree) {
                        Some(t) => t.clone(),
                        None => {
                            let t = db.open_tree(tree)?;
                            trees.insert(tree.to_string(), t.clone());
                            t
                        }
                    };
                    match value {
                        Some(v) => t.insert(key, v)?,
                        None => t.remove(key)?,
                    };
                }
                replayed += 1;
            }
            last = last.max(seq);
            at += len;
        }
        if torn {
            warn!(
                segment = n,
                offset = at,
                after_seq = last,
                "The write-ahead log ends in an incomplete record (a crash while writing it); it was never acknowledged and is dropped."
            );
            break;
        }
    }
    Ok((last, replayed))
}

/// The record at the start of `b`: its sequence number, body and total length, if intact.
fn record_at(b: &[u8]) -> Option<(u64, &[u8], usize)> {
    let head = b.get(..HEADER)?;
    if u32::from_be_bytes(head[..4].try_into().ok()?) != MAGIC {
        return None;
    }
    let body_len = u32::from_be_bytes(head[4..8].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(head[8..12].try_into().ok()?);
    let total = HEADER.checked_add(body_len)?;
    let rest = b.get(12..total)?;
    if crc32fast::hash(rest) != crc {
        return None;
    }
    let seq = u64::from_be_bytes(rest[..8].try_into().ok()?);
    Some((seq, &rest[8..], total))
}

fn read_checkpoint(dir: &Path) -> Result<u64, LogError> {
    match std::fs::read(dir.join("checkpoint")) {
        Ok(b) if b.len() == 12 => {
            let seq = u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]));
            let crc = u32::from_be_bytes(b[8..].try_into().unwrap_or([0; 4]));
            if crc32fast::hash(&b[..8]) == crc {
                Ok(seq)
            } else {
                Err(LogError::Io {
                    what: "checkpoint",
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, "checkpoint file is corrupt"),
                })
            }
        }
        Ok(_) => Err(LogError::Io {
            what: "checkpoint",
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "checkpoint file has the wrong size"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io("reading the checkpoint")(e)),
    }
}

/// Writes the checkpoint atomically (a new file renamed over the old, both synced).
fn write_checkpoint(dir: &Path, seq: u64) -> Result<(), LogError> {
    let mut b = seq.to_be_bytes().to_vec();
    b.extend_from_slice(&crc32fast::hash(&b).to_be_bytes());
    let tmp = dir.join("checkpoint.tmp");
    let mut f = File::create(&tmp).map_err(io("writing the checkpoint"))?;
    f.write_all(&b).and_then(|()| f.sync_all()).map_err(io("writing the checkpoint"))?;
    std::fs::rename(&tmp, dir.join("checkpoint")).map_err(io("writing the checkpoint"))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (sled::Db, Log, Tr) {
        let db = sled::Config::new().path(dir.join("db")).open().unwrap();
        let log = Log::open(dir, &db).unwrap();
        let tr = Tr::open(&db, "a").unwrap();
        (db, log, tr)
    }

    fn crash(log: Log) {
        log.crashed.store(true, Ordering::Relaxed);
    }

    fn put(log: &Log, tr: &Tr, k: &str, v: Option<&str>) {
        log.transact(|tx| {
            let t = tx.on(tr);
            match v {
                Some(v) => t.insert(k, v.as_bytes())?,
                None => {
                    t.remove(k)?;
                }
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        })
        .unwrap();
    }

    #[test]
    fn records_replay_after_a_crash_that_left_sled_unflushed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, log, tr) = open(dir.path());
            put(&log, &tr, "k1", Some("one"));
            put(&log, &tr, "k2", Some("two"));
            assert_eq!(log.read(&tr, b"k1").unwrap().as_deref(), Some(&b"one"[..]), "visible before sync");
            assert!(tr.get("k1").unwrap().is_none(), "sled has nothing before the sync");
            log.sync().unwrap();
            put(&log, &tr, "k1", None);
            log.sync().unwrap();
            put(&log, &tr, "k3", Some("never synced"));
            // A crash: the log is dropped without a checkpoint or a final sync, and sled's own
            // state is thrown away.
            crash(log);
        }
        std::fs::remove_dir_all(dir.path().join("db")).unwrap();
        let (_db, log, tr) = open(dir.path());
        assert!(tr.get("k1").unwrap().is_none(), "the removal replayed after the insert");
        assert_eq!(tr.get("k2").unwrap().as_deref(), Some(&b"two"[..]));
        assert!(log.read(&tr, b"k3").unwrap().is_none(), "an unsynced record is gone");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_a_checkpoint_skips_what_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, log, tr) = open(dir.path());
            put(&log, &tr, "k1", Some("one"));
            log.sync().unwrap();
            log.checkpoint().unwrap();
            put(&log, &tr, "k2", Some("two"));
            log.sync().unwrap();
            crash(log);
        }
        let (_, seg) = segment_files(&dir.path().join("wal")).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&MAGIC.to_be_bytes()).unwrap();
        f.write_all(&[0, 0, 0, 9, 1, 2]).unwrap();
        drop(f);
        {
            let (_db, log, tr) = open(dir.path());
            assert_eq!(tr.get("k2").unwrap().as_deref(), Some(&b"two"[..]));
            assert_eq!(tr.get("k1").unwrap().as_deref(), Some(&b"one"[..]));
            put(&log, &tr, "k4", Some("after"));
        }
        let (_db, _log, tr) = open(dir.path());
        assert_eq!(tr.get("k4").unwrap().as_deref(), Some(&b"after"[..]), "closing synced it");
    }

    #[test]
    fn writes_in_one_record_see_each_other_and_an_abort_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, log, tr) = open(dir.path());
        let r = log.transact(|tx| {
            let t = tx.on(&tr);
            t.insert("k", &b"1"[..])?;
            assert_eq!(t.get("k")?.as_deref(), Some(&b"1"[..]));
            t.insert("k", &b"2"[..])?;
            Err::<(), _>(ConflictableTransactionError::Abort(7))
        });
        assert!(matches!(r, Err(TransactionError::Abort(7))));
        assert!(log.read(&tr, b"k").unwrap().is_none());
        put(&log, &tr, "k", Some("x"));
        assert!(log.pending_removal(&tr, b"k").eq(&false));
        log.sync().unwrap();
        put(&log, &tr, "k", None);
        assert!(log.pending_removal(&tr, b"k"));
        assert!(tr.get("k").unwrap().is_some(), "sled still has it until the sync");
        log.sync().unwrap();
        assert!(!log.pending_removal(&tr, b"k"));
        assert!(tr.get("k").unwrap().is_none());
    }
}
