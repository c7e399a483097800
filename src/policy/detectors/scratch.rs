//! The buffers one scan works in, kept per thread and reused by the next scan.
//!
//! A scan of a chat-sized message made some twenty vectors and dropped them (letter runs,
//! look-up answers, term occurrences, context words, digit windows, candidates…): for short
//! texts, allocating and freeing them was a tenth of the scan. Each thread now keeps one
//! [`Scratch`] and every scan on it clears and refills the same vectors. Nothing of a text
//! outlives its scan in a way that matters: the next scan clears each vector before use, and
//! vectors grown by a very long text are shrunk back afterwards, so a thread does not keep
//! megabytes for the rest of its life.

use super::Hit;
use super::digit_patterns::Starts;
use super::lexicon::Known;
use std::cell::RefCell;

/// Entries a vector may keep between scans; a longer one is shrunk back to this.
const KEEP: usize = 4096;

/// A scan's reusable vectors (each cleared by the scan before it fills it).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// The folded text's letter runs.
    pub runs: Vec<(usize, usize)>,
    /// The lexicon's answers, by run.
    pub known: Vec<Option<Known>>,
    /// Term occurrences in the folded text: (start, end, term id).
    pub found: Vec<(usize, usize, usize)>,
    /// Runs no term starts with: (run index, start, end).
    pub unknown: Vec<(usize, usize, usize)>,
    /// Context-word occurrences (see `ContextHits`).
    pub ctx_hits: Vec<(usize, usize, usize)>,
    /// Where each detector's context words start in `ctx_hits`.
    pub ctx_first: Vec<usize>,
    /// The plain view's digit windows.
    pub digits: Vec<(usize, usize)>,
    /// The digit patterns' match starts in them.
    pub starts: Starts,
    /// Candidates before scoring.
    pub candidates: Vec<Hit>,
    /// For each candidate, whether a context word is near.
    pub near: Vec<bool>,
}

impl Scratch {
    /// Shrinks back the vectors a long text grew.
    fn trim(&mut self) {
        fn keep<T>(v: &mut Vec<T>) {
            if v.capacity() > KEEP {
                v.clear();
                v.shrink_to(KEEP);
            }
        }
        keep(&mut self.runs);
        keep(&mut self.known);
        keep(&mut self.found);
        keep(&mut self.unknown);
        keep(&mut self.ctx_hits);
        keep(&mut self.ctx_first);
        keep(&mut self.digits);
        self.starts.trim(KEEP);
        keep(&mut self.candidates);
        keep(&mut self.near);
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `scan` with this thread's scratch buffers, or with fresh ones when they are in use or
/// gone (a scan inside a scan, or during the thread's exit): never a panic, same result.
pub(crate) fn with<R>(scan: impl Fn(&mut Scratch) -> R) -> R {
    let reused = SCRATCH.try_with(|cell| {
        cell.try_borrow_mut().ok().map(|mut s| {
            let r = scan(&mut s);
            s.trim();
            r
        })
    });
    match reused {
        Ok(Some(r)) => r,
        _ => scan(&mut Scratch::default()),
    }
}
