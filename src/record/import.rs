//! `carebridge store migrate`: turns the store of an earlier carebridge (sled and its
//! write-ahead log, schema v1 or v2, read by [`super::legacy`]) into this one.
//!
//! Every tree is copied entry by entry, as stored: values stay sealed under the same key file,
//! index keys stay blinded, and the journal's entries (the hash chain) come along unchanged, so
//! the old chain's head is the new chain's head and `records verify` checks the whole history.
//! A schema-v1 store (plaintext) is first upgraded ([`super::migrate`]) in a staging engine, and
//! only the upgraded entries are copied into the engine the daemon uses.
//!
//! **Safe to interrupt, safe to repeat.** `run` refuses while the old files are in place, and the
//! old files are moved aside (into `pre-migration/`, never deleted) only after the new store has
//! been written, flushed and verified. A crash before that leaves the old store as it was; the
//! next `migrate` starts over. Run again after success, it finds nothing to migrate.

use super::engine::{ENGINE_DIR, TxError, WITNESS_FILE};
use super::legacy::{self, OldStore};
use super::schema::SCHEMA_VERSION;
use super::{Keyring, Store, StoreError, TREES, id_of32, now_ms, tx_err};
use std::path::{Path, PathBuf};
use tracing::info;

/// Entries per transaction while copying.
const CHUNK: usize = 2000;

/// Where the old files go once migrated, inside the data directory.
pub const KEPT_ASIDE: &str = "pre-migration";

/// The staging engine's directory (removed when done).
const STAGING: &str = "migration.tmp";

/// `meta` entries of the old store that carry over.
const META_KEPT: [&[u8]; 2] = [b"log_key", b"key_canary"];

/// What a migration did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Migrated {
    /// The old store's schema version.
    pub from_schema: u32,
    /// Entries copied, per tree.
    pub entries: Vec<(String, usize)>,
    /// Records of the old write-ahead log applied on top of sled.
    pub wal_records: usize,
    /// Journal entries the new store's chain holds (checked by `records verify` before the old
    /// files were moved aside).
    pub chain_entries: u64,
    /// Its head (hex): for a v2 store, the old store's own head.
    pub chain_head: String,
    /// Where the old files are now.
    pub kept_at: PathBuf,
}

/// Migrates the old store in `data_dir`, if there is one (`None`: nothing to migrate).
pub fn migrate(data_dir: &Path, keys: Keyring, cache_mb: u32) -> Result<Option<Migrated>, StoreError> {
    if !legacy::present(data_dir) {
        return Ok(None);
    }
    let old = OldStore::open(data_dir)?;
    let old_meta = old.entries("meta")?;
    let schema = old_meta.iter().find(|(k, _)| k.as_slice() == b"schema_version").map(|(_, v)| id_of32(v)).unwrap_or(1);
    if schema > 2 {
        return Err(StoreError::Schema { found: schema, supported: 2 });
    }
    info!(from_schema = schema, wal_records = old.replayed, "Migrating the record store.");
    // An interrupted earlier run leaves a partial staging engine or new store: start over.
    let staging_dir = data_dir.join(STAGING);
    remove_if_there(&staging_dir)?;
    remove_if_there(&data_dir.join(ENGINE_DIR))?;
    remove_if_there(&data_dir.join(WITNESS_FILE))?;

    let staging = Store::open_engine(&staging_dir, keys.clone(), cache_mb)?;
    let mut entries = Vec::new();
    for name in old.tree_names() {
        let Some(tree) = TREES.iter().find(|t| **t == name) else { continue };
        let tr = staging.db.tree(tree)?;
        let rows = old.entries(&name)?;
        copy(&staging, &tr, &rows)?;
        entries.push((name, rows.len()));
    }
    let meta: Vec<_> = old_meta.into_iter().filter(|(k, _)| META_KEPT.contains(&k.as_slice())).collect();
    copy(&staging, staging.db.meta_tree(), &meta)?;
    staging.ids.store(old.next_id()?, std::sync::atomic::Ordering::Release);
    let wal_records = old.replayed;
    drop(old);
    let staging = reopen(staging, &staging_dir, &keys, cache_mb)?;
    staging.check_key()?;
    if schema == 1 {
        super::migrate::upgrade(&staging, 1)?;
    }
    staging.set_schema_version(SCHEMA_VERSION)?;
    let report = staging.verify()?;
    if let Some(b) = &report.first_break {
        return Err(StoreError::Migration(format!(
            "the old store's chain is broken at entry {} ({}); nothing was changed",
            b.seq, b.reason
        )));
    }

    // The engine the daemon will use gets only the upgraded, sealed entries.
    let store = Store::open_engine(data_dir, keys.clone(), cache_mb)?;
    for name in TREES {
        let from = staging.db.tree(name)?;
        let rows: Vec<(Vec<u8>, Vec<u8>)> =
            from.iter().map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect::<Result<_, _>>()?;
        copy(&store, &store.db.tree(name)?, &rows)?;
    }
    let mut meta = Vec::new();
    for k in META_KEPT {
        if let Some(v) = staging.db.meta(k)? {
            meta.push((k.to_vec(), v.to_vec()));
        }
    }
    let anchor = serde_json::json!({"chain_seq": report.head_seq, "chain_head": report.head_hash, "at_ms": now_ms(), "from_schema": schema});
    meta.push((b"migrated_from".to_vec(), anchor.to_string().into_bytes()));
    copy(&store, store.db.meta_tree(), &meta)?;
    store.ids.store(staging.ids.load(std::sync::atomic::Ordering::Acquire), std::sync::atomic::Ordering::Release);
    store.set_schema_version(SCHEMA_VERSION)?;
    store.close()?;
    let store = reopen(store, data_dir, &keys, cache_mb)?;
    let check = store.verify()?;
    if check.first_break.is_some() || check.head_seq != report.head_seq {
        return Err(StoreError::Migration(
            "the migrated store does not verify; the old store was left in place".into(),
        ));
    }
    store.close()?;
    drop(store);
    drop(staging);
    remove_if_there(&staging_dir)?;

    let kept_at = free_name(&data_dir.join(KEPT_ASIDE));
    std::fs::create_dir_all(&kept_at).map_err(io)?;
    for dir in [legacy::SLED_DIR, legacy::WAL_DIR] {
        let from = data_dir.join(dir);
        if from.exists() {
            std::fs::rename(&from, kept_at.join(dir)).map_err(io)?;
        }
    }
    std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(io)?;
    info!(chain_entries = check.head_seq, "Record store migrated; the old files are kept aside.");
    Ok(Some(Migrated {
        from_schema: schema,
        entries,
        wal_records,
        chain_entries: check.head_seq,
        chain_head: check.head_hash,
        kept_at,
    }))
}

/// Copies `rows` into `tr` as they are, a chunk per transaction.
fn copy(store: &Store, tr: &super::engine::Tr, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
    for chunk in rows.chunks(CHUNK) {
        store
            .transact(|tx| {
                let w = tx.on(tr);
                for (k, v) in chunk {
                    w.insert(k, v)?;
                }
                Ok::<(), TxError<()>>(())
            })
            .map_err(tx_err)?;
    }
    store.flush_blocking()
}

/// Closes `store` and opens it again (what a restart would see).
fn reopen(store: Store, dir: &Path, keys: &Keyring, cache_mb: u32) -> Result<Store, StoreError> {
    store.close()?;
    drop(store);
    Store::open_engine(dir, keys.clone(), cache_mb)
}

fn remove_if_there(p: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).map_err(io),
        Ok(_) => std::fs::remove_file(p).map_err(io),
        Err(_) => Ok(()),
    }
}

/// `base`, or `base.2`, `base.3`, … if taken (a second old store migrated into one data dir).
fn free_name(base: &Path) -> PathBuf {
    let mut p = base.to_path_buf();
    let mut n = 2;
    while p.exists() {
        p = base.with_extension(n.to_string());
        n += 1;
    }
    p
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Engine(e.into())
}
