//! The few terms that start with a letter but do not end with one (`covid-19`, `o2`, `file #`,
//! `diabète de type 2`): found from the starts of the text's letter runs instead of by an
//! automaton over the whole text.
//!
//! A whole-word occurrence of a term starting with a letter has no letter before it, so it
//! starts where a letter run starts: trying the terms of that first byte there finds exactly
//! what an automaton over every position would, after the same whole-word check. Terms that
//! start with something else (`# de dossier`) stay in the small automaton. Occurrences are
//! reported in the automaton's order (by end, the longer first), so the scan sees the same
//! sequence of candidates.

use super::normalize::whole_word;

/// Terms starting with a letter and ending otherwise, bucketed by first byte.
#[derive(Clone, Debug, Default)]
pub(crate) struct OddTerms {
    /// `by_first[byte]`: (folded term, term id).
    by_first: Vec<Vec<(Box<str>, usize)>>,
}

impl OddTerms {
    /// Adds folded `term` (id `id`) if it starts with a letter; `false` if it does not.
    pub(crate) fn insert(&mut self, term: &str, id: usize) -> bool {
        let (Some(c), Some(&b)) = (term.chars().next(), term.as_bytes().first()) else { return false };
        if !c.is_alphabetic() {
            return false;
        }
        if self.by_first.is_empty() {
            self.by_first = vec![Vec::new(); 256];
        }
        if let Some(bucket) = self.by_first.get_mut(usize::from(b)) {
            bucket.push((term.into(), id));
        }
        true
    }

    /// The first letter run of each term (`covid` of `covid-19`): an occurrence starts with a
    /// run of exactly these letters, since a non-letter follows them in the term.
    pub(crate) fn first_runs(&self) -> impl Iterator<Item = &str> {
        self.by_first.iter().flatten().filter_map(|(t, _)| {
            let end = t.char_indices().find(|&(_, c)| !c.is_alphabetic()).map_or(t.len(), |(i, _)| i);
            t.get(..end)
        })
    }

    /// Appends to `out` every whole-word occurrence in the folded text `f`, whose letter runs
    /// are `runs`: (start, end, term id), by end, then start. `may_start(k)`: false when run
    /// `k` is known to be no term's first run (see [`OddTerms::first_runs`]); it is skipped.
    pub(crate) fn find(
        &self,
        f: &str,
        runs: &[(usize, usize)],
        may_start: impl Fn(usize) -> bool,
        out: &mut Vec<(usize, usize, usize)>,
    ) {
        if self.by_first.is_empty() {
            return;
        }
        let from = out.len();
        for (k, &(start, _)) in runs.iter().enumerate() {
            if !may_start(k) {
                continue;
            }
            let Some(rest) = f.get(start..) else { continue };
            let Some(bucket) = rest.as_bytes().first().and_then(|&b| self.by_first.get(usize::from(b))) else {
                continue;
            };
            for (term, id) in bucket {
                let end = start + term.len();
                if rest.starts_with(&**term) && whole_word(f, start, end) {
                    out.push((start, end, *id));
                }
            }
        }
        if let Some(found) = out.get_mut(from..) {
            found.sort_unstable_by_key(|&(start, end, _)| (end, start));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aho_corasick::{AhoCorasick, MatchKind};

    /// The same occurrences, in the same order, as the automaton they replace.
    #[test]
    fn finds_what_the_automaton_finds_in_its_order() {
        let terms = ["o2", "o2 sat #", "covid-19", "type 1", "e 1", "file #", "file #2", "x-1"];
        let mut odd = OddTerms::default();
        for (id, t) in terms.iter().enumerate() {
            assert!(odd.insert(t, id));
        }
        assert!(!odd.insert("# de dossier", 9));
        let firsts: Vec<&str> = odd.first_runs().collect();
        assert!(firsts.contains(&"covid") && firsts.contains(&"o") && firsts.contains(&"file"));
        let ac = AhoCorasick::builder().match_kind(MatchKind::Standard).build(terms).unwrap_or_else(|e| panic!("{e}"));
        for f in ["o2 sat #1 and o2, covid-19 type 1 file #2", "xo2 type 12 file #", "e 1 file #2x-1", "", "o"] {
            let want: Vec<(usize, usize, usize)> = ac
                .find_overlapping_iter(f)
                .filter(|m| whole_word(f, m.start(), m.end()))
                .map(|m| (m.start(), m.end(), m.pattern().as_usize()))
                .collect();
            let mut got = Vec::new();
            odd.find(f, &super::super::letter_runs(f), |_| true, &mut got);
            assert_eq!(got, want, "{f:?}");
        }
    }
}
