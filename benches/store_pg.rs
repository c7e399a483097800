//! The record store on PostgreSQL (issue #18): what one global order of commits costs when
//! several instances write at once. Every write transaction takes one advisory lock first
//! (`src/record/pg_backend.rs`), so the chains and de-duplication stay exact with two writers;
//! the price is that commits across instances are serial. This bench writes the router's batches
//! (`commit_exchanges`, one transaction each, sealed, blinded, chained) from 1, 2 and 4 instances
//! at once (each a `Store` with its own pool, as separate daemons would be), on one database, and
//! prints messages per second and each commit's mean time; beside it the embedded store (fjall,
//! one writer, each batch flushed) as the same process measures it. A measurement to read, not
//! a timed test: it asserts nothing about speed.
//!
//! Run: `tests/postgres.sh start` then
//! `CAREBRIDGE_TEST_POSTGRES=<its DSN> cargo bench --bench store_pg` (env:
//! `BENCH_PG_MESSAGES` (4000 per instance), `BENCH_PG_BATCH` (32)). Without the DSN it says so
//! and measures the embedded store only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed bench should panic with the value

#[path = "common/synth.rs"]
#[allow(dead_code)] // the other benches use the rest
mod synth;

use carebridge::record::pg_backend::{self, PgSettings};
use carebridge::record::{Exchange, Keyring, Store};
use std::time::{Duration, Instant};
use synth::{Synth, env};

/// Writes `n` exchanges in batches of `batch` through `store`, returning the time spent in
/// commits (and flushes, which on PostgreSQL have nothing left to do).
fn write(store: &Store, prefix: &str, n: usize, batch: usize) -> Duration {
    let mut synth = Synth::new(7, prefix);
    let mut spent = Duration::ZERO;
    let mut written = 0;
    while written < n {
        let size = batch.min(n - written);
        let b: Vec<Exchange> =
            (0..size).map(|j| synth.exchange((written + j) as u64, &mut || store.next_id().unwrap())).collect();
        let t = Instant::now();
        store.commit_exchanges(&b).unwrap();
        store.flush_blocking().unwrap();
        spent += t.elapsed();
        written += size;
    }
    spent
}

fn line(label: &str, messages: usize, wall: Duration, commits: usize, commit_time: Duration) {
    println!(
        "  {label:<44} {:>8.0} msgs/s   {:>6.2} ms per commit (mean, {commits} commits)",
        messages as f64 / wall.as_secs_f64(),
        commit_time.as_secs_f64() * 1000.0 / commits.max(1) as f64
    );
}

fn main() {
    let n = env("BENCH_PG_MESSAGES", 4000);
    let batch = env("BENCH_PG_BATCH", 32);
    let dir = tempfile::tempdir().unwrap();
    let keys = || match Keyring::load(&dir.path().join("store.key")) {
        Ok(k) => k,
        Err(_) => Keyring::generate(&dir.path().join("store.key")).unwrap(),
    };
    println!("store on PostgreSQL: {n} exchanges per instance, batches of {batch}, one transaction per batch");
    let embedded = Store::open(&dir.path().join("embedded"), keys()).unwrap();
    let t = Instant::now();
    let spent = write(&embedded, "e", n, batch);
    line("embedded (fjall), 1 writer, flushed", n, t.elapsed(), n.div_ceil(batch), spent);
    drop(embedded);
    let Ok(dsn) = std::env::var(pg_backend::testing::DSN_VAR) else {
        println!(
            "  postgres: skipped ({} is not set; tests/postgres.sh start prints a DSN)",
            pg_backend::testing::DSN_VAR
        );
        return;
    };
    for instances in [1usize, 2, 4] {
        let name = format!("cb_bench_{}_{instances}", std::process::id());
        let settings: PgSettings = pg_backend::testing::database(&dsn, &name).unwrap();
        let stores: Vec<Store> = (0..instances).map(|_| Store::open_postgres(keys(), &settings).unwrap()).collect();
        let t = Instant::now();
        let handles: Vec<_> = stores
            .into_iter()
            .enumerate()
            .map(|(i, s)| std::thread::spawn(move || write(&s, &format!("i{i}-"), n, batch)))
            .collect();
        let spent: Duration = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let wall = t.elapsed();
        line(
            &format!("postgres, {instances} instance(s) writing at once"),
            n * instances,
            wall,
            n.div_ceil(batch) * instances,
            spent,
        );
    }
}
