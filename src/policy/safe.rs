//! The structural safety net for insecure patient-facing accounts (`builtin.insecure.safety_net`):
//! detection is a hint, and a miss must not become a leak, so what goes out to a patient on
//! an insecure channel must *read as* contact or scheduling content, not merely contain no
//! finding.
//!
//! A text reads as such when every word in it is an everyday word (the most frequent 7,000
//! words of English and of French, from wordfreq, plus curated front-desk words, minus every
//! health word of the detectors' lists and of `tools/vocab/curated/health_words.txt`; the
//! list is `detectors/data/everyday.txt`), a number or time (`10`, `3pm`, `9h45`), a name (a
//! capitalised word inside a sentence, after a title such as `Dr.`, or one addressing the
//! reader, `Zoë, …`; at most a few), or part of a contact detail or masked identifier. One
//! unknown word is enough to fail: a rare word is exactly where a missed clinical term hides
//! ("fundoscopy", a brand name the lists lack). The price is over-blocking of unusual but
//! harmless wording (typos, rare words), measured on the evaluation corpus (docs/policy.md).
//!
//! Pure and linear: one folded view of the text and a hash look-up per word.

use super::detectors::fuzzy::Vocabulary;
use super::detectors::normalize::{View, fold_term};
use super::detectors::word_map::WordList;
use aho_corasick::{AhoCorasick, MatchKind};
use std::sync::OnceLock;

/// Phrases of front-desk text that are safe whatever their words ("assurance maladie" holds
/// "maladie"; a signature's "en cas d'urgence"), folded.
const SAFE_PHRASES: &[&str] = &[
    "assurance maladie",
    "assurance-maladie",
    "health card",
    "carte sante",
    "sick note",
    "en cas d'urgence",
    "pour une urgence",
    "in case of emergency",
    "for emergencies",
    "urgent matters",
    "info-sante",
    "walk-in clinic",
];

/// English and French endings stripped to find a word's everyday form ("mornings",
/// "confirming", "appelez", "souhaitée"), with what may replace them.
const ENDINGS: &[(&str, &[&str])] = &[
    ("'s", &[""]),
    ("ing", &["", "e"]),
    ("ed", &["", "e"]),
    ("es", &["", "e", "er"]),
    ("s", &[""]),
    ("ly", &[""]),
    ("ees", &["e", "er", ""]),
    ("ee", &["e", "er", ""]),
    ("ez", &["er", "re", "ir", ""]),
    ("ons", &["er", "re", "ir", ""]),
    ("e", &["", "er"]),
];

/// Whether some plain inflection of `word` (an ending of [`ENDINGS`] replaced, the stem at
/// least 3 bytes) satisfies `found`. `buf`: scratch space for the inflections.
fn any_inflection(word: &str, buf: &mut String, mut found: impl FnMut(&str) -> bool) -> bool {
    ENDINGS.iter().any(|(end, subs)| {
        word.strip_suffix(end).filter(|stem| stem.len() >= 3).is_some_and(|stem| {
            subs.iter().any(|sub| {
                buf.clear();
                buf.push_str(stem);
                buf.push_str(sub);
                found(buf.as_str())
            })
        })
    })
}

/// Whether `word` (folded) or a plain inflection of it is a health word. `buf`: scratch
/// space for the inflections.
fn is_health(word: &str, buf: &mut String) -> bool {
    let health = health();
    health.contains(word) || any_inflection(word, buf, |w| health.contains(w))
}

/// Whether `word` (folded) or a plain inflection of it is an everyday word, and neither it
/// nor that inflection a health word.
fn everyday_form(words: &WordList<&'static str>, word: &str) -> bool {
    let health = health();
    if health.contains(word) {
        return false;
    }
    let mut buf = String::with_capacity(word.len() + 2);
    words.contains(word) || any_inflection(word, &mut buf, |w| !health.contains(w) && words.contains(w))
}

/// [`everyday_form`] for a word [`is_health`] said no to: neither it nor any of its
/// inflections is then a health word (the same endings, the same replacements), so only the
/// everyday list is asked. `buf`: scratch space for the inflections.
fn everyday_inflection(words: &WordList<&'static str>, word: &str, buf: &mut String) -> bool {
    words.contains(word) || any_inflection(word, buf, |w| words.contains(w))
}

/// Where the [`SAFE_PHRASES`] occur in the folded text `f`, into `out`: for each phrase, its
/// occurrences from left to right, each searched after the end of the one before (as
/// `str::find` from there would give them). One automaton reads the text once for all of
/// them; the phrases' order in `out` does not matter (only whether a word overlaps one).
fn safe_phrases_in(f: &str, out: &mut Vec<(usize, usize)>) {
    static AC: OnceLock<Option<AhoCorasick>> = OnceLock::new();
    let ac = AC.get_or_init(|| AhoCorasick::builder().match_kind(MatchKind::Standard).build(SAFE_PHRASES).ok());
    if let Some(matches) = ac.as_ref().and_then(|ac| ac.try_find_overlapping_iter(f).ok()) {
        // Every occurrence of every phrase, by where it ends: one phrase's occurrences are then
        // by where they start too, so keeping the first at or after the end of the last kept
        // one is what a search from there finds.
        let mut from = [0usize; SAFE_PHRASES.len()];
        for m in matches {
            if let Some(after) = from.get_mut(m.pattern().as_usize())
                && m.start() >= *after
            {
                out.push((m.start(), m.end()));
                *after = m.end();
            }
        }
        return;
    }
    for p in SAFE_PHRASES {
        let mut from = 0;
        while let Some(at) = f.get(from..).and_then(|t| t.find(p)) {
            out.push((from + at, from + at + p.len()));
            from += at + p.len();
        }
    }
}

/// What may follow the digits of a neutral number ("3pm", "9h45", "2e", "22nd").
const NUMBER_SUFFIXES: &[&str] =
    &["am", "pm", "h", "hr", "hrs", "min", "mins", "st", "nd", "rd", "th", "e", "er", "re", "eme", "ieme", "hh", "x"];

/// Titles after which a capitalised word is a name even at the start of a sentence.
const TITLES: &[&str] = &["dr", "dre", "mr", "mrs", "ms", "mme", "m", "mlle", "pr", "st", "ste"];

/// Health words: never everyday, whatever their inflection or parts ("x-ray", "meds",
/// "règles"): the curated list and every single-word term of the detectors' lists, folded.
fn health() -> &'static WordList<String> {
    static SET: OnceLock<WordList<String>> = OnceLock::new();
    SET.get_or_init(|| {
        [
            include_str!("detectors/data/health_words.txt"),
            include_str!("detectors/data/medications.txt"),
            include_str!("detectors/data/conditions.txt"),
            include_str!("detectors/data/symptoms.txt"),
            include_str!("detectors/data/tests.txt"),
            include_str!("detectors/data/sensitive.txt"),
            include_str!("detectors/data/prescription.txt"),
        ]
        .iter()
        .flat_map(|d| d.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.contains(' '))
        .map(fold_term)
        .collect()
    })
}

fn everyday() -> &'static WordList<&'static str> {
    static SET: OnceLock<WordList<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        include_str!("detectors/data/everyday.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

/// The everyday words (folded): the words a clinic's texts are mostly made of, which the
/// detectors' [`super::detectors::lexicon::Lexicon`] knows in advance.
pub(crate) fn everyday_words() -> impl Iterator<Item = &'static str> {
    everyday().iter().copied()
}

/// Whether the folded word `word` (or a plain inflection of it) is an everyday word and no
/// health word: the detectors do not read such a word as a misspelt keyword.
pub(crate) fn is_everyday(word: &str) -> bool {
    everyday_form(everyday(), word)
}

/// Whether the folded word `word` itself is an everyday word and no health word: one look-up
/// each, and when true, [`is_everyday`] is true too.
pub(crate) fn is_everyday_word(word: &str) -> bool {
    !health().contains(word) && everyday().contains(word)
}

/// Fewest letters of an everyday word whose misspellings still read as it: shorter words are
/// one edit from too many others.
const TYPO_MIN_LETTERS: usize = 6;

/// Whether `word` (folded, unknown) is an everyday word misspelt by one edit that keeps its
/// first letter ("apointment", "buisness", "wonderfull", "acceuil"), and no health word
/// misspelt: typos in front-desk text would otherwise all block it, while a word one edit from
/// both ("tablett") keeps blocking.
fn everyday_typo(word: &str) -> bool {
    static INDEXES: OnceLock<(Vocabulary, Vocabulary)> = OnceLock::new();
    let (everyday_words, health_words) = INDEXES.get_or_init(|| {
        let health: Vec<&str> = health().iter().map(String::as_str).collect();
        (
            Vocabulary::of_words(everyday().iter().map(|w| (*w, 0)), TYPO_MIN_LETTERS, false),
            // Health words a letter shorter still count: a typo may add one.
            Vocabulary::of_words(health.into_iter().map(|w| (w, 0)), TYPO_MIN_LETTERS - 1, false),
        )
    });
    everyday_words.near(word) && !health_words.near(word)
}

/// Whether `text` reads as contact or scheduling content with high confidence. `neutral`:
/// byte ranges of `text` to ignore (contact details found, masked placeholders).
pub(crate) fn reads_safe(text: &str, neutral: &[(usize, usize)]) -> bool {
    blocking_word(text, neutral).is_none()
}

/// The character at byte `i` of `s`: an ASCII byte is its own character, without decoding.
fn char_at(s: &str, i: usize) -> Option<char> {
    match s.as_bytes().get(i) {
        Some(&b) if b.is_ascii() => Some(char::from(b)),
        _ => s.get(i..).and_then(|t| t.chars().next()),
    }
}

/// The first word that keeps `text` from reading safe (`Some("")` for too many names).
fn blocking_word(text: &str, neutral: &[(usize, usize)]) -> Option<String> {
    let words = everyday();
    let folded = View::folded(text);
    let f = folded.text();
    let (mut total, mut names) = (0usize, 0usize);
    let mut phrases: Vec<(usize, usize)> = Vec::new();
    safe_phrases_in(f, &mut phrases);
    let mut buf = String::new();
    let mut i = 0;
    while i < f.len() {
        let Some(c) = char_at(f, i) else { break };
        if !c.is_alphanumeric() {
            i += c.len_utf8();
            continue;
        }
        // A word: letters and digits, with inner apostrophes and hyphens.
        let start = i;
        let mut end = i;
        while let Some(ch) = char_at(f, end) {
            let inner = matches!(ch, '\'' | '-') && char_at(f, end + 1).is_some_and(char::is_alphanumeric);
            if ch.is_alphanumeric() || inner {
                end += ch.len_utf8();
            } else {
                break;
            }
        }
        i = end.max(start + 1);
        if phrases.iter().any(|&(a, b)| start < b && end > a) {
            continue;
        }
        let Some((os, oe)) = folded.original(start, end) else { continue };
        if neutral.iter().any(|&(a, b)| os < b && oe > a) {
            continue;
        }
        let Some(word) = f.get(start..end) else { continue };
        if word.bytes().any(|b| b.is_ascii_digit()) {
            // Numbers, times, ordinals ("10", "3pm", "9h45", "22nd", "apt 4b") are neutral;
            // codes with letters ("a1c", "covid-19") are not.
            let letters: String = word.chars().filter(|c| c.is_alphabetic()).collect();
            let digits = word.bytes().filter(u8::is_ascii_digit).count();
            if letters.chars().count() <= 1 || NUMBER_SUFFIXES.contains(&letters.as_str()) || digits >= 4 {
                continue;
            }
            return Some(word.to_string());
        }
        total += 1;
        let parts = || word.split(['\'', '-']).filter(|p| !p.is_empty());
        // A health word blocks even when written like a name ("PrEP", "STIs").
        if is_health(word, &mut buf) || parts().any(|p| is_health(p, &mut buf)) {
            return Some(word.to_string());
        }
        // Neither the word nor its parts are health words in any inflection: only the
        // everyday list is left to ask.
        let known = everyday_inflection(words, word, &mut buf)
            || parts().all(|p| everyday_inflection(words, p, &mut buf) || everyday_typo(p))
            || everyday_typo(word);
        if known {
            continue;
        }
        if is_name(text, os, oe) {
            names += 1;
            continue;
        }
        return Some(word.to_string());
    }
    (names > 4 + total / 10).then(String::new)
}

/// Whether the word at `start..end` of the original text is written as a name: capitalised,
/// and inside a sentence, after a title, or addressing the reader (`Zoë, …`).
fn is_name(text: &str, start: usize, end: usize) -> bool {
    if !text.get(start..).and_then(|t| t.chars().next()).is_some_and(char::is_uppercase) {
        return false;
    }
    let before = text.get(..start).unwrap_or_default().trim_end_matches([' ', '\t']);
    let initial = before.is_empty() || before.ends_with(['.', '!', '?', '\n', ':', '•', '*', '>', '(', '"', '-']);
    if !initial {
        return true;
    }
    let title = before.trim_end_matches('.').rsplit(|c: char| !c.is_alphabetic()).next().unwrap_or_default();
    if before.ends_with('.') && TITLES.iter().any(|t| t.eq_ignore_ascii_case(title)) {
        return true;
    }
    text.get(end..).is_some_and(|t| t.starts_with(','))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The phrases found by one automaton are those a search per phrase finds, overlapping
    /// and repeated ones included.
    #[test]
    fn safe_phrases_as_searched_one_by_one() {
        let corpus = include_str!("../../tests/policy_corpus/corpus.txt");
        let mut texts: Vec<String> = corpus.split("\n=== ").map(|m| View::folded(m).text().to_string()).collect();
        texts.push(SAFE_PHRASES.concat());
        texts.push(SAFE_PHRASES.join(" "));
        texts.push("en cas d'urgencen cas d'urgence, assurance maladieassurance maladie-".into());
        texts.push("health cardhealth card sick notesick note info-santeinfo-sante".into());
        for f in &texts {
            let mut found = Vec::new();
            safe_phrases_in(f, &mut found);
            found.sort_unstable();
            let mut each = Vec::new();
            for p in SAFE_PHRASES {
                let mut from = 0;
                while let Some(at) = f.get(from..).and_then(|t| t.find(p)) {
                    each.push((from + at, from + at + p.len()));
                    from += at + p.len();
                }
            }
            each.sort_unstable();
            assert_eq!(found, each, "{f}");
        }
    }

    #[test]
    #[ignore = "a tuning aid: prints what blocks each safe message of the evaluation corpus"]
    fn corpus_blocking_words() {
        let corpus = include_str!("../../tests/policy_corpus/corpus.txt");
        for m in corpus.split("\n=== ").skip(1) {
            let (head, rest) = m.split_once('\n').unwrap_or((m, ""));
            if !(head.contains("| none") || head.contains("| contact")) {
                continue;
            }
            let text: String = rest.lines().filter(|l| !l.starts_with("@ ")).collect::<Vec<_>>().join("\n");
            if let Some(w) = blocking_word(&text, &[]) {
                println!("{head}: {w:?}");
            }
        }
    }

    #[test]
    fn scheduling_and_contact_read_safe() {
        for t in [
            "See you Tuesday at 3pm",
            "Hi Maria, your appointment is confirmed for Monday at 9:15 with Dr. Singh.",
            "Dr. Patel is running 20 minutes late, sorry!",
            "Zoë, votre rendez-vous est confirmé pour jeudi à 10 h 40.",
            "Thanks, we will call you.",
            "Yes, your appointment is moved to Tuesday at 10.",
            "Done!",
            "",
            // What the end-to-end tests send to patients on insecure accounts.
            "Reply 3 about your booking.",
            "answer 2 to patient 7",
            "hello 4",
            "Thanks!",
            "hi",
            "msg 12",
            "note 3 about the booking",
            "Your reference is REF2894410023.",
            "🙂👍",
            // Typos of everyday words.
            "Can we come Wednseday instead? My husbands buisness trip moved.",
            "Merci pour l'acceuil à la réception",
        ] {
            assert!(reads_safe(t, &[]), "{t}");
        }
    }

    #[test]
    fn health_words_and_rare_words_do_not() {
        for t in [
            "Your fundoscopy is booked for Tuesday",
            "the baby has had a fever since Monday",
            "your blood came back fine",
            "j'ai mal au ventre",
            "Colonoscopy went fine, see you in a year",
            "Bring the sample on Monday",
            // A typo of a health word stays a health word.
            "Your colonoscapy is booked for Tuesday",
        ] {
            assert!(!reads_safe(t, &[]), "{t}");
        }
        // Neutral spans (a masked value) are ignored.
        let t = "Your OHIP [health_number_on] is on file";
        let at = t.find('[').unwrap_or(0);
        assert!(reads_safe(t, &[(at, at + "[health_number_on]".len())]));
    }
}
