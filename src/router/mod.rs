//! The router thread: takes submissions off the adapters' queue in batches, plans each into an
//! exchange ([`plan`]), commits the batch in one transaction, and hands the batch's receipts to
//! the [`Flusher`] so they are answered only after one shared flush (group commit).
//!
//! Pipeline per message: dedup → identify → link → conversation → policy → one transaction.
//!
//! A config reload hands the router a new [`Planner`]; it takes it between batches, so every
//! batch is planned under one config.

pub mod identify;
pub mod notices;
pub mod plan;

use crate::record::Exchange;
use crate::record::Flusher;
use crate::record::flusher::FlushJob;
use carebridge_contract::{Receipt, SubmitRequest};
use plan::{Planner, Step};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

/// Most submissions processed before handing a batch to the flusher.
const BATCH: usize = 512;

/// The router: one task, one queue.
pub struct Router {
    /// Durability and receipts.
    pub flusher: Flusher,
    /// Outbox rows waiting, shared with the outbox workers (saturation check without a scan).
    pub outbox_pending: Arc<AtomicU64>,
    /// Where its planners come from, newest last: the first one from start-up, later ones from
    /// reloads (both made by [`crate::assembly`]). Checked once per batch.
    pub updates: std::sync::mpsc::Receiver<Planner>,
}

impl Router {
    /// Runs until every `Submitter` is dropped and the queue is drained (the shutdown order:
    /// inbound stops first, so the queue closes, so the router finishes what it has).
    ///
    /// Runs on a thread of its own, not an async task: its store transactions block (they wait
    /// for any flush in progress) and it is busy all the time under load.
    /// It plans nothing before its first planner arrives: start-up hands it one exactly as a
    /// reload does, and the receivers start only after that.
    pub fn run(self, mut rx: mpsc::Receiver<SubmitRequest>) {
        let Ok(mut planner) = self.updates.recv() else {
            return; // start-up failed before the config was applied
        };
        let mut batch = Vec::with_capacity(BATCH);
        let mut saturated_logged = false;
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            // A reloaded config applies from the next batch on, whole.
            while let Ok(newer) = self.updates.try_recv() {
                planner = newer;
                debug!("Router switched to the reloaded configuration.");
            }
            let max_outbox_pending = planner.config.router.max_outbox_pending;
            let started = std::time::Instant::now();
            let size = batch.len();
            let mut job = FlushJob::default();
            let mut pending: Vec<(oneshot::Sender<Receipt>, Exchange)> = Vec::new();
            for req in batch.drain(..) {
                let backlog = self.outbox_pending.load(Ordering::Relaxed);
                if backlog >= max_outbox_pending {
                    if !saturated_logged {
                        warn!(
                            outbox_pending = backlog,
                            limit = max_outbox_pending,
                            "Outbox full; refusing new messages until it drains."
                        );
                        saturated_logged = true;
                    }
                    crate::ops::received(&req.submission.source().account, &Receipt::Unavailable);
                    job.receipts.push((req.reply, Receipt::Unavailable));
                    continue;
                }
                saturated_logged = false;
                let account = req.submission.source().account.clone();
                match planner.prepare(req.submission) {
                    Ok(Step::Done(receipt)) => {
                        crate::ops::received(&account, &receipt);
                        job.receipts.push((req.reply, receipt));
                    }
                    Ok(Step::Commit(ex)) => pending.push((req.reply, *ex)),
                    Err(e) => {
                        error!(error = %e, "Could not record message; answering unavailable so the source redelivers.");
                        crate::ops::received(&account, &Receipt::Unavailable);
                        job.receipts.push((req.reply, Receipt::Unavailable));
                    }
                }
            }
            if !pending.is_empty() {
                let (replies, exchanges): (Vec<_>, Vec<_>) = pending.into_iter().unzip();
                match planner.store.commit_exchanges(&exchanges) {
                    Ok(results) => {
                        for ((reply, ex), committed) in replies.into_iter().zip(exchanges).zip(results) {
                            let account = ex.record.source.account.clone();
                            if matches!(committed, crate::record::Committed::New) {
                                crate::ops::decisions(&ex.record);
                            }
                            let (receipt, wake) = planner.finish(ex, committed);
                            crate::ops::received(&account, &receipt);
                            self.outbox_pending.fetch_add(wake.len() as u64, Ordering::Relaxed);
                            job.wake.extend(wake);
                            job.receipts.push((reply, receipt));
                        }
                    }
                    Err(e) => {
                        error!(error = %e, messages = replies.len(), "Could not record messages; answering unavailable so the sources redeliver.");
                        for ex in &exchanges {
                            crate::ops::received(&ex.record.source.account, &Receipt::Unavailable);
                        }
                        job.receipts.extend(replies.into_iter().map(|r| (r, Receipt::Unavailable)));
                    }
                }
            }
            debug!(messages = size, micros = started.elapsed().as_micros() as u64, "Batch planned and committed.");
            self.flusher.submit(job);
        }
    }
}
