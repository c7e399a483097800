//! Context words as people type them: "helth card", "date of brith", "insurence", "chrat".
//!
//! A context phrase matches a run of words of the window when every word is equal, or both
//! start with the same letter, the phrase's word has at least 5 letters, the typed one at least
//! 4, and they are within an optimal-string-alignment distance (an edit or an adjacent swap) of
//! 1 (2 for words of 8 letters or more), computed by `strsim`. Short words (`dob`, `sin`,
//! `ohip`, `of`) must be exact: one edit turns them into other words. A phrase also matches its
//! words written as one ("healthcard", "dateofbirth").
//!
//! Only detectors whose matches are dropped without context use this (identifiers), and only
//! for a match with no exact context word near: it costs a fold of the window and a few
//! distance computations per such match.

/// The words of a folded text: runs of letters and digits.
pub(crate) fn words(folded: &str) -> Vec<&str> {
    folded.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect()
}

/// Whether typed word `typed` may be the phrase word `want`.
fn close(typed: &str, want: &str) -> bool {
    if typed == want {
        return true;
    }
    // Cheap rejections first: this runs for every word of a window against every phrase.
    // (Byte lengths bound character counts: a word of under 4 bytes has under 4 letters.)
    if typed.as_bytes().first() != want.as_bytes().first() || want.len() < 5 || typed.len() < 4 {
        return false;
    }
    let (lt, lw) = (typed.chars().count(), want.chars().count());
    if lw < 5 || lt < 4 || typed.chars().next() != want.chars().next() {
        return false;
    }
    let max = if lw >= 8 { 2 } else { 1 };
    lt.abs_diff(lw) <= max && strsim::osa_distance(typed, want) <= max
}

/// Whether one of `phrases` (each a list of folded words) occurs, approximately, in `words`.
pub(crate) fn contains_phrase(words: &[&str], phrases: &[Vec<String>]) -> bool {
    phrases.iter().any(|p| {
        let n = p.len();
        if n == 0 {
            return false;
        }
        let run = words.windows(n).any(|w| w.iter().zip(p).all(|(t, want)| close(t, want)));
        run || (n > 1 && {
            let joined: String = p.concat();
            words.iter().any(|t| close(t, &joined))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phrases(list: &[&str]) -> Vec<Vec<String>> {
        list.iter().map(|p| words(p).into_iter().map(str::to_string).collect()).collect()
    }

    #[test]
    fn misspelt_context_words() {
        let ps = phrases(&["health card", "date of birth", "chart", "ohip", "insurance", "dob"]);
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
            assert_eq!(contains_phrase(&words(typed), &ps), want, "{typed}");
        }
    }
}
