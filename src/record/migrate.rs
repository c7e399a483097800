//! Upgrades a schema-v1 store (plain JSON values, plain index keys, no journal) to v2 in place,
//! when it is opened by this version.
//!
//! The upgrade is **resumable**: a crash half-way leaves a store that the next start upgrades
//! again from where it stands. Values already sealed (they start with [`keys::MAGIC`], JSON never
//! does) are left alone, keys already blinded (they start with `0xFF`, text never does) too, and
//! the journal is rebuilt from scratch at the end. The schema version is written only after all
//! of it is flushed.
//!
//! The chain of an upgraded store starts at the upgrade: entries are appended in the order they
//! happened (record, quarantine and event times), so later tampering is detectable; what was
//! done to the v1 files before the upgrade is not (nothing recorded it).

use super::chain::{self, Append, Kind};
use super::keys::{self, Keyring};
use super::schema::{EventV1, QuarantineV1, RecordV1};
use super::{Store, StoreError, t};
use sled::transaction::ConflictableTransactionError;
use tracing::info;

/// Copies the database at `db_path` into a fresh one and puts it in its place, so that values
/// superseded by the upgrade (plaintext) do not linger in sled's log segments. Crash-safe: the
/// old directory is renamed away only after the copy is flushed, and removed last; a crash
/// before the swap leaves the old (already upgraded, resumable) database in place.
pub(super) fn rewrite_fresh(db_path: &std::path::Path) -> Result<(), StoreError> {
    let fresh = db_path.with_extension("upgrading");
    let old = db_path.with_extension("pre-upgrade");
    let io = |e: std::io::Error| StoreError::Sled(sled::Error::Io(e));
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(io)?;
    }
    {
        let src = sled::Config::new().path(db_path).open()?;
        let dst = sled::Config::new().path(&fresh).open()?;
        dst.import(src.export());
        dst.flush()?;
    }
    std::fs::rename(db_path, &old).map_err(io)?;
    std::fs::rename(&fresh, db_path).map_err(io)?;
    std::fs::remove_dir_all(&old).map_err(io)?;
    Ok(())
}

/// Entries per transaction while rebuilding the journal.
const CHUNK: usize = 1000;

/// Brings `store` from `from` to the current schema.
pub(super) fn upgrade(store: &Store, from: u32) -> Result<(), StoreError> {
    if from != 1 {
        return Err(StoreError::Schema { found: from, supported: super::schema::SCHEMA_VERSION });
    }
    info!(from, to = super::schema::SCHEMA_VERSION, "Upgrading the record store (sealing values, building the chain).");
    let k = &store.keys;
    // Values: sealed in place, keys unchanged.
    for (tree, name) in [
        (&store.records, t::RECORDS),
        (&store.conversations, t::CONVERSATIONS),
        (&store.outbox, t::OUTBOX),
        (&store.dead, t::DEAD),
        (&store.events, t::EVENTS),
        (&store.quarantine, t::QUARANTINE),
        (&store.review, t::REVIEW),
        (&store.link_codes, t::LINK_CODES),
    ] {
        for r in tree.iter() {
            let (key, v) = r?;
            if !keys::is_sealed(&v) {
                tree.insert(&key, k.seal(name, &key, &v))?;
            }
        }
    }
    // Index keys holding addresses, patient ids or channel ids: blinded (JSON values sealed).
    rekey(k, &store.by_source, "source", None)?;
    rekey(k, &store.by_native, "native", Some(t::BY_NATIVE))?;
    rekey(k, &store.links, "address", Some(t::LINKS))?;
    rekey(k, &store.consents, "consent", Some(t::CONSENTS))?;
    rekey(k, &store.notices, "notice", None)?;
    rebuild_chain(store)?;
    // Applied and checkpointed before the fresh copy, which takes sled's trees as they are.
    store.flush_blocking()?;
    store.chain_heads.insert(super::RECORDS_COUNT, &(store.records.len() as u64).to_be_bytes())?;
    store.db.flush()?;
    store.checkpoint()?;
    info!("Record store upgraded.");
    Ok(())
}

/// Moves every plain key of `tree` to its blinded form under `domain`, sealing its value for
/// the new key if `seal_as` names the tree's sealing context.
fn rekey(k: &Keyring, tree: &sled::Tree, domain: &str, seal_as: Option<&'static str>) -> Result<(), StoreError> {
    let plain: Vec<_> = tree.iter().collect::<Result<Vec<_>, _>>()?;
    for (key, v) in plain.into_iter().filter(|(key, _)| key.first() != Some(&0xFF)) {
        let new = k.blind(domain, &key);
        let value = match seal_as {
            Some(name) if !keys::is_sealed(&v) => k.seal(name, &new, &v),
            _ => v.to_vec(),
        };
        // Insert first: a crash between the two leaves a plain key the next run moves again.
        tree.insert(new.as_slice(), value)?;
        tree.remove(&key)?;
    }
    Ok(())
}

/// One entry of the rebuilt journal.
struct Pending {
    at_ms: u64,
    order: u8,
    kind: Kind,
    tree: &'static str,
    key: Vec<u8>,
    sealed: Vec<u8>,
    patient: Option<Vec<u8>>,
}

fn rebuild_chain(store: &Store) -> Result<(), StoreError> {
    store.journal.clear()?;
    store.chain_heads.clear()?;
    let mut all = Vec::new();
    let mut patient_of = std::collections::HashMap::new();
    for r in store.records.iter() {
        let (key, v) = r?;
        let rec: RecordV1 = store.unseal(t::RECORDS, &key, &v)?;
        let patient = rec.patient_id.as_deref().map(|p| store.patient_key(p));
        patient_of.insert(rec.id.0, patient.clone());
        all.push(Pending {
            at_ms: rec.recorded_at_ms,
            order: 0,
            kind: Kind::Record,
            tree: t::RECORDS,
            key: key.to_vec(),
            sealed: v.to_vec(),
            patient,
        });
    }
    for r in store.quarantine.iter() {
        let (key, v) = r?;
        let q: QuarantineV1 = store.unseal(t::QUARANTINE, &key, &v)?;
        all.push(Pending {
            at_ms: q.at_ms,
            order: 1,
            kind: Kind::Quarantine,
            tree: t::QUARANTINE,
            key: key.to_vec(),
            sealed: v.to_vec(),
            patient: None,
        });
    }
    for r in store.events.iter() {
        let (key, v) = r?;
        let e: EventV1 = store.unseal(t::EVENTS, &key, &v)?;
        let record = key.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
        all.push(Pending {
            at_ms: e.at_ms,
            order: 2,
            kind: Kind::Event,
            tree: t::EVENTS,
            key: key.to_vec(),
            sealed: v.to_vec(),
            patient: patient_of.get(&record).cloned().flatten(),
        });
    }
    all.sort_by(|a, b| (a.at_ms, a.order, &a.key).cmp(&(b.at_ms, b.order, &b.key)));
    for chunk in all.chunks(CHUNK) {
        store
            .log
            .transact(|tx| {
                let (journal, heads) = (&tx.on(&store.journal), &tx.on(&store.chain_heads));
                for p in chunk {
                    chain::append(
                        &store.chain_key,
                        journal,
                        heads,
                        Append {
                            kind: p.kind,
                            tree: p.tree,
                            key: &p.key,
                            sealed: &p.sealed,
                            patient: p.patient.as_deref(),
                            at_ms: p.at_ms,
                        },
                    )?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(super::tx_err)?;
    }
    Ok(())
}
