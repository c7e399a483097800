//! The record store: the patient's file, over sled. Only this module touches sled.
//!
//! Every exchange is written in **one transaction** together with its dedup index entry, its
//! conversation, its native-id references and its outbox rows (a transactional outbox), so
//! "recorded but never queued" and "queued but not recorded" cannot happen. Nothing written here
//! is durable until [`Flusher`] has flushed it; receipts and outbox wake-ups go out only after.
//!
//! Trees: `records`, `by_source`, `conversations`, `by_native`, `outbox`, `dead`, `events`,
//! `quarantine`, `review`, `links`, `link_codes`, `consents`, `notices`, `meta`. Keys are big-endian ids or
//! `\0`-joined strings; values are versioned JSON ([`schema`]).

pub mod fhir;
pub mod flusher;
pub mod schema;

pub use flusher::Flusher;

use crate::policy::ConsentGrant;
use carebridge_contract::{AccountId, DeliveryId, RecordId, SourceKey};
use schema::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why the store failed. Callers answer `Receipt::Unavailable` and log loudly: the source keeps
/// the message and redelivers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption error.
    #[error("store I/O: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value could not be decoded (unknown version, corruption).
    #[error("store value under `{tree}` could not be decoded: {reason}")]
    Decode {
        /// The tree.
        tree: &'static str,
        /// serde's message (about the shape, not the content).
        reason: String,
    },
    /// The store was written by a newer carebridge.
    #[error("store schema version {found} is newer than this program's {supported}")]
    Schema {
        /// On disk.
        found: u32,
        /// Known here.
        supported: u32,
    },
    /// The data directory is in use by another carebridge.
    #[error("the data directory {0} is locked by another running carebridge")]
    Locked(String),
}

/// A key into the outbox: destination account plus FIFO sequence number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxKey {
    /// The sending account.
    pub account: AccountId,
    /// Monotonic sequence: FIFO order per account.
    pub seq: u64,
}

impl OutboxKey {
    fn encode(&self) -> Vec<u8> {
        let mut k = self.account.to_string().into_bytes();
        k.push(0);
        k.extend_from_slice(&self.seq.to_be_bytes());
        k
    }
}

/// What one attempt did to its outbox row (see [`Store::apply_outbox`]).
#[derive(Debug)]
pub enum OutboxUpdate {
    /// Sent: the row goes; the channel's ids for it are remembered.
    Sent {
        /// The row.
        key: OutboxKey,
        /// Its content.
        item: OutboxItemV1,
        /// The channel's ids for what was sent.
        native_ids: Vec<String>,
        /// Appended to the record.
        events: Vec<EventKind>,
    },
    /// Failed, to be retried: the row is rewritten (attempts, not before).
    Retry {
        /// The row.
        key: OutboxKey,
        /// Its new content.
        item: OutboxItemV1,
        /// Appended to the record.
        events: Vec<EventKind>,
    },
    /// Given up: the row moves to the dead letters.
    Dead {
        /// The row.
        key: OutboxKey,
        /// Its content.
        item: OutboxItemV1,
        /// Why (PHI-free).
        reason: String,
        /// Appended to the record.
        events: Vec<EventKind>,
    },
    /// Held back (consent withdrawn): the row moves to the review queue.
    Review {
        /// The row.
        key: OutboxKey,
        /// Its content.
        item: OutboxItemV1,
        /// The rule that held it.
        rule: String,
        /// Appended to the record.
        events: Vec<EventKind>,
    },
}

impl OutboxUpdate {
    fn key(&self) -> &OutboxKey {
        match self {
            OutboxUpdate::Sent { key, .. }
            | OutboxUpdate::Retry { key, .. }
            | OutboxUpdate::Dead { key, .. }
            | OutboxUpdate::Review { key, .. } => key,
        }
    }

    fn item(&self) -> &OutboxItemV1 {
        match self {
            OutboxUpdate::Sent { item, .. }
            | OutboxUpdate::Retry { item, .. }
            | OutboxUpdate::Dead { item, .. }
            | OutboxUpdate::Review { item, .. } => item,
        }
    }

    fn events(&self) -> &[EventKind] {
        match self {
            OutboxUpdate::Sent { events, .. }
            | OutboxUpdate::Retry { events, .. }
            | OutboxUpdate::Dead { events, .. }
            | OutboxUpdate::Review { events, .. } => events,
        }
    }
}

/// Everything one inbound message writes, prepared by the router and committed atomically.
#[derive(Debug)]
pub struct Exchange {
    /// The record.
    pub record: RecordV1,
    /// The conversation, new or updated (class).
    pub conversation: ConversationV1,
    /// Channel-native ids that now point at this conversation (`kind\0native`).
    pub native_refs: Vec<(String, NativeRefV1)>,
    /// Deliveries to queue.
    pub outbox: Vec<(OutboxKey, OutboxItemV1)>,
    /// Deliveries held for review.
    pub review: Vec<ReviewItemV1>,
    /// A link redeemed by this message: the address key, the link, the code's hash and the
    /// consent the link grants.
    pub link: Option<(String, LinkV1, String, ConsentGrant)>,
    /// Unprompted notices sent with this exchange (`kind\0account\0address`), stamped with the
    /// time so the router sends them at most once per interval.
    pub notice_marks: Vec<String>,
}

/// What [`Store::commit_exchange`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// Written.
    New,
    /// The source key was already recorded under this id; nothing written.
    Duplicate(RecordId),
}

/// Counts for the `Status.` log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Records.
    pub records: usize,
    /// Outbox rows waiting.
    pub outbox_pending: usize,
    /// Dead letters.
    pub dead: usize,
    /// Quarantined inputs.
    pub quarantined: usize,
    /// Deliveries held for review.
    pub held: usize,
}

/// The store. Cheap to clone (sled trees are reference-counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    records: Tree,
    by_source: Tree,
    conversations: Tree,
    by_native: Tree,
    outbox: Tree,
    dead: Tree,
    events: Tree,
    quarantine: Tree,
    review: Tree,
    links: Tree,
    link_codes: Tree,
    consents: Tree,
    notices: Tree,
    log_key: [u8; 32],
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own types always serialize (no maps with non-string keys, no failing impls).
    serde_json::to_vec(v).unwrap_or_default()
}

fn dec<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    // serde's message can quote the offending value (PHI in a record): keep only its category
    // and position, since this error is logged.
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
        tree,
        reason: format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()),
    })
}

fn join(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn source_key(s: &SourceKey) -> Vec<u8> {
    join(&s.account.to_string(), &s.native_id)
}

fn abort<E>(e: E) -> ConflictableTransactionError<E> {
    ConflictableTransactionError::Abort(e)
}

impl Store {
    /// Opens (or creates) the store in `dir`. Fails at once if another process holds it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let db = sled::Config::new().path(dir.join("db")).flush_every_ms(Some(500)).open().map_err(|e| match &e {
            sled::Error::Io(io) if io.to_string().contains("lock") => StoreError::Locked(dir.display().to_string()),
            _ => StoreError::Sled(e),
        })?;
        let t = |n: &str| db.open_tree(n);
        let meta = t("meta")?;
        match meta.get("schema_version")? {
            Some(v) => {
                let found = v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(u32::MAX);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::Schema { found, supported: SCHEMA_VERSION });
                }
            }
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            }
        }
        let log_key: [u8; 32] = match meta.get("log_key")? {
            Some(k) if k.len() == 32 => k.as_ref().try_into().unwrap_or([0; 32]),
            _ => {
                let k: [u8; 32] = rand::random();
                meta.insert("log_key", &k)?;
                k
            }
        };
        db.flush()?;
        Ok(Store {
            records: t("records")?,
            by_source: t("by_source")?,
            conversations: t("conversations")?,
            by_native: t("by_native")?,
            outbox: t("outbox")?,
            dead: t("dead")?,
            events: t("events")?,
            quarantine: t("quarantine")?,
            review: t("review")?,
            links: t("links")?,
            link_codes: t("link_codes")?,
            consents: t("consents")?,
            notices: t("notices")?,

            log_key,
            db,
        })
    }

    /// A fresh monotonic id (records, deliveries, outbox sequence, events).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()? + 1)
    }

    /// Makes everything written so far durable. Blocking: call it from [`Flusher`] only (sled's
    /// `flush_async` hangs when many tasks call it at once, sled issue 1308).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// A keyed hash of a patient id for logs: stable within this store, meaningless outside it.
    pub fn patient_ref(&self, patient_id: &str) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.log_key) {
            Ok(m) => m,
            Err(_) => return "p?".into(),
        };
        mac.update(patient_id.as_bytes());
        let out = mac.finalize().into_bytes();
        format!("p#{}", hex::encode(&out[..6]))
    }

    /// The record a source key was recorded under, if any.
    pub fn lookup_source(&self, source: &SourceKey) -> Result<Option<RecordId>, StoreError> {
        Ok(self
            .by_source
            .get(source_key(source))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes).map(RecordId)))
    }

    /// A record.
    pub fn record(&self, id: RecordId) -> Result<Option<RecordV1>, StoreError> {
        self.records.get(id.0.to_be_bytes())?.map(|v| dec("records", &v)).transpose()
    }

    /// All records, oldest first (for audits and tests).
    pub fn records(&self) -> impl Iterator<Item = Result<RecordV1, StoreError>> + '_ {
        self.records.iter().map(|r| r.map_err(StoreError::from).and_then(|(_, v)| dec("records", &v)))
    }

    /// Events appended to a record, oldest first.
    pub fn events(&self, id: RecordId) -> Result<Vec<EventV1>, StoreError> {
        self.events.scan_prefix(id.0.to_be_bytes()).map(|r| dec("events", &r?.1)).collect()
    }

    /// A conversation by token.
    pub fn conversation(&self, token: &str) -> Result<Option<ConversationV1>, StoreError> {
        self.conversations.get(token.as_bytes())?.map(|v| dec("conversations", &v)).transpose()
    }

    /// What a channel-native id (of a given channel kind) points at.
    pub fn native_ref(&self, kind: &str, native: &str) -> Result<Option<NativeRefV1>, StoreError> {
        self.by_native.get(join(kind, native))?.map(|v| dec("by_native", &v)).transpose()
    }

    /// The patient an address was linked to (by code), if any.
    pub fn linked_patient(&self, address_key: &str) -> Result<Option<LinkV1>, StoreError> {
        self.links.get(address_key.as_bytes())?.map(|v| dec("links", &v)).transpose()
    }

    /// Consents in force for a patient on an account.
    pub fn consents(&self, patient_id: &str, account: &str) -> Result<Vec<ConsentGrant>, StoreError> {
        Ok(self.consents.get(join(patient_id, account))?.map(|v| dec("consents", &v)).transpose()?.unwrap_or_default())
    }

    /// Records a consent (CLI / admin API). Durable after the next flush.
    pub fn grant_consent(&self, patient_id: &str, grant: ConsentGrant) -> Result<(), StoreError> {
        let key = join(patient_id, &grant.account);
        let mut all = self.consents(patient_id, &grant.account)?;
        all.retain(|g| g.purpose != grant.purpose);
        all.push(grant);
        self.consents.insert(key, enc(&all))?;
        Ok(())
    }

    /// Withdraws all consents of a patient on an account.
    pub fn withdraw_consent(&self, patient_id: &str, account: &str) -> Result<bool, StoreError> {
        Ok(self.consents.remove(join(patient_id, account))?.is_some())
    }

    /// When an unprompted notice with this mark last went out (unix ms).
    pub fn notice_sent_at(&self, mark: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.notices.get(mark.as_bytes())?.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Stores a link code (only its hash is kept).
    pub fn put_link_code(&self, code_hash: &str, code: &LinkCodeV1) -> Result<(), StoreError> {
        self.link_codes.insert(code_hash.as_bytes(), enc(code))?;
        Ok(())
    }

    /// Looks up a link code by its hash.
    pub fn link_code(&self, code_hash: &str) -> Result<Option<LinkCodeV1>, StoreError> {
        self.link_codes.get(code_hash.as_bytes())?.map(|v| dec("link_codes", &v)).transpose()
    }

    /// Writes a batch of exchanges in **one** transaction: each one whole or (if its source key is
    /// already recorded, also earlier in the same batch) not at all, reported per exchange.
    ///
    /// One transaction per batch, not per message, because sled's transactions take a global
    /// write lock that waits for any flush in progress (a flush holds the read side through its
    /// fsync): per-message transactions each waited for a flush.
    pub fn commit_exchanges(&self, batch: &[Exchange]) -> Result<Vec<Committed>, StoreError> {
        let trees: [&Tree; 10] = [
            &self.records,
            &self.by_source,
            &self.conversations,
            &self.by_native,
            &self.outbox,
            &self.review,
            &self.links,
            &self.link_codes,
            &self.consents,
            &self.notices,
        ];
        let encoded: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> =
            batch.iter().map(|ex| (source_key(&ex.record.source), enc(&ex.record), enc(&ex.conversation))).collect();
        let r = trees[..].transaction(|t: &Vec<TransactionalTree>| {
            let (records, by_source, conversations, by_native, outbox, review, links, link_codes, consents) =
                (&t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6], &t[7], &t[8]);
            let notices = &t[9];
            let mut results = Vec::with_capacity(batch.len());
            for (ex, (skey, record, conv)) in batch.iter().zip(&encoded) {
                if let Some(existing) = by_source.get(skey)? {
                    let id = existing.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
                    results.push(Committed::Duplicate(RecordId(id)));
                    continue;
                }
                let rid = ex.record.id;
                records.insert(&rid.0.to_be_bytes(), record.as_slice())?;
                by_source.insert(skey.as_slice(), &rid.0.to_be_bytes())?;
                conversations.insert(ex.conversation.token.as_bytes(), conv.as_slice())?;
                for (k, v) in &ex.native_refs {
                    by_native.insert(k.as_bytes(), enc(v))?;
                }
                for (k, v) in &ex.outbox {
                    outbox.insert(k.encode(), enc(v))?;
                }
                for item in &ex.review {
                    review.insert(&item.item.delivery.id.0.to_be_bytes(), enc(item))?;
                }
                if let Some((addr, link, code_hash, grant)) = &ex.link {
                    links.insert(addr.as_bytes(), enc(link))?;
                    link_codes.remove(code_hash.as_bytes())?;
                    let key = join(&link.patient_id, &link.account);
                    let mut all: Vec<ConsentGrant> =
                        consents.get(&key)?.and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or_default();
                    all.retain(|g| g.purpose != grant.purpose);
                    all.push(grant.clone());
                    consents.insert(key, enc(&all))?;
                }
                for mark in &ex.notice_marks {
                    notices.insert(mark.as_bytes(), &now_ms().to_be_bytes())?;
                }
                results.push(Committed::New);
            }
            Ok::<_, ConflictableTransactionError<()>>(results)
        });
        r.map_err(tx_err)
    }

    /// Stores malformed input in quarantine, unless its source key was already seen.
    pub fn commit_quarantine(&self, q: &QuarantineV1) -> Result<Committed, StoreError> {
        let skey = source_key(&q.source);
        let value = enc(q);
        let r = (&self.quarantine, &self.by_source).transaction(|(quarantine, by_source)| {
            if let Some(existing) = by_source.get(&skey)? {
                let id = existing.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
                return Err(abort(RecordId(id)));
            }
            quarantine.insert(&q.id.0.to_be_bytes(), value.as_slice())?;
            by_source.insert(skey.as_slice(), &q.id.0.to_be_bytes())?;
            Ok(())
        });
        match r {
            Ok(()) => Ok(Committed::New),
            Err(TransactionError::Abort(id)) => Ok(Committed::Duplicate(id)),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// Quarantined inputs, oldest first (for the privacy officer's export).
    pub fn quarantine_entries(&self) -> Result<Vec<QuarantineV1>, StoreError> {
        self.quarantine.iter().map(|r| dec("quarantine", &r?.1)).collect()
    }

    /// Outbox keys of one account, FIFO order.
    pub fn outbox_keys(&self, account: &AccountId) -> Result<Vec<OutboxKey>, StoreError> {
        let prefix = join(&account.to_string(), "");
        self.outbox
            .scan_prefix(&prefix)
            .keys()
            .map(|k| {
                let k = k?;
                let seq = k[prefix.len()..].try_into().map(u64::from_be_bytes).unwrap_or(0);
                Ok(OutboxKey { account: account.clone(), seq })
            })
            .collect()
    }

    /// One outbox row.
    pub fn outbox_item(&self, key: &OutboxKey) -> Result<Option<OutboxItemV1>, StoreError> {
        self.outbox.get(key.encode())?.map(|v| dec("outbox", &v)).transpose()
    }

    /// Applies what a worker's attempts did to their outbox rows, all in one transaction (one
    /// per completed group of sends, not per send: sled transactions wait for any flush in
    /// progress). Each update also appends its events to the record; a sent delivery's channel
    /// ids are remembered so replies to it find the conversation.
    pub fn apply_outbox(&self, updates: &[OutboxUpdate]) -> Result<(), StoreError> {
        let mut prepared = Vec::with_capacity(updates.len());
        for u in updates {
            let item = u.item();
            let mut evs = Vec::new();
            for e in u.events() {
                evs.push((
                    self.event_key(item.delivery.record_id)?,
                    enc(&EventV1 { v: 1, at_ms: now_ms(), kind: e.clone() }),
                ));
            }
            prepared.push((u.key().encode(), evs));
        }
        (&self.outbox, &self.events, &self.by_native, &self.dead, &self.review)
            .transaction(|(outbox, events, by_native, dead, review)| {
                for (u, (okey, evs)) in updates.iter().zip(&prepared) {
                    for (k, v) in evs {
                        events.insert(k.as_slice(), v.as_slice())?;
                    }
                    match u {
                        OutboxUpdate::Retry { item, .. } => {
                            outbox.insert(okey.as_slice(), enc(item))?;
                        }
                        OutboxUpdate::Sent { item, native_ids, .. } => {
                            outbox.remove(okey.as_slice())?;
                            let kind = item.delivery.account.kind().as_str();
                            let nref = enc(&NativeRefV1 {
                                v: 1,
                                conversation: item.delivery.conversation.expose().clone(),
                                record: item.delivery.record_id,
                            });
                            for n in native_ids {
                                by_native.insert(join(kind, n), nref.as_slice())?;
                            }
                        }
                        OutboxUpdate::Dead { item, reason, .. } => {
                            outbox.remove(okey.as_slice())?;
                            let d = DeadLetterV1 { v: 1, at_ms: now_ms(), item: item.clone(), reason: reason.clone() };
                            dead.insert(&item.delivery.id.0.to_be_bytes(), enc(&d))?;
                        }
                        OutboxUpdate::Review { item, rule, .. } => {
                            outbox.remove(okey.as_slice())?;
                            let r = ReviewItemV1 {
                                v: 1,
                                at_ms: now_ms(),
                                item: item.clone(),
                                rules: vec![rule.clone()],
                                reject_notice: None,
                            };
                            review.insert(&item.delivery.id.0.to_be_bytes(), enc(&r))?;
                        }
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(tx_err)
    }

    /// Dead letters, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterV1>, StoreError> {
        self.dead.iter().map(|r| dec("dead", &r?.1)).collect()
    }

    /// Deliveries held for review, oldest first.
    pub fn held(&self) -> Result<Vec<ReviewItemV1>, StoreError> {
        self.review.iter().map(|r| dec("review", &r?.1)).collect()
    }

    /// Resolves a held delivery: approved → queued in the outbox (returns its key); rejected →
    /// its rejection notice (if any) is queued instead. Both are appended to the record.
    pub fn resolve_review(
        &self,
        delivery: DeliveryId,
        approve: bool,
        by: &str,
    ) -> Result<Option<Vec<OutboxKey>>, StoreError> {
        let Some(raw) = self.review.get(delivery.0.to_be_bytes())? else { return Ok(None) };
        let held: ReviewItemV1 = dec("review", &raw)?;
        let mut queue = Vec::new();
        if approve {
            let mut item = held.item.clone();
            item.not_before_ms = 0;
            queue.push((OutboxKey { account: item.delivery.account.clone(), seq: self.next_id()? }, item));
        } else if let Some(notice) = &held.reject_notice {
            let mut n = notice.clone();
            n.id = DeliveryId(self.next_id()?);
            let item = OutboxItemV1 {
                v: 1,
                delivery: n,
                attempts: 0,
                not_before_ms: 0,
                patient_id: None,
                requires_consent: false,
            };
            queue.push((OutboxKey { account: item.delivery.account.clone(), seq: self.next_id()? }, item));
        }
        let ekey = self.event_key(held.item.delivery.record_id)?;
        let ev = enc(&EventV1 {
            v: 1,
            at_ms: now_ms(),
            kind: EventKind::Reviewed {
                delivery,
                verdict: if approve { "approved" } else { "rejected" }.into(),
                by: by.to_string(),
            },
        });
        (&self.review, &self.outbox, &self.events)
            .transaction(|(review, outbox, events)| {
                review.remove(&delivery.0.to_be_bytes())?;
                for (k, v) in &queue {
                    outbox.insert(k.encode(), enc(v))?;
                }
                events.insert(ekey.as_slice(), ev.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(tx_err)?;
        Ok(Some(queue.into_iter().map(|(k, _)| k).collect()))
    }

    fn event_key(&self, record: RecordId) -> Result<Vec<u8>, StoreError> {
        let mut k = record.0.to_be_bytes().to_vec();
        k.extend_from_slice(&self.next_id()?.to_be_bytes());
        Ok(k)
    }

    /// Counts for the status line.
    pub fn stats(&self) -> Stats {
        Stats {
            records: self.records.len(),
            outbox_pending: self.outbox.len(),
            dead: self.dead.len(),
            quarantined: self.quarantine.len(),
            held: self.review.len(),
        }
    }
}

fn tx_err(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(e) => StoreError::Sled(e),
        TransactionError::Abort(()) => StoreError::Decode { tree: "transaction", reason: "aborted".into() },
    }
}
