//! `carebridge store migrate --into postgres|embedded`: copies a whole store from one backend to
//! the other (a clinic moving to several instances, or back to one machine).
//!
//! Entries are copied as stored: values stay sealed under the same key file, index keys stay
//! blinded, the journal (the hash chain) comes along unchanged, so `records verify` on the copy
//! checks the whole history and its head is the source's. The copy's ids continue past the
//! source's, so no delivery id is handed out twice (a receiver drops repeats by
//! Idempotency-Key). The target must be empty: the copy never merges into a store in use, and
//! the source is left as it was (remove it once the copy runs).

use super::engine::TxError;
use super::{Keyring, Store, StoreError, TREES, has_store, tx_err};
use std::sync::atomic::Ordering;
use tracing::info;

/// Entries per transaction while copying.
const CHUNK: usize = 2000;

/// `meta` entries that carry over: the log pseudonyms' key and the key canary.
const META_KEPT: [&[u8]; 2] = [b"log_key", b"key_canary"];

/// Which way `store migrate --into` copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// From `<data_dir>/store` into the database of `[store.postgres]`.
    Postgres,
    /// From the database of `[store.postgres]` into `<data_dir>/store` (which must not exist).
    Embedded,
}

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Entries copied, all trees.
    pub entries: usize,
    /// Journal entries of the copy's chain (verified).
    pub chain_entries: u64,
    /// Its head (hex): the source's.
    pub chain_head: String,
}

impl Store {
    /// An id above every id this store handed out (on any instance).
    fn ids_used(&self) -> Result<u64, StoreError> {
        match &self.id_block {
            None => Ok(self.ids.load(Ordering::Acquire)),
            Some(_) => Ok(self.db.ids_used()?.unwrap_or(0)),
        }
    }

    /// Makes every id handed out from now on lie above `used`.
    fn raise_ids(&self, used: u64) -> Result<(), StoreError> {
        match &self.id_block {
            None => {
                self.ids.fetch_max(used, Ordering::AcqRel);
            }
            Some(block) => {
                self.db.raise_ids(used)?;
                // The block reserved at open may lie below: take a fresh one when next needed.
                let mut b = block.lock().unwrap_or_else(|e| e.into_inner());
                *b = 0..0;
            }
        }
        Ok(())
    }

    /// Whether every tree is empty.
    fn is_blank(&self) -> Result<bool, StoreError> {
        for name in TREES {
            if !self.db.tree(name)?.is_empty()? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Copies every entry of `from` into `to` (which must be empty), then verifies the copy's chain
/// against the source's.
pub fn copy_store(from: &Store, to: &Store) -> Result<Copied, StoreError> {
    if !to.is_blank()? {
        return Err(StoreError::Migration(
            "the target store is not empty; carebridge copies only into an empty one".into(),
        ));
    }
    let source = from.verify()?;
    if let Some(b) = &source.first_break {
        return Err(StoreError::Migration(format!(
            "the source store's chain is broken at entry {} ({}); nothing was copied",
            b.seq, b.reason
        )));
    }
    to.raise_ids(from.ids_used()?)?;
    let mut entries = 0;
    for name in TREES {
        let (src, dst) = (from.db.tree(name)?, to.db.tree(name)?);
        let mut chunk = Vec::with_capacity(CHUNK);
        for entry in src.iter() {
            chunk.push(entry?);
            if chunk.len() == CHUNK {
                entries += write(to, &dst, &chunk)?;
                chunk.clear();
            }
        }
        entries += write(to, &dst, &chunk)?;
    }
    let mut meta = Vec::new();
    for k in META_KEPT {
        if let Some(v) = from.db.meta(k)? {
            meta.push((k.to_vec(), v));
        }
    }
    write(to, to.db.meta_tree(), &meta)?;
    to.flush_blocking()?;
    let check = to.verify()?;
    if check.first_break.is_some() || check.head_seq != source.head_seq || check.head_hash != source.head_hash {
        return Err(StoreError::Migration("the copy does not verify against the source's chain".into()));
    }
    Ok(Copied { entries, chain_entries: check.head_seq, chain_head: check.head_hash })
}

fn write(store: &Store, tr: &super::engine::Tr, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<usize, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    store
        .transact(|tx| {
            let w = tx.on(tr);
            for (k, v) in rows {
                w.insert(k, v)?;
            }
            Ok::<(), TxError<()>>(())
        })
        .map_err(tx_err)?;
    Ok(rows.len())
}

/// `store migrate --into …` for a config with `backend = "postgres"`: the embedded store is the
/// one in its `data_dir`, the database the one `[store.postgres]` names. The daemon must be
/// stopped (every instance, when copying back).
pub fn run(config: &crate::config::Config, into: Target) -> anyhow::Result<Copied> {
    use anyhow::Context;
    let data_dir = &config.daemon.data_dir;
    let pg = config.store.postgres_settings(&config.config_dir)?.ok_or_else(|| {
        crate::exit::ConfigFailure(
            "store migrate --into needs store.backend = \"postgres\" and [store.postgres] in the config".into(),
        )
    })?;
    let keys: Keyring =
        config.store.keyring(&config.config_dir, data_dir).context("loading the record store's key file")?;
    let embedded_there = has_store(data_dir);
    let copied = match into {
        Target::Postgres => {
            if !embedded_there {
                return Err(
                    crate::exit::ConfigFailure(format!("no record store in {} to copy", data_dir.display())).into()
                );
            }
            let from = Store::open_with_cache(data_dir, keys.clone(), config.store.cache_mb)
                .with_context(|| format!("opening the record store in {}", data_dir.display()))?;
            let to = Store::open_postgres(keys, &pg).context("opening the record store in PostgreSQL")?;
            let copied = copy_store(&from, &to)?;
            from.close()?;
            copied
        }
        Target::Embedded => {
            if embedded_there {
                return Err(crate::exit::ConfigFailure(format!(
                    "{} already holds a record store; copy into an empty data directory",
                    data_dir.display()
                ))
                .into());
            }
            let from = Store::open_postgres(keys.clone(), &pg).context("opening the record store in PostgreSQL")?;
            let to = Store::open_with_cache(data_dir, keys, config.store.cache_mb)
                .with_context(|| format!("creating the record store in {}", data_dir.display()))?;
            let copied = copy_store(&from, &to)?;
            to.close()?;
            copied
        }
    };
    info!(entries = copied.entries, chain_entries = copied.chain_entries, "Record store copied.");
    Ok(copied)
}
