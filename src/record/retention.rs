//! Retention: removing the bodies of entries older than their kind's retention period, without
//! breaking the chain.
//!
//! A purge never touches the journal's existing entries: it deletes the bodies (records and
//! their events, quarantined input, audit entries) and appends **tombstones** that name the
//! journal entries emptied, with the rule and cutoff applied. `records verify` accepts a missing
//! body only if a later tombstone accounts for it. Tombstones themselves are never purged.
//!
//! The cutoffs come from `[store.retention]`; [`cutoffs`] refuses any that would reach inside a
//! retention period (the floor), whatever the operator asks.

use super::chain::{self, Append, Kind, TombstoneV1};
use super::engine::TxError;
use super::settings::RetentionConfig;
use super::{Store, StoreError, now_ms, t};

/// A body due for removal: its journal entry, tree and key.
type Due = (u64, &'static str, Vec<u8>);

/// Entries emptied per tombstone (and per transaction).
const CHUNK: usize = 500;
const DAY_MS: u64 = 86_400_000;

/// The oldest time each kind of entry must be kept from (unix ms): entries older may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cutoffs {
    /// Exchanges and their events.
    pub exchanges_ms: u64,
    /// Quarantined input.
    pub quarantine_ms: u64,
    /// Audit entries.
    pub audit_ms: u64,
}

/// Why a purge was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("refused: {kind} must be kept {floor} days (store.retention); {asked} days would purge inside that floor")]
pub struct InsideFloor {
    /// Which kind.
    pub kind: &'static str,
    /// The configured retention.
    pub floor: u32,
    /// What was asked.
    pub asked: u32,
}

/// The cutoffs for a purge at `now_ms`: entries older than the configured retention, or than
/// `older_than_days` if given — which may only be longer than every retention, never shorter.
pub fn cutoffs(r: &RetentionConfig, older_than_days: Option<u32>, now_ms: u64) -> Result<Cutoffs, InsideFloor> {
    let pick = |kind: &'static str, floor: u32| -> Result<u64, InsideFloor> {
        let days = match older_than_days {
            Some(asked) if asked < floor => return Err(InsideFloor { kind, floor, asked }),
            Some(asked) => asked,
            None => floor,
        };
        Ok(now_ms.saturating_sub(u64::from(days) * DAY_MS))
    };
    Ok(Cutoffs {
        exchanges_ms: pick("exchanges", r.exchanges_days)?,
        quarantine_ms: pick("quarantined input", r.quarantine_days)?,
        audit_ms: pick("audit entries", r.audit_days)?,
    })
}

/// What a purge removed (or would remove, on a dry run).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    /// Exchanges removed.
    pub records: u64,
    /// Events removed.
    pub events: u64,
    /// Quarantined inputs removed.
    pub quarantined: u64,
    /// Audit entries removed.
    pub audit: u64,
    /// Tombstones appended.
    pub tombstones: u64,
    /// Whether nothing was changed.
    pub dry_run: bool,
}

impl Store {
    /// Removes every body older than its cutoff and appends tombstones for them. Durable after
    /// the next flush.
    pub fn purge(&self, c: Cutoffs, by: &str, dry_run: bool) -> Result<PurgeReport, StoreError> {
        let mut report = PurgeReport { dry_run, ..Default::default() };
        // (rule, cutoff) → entries: (seq, tree, key)
        let mut due: Vec<(&'static str, u64, Vec<Due>)> = vec![
            ("exchanges", c.exchanges_ms, vec![]),
            ("quarantine", c.quarantine_ms, vec![]),
            ("audit", c.audit_ms, vec![]),
        ];
        for e in chain::entries(&self.journal) {
            let e = e?.map_err(|seq| StoreError::Decode {
                tree: "journal",
                reason: format!("entry {seq} is not decodable"),
            })?;
            let (slot, tree, counter) = match e.kind {
                Kind::Record => (0, t::RECORDS, &mut report.records),
                Kind::Event => (0, t::EVENTS, &mut report.events),
                Kind::Quarantine => (1, t::QUARANTINE, &mut report.quarantined),
                Kind::Audit => (2, t::AUDIT, &mut report.audit),
                Kind::Tombstone => continue,
            };
            if e.at_ms >= due[slot].1 {
                continue;
            }
            let tree_handle = match tree {
                t::RECORDS => &self.records,
                t::EVENTS => &self.events,
                t::QUARANTINE => &self.quarantine,
                _ => &self.audit,
            };
            if tree_handle.contains_key(&e.key)? {
                *counter += 1;
                due[slot].2.push((e.seq, tree, e.key));
            }
        }
        if dry_run {
            return Ok(report);
        }
        for (rule, cutoff, entries) in &due {
            for chunk in entries.chunks(CHUNK) {
                let id = self.next_id()?;
                let key = id.to_be_bytes();
                let at_ms = now_ms();
                let body = self.seal(
                    t::TOMBSTONES,
                    &key,
                    &TombstoneV1 {
                        v: 1,
                        purged: chunk.iter().map(|(s, _, _)| *s).collect(),
                        rule: rule.to_string(),
                        cutoff_ms: *cutoff,
                        by: by.to_string(),
                    },
                );
                self.transact(|tx| {
                    let (records, events, quarantine, audit, tombstones, journal, heads) = (
                        &tx.on(&self.records),
                        &tx.on(&self.events),
                        &tx.on(&self.quarantine),
                        &tx.on(&self.audit),
                        &tx.on(&self.tombstones),
                        &tx.on(&self.journal),
                        &tx.on(&self.chain_heads),
                    );
                    let records_gone = chunk.iter().filter(|(_, tree, _)| *tree == t::RECORDS).count();
                    if records_gone > 0 {
                        super::add_records(heads, -(records_gone as i64))?;
                    }
                    let blobs = &tx.on(&self.blobs);
                    for (_, tree, k) in chunk {
                        if *tree == t::RECORDS {
                            // The record's attachments go with it.
                            for (blob, _) in blobs.scan_prefix(k)? {
                                blobs.remove(blob)?;
                            }
                        }
                        match *tree {
                            t::RECORDS => records.remove(k.as_slice())?,
                            t::EVENTS => events.remove(k.as_slice())?,
                            t::QUARANTINE => quarantine.remove(k.as_slice())?,
                            _ => audit.remove(k.as_slice())?,
                        };
                    }
                    tombstones.insert(key, body.as_slice())?;
                    chain::append(
                        &self.chain_key,
                        journal,
                        heads,
                        Append { kind: Kind::Tombstone, key: &key, sealed: &body, patient: None, at_ms },
                    )?;
                    Ok::<(), TxError<()>>(())
                })
                .map_err(super::tx_err)?;
                report.tombstones += 1;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_inside_any_retention_floor_is_refused() {
        let r = RetentionConfig { exchanges_days: 3650, quarantine_days: 90, audit_days: 3650 };
        let now = 4000 * DAY_MS;
        let c = cutoffs(&r, None, now).unwrap();
        assert_eq!(c.exchanges_ms, 350 * DAY_MS);
        assert_eq!(c.quarantine_ms, 3910 * DAY_MS);
        let e = cutoffs(&r, Some(30), now).unwrap_err();
        assert_eq!(e.kind, "exchanges");
        assert!(e.to_string().contains("3650 days"), "{e}");
        let longer = cutoffs(&r, Some(3700), now).unwrap();
        assert_eq!(longer.quarantine_ms, 300 * DAY_MS, "a longer period applies to every kind");
    }
}
