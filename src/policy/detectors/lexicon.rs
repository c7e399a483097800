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
use super::word_map::WordMap;

/// What the scan's look-ups give for one word, packed small (the lexicon holds ~35,000;
/// [`WordMap`] keys them without pointers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Known {
    /// The word's term id, if it is a term ([`NO_TERM`] if not).
    term_id: u32,
    /// [`HAS_ENTRY`]: some term starts with the word; [`CONTINUED`]: longer terms continue it;
    /// [`STARTS_ODD`]: it is the first letter run of a term not bounded by letters
    /// ([`super::odd_terms`]).
    flags: u8,
    /// The misspelt-context vocabulary words it may be, in the index's order, then the
    /// keywords it may be misspelt from, in the vocabulary's order (empty when a term starts
    /// with it: the scan does not ask then): `ids[first..first + fuzzy + misspelt]`.
    first: u32,
    fuzzy: u8,
    misspelt: u8,
}

const NO_TERM: u32 = u32::MAX;
const HAS_ENTRY: u8 = 1;
const CONTINUED: u8 = 2;
const STARTS_ODD: u8 = 4;

impl Known {
    /// The word's entry in the term map ([`WordTerms`]): its term id if it is a term, whether
    /// longer terms continue it; `None` when no term starts with it.
    pub(crate) fn term(&self) -> Option<(Option<usize>, bool)> {
        (self.flags & HAS_ENTRY != 0)
            .then(|| ((self.term_id != NO_TERM).then_some(self.term_id as usize), self.flags & CONTINUED != 0))
    }

    /// Whether the word is the first letter run of a term not bounded by letters.
    pub(crate) fn starts_odd(&self) -> bool {
        self.flags & STARTS_ODD != 0
    }
}

/// The precomputed words, with one vector holding every answer's ids.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lexicon {
    words: WordMap<Known>,
    /// The words of one or two ASCII lower-case letters (`a`, `my`, `de`: a third of a text's
    /// words), also in a table indexed by their letters: no hashing for them.
    tiny: Vec<Option<Known>>,
    ids: Vec<usize>,
}

/// Where a word of one or two ASCII lower-case letters sits in [`Lexicon::tiny`].
fn tiny_slot(word: &str) -> Option<usize> {
    let letter = |b: u8| b.is_ascii_lowercase().then(|| usize::from(b - b'a') + 1);
    match word.as_bytes() {
        [a] => letter(*a),
        [a, b] => Some(letter(*a)? * 27 + letter(*b)?),
        _ => None,
    }
}

impl Lexicon {
    /// Answers, for each of `words`, the look-ups of `terms`, `fuzzy` and `vocabulary`.
    /// `odd_starts`: the first letter runs of the terms not bounded by letters.
    pub(crate) fn new<'a>(
        words: impl IntoIterator<Item = &'a str>,
        terms: &WordTerms,
        fuzzy: &Index,
        vocabulary: &Vocabulary,
        odd_starts: &[&str],
    ) -> Lexicon {
        let mut lx = Lexicon::default();
        let (mut fuzzy_ids, mut misspelt_ids) = (Vec::new(), Vec::new());
        for w in words {
            if lx.get(w).is_some() {
                continue;
            }
            let term = terms.get(w);
            fuzzy.matches(w, &mut fuzzy_ids);
            misspelt_ids.clear();
            if term.is_none() && !vocabulary.is_empty() {
                vocabulary.find(w, |id| misspelt_ids.push(id));
            }
            // A word with too many answers to pack (none in practice) is left to the look-ups.
            let (Ok(first), Ok(fuzzy), Ok(misspelt)) =
                (u32::try_from(lx.ids.len()), u8::try_from(fuzzy_ids.len()), u8::try_from(misspelt_ids.len()))
            else {
                continue;
            };
            let (term_id, flags) = match term {
                None => (NO_TERM, 0),
                Some((id, more)) => (
                    id.and_then(|i| u32::try_from(i).ok()).unwrap_or(NO_TERM),
                    HAS_ENTRY | if more { CONTINUED } else { 0 },
                ),
            };
            let flags = flags | if odd_starts.contains(&w) { STARTS_ODD } else { 0 };
            let known = Known { term_id, flags, first, fuzzy, misspelt };
            if known.term() != term {
                continue;
            }
            lx.ids.extend_from_slice(&fuzzy_ids);
            lx.ids.extend_from_slice(&misspelt_ids);
            lx.words.insert(w, known);
            if let Some(slot) = tiny_slot(w) {
                if lx.tiny.len() <= slot {
                    lx.tiny.resize(27 * 27, None);
                }
                if let Some(entry) = lx.tiny.get_mut(slot) {
                    *entry = Some(known);
                }
            }
        }
        lx
    }

    /// What the look-ups give for `word`, if it is in the lexicon.
    pub(crate) fn get(&self, word: &str) -> Option<Known> {
        match tiny_slot(word) {
            Some(slot) => self.tiny.get(slot).copied().flatten(),
            None => self.words.get(word).copied(),
        }
    }

    /// The misspelt-context vocabulary words `known` may be.
    pub(crate) fn fuzzy(&self, known: &Known) -> &[usize] {
        let first = known.first as usize;
        self.ids.get(first..first + usize::from(known.fuzzy)).unwrap_or_default()
    }

    /// The keywords `known` may be misspelt from.
    pub(crate) fn misspelt(&self, known: &Known) -> &[usize] {
        let first = known.first as usize + usize::from(known.fuzzy);
        self.ids.get(first..first + usize::from(known.misspelt)).unwrap_or_default()
    }

    /// How many words it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.words.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_slots_are_distinct_and_in_the_table() {
        let words: Vec<String> = (b'a'..=b'z')
            .map(|a| (a as char).to_string())
            .chain((b'a'..=b'z').flat_map(|a| (b'a'..=b'z').map(move |b| format!("{}{}", a as char, b as char))))
            .collect();
        let mut slots: Vec<usize> = words.iter().filter_map(|w| tiny_slot(w)).collect();
        assert_eq!(slots.len(), 26 + 26 * 26);
        assert!(slots.iter().all(|&s| s < 27 * 27));
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), 26 + 26 * 26);
        for w in ["", "A", "é", "a1", "abc", "ab "] {
            assert_eq!(tiny_slot(w), None, "{w:?}");
        }
    }
}
