//! The built-in patterns run around digits, in one automaton run once over each digit window.
//!
//! Each pattern used to be run on its own over every window where a [`regex::RegexSet`] said
//! it could match: `find_at`, a forward search for the end of the leftmost match and a
//! reverse one for its start, again after each match and after each rejected one (one
//! character later). What that loop needs from a pattern at a position `pos` is its leftmost
//! match starting at or after `pos`: the smallest start from which the pattern matches, and
//! from there the end its leftmost-first semantics give.
//!
//! Both come cheaper from two automata over all the patterns:
//! - **starts**: a reverse, unanchored lazy DFA reporting every match (`MatchKind::All`,
//!   overlapping). One pass over a window, from its end back to its start, gives every
//!   position from which each pattern matches something ending in the window: the pattern's
//!   match starts there, which also says which patterns can match at all (what the set
//!   said). A window's starts come out from the last to the first, so reversing each
//!   window's sorts them all, with no sort. They are candidates: regex-automata 0.4 reports
//!   the second and later patterns matching at one position one byte early, so the position
//!   after each is a candidate too;
//! - **ends**: a forward lazy DFA, anchored at one pattern (`Anchored::Pattern`),
//!   leftmost-first: from a candidate, whether the pattern matches there and the end
//!   `find_at` reports for a match starting there. It reads only the match's own bytes (the
//!   search stops when the automaton dies), one byte for a candidate that is none.
//!
//! The leftmost match at or after `pos` is then the first candidate at or after `pos` that
//! the forward automaton confirms, with its end: what `find_at` returns (a test checks it at
//! every position of every window of the corpus and variants of it). Only patterns without
//! look-around assertions are compiled in (an assertion looks outside the window); the
//! others, and any search that fails, go the old way.

use regex_automata::hybrid::dfa::{Cache, DFA, OverlappingState};
use regex_automata::nfa::thompson;
use regex_automata::util::pool::Pool;
use regex_automata::{Anchored, Input, MatchKind, PatternID};

/// A thread's search state for both automata.
#[derive(Clone, Debug)]
pub(crate) struct Caches {
    starts: Cache,
    ends: Cache,
}

/// Every digit pattern's match starts in the digit windows of a view (see
/// [`DigitPatterns::find_starts`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Starts {
    /// `(offset, pattern)`, sorted by offset (see [`candidates`]).
    all: Vec<(u32, u32)>,
    /// For each window: where its entries are in `all`, and which patterns have any (bit
    /// `p % 64` for pattern `p`: a set bit may be another pattern's, a clear one says none).
    windows: Vec<(usize, usize, u64)>,
}

/// A pattern's bit in [`Starts::windows`].
fn bit(p: u32) -> u64 {
    1 << (p % 64)
}

impl Starts {
    /// Whether pattern `m` has a start in any window.
    pub(crate) fn has_pattern(&self, m: u32) -> bool {
        self.windows.iter().any(|w| w.2 & bit(m) != 0) && self.all.iter().any(|&(_, p)| p == m)
    }

    /// Pattern `m`'s candidates in window `k`, in order (see [`candidates`]); `None` when it
    /// has no start there, so its loop is not run at all.
    pub(crate) fn in_window(&self, k: usize, m: u32) -> Option<impl Iterator<Item = usize> + '_> {
        let &(from, to, mask) = self.windows.get(k)?;
        if mask & bit(m) == 0 {
            return None;
        }
        let mut mine =
            self.all.get(from..to)?.iter().filter(move |&&(_, p)| p == m).map(|&(s, _)| s as usize).peekable();
        mine.peek()?;
        Some(candidates(mine))
    }

    /// Shrinks back what a long text grew (see [`super::scratch`]).
    pub(crate) fn trim(&mut self, keep: usize) {
        if self.all.capacity() > keep {
            self.all.clear();
            self.all.shrink_to(keep);
        }
        if self.windows.capacity() > keep {
            self.windows.clear();
            self.windows.shrink_to(keep);
        }
    }
}

/// Makes a thread's [`Caches`] (the pool calls it once per thread that scans at once).
type MakeCaches = Box<dyn Fn() -> Caches + Send + Sync>;

/// The patterns, compiled into both automata, with a pool of search caches (a lazy DFA
/// builds its states into a cache as it searches; the pool gives each thread its own).
pub(crate) struct DigitPatterns {
    starts: DFA,
    ends: DFA,
    caches: Pool<Caches, MakeCaches>,
}

impl std::fmt::Debug for DigitPatterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigitPatterns").field("patterns", &self.ends.pattern_len()).finish_non_exhaustive()
    }
}

impl DigitPatterns {
    /// Compiles `patterns` (pattern `i` gets id `i`); `None` if any has a look-around
    /// assertion or an automaton fails to build (the caller then runs every pattern alone).
    pub(crate) fn new(patterns: &[&str], size_limit: usize) -> Option<DigitPatterns> {
        if patterns.is_empty() {
            return None;
        }
        let mut one = thompson::Compiler::new();
        one.configure(thompson::Config::new().nfa_size_limit(Some(size_limit)));
        for p in patterns {
            if !one.build(p).ok()?.look_set_any().is_empty() {
                return None;
            }
        }
        let nfa_config = thompson::Config::new().nfa_size_limit(Some(size_limit.saturating_mul(patterns.len())));
        let starts = DFA::builder()
            .configure(DFA::config().match_kind(MatchKind::All))
            .thompson(nfa_config.clone().reverse(true))
            .build_many(patterns)
            .ok()?;
        let ends = DFA::builder()
            .configure(DFA::config().match_kind(MatchKind::LeftmostFirst).starts_for_each_pattern(true))
            .thompson(nfa_config)
            .build_many(patterns)
            .ok()?;
        let (s, e) = (starts.clone(), ends.clone());
        let make: MakeCaches = Box::new(move || Caches { starts: s.create_cache(), ends: e.create_cache() });
        Some(DigitPatterns { starts, ends, caches: Pool::new(make) })
    }

    /// This thread's caches, until the guard is dropped (taken once per scan).
    pub(crate) fn caches(&self) -> impl std::ops::DerefMut<Target = Caches> + '_ {
        self.caches.get()
    }

    /// Every pattern's starts in each of `windows` of `hay`, into `out` (cleared first);
    /// `false` if a search failed (then nothing can be said: every pattern is run alone).
    pub(crate) fn find_starts(&self, c: &mut Caches, hay: &str, windows: &[(usize, usize)], out: &mut Starts) -> bool {
        out.all.clear();
        out.windows.clear();
        windows.iter().all(|&(lo, hi)| {
            let from = out.all.len();
            let ok = self.starts(c, hay, lo, hi, &mut out.all);
            // A window's starts come from its end back: reversed, all are sorted.
            let new = out.all.get_mut(from..).unwrap_or_default();
            new.reverse();
            let mask = new.iter().fold(0, |mask, &(_, p)| mask | bit(p));
            out.windows.push((from, out.all.len(), mask));
            ok
        })
    }

    /// Appends `(offset, pattern)` for every start in `lo..hi` of `hay` from which a pattern
    /// matches text ending by `hi`, from the last start to the first: the start is the offset
    /// or the byte after it (see [`candidates`]). `false` if the search failed (then nothing
    /// can be said).
    pub(crate) fn starts(&self, c: &mut Caches, hay: &str, lo: usize, hi: usize, out: &mut Vec<(u32, u32)>) -> bool {
        let Some(text) = hay.get(..hi) else { return false };
        // `Input::range` panics on a range outside the haystack.
        if lo > hi {
            return false;
        }
        let input = Input::new(text).range(lo..);
        let mut state = OverlappingState::start();
        loop {
            if self.starts.try_search_overlapping_rev(&mut c.starts, &input, &mut state).is_err() {
                return false;
            }
            let Some(m) = state.get_match() else { return true };
            let (Ok(p), Ok(s)) = (u32::try_from(m.pattern().as_usize()), u32::try_from(m.offset())) else {
                return false;
            };
            out.push((s, p));
        }
    }

    /// The leftmost match of pattern `pattern` in `hay` cut at `hi` starting at or after `pos`,
    /// given its `candidates` there (see [`candidates`]), which must be consumed in the order
    /// of increasing `pos` calls: a candidate passed over is never needed again.
    pub(crate) fn leftmost(
        &self,
        c: &mut Caches,
        hay: &str,
        pattern: u32,
        hi: usize,
        candidates: &mut std::iter::Peekable<impl Iterator<Item = usize>>,
        pos: usize,
    ) -> Option<(usize, usize)> {
        while let Some(&s) = candidates.peek() {
            if s >= pos
                && s < hi
                && hay.is_char_boundary(s)
                && let Some(e) = self.end(c, hay, pattern, s, hi)
            {
                return Some((s, e));
            }
            candidates.next();
        }
        None
    }

    /// Where pattern `pattern`'s leftmost-first match starting at `start` ends, in `hay`
    /// cut at `hi`; `None` if it has none there (or the search failed).
    pub(crate) fn end(&self, c: &mut Caches, hay: &str, pattern: u32, start: usize, hi: usize) -> Option<usize> {
        let text = hay.get(..hi)?;
        // `Input::range` panics on a range outside the haystack.
        if start > text.len() {
            return None;
        }
        let pid = PatternID::new(usize::try_from(pattern).ok()?).ok()?;
        let input = Input::new(text).range(start..).anchored(Anchored::Pattern(pid));
        self.ends.try_search_fwd(&mut c.ends, &input).ok()?.map(|m| m.offset())
    }
}

/// The positions where a match may start, from reported offsets sorted ascending: each
/// offset and the byte after it (regex-automata 0.4 reports the second and later patterns
/// matching at one position one byte early), in non-decreasing order where it matters: the
/// first of them that [`DigitPatterns::end`] confirms at or after a position is the leftmost.
pub(crate) fn candidates(offsets: impl Iterator<Item = usize>) -> impl Iterator<Item = usize> {
    offsets.flat_map(|o| [o, o + 1])
}

#[cfg(test)]
mod tests {
    use super::super::{Prefilter, builtin_specs, compile_regex, digit_windows};
    use super::*;

    /// The built-in patterns the automata hold, as the engine picks them.
    fn members() -> Vec<String> {
        builtin_specs()
            .into_iter()
            .filter(|s| s.prefilter == Prefilter::Digits && s.bounded && !s.matches_every_digit)
            .filter_map(|s| s.pattern)
            .collect()
    }

    /// Texts with numbers written every way the corpus and its variants write them.
    fn texts() -> Vec<String> {
        let corpus = include_str!("../../../tests/policy_corpus/corpus.txt");
        let mut v: Vec<String> = corpus.split("\n=== ").map(str::to_string).collect();
        let more: Vec<String> = v
            .iter()
            .flat_map(|t| {
                [
                    t.to_uppercase(),
                    t.replace(' ', ""),
                    t.replace(' ', "  "),
                    t.replace('-', " ").replace('/', "."),
                    t.replace("1", "ſK1").replace('e', "é"),
                ]
            })
            .collect();
        v.extend(more);
        v.extend(
            [
                "1234-567-897 AB, 9698 658 215, TREM 8553 1512, 046 454 286, 12345678901234",
                "+44 20 7946 0958, +1 (416) 555-0199, 1-416-555-0199, 416.555.0199x",
                "born March 7, 1984; 7 mars 1984; 1er mars 1984; sept. 3rd, 1999; 12/31/84",
                "140/90 mmHg, 38.5°C, 101 °F, 72 bpm, sats 91%, spo2: 95 %, 39 degrees celsius",
                "50 mg/ml 0.5mcg 20 mEq 1000 IU 5.4 mmol/L 7 x 10^9/l H0H 0H0 90210-1234",
            ]
            .map(str::to_string),
        );
        v
    }

    /// At every position of every digit window, the automata's leftmost match is `find_at`'s.
    #[test]
    fn leftmost_match_at_every_position_is_find_ats() {
        let patterns = members();
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let dp = DigitPatterns::new(&refs, super::super::REGEX_SIZE_LIMIT).unwrap_or_else(|| panic!("no automata"));
        let regexes: Vec<regex::Regex> =
            patterns.iter().map(|p| compile_regex(p).unwrap_or_else(|e| panic!("{e}"))).collect();
        let mut checked = 0usize;
        for t in texts() {
            for (lo, hi) in digit_windows(&t) {
                let mut starts = Vec::new();
                assert!(dp.starts(&mut dp.caches(), &t, lo, hi, &mut starts));
                starts.reverse();
                assert!(starts.windows(2).all(|w| w[0].0 <= w[1].0), "reported from the last start");
                let hay = &t[..hi];
                for (pi, re) in regexes.iter().enumerate() {
                    let mine = || starts.iter().filter(|s| s.1 as usize == pi).map(|s| s.0 as usize);
                    // Asked position by position, as the engine does, with one iterator ...
                    let mut all = candidates(mine()).peekable();
                    for pos in (lo..=hi).filter(|&p| t.is_char_boundary(p)) {
                        let want = re.find_at(hay, pos).map(|m| (m.start(), m.end()));
                        let got = dp.leftmost(&mut dp.caches(), &t, pi as u32, hi, &mut all, pos);
                        assert_eq!(got, want, "pattern {pi} at {pos} in {:?}", &t[lo..hi]);
                        // ... and afresh.
                        let mut fresh = candidates(mine()).peekable();
                        let again = dp.leftmost(&mut dp.caches(), &t, pi as u32, hi, &mut fresh, pos);
                        assert_eq!(again, want, "pattern {pi} at {pos} in {:?}", &t[lo..hi]);
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    #[test]
    fn look_around_is_left_to_the_regex() {
        assert!(DigitPatterns::new(&["[0-9]+", r"\b[0-9]{5}\b"], 1 << 20).is_none());
        assert!(DigitPatterns::new(&[], 1 << 20).is_none());
        assert!(DigitPatterns::new(&["[0-9]+"], 1 << 20).is_some());
    }

    /// Positions and ids outside the text or the automaton give no answer, not a panic.
    #[test]
    fn out_of_range_asks_are_answered_none() {
        let dp = DigitPatterns::new(&["[0-9]+"], 1 << 20).unwrap_or_else(|| panic!("no automata"));
        let mut c = dp.caches();
        let mut out = Vec::new();
        assert!(!dp.starts(&mut c, "12 34", 4, 2, &mut out));
        assert!(!dp.starts(&mut c, "12 34", 0, 9, &mut out));
        assert!(!dp.starts(&mut c, "é1", 0, 1, &mut out));
        assert_eq!(dp.end(&mut c, "12 34", 0, 7, 5), None);
        assert_eq!(dp.end(&mut c, "12 34", 0, 0, 9), None);
        assert_eq!(dp.end(&mut c, "12 34", 5, 0, 5), None);
        assert_eq!(dp.end(&mut c, "12 34", 0, 3, 5), Some(5));
    }
}
