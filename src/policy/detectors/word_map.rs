//! A hash map keyed by words, for the scan's per-word look-ups.
//!
//! A `HashMap<Box<str>, V>` compares a hit's key by following a pointer to its text: one
//! cache miss more per look-up, for maps of tens of thousands of words looked up for every
//! word of every text. Nearly every word is at most [`INLINE`] bytes, so such words are keyed
//! by a number holding their bytes and length (no pointer, compared in one instruction); the
//! few longer ones are keyed by their text. Words of at most [`SMALL`] bytes (most of a
//! text's) have a `u64` key in a table of their own: half the slot, so more of the table
//! stays in cache.

use rustc_hash::FxHashMap;

/// Longest word kept inline as a number (bytes).
const INLINE: usize = 15;

/// A word of at most [`INLINE`] bytes as one number: its bytes and its length.
fn inline_key(w: &str) -> Option<u128> {
    if w.len() > INLINE {
        return None;
    }
    // Byte 0 is the length, bytes 1.. the word's (little-endian, so a copy, not shifts).
    let mut key = [0u8; INLINE + 1];
    let (len, bytes) = key.split_first_mut()?;
    *len = w.len() as u8;
    bytes.get_mut(..w.len())?.copy_from_slice(w.as_bytes());
    Some(u128::from_le_bytes(key))
}

/// Longest word with a `u64` key (bytes).
const SMALL: usize = 7;

/// A word of at most [`SMALL`] bytes as one `u64`, laid out as [`inline_key`] lays it out:
/// the same number, in half the width.
fn small_key(w: &str) -> Option<u64> {
    if w.len() > SMALL {
        return None;
    }
    inline_key(w).and_then(|k| u64::try_from(k).ok())
}

/// The word an inline key was made from.
fn inline_word(key: u128) -> String {
    let len = (key & 0xFF) as usize;
    let bytes: Vec<u8> = (1..=len.min(INLINE)).map(|i| (key >> (8 * i)) as u8).collect();
    String::from_utf8(bytes).unwrap_or_default()
}

/// Words to values.
#[derive(Clone, Debug)]
pub(crate) struct WordMap<V> {
    small: FxHashMap<u64, V>,
    short: FxHashMap<u128, V>,
    long: FxHashMap<Box<str>, V>,
}

impl<V> Default for WordMap<V> {
    fn default() -> Self {
        WordMap { small: FxHashMap::default(), short: FxHashMap::default(), long: FxHashMap::default() }
    }
}

impl<V> WordMap<V> {
    /// The value of `word`.
    pub(crate) fn get(&self, word: &str) -> Option<&V> {
        if let Some(k) = small_key(word) {
            return self.small.get(&k);
        }
        match inline_key(word) {
            Some(k) => self.short.get(&k),
            None => self.long.get(word),
        }
    }

    /// The value of `word`, inserted by `new` if absent.
    pub(crate) fn entry_or_insert_with(&mut self, word: &str, new: impl FnOnce() -> V) -> &mut V {
        if let Some(k) = small_key(word) {
            return self.small.entry(k).or_insert_with(new);
        }
        match inline_key(word) {
            Some(k) => self.short.entry(k).or_insert_with(new),
            None => self.long.entry(word.into()).or_insert_with(new),
        }
    }

    /// Sets the value of `word`.
    pub(crate) fn insert(&mut self, word: &str, value: V) {
        if let Some(k) = small_key(word) {
            self.small.insert(k, value);
            return;
        }
        match inline_key(word) {
            Some(k) => self.short.insert(k, value),
            None => self.long.insert(word.into(), value),
        };
    }

    /// The words (in no particular order).
    pub(crate) fn words(&self) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
        let small = self.small.keys().map(|&k| inline_word(u128::from(k)).into());
        let short = self.short.keys().map(|&k| inline_word(k).into());
        small.chain(short).chain(self.long.keys().map(|k| (&**k).into()))
    }

    /// How many words it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.small.len() + self.short.len() + self.long.len()
    }
}

/// A list of words with a [`WordMap`] to test membership: iterated in the list's order,
/// looked up without following a pointer.
#[derive(Clone, Debug, Default)]
pub(crate) struct WordList<S> {
    list: Vec<S>,
    set: WordMap<()>,
}

impl<S: AsRef<str>> WordList<S> {
    /// Whether `word` is in the list.
    pub(crate) fn contains(&self, word: &str) -> bool {
        self.set.get(word).is_some()
    }

    /// The words, each once, in the order they were first given.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &S> {
        self.list.iter()
    }
}

impl<S: AsRef<str>> FromIterator<S> for WordList<S> {
    fn from_iter<I: IntoIterator<Item = S>>(words: I) -> Self {
        let mut out = WordList { list: Vec::new(), set: WordMap::default() };
        for w in words {
            if !out.contains(w.as_ref()) {
                out.set.insert(w.as_ref(), ());
                out.list.push(w);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_length_and_bytes_and_come_back() {
        assert_ne!(inline_key("a"), inline_key("a\u{0}"));
        assert_ne!(inline_key("ab"), inline_key("ba"));
        assert!(inline_key("fifteen-letters").is_some());
        assert_eq!(inline_key("sixteen-letters!"), None);
        assert_eq!(small_key("seven77").map(u128::from), inline_key("seven77"));
        assert_eq!(small_key("eight888"), None);
        let mut m = WordMap::default();
        for (i, w) in
            ["", "é", "fifteen-letters", "sixteen-letters!", "sixteen-letters?", "eight888"].iter().enumerate()
        {
            m.insert(w, i);
        }
        m.insert("é", 9);
        assert_eq!((m.get("é"), m.get("sixteen-letters?"), m.get("x"), m.len()), (Some(&9), Some(&4), None, 6));
        assert_eq!(m.get("eight888"), Some(&5));
        let mut words: Vec<String> = m.words().map(|w| w.into_owned()).collect();
        words.sort();
        assert_eq!(words, ["", "eight888", "fifteen-letters", "sixteen-letters!", "sixteen-letters?", "é"]);
        let list: WordList<&str> = ["b", "a", "b", "a-very-long-word-indeed"].into_iter().collect();
        assert_eq!(list.iter().copied().collect::<Vec<_>>(), ["b", "a", "a-very-long-word-indeed"]);
        assert!(list.contains("a-very-long-word-indeed") && list.contains("b") && !list.contains("c"));
    }
}
