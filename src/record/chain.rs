//! The record's hash chain: every entry of the patient's file (exchange, event, quarantined
//! input, audit entry, tombstone) gets a **journal** entry, written in the same transaction as
//! the entry itself, that carries the hash of the sealed body and the hash of the previous
//! journal entry, both of the whole store (the global chain) and of the same patient (the
//! patient's chain). Deleting, altering, reordering or inserting an entry breaks a link, and
//! [`verify`] names the first broken one.
//!
//! Entry hashes are HMAC-SHA-256 under a key derived from the key file's index key, not plain
//! SHA-256: whoever can write the data directory but does not hold the key file cannot forge a
//! consistent chain, not even by appending. The `Status.` log line prints the head, so the
//! journal (or a log archive) anchors it against someone who holds both.
//!
//! A journal entry is PHI-free by construction (ids, hashes, a blinded patient reference), so it
//! is stored unsealed: verifying walks it without decrypting anything but tombstones.
//!
//! An entry's hash is the MAC of its **whole form** (big-endian): `version (1) | kind (1) |
//! seq (8) | at_ms (8) | body_hash (32) | prev (32) | patient (32, zero if none) |
//! patient_prev (32, zero if first) | tree_len (1) | tree | key_len (2) | key`. Version 1
//! entries are stored in that form. Version 2 entries (written since) store only what a walk
//! in order cannot recompute: `2 | kind (1) | at_ms (8) | body_hash (32) | prev (first 8) |
//! has_patient (1) [| patient (32) | patient_prev (first 8)] | key_len (2) | key`. The
//! sequence number is the entry's key in the journal, the tree is the kind's, and a back-link
//! is kept as its first 8 bytes: enough for [`verify`] to name the first broken link (a
//! forged link matches by chance once in 2^64), while the chain's strength stays the full
//! MAC's, since every hash covers the whole previous hash and the head is stored whole. That is
//! 128 bytes less per message (its record's entry and its delivery's) than version 1.

use super::engine::{Bytes, Engine, EngineError, Tr, TxTree, id_of};
use super::keys::Keyring;
use hmac::Mac;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};

/// What a journal entry stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An exchange ([`RecordV1`](super::schema::RecordV1)).
    Record = 1,
    /// Something that happened to an exchange ([`EventV1`](super::schema::EventV1)).
    Event = 2,
    /// Input that could not be parsed.
    Quarantine = 3,
    /// Someone read or exported records, or changed consent.
    Audit = 4,
    /// Bodies removed by a retention purge, named with their hashes.
    Tombstone = 5,
}

impl Kind {
    /// The tree holding the bodies of this kind (one per kind, [`CHAINED_TREES`]).
    pub fn tree(self) -> &'static str {
        match self {
            Kind::Record => "records",
            Kind::Event => "events",
            Kind::Quarantine => "quarantine",
            Kind::Audit => "audit",
            Kind::Tombstone => "tombstones",
        }
    }

    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Record,
            2 => Kind::Event,
            3 => Kind::Quarantine,
            4 => Kind::Audit,
            5 => Kind::Tombstone,
            _ => return None,
        })
    }
}

/// The trees whose every entry is in the journal.
pub const CHAINED_TREES: &[&str] = &["records", "events", "quarantine", "audit", "tombstones"];

/// The journal's layout that stores entries whole (read, no longer written).
const V1: u8 = 1;
/// The journal's layout that stores back-links by their first [`LINK_PREFIX`] bytes (written).
const V2: u8 = 2;
/// Bytes of a back-link a version 2 entry stores.
const LINK_PREFIX: usize = 8;
/// The key of the global head in the `chain_heads` tree (patients' heads are 33-byte blinds).
pub(crate) const GLOBAL_HEAD: &[u8] = b"global";

/// A back-link as stored: whole (version 1) or its first [`LINK_PREFIX`] bytes (version 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// The whole hash.
    Whole([u8; 32]),
    /// The hash's first bytes.
    Prefix([u8; LINK_PREFIX]),
}

impl Link {
    /// The whole hash: the one stored, or else `walked`, the hash a walk in order found before
    /// this entry (which this link was checked to name).
    fn or(&self, walked: &[u8; 32]) -> [u8; 32] {
        match self {
            Link::Whole(h) => *h,
            Link::Prefix(_) => *walked,
        }
    }

    /// Whether this link names the entry whose hash is `hash`.
    fn names(&self, hash: &[u8; 32]) -> bool {
        match self {
            Link::Whole(h) => h == hash,
            Link::Prefix(p) => hash.starts_with(p),
        }
    }
}

/// One decoded journal entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its layout version ([`V1`] or [`V2`]): part of what its hash covers.
    pub version: u8,
    /// What it stands for.
    pub kind: Kind,
    /// Position in the global chain, from 1, without gaps.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// SHA-256 of the sealed body as stored.
    pub body_hash: [u8; 32],
    /// Hash of the previous entry (zero for the first).
    pub prev: Link,
    /// The blinded patient, if the entry belongs to a patient's file.
    pub patient: Option<[u8; 32]>,
    /// Hash of the patient's previous entry (zero for their first, and none without a patient).
    pub patient_prev: Link,
    /// The tree holding the body.
    pub tree: String,
    /// The body's key in that tree.
    pub key: Vec<u8>,
}

impl Entry {
    /// What the entry's hash covers: its whole form, with the back-links as a walk in order
    /// found them (`prev`, `patient_prev`; a version 1 entry stores exactly these bytes).
    fn whole(&self, prev: &[u8; 32], patient_prev: &[u8; 32]) -> Vec<u8> {
        let mut b = Vec::with_capacity(150 + self.tree.len() + self.key.len());
        b.push(self.version);
        b.push(self.kind as u8);
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.at_ms.to_be_bytes());
        b.extend_from_slice(&self.body_hash);
        b.extend_from_slice(prev);
        b.extend_from_slice(&self.patient.unwrap_or([0; 32]));
        b.extend_from_slice(patient_prev);
        b.push(self.tree.len() as u8);
        b.extend_from_slice(self.tree.as_bytes());
        b.extend_from_slice(&(self.key.len() as u16).to_be_bytes());
        b.extend_from_slice(&self.key);
        b
    }

    /// The version 2 form stored in the journal (see the module's documentation).
    fn stored_v2(&self, prev: &[u8; 32], patient_prev: &[u8; 32]) -> Vec<u8> {
        let mut b = Vec::with_capacity(96 + self.key.len());
        b.push(V2);
        b.push(self.kind as u8);
        b.extend_from_slice(&self.at_ms.to_be_bytes());
        b.extend_from_slice(&self.body_hash);
        b.extend_from_slice(&prev[..LINK_PREFIX]);
        match self.patient {
            Some(p) => {
                b.push(1);
                b.extend_from_slice(&p);
                b.extend_from_slice(&patient_prev[..LINK_PREFIX]);
            }
            None => b.push(0),
        }
        b.extend_from_slice(&(self.key.len() as u16).to_be_bytes());
        b.extend_from_slice(&self.key);
        b
    }

    /// An entry as stored under journal key `seq`, of either version; `None` if undecodable.
    fn decode(seq: u64, b: &[u8]) -> Option<Entry> {
        match *b.first()? {
            V1 => Self::decode_v1(b),
            V2 => Self::decode_v2(seq, b),
            _ => None,
        }
    }

    fn decode_v1(b: &[u8]) -> Option<Entry> {
        let fixed = 2 + 8 + 8 + 32 * 4;
        if b.len() < fixed + 3 {
            return None;
        }
        let arr = |at: usize| -> [u8; 32] { b[at..at + 32].try_into().unwrap_or([0; 32]) };
        let u64_at = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        let patient = arr(82);
        let tl = b[fixed] as usize;
        let tree = std::str::from_utf8(b.get(fixed + 1..fixed + 1 + tl)?).ok()?.to_string();
        let at = fixed + 1 + tl;
        let kl = u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize;
        let key = b.get(at + 2..at + 2 + kl)?.to_vec();
        if at + 2 + kl != b.len() {
            return None;
        }
        Some(Entry {
            version: V1,
            kind: Kind::from_u8(b[1])?,
            seq: u64_at(2),
            at_ms: u64_at(10),
            body_hash: arr(18),
            prev: Link::Whole(arr(50)),
            patient: (patient != [0; 32]).then_some(patient),
            patient_prev: Link::Whole(arr(114)),
            tree,
            key,
        })
    }

    fn decode_v2(seq: u64, b: &[u8]) -> Option<Entry> {
        let mut r = Reader(b);
        r.take(1)?;
        let kind = Kind::from_u8(r.take(1)?[0])?;
        let at_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let body_hash: [u8; 32] = r.take(32)?.try_into().ok()?;
        let prev = Link::Prefix(r.take(LINK_PREFIX)?.try_into().ok()?);
        let (patient, patient_prev) = match r.take(1)?[0] {
            0 => (None, Link::Whole([0; 32])),
            1 => {
                let p: [u8; 32] = r.take(32)?.try_into().ok()?;
                (Some(p), Link::Prefix(r.take(LINK_PREFIX)?.try_into().ok()?))
            }
            _ => return None,
        };
        let kl = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
        let key = r.take(kl)?.to_vec();
        if !r.0.is_empty() {
            return None;
        }
        Some(Entry {
            version: V2,
            kind,
            seq,
            at_ms,
            body_hash,
            prev,
            patient,
            patient_prev,
            tree: kind.tree().to_string(),
            key,
        })
    }
}

/// Reads a stored entry front to back, refusing to read past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
}

/// The MAC that chains entries.
#[derive(Clone)]
pub struct ChainKey(hmac::Hmac<Sha256>);

impl ChainKey {
    /// Derived from the key file's index key (which never rotates, so the chain never breaks
    /// for a key rotation).
    pub fn from_keys(keys: &Keyring) -> ChainKey {
        let derived = keys.blind("carebridge-chain-key-v1", b"");
        ChainKey(
            <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&derived[1..])
                .expect("HMAC accepts keys of any length"),
        )
    }

    fn hash(&self, encoded: &[u8]) -> [u8; 32] {
        let mut m = self.0.clone();
        m.update(encoded);
        m.finalize().into_bytes().into()
    }
}

/// SHA-256 of a sealed body.
pub fn body_hash(sealed: &[u8]) -> [u8; 32] {
    Sha256::digest(sealed).into()
}

/// What to append: the body just written (sealed) and whose file it belongs to.
pub struct Append<'a> {
    /// Its kind.
    pub kind: Kind,
    /// Its key in its kind's tree ([`Kind::tree`]).
    pub key: &'a [u8],
    /// The sealed bytes stored there.
    pub sealed: &'a [u8],
    /// The patient's blinded id (from [`Keyring::blind`] with domain `patient`).
    pub patient: Option<&'a [u8]>,
    /// When.
    pub at_ms: u64,
}

fn head(v: Option<Bytes>) -> (u64, [u8; 32]) {
    match v {
        Some(v) if v.len() == 40 => {
            (u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])), v[8..].try_into().unwrap_or([0; 32]))
        }
        _ => (0, [0; 32]),
    }
}

fn head_value(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(hash);
    v
}

/// Appends one entry inside a transaction over the `journal` and `chain_heads` trees; returns
/// its sequence number. The store's transactions take turns (one writer at a time), so sequence
/// numbers have no gaps.
pub fn append(
    ck: &ChainKey,
    journal: &TxTree<'_, '_>,
    heads: &TxTree<'_, '_>,
    a: Append<'_>,
) -> Result<u64, EngineError> {
    let (gseq, gprev) = head(heads.get(GLOBAL_HEAD)?);
    let patient: Option<[u8; 32]> = a.patient.and_then(|p| p.get(p.len().saturating_sub(32)..)?.try_into().ok());
    let patient_prev = match a.patient {
        Some(p) => head(heads.get(p)?).1,
        None => [0; 32],
    };
    let e = Entry {
        version: V2,
        kind: a.kind,
        seq: gseq + 1,
        at_ms: a.at_ms,
        body_hash: body_hash(a.sealed),
        prev: Link::Whole(gprev),
        patient,
        patient_prev: Link::Whole(patient_prev),
        tree: a.kind.tree().to_string(),
        key: a.key.to_vec(),
    };
    let h = ck.hash(&e.whole(&gprev, &patient_prev));
    journal.insert(e.seq.to_be_bytes(), e.stored_v2(&gprev, &patient_prev))?;
    heads.insert(GLOBAL_HEAD, head_value(e.seq, &h))?;
    if let Some(p) = a.patient {
        heads.insert(p, head_value(e.seq, &h))?;
    }
    Ok(e.seq)
}

/// The head of the global chain: its last sequence number and hash (hex), for the status line
/// and `records verify`.
pub fn global_head(heads: &Tr) -> Result<(u64, String), EngineError> {
    let (seq, h) = head(heads.get(GLOBAL_HEAD)?);
    Ok((seq, hex::encode(h)))
}

/// Iterates the journal (oldest first), decoded. Undecodable entries come back as `Err(seq)`.
pub fn entries(journal: &Tr) -> impl Iterator<Item = Result<Result<Entry, u64>, EngineError>> + '_ {
    journal.iter().map(|r| {
        r.map(|(k, v)| {
            let seq = id_of(&k);
            Entry::decode(seq, &v).ok_or(seq)
        })
    })
}

/// The first problem [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Break {
    /// The journal entry at fault (or the first missing one).
    pub seq: u64,
    /// What is wrong (PHI-free).
    pub reason: String,
}

/// What [`verify`] saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    /// Journal entries walked.
    pub entries: u64,
    /// Per kind.
    pub by_kind: HashMap<String, u64>,
    /// Bodies removed by purges, accounted for by tombstones.
    pub purged: u64,
    /// Patients' chains walked.
    pub patients: u64,
    /// The last entry and its hash (hex).
    pub head_seq: u64,
    /// Hash of the last entry.
    pub head_hash: String,
    /// The first break, if any.
    pub first_break: Option<Break>,
}

/// A tombstone's body (sealed like everything else): which entries a purge emptied.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TombstoneV1 {
    /// Always 1.
    pub v: u32,
    /// The journal entries whose bodies were removed.
    pub purged: Vec<u64>,
    /// The retention rule applied (`exchanges`, `quarantine`, `audit`).
    pub rule: String,
    /// Entries older than this (unix ms) were eligible.
    pub cutoff_ms: u64,
    /// Who ran the purge.
    pub by: String,
}

fn fail(r: &mut Report, seq: u64, reason: String) {
    if r.first_break.is_none() {
        r.first_break = Some(Break { seq, reason });
    }
}

/// Walks the whole journal and checks every link: sequence without gaps, each entry's `prev`
/// equal to the previous entry's hash, each patient's chain likewise, every body present with
/// the hash recorded (or removed by a purge a later tombstone accounts for), and every body in
/// a chained tree covered by the journal. Stops at the first break.
pub fn verify(db: &Engine, keys: &Keyring) -> Result<Report, EngineError> {
    let ck = ChainKey::from_keys(keys);
    let journal = db.tree("journal")?;
    let heads = db.tree("chain_heads")?;
    // The daemon may be appending while this runs (through the admin API): verify the chain up
    // to the head as it is now, and count later entries only as covering their bodies.
    let (seq0, hash0) = head(heads.get(GLOBAL_HEAD)?);
    let mut trees: HashMap<String, Tr> = HashMap::new();
    let mut r = Report::default();
    let mut prev = [0u8; 32];
    let mut patients: HashMap<[u8; 32], [u8; 32]> = HashMap::new();
    let mut missing: BTreeSet<u64> = BTreeSet::new();
    let mut covered: HashSet<u64> = HashSet::new();
    for item in entries(&journal) {
        let e = match item? {
            Ok(e) => e,
            Err(seq) => {
                fail(&mut r, seq, "journal entry is not decodable".into());
                break;
            }
        };
        if e.seq > seq0 {
            break;
        }
        let expected = r.entries + 1;
        if e.seq != expected {
            fail(&mut r, expected, format!("journal entry {expected} is missing (next is {})", e.seq));
            break;
        }
        if !e.prev.names(&prev) {
            fail(&mut r, e.seq, "its link to the previous entry does not match (altered or reordered)".into());
            break;
        }
        let last = e.patient.and_then(|p| patients.get(&p).copied()).unwrap_or([0; 32]);
        if e.patient.is_some() && !e.patient_prev.names(&last) {
            fail(&mut r, e.seq, "its link to the patient's previous entry does not match".into());
            break;
        }
        let h = ck.hash(&e.whole(&e.prev.or(&prev), &e.patient_prev.or(&last)));
        if let Some(p) = e.patient {
            patients.insert(p, h);
        }
        let tree = match trees.get(&e.tree) {
            Some(t) => t.clone(),
            None => match super::TREES.iter().find(|n| **n == e.tree) {
                Some(name) => {
                    let t = db.tree(name)?;
                    trees.insert(e.tree.clone(), t.clone());
                    t
                }
                None => {
                    fail(&mut r, e.seq, format!("it names a tree the store does not have (`{}`)", e.tree));
                    break;
                }
            },
        };
        covered.insert(body_ref(&e.tree, &e.key));
        match tree.get(&e.key)? {
            Some(body) => {
                if body_hash(&body) != e.body_hash {
                    fail(&mut r, e.seq, format!("its body in `{}` was altered", e.tree));
                    break;
                }
                if e.kind == Kind::Tombstone {
                    let plain = keys.open(&e.tree, &e.key, &body).ok();
                    let t: Option<TombstoneV1> = plain.and_then(|p| serde_json::from_slice(&p).ok());
                    match t {
                        Some(t) => {
                            for s in t.purged {
                                if missing.remove(&s) {
                                    r.purged += 1;
                                }
                            }
                        }
                        None => {
                            fail(&mut r, e.seq, "its tombstone cannot be opened".into());
                            break;
                        }
                    }
                }
            }
            None => {
                missing.insert(e.seq);
            }
        }
        *r.by_kind.entry(format!("{:?}", e.kind).to_lowercase()).or_default() += 1;
        prev = h;
        r.entries += 1;
    }
    if let Some(&seq) = missing.iter().next()
        && r.first_break.as_ref().is_none_or(|b| b.seq > seq)
    {
        r.first_break = Some(Break { seq, reason: "its body was deleted and no purge accounts for it".into() });
    }
    if r.first_break.is_none() && (seq0 != r.entries || prev != hash0) {
        let seq = r.entries + 1;
        fail(&mut r, seq, "the journal ends before the recorded head (entries were cut off)".into());
    }
    if r.first_break.is_none() {
        // Bodies no journal entry names. Trees first, then the journal's tail: a body and its
        // entry are written in one transaction, so a body found in a tree has its entry by the
        // time the tail is read.
        let mut uncovered: HashMap<u64, &str> = HashMap::new();
        for name in CHAINED_TREES {
            for kv in db.tree(name)?.iter() {
                let b = body_ref(name, &kv?.0);
                if !covered.contains(&b) {
                    uncovered.insert(b, name);
                }
            }
        }
        if !uncovered.is_empty() {
            for item in journal.range_from((seq0 + 1).to_be_bytes()) {
                let (k, v) = item?;
                if let Some(e) = Entry::decode(id_of(&k), &v) {
                    uncovered.remove(&body_ref(&e.tree, &e.key));
                }
            }
        }
        if let Some(name) = uncovered.values().next() {
            let seq = r.entries + 1;
            fail(&mut r, seq, format!("`{name}` holds entries the journal does not cover"));
        }
    }
    r.patients = patients.len() as u64;
    r.head_seq = r.entries;
    r.head_hash = hex::encode(prev);
    Ok(r)
}

/// A compact reference to a body (tree and key) for the coverage check: 8 bytes per entry, so
/// a million entries take tens of megabytes, not hundreds.
fn body_ref(tree: &str, key: &[u8]) -> u64 {
    let d = Sha256::new().chain_update(tree.as_bytes()).chain_update([0]).chain_update(key).finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::engine::TxError;

    fn entry(version: u8, patient: Option<[u8; 32]>) -> Entry {
        Entry {
            version,
            kind: Kind::Event,
            seq: 7,
            at_ms: 123,
            body_hash: [1; 32],
            prev: Link::Whole([2; 32]),
            patient,
            patient_prev: Link::Whole(if patient.is_some() { [4; 32] } else { [0; 32] }),
            tree: "events".into(),
            key: vec![9, 8, 7],
        }
    }

    #[test]
    fn version_1_entries_round_trip_through_their_whole_form() {
        let e = entry(V1, Some([3; 32]));
        let bytes = e.whole(&[2; 32], &[4; 32]);
        assert_eq!(Entry::decode(7, &bytes), Some(e.clone()));
        let mut longer = bytes;
        longer.push(0);
        assert_eq!(Entry::decode(7, &longer), None, "trailing bytes are refused");
    }

    #[test]
    fn version_2_entries_keep_link_prefixes_and_take_their_seq_from_the_key() {
        for patient in [Some([3; 32]), None] {
            let e = entry(V2, patient);
            let pprev = if patient.is_some() { [4; 32] } else { [0; 32] };
            let bytes = e.stored_v2(&[2; 32], &pprev);
            assert_eq!(bytes.len(), if patient.is_some() { 91 } else { 51 } + 2 + 3);
            let d = Entry::decode(7, &bytes).expect("decodes");
            assert_eq!(d.prev, Link::Prefix([2; 8]));
            assert!(d.prev.names(&[2; 32]) && !d.prev.names(&[5; 32]));
            assert_eq!(d.patient, patient);
            assert_eq!((d.seq, d.tree.as_str(), d.key.as_slice()), (7, "events", &[9u8, 8, 7][..]));
            // What a walk hashes is the whole form, as `append` hashed it.
            assert_eq!(d.whole(&d.prev.or(&[2; 32]), &d.patient_prev.or(&pprev)), e.whole(&[2; 32], &pprev));
            for cut in 0..bytes.len() {
                assert_eq!(Entry::decode(7, &bytes[..cut]), None, "a cut entry is refused");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Entry::decode(7, &longer), None, "trailing bytes are refused");
        }
    }

    /// A journal written partly by an older carebridge (version 1 entries) and partly by this
    /// one verifies whole, and a changed link is named in either part.
    #[test]
    fn a_journal_of_both_versions_verifies_and_names_a_changed_link() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keyring::generate(&dir.path().join("store.key")).unwrap();
        let ck = ChainKey::from_keys(&keys);
        let db = Engine::open(&dir.path().join("store"), 8).unwrap();
        let (journal, heads, events) =
            (db.tree("journal").unwrap(), db.tree("chain_heads").unwrap(), db.tree("events").unwrap());
        let patient = keys.blind("patient", b"p-1");
        let write = |seq: u64, v1: bool| {
            let key = seq.to_be_bytes();
            let body = format!("sealed body {seq}").into_bytes();
            db.transact(|tx| {
                let (j, h, ev) = (&tx.on(&journal), &tx.on(&heads), &tx.on(&events));
                ev.insert(key, &body)?;
                let p = seq.is_multiple_of(2).then_some(patient.as_slice());
                if v1 {
                    // What version 1 wrote: the whole form, hashed as stored.
                    let (gseq, gprev) = head(h.get(GLOBAL_HEAD)?);
                    let pprev = match p {
                        Some(p) => head(h.get(p)?).1,
                        None => [0; 32],
                    };
                    let mut e = entry(V1, p.map(|p| p[1..].try_into().unwrap()));
                    (e.seq, e.body_hash, e.key) = (gseq + 1, body_hash(&body), key.to_vec());
                    let bytes = e.whole(&gprev, &pprev);
                    let hash = ck.hash(&bytes);
                    j.insert(key, bytes)?;
                    h.insert(GLOBAL_HEAD, head_value(seq, &hash))?;
                    if let Some(p) = p {
                        h.insert(p, head_value(seq, &hash))?;
                    }
                } else {
                    let a = Append { kind: Kind::Event, key: &key, sealed: &body, patient: p, at_ms: 5 };
                    assert_eq!(append(&ck, j, h, a)?, seq);
                }
                Ok::<(), TxError<()>>(())
            })
            .unwrap();
        };
        for seq in 1..=6 {
            write(seq, seq <= 3);
        }
        let r = verify(&db, &keys).unwrap();
        assert_eq!((r.first_break.clone(), r.entries, r.patients), (None, 6, 1), "{r:?}");
        let (_, whole_head) = global_head(&heads).unwrap();
        assert_eq!(r.head_hash, whole_head, "the walk ends on the head stored whole");

        // One byte of a stored link changed: the global link (v1 at offset 50, v2 at 42) or the
        // patient's (v1 at 114; v2 after the patient, at 83).
        for (seq, at, which) in [(2u64, 50, "previous"), (5, 42, "previous"), (2, 114, "patient"), (4, 83, "patient")] {
            let k = seq.to_be_bytes();
            let original = journal.get(k).unwrap().unwrap();
            let mut changed = original.clone();
            changed[at] ^= 0x40;
            db.transact(|tx| tx.on(&journal).insert(k, &changed).map_err(TxError::<()>::from)).unwrap();
            let b = verify(&db, &keys).unwrap().first_break.expect("a changed link breaks the chain");
            assert_eq!(b.seq, seq, "{b:?}");
            assert!(b.reason.contains(which), "{b:?}");
            db.transact(|tx| tx.on(&journal).insert(k, &original).map_err(TxError::<()>::from)).unwrap();
        }
        assert_eq!(verify(&db, &keys).unwrap().first_break, None, "restored");
    }
}
