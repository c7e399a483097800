//! The record store against sled (issues #6 and #14): append throughput of the store as the daemon
//! runs it (fjall; values sealed with XChaCha20-Poly1305, index keys blinded, every record
//! chained in the journal) beside three sled baselines of the same tree shape, all in one run:
//! sled with the same sealing and blinding but no journal (the old engine doing less work), sled
//! with sealing only, and sled with plain JSON and no journal (schema v1). Also `verify` time per
//! 100k journal entries, and store size per 100k messages. A measurement to read, not a timed
//! test: it prints figures and asserts nothing about speed.
//!
//! Run: `cargo bench --bench store` (env: `BENCH_STORE_MESSAGES` (100000), `BENCH_STORE_BATCH`
//! (32)). Exchanges are synthetic but shaped like the router's (benches/common/synth.rs). The
//! variants run in the same process, batch by batch in rotation, each batch one transaction
//! followed by a flush as the flusher does, so machine noise hits all alike: compare the ratios,
//! not the absolute figures across machines.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed bench should panic with the value

#[path = "common/synth.rs"]
mod synth;

use carebridge::record::{Exchange, Keyring, Store};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use std::path::Path;
use std::time::{Duration, Instant};
use synth::{Synth, disk_usage, env, mb};

/// The baseline: what schema v1 did (commit 4b62652^, `Store::commit_exchanges`), rebuilt here
/// so it does not depend on code that no longer exists: one transaction per batch over the same
/// ten trees, plain JSON values, plain index keys, no sealing, no journal. Labelled "baseline
/// (v1: plain JSON, unchained)" in the output.
///
/// With `keys`, the same writes with every value sealed as v2 does it (`Keyring::seal`), and
/// with `blind` every index key blinded too (`Keyring::blind`), still without the journal: the
/// difference to v2 is the cost of chaining, the differences to the plain baseline the cost of
/// sealing values and of blinding keys (random keys scatter writes over sled's leaves).
struct PlainStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    keys: Option<Keyring>,
    blind: bool,
}

/// One exchange's writes, encoded (and sealed) before the transaction.
struct Rows {
    source: Vec<u8>,
    rid: [u8; 8],
    record: Vec<u8>,
    token: Vec<u8>,
    conv: Vec<u8>,
    native: Vec<(Vec<u8>, Vec<u8>)>,
    outbox: Vec<(Vec<u8>, Vec<u8>)>,
}

impl PlainStore {
    fn open(dir: &Path, keys: Option<Keyring>, blind: bool) -> PlainStore {
        // The same sled settings as the real store.
        let db = sled::Config::new().path(dir.join("db")).flush_every_ms(Some(500)).open().unwrap();
        let names = [
            "records",
            "by_source",
            "conversations",
            "by_native",
            "outbox",
            "review",
            "links",
            "link_codes",
            "consents",
            "notices",
        ];
        let trees = names.iter().map(|n| db.open_tree(n).unwrap()).collect();
        PlainStore { db, trees, keys, blind }
    }

    fn next_id(&self) -> u64 {
        self.db.generate_id().unwrap() + 1
    }

    fn value(&self, tree: &str, key: &[u8], v: &impl serde::Serialize) -> Vec<u8> {
        let json = serde_json::to_vec(v).unwrap();
        match &self.keys {
            Some(k) => k.seal(tree, key, &json),
            None => json,
        }
    }

    fn index(&self, domain: &str, raw: Vec<u8>) -> Vec<u8> {
        match &self.keys {
            Some(k) if self.blind => k.blind(domain, &raw),
            _ => raw,
        }
    }

    fn commit_exchanges(&self, batch: &[Exchange]) -> usize {
        let join = |a: &str, b: &str| [a.as_bytes(), &[0], b.as_bytes()].concat();
        let rows: Vec<Rows> = batch
            .iter()
            .map(|ex| {
                let s = &ex.record.source;
                let rid = ex.record.id.0.to_be_bytes();
                let token = ex.conversation.token.as_bytes().to_vec();
                Rows {
                    source: self.index("source", join(&s.account.to_string(), &s.native_id)),
                    rid,
                    record: self.value("records", &rid, &ex.record),
                    conv: self.value("conversations", &token, &ex.conversation),
                    token,
                    native: ex
                        .native_refs
                        .iter()
                        .map(|(k, v)| {
                            let key = self.index("native", k.as_bytes().to_vec());
                            let val = self.value("by_native", &key, v);
                            (key, val)
                        })
                        .collect(),
                    outbox: ex
                        .outbox
                        .iter()
                        .map(|(k, v)| {
                            let mut key = k.account.to_string().into_bytes();
                            key.push(0);
                            key.extend_from_slice(&k.seq.to_be_bytes());
                            let val = self.value("outbox", &key, v);
                            (key, val)
                        })
                        .collect(),
                }
            })
            .collect();
        let trees: Vec<&sled::Tree> = self.trees.iter().collect();
        trees[..]
            .transaction(|t: &Vec<TransactionalTree>| {
                let (records, by_source, conversations, by_native, outbox) = (&t[0], &t[1], &t[2], &t[3], &t[4]);
                let mut new = 0;
                for r in &rows {
                    if by_source.get(r.source.as_slice())?.is_some() {
                        continue;
                    }
                    records.insert(&r.rid, r.record.as_slice())?;
                    by_source.insert(r.source.as_slice(), &r.rid)?;
                    conversations.insert(r.token.as_slice(), r.conv.as_slice())?;
                    for (k, v) in &r.native {
                        by_native.insert(k.as_slice(), v.as_slice())?;
                    }
                    for (k, v) in &r.outbox {
                        outbox.insert(k.as_slice(), v.as_slice())?;
                    }
                    new += 1;
                }
                Ok::<_, ConflictableTransactionError<()>>(new)
            })
            .unwrap()
    }
}

/// Time spent by one variant: in the transaction (encoding, sealing, chaining, sled) and in the
/// flush after it.
#[derive(Default)]
struct Spent {
    commit: Duration,
    flush: Duration,
    messages: usize,
}

impl Spent {
    fn rate(&self) -> f64 {
        self.messages as f64 / (self.commit + self.flush).as_secs_f64()
    }

    fn line(&self, label: &str) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / self.messages as f64;
        println!(
            "  {label:<44} {:>8.0} msgs/s   (transaction {:>5.1} µs/msg, flush {:>5.1} µs/msg)",
            self.rate(),
            per(self.commit),
            per(self.flush)
        );
    }
}

/// A store under test.
#[allow(clippy::large_enum_variant)] // four values for the whole bench: size does not matter
enum Variant {
    /// The real store, schema v2.
    Sealed(Store),
    /// The baseline, plain or sealed without a journal.
    Plain(PlainStore),
}

impl Variant {
    fn next_id(&self) -> u64 {
        match self {
            Variant::Sealed(s) => s.next_id().unwrap(),
            Variant::Plain(p) => p.next_id(),
        }
    }

    fn commit(&self, batch: &[Exchange]) -> usize {
        match self {
            Variant::Sealed(s) => s.commit_exchanges(batch).unwrap().len(),
            Variant::Plain(p) => p.commit_exchanges(batch),
        }
    }

    fn flush(&self) {
        match self {
            Variant::Sealed(s) => s.flush_blocking().unwrap(),
            Variant::Plain(p) => {
                p.db.flush().unwrap();
            }
        }
    }
}

fn main() {
    let n = env("BENCH_STORE_MESSAGES", 100_000);
    let batch = env("BENCH_STORE_BATCH", 32).max(1);
    let dir = tempfile::tempdir().unwrap();
    let dirs = [
        dir.path().join("v2"),
        dir.path().join("sealed-blinded"),
        dir.path().join("sealed-plain-keys"),
        dir.path().join("v1"),
    ];
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let keys = Keyring::generate(&dir.path().join("store.key")).unwrap();
    let variants = [
        ("store (fjall: sealed + chained):", Variant::Sealed(Store::open(&dirs[0], keys.clone()).unwrap())),
        (
            "sled: sealed + blinded keys, no journal:",
            Variant::Plain(PlainStore::open(&dirs[1], Some(keys.clone()), true)),
        ),
        ("sled: sealed, plain keys, no journal:", Variant::Plain(PlainStore::open(&dirs[2], Some(keys), false))),
        ("sled: plain JSON, unchained (v1):", Variant::Plain(PlainStore::open(&dirs[3], None, false))),
    ];

    println!(
        "store: {n} exchanges (~300-byte text, {} patients, 1 outbox row each), batches of {batch}, \
         one transaction + one flush per batch, variants in rotation batch by batch",
        synth::PATIENTS
    );
    let mut gens: Vec<Synth> = variants.iter().map(|_| Synth::new(7, "s")).collect();
    let mut spent: Vec<Spent> = variants.iter().map(|_| Spent::default()).collect();
    let mut written = 0;
    let mut round = 0;
    while written < n {
        let size = batch.min(n - written);
        for k in 0..variants.len() {
            // Which variant goes first rotates, so none always follows another's flush.
            let i = (round + k) % variants.len();
            let v = &variants[i].1;
            // Built outside the timed part: the router prepares exchanges before the transaction.
            let b: Vec<Exchange> =
                (0..size).map(|j| gens[i].exchange((written + j) as u64, &mut || v.next_id())).collect();
            let t = Instant::now();
            let c = v.commit(&b);
            spent[i].commit += t.elapsed();
            let t = Instant::now();
            v.flush();
            spent[i].flush += t.elapsed();
            spent[i].messages += c;
        }
        written += size;
        round += 1;
    }
    println!("append (each batch flushed):");
    for ((label, _), s) in variants.iter().zip(&spent) {
        s.line(label);
    }
    let (v2, blinded, sealed_only, v1) = (&spent[0], &spent[1], &spent[2], &spent[3]);
    let x = |s: &Spent| s.commit.as_secs_f64() / v1.commit.as_secs_f64();
    println!("  ratio store/sled (sealed + blinded, no journal) msgs/s: {:.2}", v2.rate() / blinded.rate());
    println!("  ratio store/sled (plain JSON) msgs/s: {:.2}", v2.rate() / v1.rate());
    println!(
        "  transaction time / sled plain JSON's: store {:.2}x, sled sealed + blinded {:.2}x, sled sealed only {:.2}x",
        x(v2),
        x(blinded),
        x(sealed_only)
    );

    let Variant::Sealed(sealed) = &variants[0].1 else { unreachable!() };
    let t = Instant::now();
    let report = sealed.verify().unwrap();
    let took = t.elapsed();
    assert!(report.first_break.is_none(), "the chain must verify: {:?}", report.first_break);
    println!(
        "verify: {} journal entries ({} patients) in {:.2} s  ->  {:.2} s per 100k entries",
        report.entries,
        report.patients,
        took.as_secs_f64(),
        took.as_secs_f64() * 100_000.0 / report.entries.max(1) as f64
    );

    println!("size after a flush (du; apparent size of the files in brackets):");
    let mut used = Vec::new();
    for ((label, v), d) in variants.iter().zip(&dirs) {
        v.flush();
        let (u, a) = disk_usage(d);
        used.push(u);
        println!(
            "  {label:<44} {} ({})  ->  {} per 100k messages, {:.0} B/msg",
            mb(u),
            mb(a),
            mb((u as f64 * 100_000.0 / n as f64) as u64),
            u as f64 / n as f64
        );
    }
    println!("  ratio store/sled (sealed + blinded, no journal) size: {:.2}", used[0] as f64 / used[1].max(1) as f64);
}
