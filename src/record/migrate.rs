//! Upgrades what a schema-v1 store held (plain JSON values, plain index keys, no journal) to the
//! sealed, blinded and chained form, during an import ([`super::import`]): the v1 entries are
//! copied into the import's staging engine as they were, upgraded there, and the result copied
//! into a fresh engine, so that no plaintext stays in the engine the daemon then uses.
//!
//! Values already sealed (they start with [`keys::MAGIC`], JSON never does) are left alone, keys
//! already blinded (they start with `0xFF`, text never does) too, and the journal is rebuilt from
//! scratch at the end.
//!
//! The chain of an upgraded store starts at the upgrade: entries are appended in the order they
//! happened (record, quarantine and event times), so later tampering is detectable; what was
//! done to the v1 files before the upgrade is not (nothing recorded it).

use super::chain::{self, Append, Kind};
use super::engine::{Tr, TxError};
use super::keys::{self, Keyring};
use super::schema::{EventV1, QuarantineV1, RecordV1};
use super::{Store, StoreError, t};
use tracing::info;

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
        let plain: Vec<_> = tree.iter().collect::<Result<Vec<_>, _>>()?;
        for chunk in plain.chunks(CHUNK) {
            store
                .transact(|tx| {
                    let w = tx.on(tree);
                    for (key, v) in chunk.iter().filter(|(_, v)| !keys::is_sealed(v)) {
                        w.insert(key, k.seal(name, key, v))?;
                    }
                    Ok::<(), TxError<()>>(())
                })
                .map_err(super::tx_err)?;
        }
    }
    // Index keys holding addresses, patient ids or channel ids: blinded (JSON values sealed).
    rekey(store, &store.by_source, "source", None)?;
    rekey(store, &store.by_native, "native", Some(t::BY_NATIVE))?;
    rekey(store, &store.links, "address", Some(t::LINKS))?;
    rekey(store, &store.consents, "consent", Some(t::CONSENTS))?;
    rekey(store, &store.notices, "notice", None)?;
    rebuild_chain(store)?;
    let count = store.records.len()? as u64;
    store
        .transact(|tx| {
            tx.on(&store.chain_heads).insert(super::RECORDS_COUNT, count.to_be_bytes())?;
            Ok::<(), TxError<()>>(())
        })
        .map_err(super::tx_err)?;
    store.flush_blocking()?;
    info!("Record store upgraded.");
    Ok(())
}

/// Moves every plain key of `tree` to its blinded form under `domain`, sealing its value for
/// the new key if `seal_as` names the tree's sealing context.
fn rekey(store: &Store, tree: &Tr, domain: &str, seal_as: Option<&'static str>) -> Result<(), StoreError> {
    let k: &Keyring = &store.keys;
    let plain: Vec<_> = tree.iter().collect::<Result<Vec<_>, _>>()?;
    let plain: Vec<_> = plain.into_iter().filter(|(key, _)| key.first() != Some(&0xFF)).collect();
    for chunk in plain.chunks(CHUNK) {
        store
            .transact(|tx| {
                let w = tx.on(tree);
                for (key, v) in chunk {
                    let new = k.blind(domain, key);
                    let value = match seal_as {
                        Some(name) if !keys::is_sealed(v) => k.seal(name, &new, v),
                        _ => v.to_vec(),
                    };
                    w.insert(new.as_slice(), value)?;
                    w.remove(key)?;
                }
                Ok::<(), TxError<()>>(())
            })
            .map_err(super::tx_err)?;
    }
    Ok(())
}

/// One entry of the rebuilt journal.
struct Pending {
    at_ms: u64,
    order: u8,
    kind: Kind,
    key: Vec<u8>,
    sealed: Vec<u8>,
    patient: Option<Vec<u8>>,
}

fn rebuild_chain(store: &Store) -> Result<(), StoreError> {
    for tree in [&store.journal, &store.chain_heads] {
        let old: Vec<_> = tree.iter().collect::<Result<Vec<_>, _>>()?;
        for chunk in old.chunks(CHUNK) {
            store
                .transact(|tx| {
                    for (key, _) in chunk {
                        tx.on(tree).remove(key)?;
                    }
                    Ok::<(), TxError<()>>(())
                })
                .map_err(super::tx_err)?;
        }
    }
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
            key: key.to_vec(),
            sealed: v.to_vec(),
            patient: patient_of.get(&record).cloned().flatten(),
        });
    }
    all.sort_by(|a, b| (a.at_ms, a.order, &a.key).cmp(&(b.at_ms, b.order, &b.key)));
    for chunk in all.chunks(CHUNK) {
        store
            .transact(|tx| {
                let (journal, heads) = (&tx.on(&store.journal), &tx.on(&store.chain_heads));
                for p in chunk {
                    chain::append(
                        &store.chain_key,
                        journal,
                        heads,
                        Append {
                            kind: p.kind,
                            key: &p.key,
                            sealed: &p.sealed,
                            patient: p.patient.as_deref(),
                            at_ms: p.at_ms,
                        },
                    )?;
                }
                Ok::<(), TxError<()>>(())
            })
            .map_err(super::tx_err)?;
    }
    Ok(())
}
