//! The words a scan meets most, each with what its per-word look-ups give, worked out once.
//!
//! For every letter run of the folded text the scan asks three questions: which term (or start
//! of a longer term) the word is ([`super::WordTerms`]), which misspelt context words it may be
//! ([`super::fuzzy::Index`]), and, when no term starts with it, which keywords it may be
//! misspelt from ([`super::fuzzy::Vocabulary`]). The answers depend on the word alone, and
//! nearly every word of a clinic's inbox is an everyday word or a term: so the answers for
//! those words (the everyday list, every one-word term or start of a term, every misspelt
//! context word's vocabulary) are computed when the policy is compiled, by the same functions,
//! and a scan pays one hash look-up per word instead of three look-ups and a comparison with
//! every context word of its first letter. A word outside the lexicon is asked as before, so
//! the findings are the same whatever the lexicon holds.

use super::WordTerms;
use super::fuzzy::{Index, Vocabulary};
use rustc_hash::FxHashMap;

/// What the scan's look-ups give for one word.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Known {
    /// The word's entry in the term map ([`WordTerms`]): its term id if it is a term, whether
    /// longer terms continue it; `None` when no term starts with it.
    pub term: Option<(Option<usize>, bool)>,
    /// The misspelt-context vocabulary words it may be, in the index's order (a range of
    /// [`Lexicon::ids`]).
    fuzzy: (u32, u32),
    /// The keywords it may be misspelt from, in the vocabulary's order (a range of
    /// [`Lexicon::ids`]); empty when a term starts with it (the scan does not ask then).
    misspelt: (u32, u32),
}

/// The precomputed words, with one vector holding every answer's ids.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lexicon {
    words: FxHashMap<Box<str>, Known>,
    ids: Vec<usize>,
}

impl Lexicon {
    /// Answers, for each of `words`, the look-ups of `terms`, `fuzzy` and `vocabulary`.
    pub(crate) fn new<'a>(
        words: impl IntoIterator<Item = &'a str>,
        terms: &WordTerms,
        fuzzy: &Index,
        vocabulary: &Vocabulary,
    ) -> Lexicon {
        let mut lx = Lexicon::default();
        let mut buf = Vec::new();
        for w in words {
            if lx.words.contains_key(w) {
                continue;
            }
            let term = terms.get(w);
            fuzzy.matches(w, &mut buf);
            let fuzzy = lx.push(&buf);
            buf.clear();
            if term.is_none() && !vocabulary.is_empty() {
                vocabulary.find(w, |id| buf.push(id));
            }
            let misspelt = lx.push(&buf);
            buf.clear();
            lx.words.insert(w.into(), Known { term, fuzzy, misspelt });
        }
        lx
    }

    /// Appends `ids` to the shared vector; their range (empty if it would overflow `u32`).
    fn push(&mut self, ids: &[usize]) -> (u32, u32) {
        let start = self.ids.len();
        let (Ok(a), Ok(b)) = (u32::try_from(start), u32::try_from(start + ids.len())) else { return (0, 0) };
        self.ids.extend_from_slice(ids);
        (a, b)
    }

    /// What the look-ups give for `word`, if it is in the lexicon.
    pub(crate) fn get(&self, word: &str) -> Option<&Known> {
        self.words.get(word)
    }

    /// The misspelt-context vocabulary words `known` may be.
    pub(crate) fn fuzzy(&self, known: &Known) -> &[usize] {
        self.ids.get(known.fuzzy.0 as usize..known.fuzzy.1 as usize).unwrap_or_default()
    }

    /// The keywords `known` may be misspelt from.
    pub(crate) fn misspelt(&self, known: &Known) -> &[usize] {
        self.ids.get(known.misspelt.0 as usize..known.misspelt.1 as usize).unwrap_or_default()
    }

    /// How many words it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.words.len()
    }
}
