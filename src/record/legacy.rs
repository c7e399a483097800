//! The reader of stores written by carebridge before issue #14: sled 0.34 in `<data_dir>/db`
//! with our own write-ahead log in `<data_dir>/wal`. Only `carebridge store migrate` uses it
//! ([`super::import`]); nothing here writes to the old files, which stay as they were.
//!
//! What the old store holds is sled's trees as of its last checkpoint plus the log's records
//! after it. [`OldStore::trees`] gives both merged: every tree's entries as sled has them, with
//! every write of a log record after the checkpoint applied on top, in order. A record that fails
//! its check ends the log (a torn tail: never acknowledged); a bad record followed by good ones
//! is refused, not skipped.

use std::collections::BTreeMap;
use std::path::Path;

/// A tree's entries: key, value.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Writes of log records after the checkpoint, per tree: key → value (`None`: removed).
type Pending = BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// The old store's sled directory, inside the data directory.
pub const SLED_DIR: &str = "db";
/// The old store's write-ahead log directory.
pub const WAL_DIR: &str = "wal";

const MAGIC: u32 = 0xC5B2_10C0;
const HEADER: usize = 4 + 4 + 4 + 8;

/// Why the old store could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// sled failed (I/O, corruption).
    #[error("the old (sled) store could not be read: {0}")]
    Sled(#[from] sled::Error),
    /// The old write-ahead log could not be read or is damaged.
    #[error("the old store's write-ahead log {0}")]
    Wal(String),
}

/// Whether `data_dir` holds a store of the old kind.
pub fn present(data_dir: &Path) -> bool {
    data_dir.join(SLED_DIR).join("conf").exists() || data_dir.join(SLED_DIR).join("db").exists()
}

/// An old store, open for reading.
pub struct OldStore {
    db: sled::Db,
    pending: Pending,
    /// Log records replayed from the write-ahead log.
    pub replayed: usize,
}

impl OldStore {
    /// Opens the old store in `data_dir` (sled takes its lock: no old daemon may be running).
    pub fn open(data_dir: &Path) -> Result<OldStore, LegacyError> {
        let db = sled::Config::new().path(data_dir.join(SLED_DIR)).flush_every_ms(None).open()?;
        let wal = data_dir.join(WAL_DIR);
        let (pending, replayed) = if wal.exists() { read_wal(&wal)? } else { (BTreeMap::new(), 0) };
        Ok(OldStore { db, pending, replayed })
    }

    /// The names of every tree the old store has (sled's own default tree left out).
    pub fn tree_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .db
            .tree_names()
            .into_iter()
            .filter_map(|n| String::from_utf8(n.to_vec()).ok())
            .filter(|n| n != "__sled__default")
            .collect();
        for n in self.pending.keys() {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names.sort();
        names
    }

    /// Every entry of tree `name`, in key order, with the log's later writes applied.
    pub fn entries(&self, name: &str) -> Result<Rows, LegacyError> {
        let mut all: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for r in self.db.open_tree(name)?.iter() {
            let (k, v) = r?;
            all.insert(k.to_vec(), v.to_vec());
        }
        if let Some(writes) = self.pending.get(name) {
            for (k, v) in writes {
                match v {
                    Some(v) => all.insert(k.clone(), v.clone()),
                    None => all.remove(k),
                };
            }
        }
        Ok(all.into_iter().collect())
    }

    /// A value past every id the old store handed out (sled's id generator restarts above what it
    /// persisted).
    pub fn next_id(&self) -> Result<u64, LegacyError> {
        Ok(self.db.generate_id()? + 1)
    }
}

fn read_wal(dir: &Path) -> Result<(Pending, usize), LegacyError> {
    let checkpoint = read_checkpoint(dir)?;
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| LegacyError::Wal(format!("cannot be listed: {e}")))? {
        let path = e.map_err(|e| LegacyError::Wal(format!("cannot be listed: {e}")))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            files.push((first, path));
        }
    }
    files.sort();
    let mut pending = Pending::new();
    let mut replayed = 0;
    let mut ended = false;
    for (_, path) in &files {
        let bytes = std::fs::read(path).map_err(|e| LegacyError::Wal(format!("segment cannot be read: {e}")))?;
        let mut at = 0;
        while at < bytes.len() {
            let Some((seq, body, len)) = record_at(&bytes[at..]) else {
                // Zeros are a segment's unwritten rest; a damaged record is a torn tail only if
                // nothing intact follows it anywhere.
                if bytes[at..].iter().take(HEADER).any(|&b| b != 0) && intact_after(&bytes[at + 1..]) {
                    return Err(LegacyError::Wal(format!(
                        "holds a damaged record followed by intact ones in {} at byte {at}",
                        path.display()
                    )));
                }
                ended = true;
                break;
            };
            if ended {
                return Err(LegacyError::Wal("continues after a damaged record".into()));
            }
            if seq > checkpoint {
                let ops =
                    decode_body(body).ok_or_else(|| LegacyError::Wal(format!("record {seq} cannot be decoded")))?;
                for (tree, key, value) in ops {
                    pending.entry(tree.to_string()).or_default().insert(key.to_vec(), value.map(<[u8]>::to_vec));
                }
                replayed += 1;
            }
            at += len;
        }
    }
    Ok((pending, replayed))
}

/// Whether an intact record starts anywhere in `b`.
fn intact_after(b: &[u8]) -> bool {
    let magic = MAGIC.to_be_bytes();
    b.windows(4).enumerate().any(|(i, w)| w == magic && record_at(&b[i..]).is_some())
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

/// One decoded write: tree name, key, value.
type Decoded<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

fn decode_body(mut b: &[u8]) -> Option<Vec<Decoded<'_>>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn len32(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    let mut out = Vec::new();
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

fn read_checkpoint(dir: &Path) -> Result<u64, LegacyError> {
    match std::fs::read(dir.join("checkpoint")) {
        Ok(b) if b.len() == 12 && crc32fast::hash(&b[..8]).to_be_bytes() == b[8..12] => {
            Ok(u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8])))
        }
        Ok(_) => Err(LegacyError::Wal("checkpoint file is damaged".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(LegacyError::Wal(format!("checkpoint cannot be read: {e}"))),
    }
}
