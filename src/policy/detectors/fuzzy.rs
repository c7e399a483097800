//! Context words as people type them: "helth card", "date of brith", "insurence", "chrat".
//!
//! A context phrase matches a run of words of the window when every word is equal, or both
//! start with the same letter, the phrase's word has at least 5 letters, the typed one at least
//! 4, and they are within an optimal-string-alignment distance (an edit or an adjacent swap) of
//! 1 (2 for words of 8 letters or more), computed by `strsim`. Short words (`dob`, `sin`,
//! `ohip`, `of`) must be exact: one edit turns them into other words. A phrase also matches its
//! words written as one ("healthcard", "dateofbirth").
//!
//! Only detectors whose matches are dropped without context use this (identifiers). The
//! phrases are compiled once into an [`Index`] keyed by first letter; a text's words are
//! compared once with the phrases starting with the same letter, and each approximate
//! occurrence then counts as a context word of the phrase's detectors wherever it is.

/// The words of a folded text: runs of letters and digits.
pub(crate) fn words(folded: &str) -> Vec<&str> {
    folded.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect()
}

/// A word with what the cheap rejections need: its length in characters and the set of its
/// letters (one bit per ASCII letter, digits and other letters folded onto a few more bits).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shaped<'a> {
    text: std::borrow::Cow<'a, str>,
    chars: usize,
    letters: u32,
}

impl<'a> Shaped<'a> {
    fn new(text: impl Into<std::borrow::Cow<'a, str>>) -> Shaped<'a> {
        let text = text.into();
        let (mut chars, mut letters) = (0, 0u32);
        for c in text.chars() {
            chars += 1;
            let bit = match c {
                'a'..='z' => u32::from(c) - u32::from('a'),
                '0'..='9' => 26,
                _ => 27 + u32::from(c) % 5,
            };
            letters |= 1 << bit;
        }
        Shaped { text, chars, letters }
    }
}

/// Whether typed word `typed` may be the phrase word `want`.
fn close(typed: &Shaped<'_>, want: &Shaped<'_>) -> bool {
    if typed.chars.abs_diff(want.chars) > 2 {
        return false;
    }
    // An edit brings in at most one letter the other word lacks and takes out at most one it
    // has: most pairs are rejected by these two counts, before any text is compared (equal
    // words have equal letter sets and lengths).
    let extra = (typed.letters & !want.letters).count_ones() as usize;
    let missing = (want.letters & !typed.letters).count_ones() as usize;
    if extra == 0 && missing == 0 && typed.chars == want.chars && typed.text == want.text {
        return true;
    }
    if extra > 2
        || missing > 2
        || typed.text.as_bytes().first() != want.text.as_bytes().first()
        || want.chars < 5
        || typed.chars < 4
        || typed.text.chars().next() != want.text.chars().next()
    {
        return false;
    }
    let max = if want.chars >= 8 { 2 } else { 1 };
    typed.chars.abs_diff(want.chars) <= max
        && extra <= max
        && missing <= max
        && strsim::osa_distance(&typed.text, &want.text) <= max
}

/// One fuzzy phrase: its words (indices into the index's vocabulary), the detectors using it.
#[derive(Clone, Debug)]
struct Phrase {
    words: Vec<usize>,
    specs: Vec<usize>,
}

/// Longest word (characters) looked up; longer typed words are compared with nothing.
const MAX_CHARS: usize = 40;

/// The fuzzy context phrases of the detectors that accept misspelt context words.
///
/// Their distinct words (and the phrases written as one word) form a small vocabulary,
/// bucketed by first byte and length in characters: a typed word is compared only with the
/// vocabulary words of its bucket and the neighbouring lengths, once per text, and phrases
/// are then read off the words' matches.
#[derive(Clone, Debug, Default)]
pub(crate) struct Index {
    vocab: Vec<Shaped<'static>>,
    /// `buckets[first byte][length]`: vocabulary words with that first byte and length.
    buckets: Vec<Vec<Vec<usize>>>,
    phrases: Vec<Phrase>,
    /// For each vocabulary word: the phrases it starts, and the phrases it writes as one.
    starting: Vec<Vec<usize>>,
    joining: Vec<Vec<usize>>,
}

impl Index {
    /// Builds the index from `(folded phrase, detector index)` pairs.
    pub(crate) fn new(phrases: impl IntoIterator<Item = (String, usize)>) -> Index {
        let mut ix = Index { buckets: vec![Vec::new(); 256], ..Index::default() };
        for (p, spec) in phrases {
            let w: Vec<usize> = words(&p).into_iter().map(|w| ix.word(w)).collect();
            let Some(&first) = w.first() else { continue };
            if let Some(known) = ix.phrases.iter_mut().find(|k| k.words == w) {
                if !known.specs.contains(&spec) {
                    known.specs.push(spec);
                }
                continue;
            }
            let joined: String = words(&p).concat();
            let joined = ix.word(&joined);
            let id = ix.phrases.len();
            if let Some(s) = ix.starting.get_mut(first) {
                s.push(id);
            }
            if w.len() > 1
                && let Some(j) = ix.joining.get_mut(joined)
            {
                j.push(id);
            }
            ix.phrases.push(Phrase { words: w, specs: vec![spec] });
        }
        ix
    }

    /// The vocabulary index of `w`, added if new.
    fn word(&mut self, w: &str) -> usize {
        if let Some(i) = self.vocab.iter().position(|v| v.text == w) {
            return i;
        }
        let shaped = Shaped::new(w.to_string());
        let (first, len) = (w.as_bytes().first().copied().unwrap_or(0), shaped.chars.min(MAX_CHARS));
        let id = self.vocab.len();
        if let Some(b) = self.buckets.get_mut(usize::from(first)) {
            if b.len() <= len {
                b.resize(len + 1, Vec::new());
            }
            if let Some(slot) = b.get_mut(len) {
                slot.push(id);
            }
        }
        self.vocab.push(shaped);
        self.starting.push(Vec::new());
        self.joining.push(Vec::new());
        id
    }

    /// Whether there is nothing to look for.
    pub(crate) fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }

    /// The words of the vocabulary (the phrases' words and the phrases written as one).
    pub(crate) fn words(&self) -> impl Iterator<Item = &str> {
        self.vocab.iter().map(|w| &*w.text)
    }

    /// The vocabulary words `typed` may be (each at most once, in vocabulary order).
    pub(crate) fn matches(&self, typed: &str, out: &mut Vec<usize>) {
        out.clear();
        let Some(lens) = typed.as_bytes().first().and_then(|&f| self.buckets.get(usize::from(f))) else { return };
        // Byte lengths bound character counts from above: a word too short for every
        // vocabulary word of its first letter is rejected before it is measured.
        let shortest = lens.iter().position(|ids| !ids.is_empty());
        if shortest.is_none_or(|n| typed.len() + 2 < n) {
            return;
        }
        // An ASCII word's length is its byte length: no vocabulary word of a close length,
        // nothing to compare.
        if typed.is_ascii() {
            let n = typed.len();
            let range = lens.get(n.saturating_sub(2)..(n + 3).min(lens.len())).unwrap_or_default();
            if range.iter().all(Vec::is_empty) {
                return;
            }
        }
        let shaped = Shaped::new(typed);
        if shaped.chars > MAX_CHARS {
            return;
        }
        // `close` accepts a word of another length only misspelt, which needs a typed word of
        // 4 characters or more and a vocabulary word of 5 or more: a shorter word is compared
        // with the words of its own length only (it can only be one of them exactly), and no
        // word under 5 characters of another length is compared at all. Same result, in the
        // same order (by length, then vocabulary order), with far fewer comparisons.
        let n = shaped.chars;
        let (lo, hi) = if n < 4 { (n, n) } else { (n.saturating_sub(2), n + 2) };
        for (len, ids) in lens.iter().enumerate().take(hi + 1).skip(lo) {
            if len != n && len < 5 {
                continue;
            }
            for &id in ids {
                if self.vocab.get(id).is_some_and(|want| close(&shaped, want)) {
                    out.push(id);
                }
            }
        }
    }

    /// Where phrases occur, approximately, in a folded text whose letter runs are `runs`:
    /// calls `found(start, end, specs)` with byte offsets of the folded text and the detectors
    /// using the phrase. Words are runs of letters (a number glued to a word,
    /// `healthcard1234567897`, does not hide it).
    #[cfg(test)]
    pub(crate) fn find(&self, folded: &str, runs: &[(usize, usize)], found: impl FnMut(usize, usize, &[usize])) {
        let mut buf = Vec::new();
        let matches_of = |_: usize, word: &str, out: &mut Vec<usize>| {
            self.matches(word, &mut buf);
            out.extend_from_slice(&buf);
        };
        self.find_with(folded, runs, matches_of, found);
    }

    /// [`Index::find`], with the vocabulary words each word may be given by `matches_of(k,
    /// word, out)`, which appends to `out` what [`Index::matches`] gives for run `k`'s `word`
    /// (from the [`super::lexicon::Lexicon`] when the word is in it).
    pub(crate) fn find_with(
        &self,
        folded: &str,
        runs: &[(usize, usize)],
        mut matches_of: impl FnMut(usize, &str, &mut Vec<usize>),
        mut found: impl FnMut(usize, usize, &[usize]),
    ) {
        // Each word of the text with the vocabulary words it may be (most have none), all in
        // one vector: word `k`'s are `ids[first[k]..first[k + 1]]`. No allocation per word.
        let mut ids: Vec<usize> = Vec::new();
        let mut first: Vec<usize> = Vec::with_capacity(runs.len() + 1);
        for (k, &(a, b)) in runs.iter().enumerate() {
            first.push(ids.len());
            matches_of(k, folded.get(a..b).unwrap_or_default(), &mut ids);
        }
        first.push(ids.len());
        let of = |k: usize| match (first.get(k), first.get(k + 1)) {
            (Some(&lo), Some(&hi)) => ids.get(lo..hi).unwrap_or_default(),
            _ => &[],
        };
        for (k, &(a, b)) in runs.iter().enumerate() {
            for &id in of(k) {
                for &pi in self.starting.get(id).into_iter().flatten() {
                    let Some(p) = self.phrases.get(pi) else { continue };
                    let n = p.words.len();
                    let run =
                        k + n <= runs.len() && p.words.iter().enumerate().all(|(d, want)| of(k + d).contains(want));
                    if run && let Some(&(_, end)) = runs.get(k + n - 1) {
                        found(a, end, &p.specs);
                    }
                }
                for &pi in self.joining.get(id).into_iter().flatten() {
                    if let Some(p) = self.phrases.get(pi) {
                        found(a, b, &p.specs);
                    }
                }
            }
        }
    }
}

/// Longest key built on the stack (bytes); a longer typed word (only possible when a term is
/// nearly that long) takes a heap buffer.
const MAX_KEY: usize = 64;

/// Fewest letters of a keyword matched misspelt: shorter words are one edit from too many
/// others ("ulcer"/"under", "otite"/"porte").
const VOCAB_MIN_LETTERS: usize = 7;

/// Keywords as people misspell them ("perscription", "diabetis", "amoxicilin", "colosopie",
/// "hypertention"): single-word terms of [`VOCAB_MIN_LETTERS`] letters or more (folded, so
/// accents never count), matched by a typed word one edit away (an insertion, a deletion, a
/// substitution or a swap of neighbours) that keeps the first letter.
///
/// An index, not a scan: every term and each of its one-letter deletions is a key of a hash
/// map (SymSpell's deletion neighbourhood), so a typed word of n letters costs n + 1 look-ups,
/// and a candidate found that way is confirmed by the distance. The engine asks only about
/// words of the text that start no term and are not everyday words
/// ([`crate::policy::safe::is_everyday`]): a real word ("relation", "cloture") one edit from a
/// drug name is not that drug.
#[derive(Clone, Debug, Default)]
pub(crate) struct Vocabulary {
    /// Term or one-letter deletion of a term -> indices into `terms`.
    keys: super::word_map::WordMap<Vec<u32>>,
    /// (folded term, term id).
    terms: Vec<(Box<str>, usize)>,
    /// Fewest letters of a term (and, less one, of a typed word).
    min_letters: usize,
    /// Most letters of a term: a typed word longer by two or more is no term misspelt.
    max_len: usize,
    /// Typed everyday words are not looked up (keywords); off for lists of everyday words.
    skip_everyday: bool,
}

impl Vocabulary {
    /// Builds the index from `(folded term, term id)` pairs; terms of several words, of other
    /// characters than ASCII letters, or shorter than [`VOCAB_MIN_LETTERS`] are left out.
    pub(crate) fn new<'a>(terms: impl IntoIterator<Item = (&'a str, usize)>) -> Vocabulary {
        Vocabulary::of_words(terms, VOCAB_MIN_LETTERS, true)
    }

    /// The same index over any list of folded words (the safety net's everyday and health
    /// words), with its own minimum length; `skip_everyday`: ignore typed everyday words.
    pub(crate) fn of_words<'a>(
        terms: impl IntoIterator<Item = (&'a str, usize)>,
        min_letters: usize,
        skip_everyday: bool,
    ) -> Vocabulary {
        let mut v = Vocabulary { min_letters, skip_everyday, ..Vocabulary::default() };
        for (t, id) in terms {
            if t.len() < min_letters || !t.bytes().all(|b| b.is_ascii_lowercase()) {
                continue;
            }
            let Ok(index) = u32::try_from(v.terms.len()) else { break };
            for key in std::iter::once(t.to_string()).chain(deletions(t)) {
                let entry = v.keys.entry_or_insert_with(&key, Vec::new);
                if entry.last() != Some(&index) {
                    entry.push(index);
                }
            }
            v.max_len = v.max_len.max(t.len());
            v.terms.push((t.into(), id));
        }
        v
    }

    /// Whether there is nothing to look for.
    pub(crate) fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Calls `found(term id)` for each term the folded word `typed` may be misspelt from.
    pub(crate) fn find(&self, typed: &str, mut found: impl FnMut(usize)) {
        if typed.len() + 1 < self.min_letters
            || typed.len() > self.max_len + 1
            || !typed.bytes().all(|b| b.is_ascii_lowercase())
        {
            return;
        }
        // Most typed words looked up are everyday words: one look-up says so, where the
        // deletions below take one per letter (the result is the same either way).
        if self.skip_everyday && crate::policy::safe::is_everyday_word(typed) {
            return;
        }
        let mut seen: Vec<u32> = Vec::new();
        let mut hits: Vec<usize> = Vec::new();
        // Keys are built on the stack: no allocation per word.
        let mut stack = [0u8; MAX_KEY];
        let mut heap = Vec::new();
        let buf: &mut [u8] = if typed.len() <= MAX_KEY {
            &mut stack
        } else {
            heap.resize(typed.len(), 0);
            &mut heap
        };
        let b = typed.as_bytes();
        // The word itself, then each of its one-letter deletions (a double letter once).
        for i in std::iter::once(None).chain((0..typed.len()).map(Some)) {
            let len = match i {
                None => {
                    buf.get_mut(..b.len()).unwrap_or_default().copy_from_slice(b);
                    b.len()
                }
                Some(i) => {
                    if i > 0 && b.get(i - 1) == b.get(i) {
                        continue;
                    }
                    let (head, tail) = (b.get(..i).unwrap_or_default(), b.get(i + 1..).unwrap_or_default());
                    buf.get_mut(..head.len()).unwrap_or_default().copy_from_slice(head);
                    buf.get_mut(head.len()..head.len() + tail.len()).unwrap_or_default().copy_from_slice(tail);
                    head.len() + tail.len()
                }
            };
            // ASCII letters only (checked above): always UTF-8.
            let Ok(key) = std::str::from_utf8(buf.get(..len).unwrap_or_default()) else { continue };
            for &t in self.keys.get(key).into_iter().flatten() {
                if seen.contains(&t) {
                    continue;
                }
                seen.push(t);
                let Some((term, id)) = self.terms.get(t as usize) else { continue };
                if term.as_bytes().first() == typed.as_bytes().first() && strsim::osa_distance(typed, term) <= 1 {
                    hits.push(*id);
                }
            }
        }
        // Checked last: most words hit no term, and this is the dearer test.
        if hits.is_empty() || (self.skip_everyday && crate::policy::safe::is_everyday(typed)) {
            return;
        }
        hits.into_iter().for_each(&mut found);
    }
}

impl Vocabulary {
    /// Whether `typed` may be one of the words, misspelt.
    pub(crate) fn near(&self, typed: &str) -> bool {
        let mut any = false;
        self.find(typed, |_| any = true);
        any
    }
}

/// The words made by deleting one letter of an ASCII word, each once.
fn deletions(w: &str) -> impl Iterator<Item = String> + '_ {
    (0..w.len())
        // Deleting either letter of a double letter gives the same word: once is enough.
        .filter(move |&i| i == 0 || w.as_bytes().get(i - 1) != w.as_bytes().get(i))
        .filter_map(move |i| Some(format!("{}{}", w.get(..i)?, w.get(i + 1..)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_keywords() {
        let v = Vocabulary::new([("prescription", 0), ("diabetes", 1), ("amoxicillin", 2), ("ulcer", 3), ("x ray", 4)]);
        let found = |t: &str| {
            let mut ids = Vec::new();
            v.find(t, |id| ids.push(id));
            ids
        };
        assert_eq!(found("perscription"), [0]); // two neighbours swapped
        assert_eq!(found("diabetis"), [1]); // a substitution
        assert_eq!(found("amoxicilin"), [2]); // a deletion
        assert_eq!(found("amoxicilllin"), [2]); // an insertion
        assert!(found("prescription").contains(&0)); // exact (the engine finds it first anyway)
        assert!(found("ulcers").is_empty()); // too short a term to match loosely
        assert!(found("biabetes").is_empty()); // the first letter is kept
        assert!(found("diabolic").is_empty()); // two edits or more
        assert!(found("prescriptions").contains(&0)); // a plural is one edit
        assert!(found("relation").is_empty());
    }

    #[test]
    fn misspelt_context_words() {
        let ix = Index::new(
            ["health card", "date of birth", "chart", "ohip", "insurance", "dob"]
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), i)),
        );
        let found = |t: &str| {
            let mut v: Vec<(usize, usize, Vec<usize>)> = Vec::new();
            ix.find(t, &super::super::letter_runs(t), |a, b, specs| v.push((a, b, specs.to_vec())));
            v
        };
        for (typed, want) in [
            ("my helth card is", true),
            ("date of brith", true),
            ("chrat no", true),
            ("insurence number", true),
            ("healthcard", true),
            ("ohpi", false),
            ("dbo", false),
            ("health care", false),
            ("start", false),
            ("date of bath", false),
        ] {
            assert_eq!(!found(typed).is_empty(), want, "{typed}");
        }
        // Where, and for whom: the phrase's span in the folded text.
        assert_eq!(found("my helth card is"), [(3, 13, vec![0])]);
        assert_eq!(found("helthcard1234567897"), [(0, 9, vec![0])]);
    }
}
