//! The two views of a text that detectors run on, each mapping its bytes back to the original.
//!
//! Patients write numbers with full-width digits, non-breaking spaces, typographic dashes and
//! zero-width characters (pasted from apps, or on purpose). Matching the raw text would miss
//! them; rewriting the text would lose the offsets the router needs to redact. So each view is
//! a rewritten copy plus, for every byte of the copy, the byte range of the original character
//! it came from. Findings are mapped back through it, so their offsets always fall on the
//! original's char boundaries.
//!
//! - the **plain** view (regex detectors): full-width ASCII to ASCII, Arabic-Indic digits to
//!   ASCII digits, dashes to `-`, exotic spaces to ` `, curly apostrophes to `'`, zero-width
//!   characters and soft hyphens dropped. Case is kept (version codes are upper case).
//! - the **folded** view (keywords and context words): the plain view, lower-cased, with
//!   French and other Latin accents stripped (`é` → `e`, `œ` → `oe`) and runs of whitespace
//!   collapsed to one space, so `Résultats`, `RESULTATS` and `résultats` all match `resultats`.

use std::borrow::Cow;

/// A rewritten copy of a text with a byte map back to the original.
#[derive(Debug)]
pub(crate) struct View<'a> {
    /// The rewritten text (the original itself when the plain view changes nothing).
    text: Cow<'a, str>,
    /// The original text.
    src: &'a str,
    /// Where the bytes of `text` came from; `None` while every original character became as
    /// many bytes as it had (ASCII text, the common case), so byte `i` of `text` came from the
    /// character of `src` containing byte `i` and no table is needed.
    map: Option<ByteMap>,
}

/// Where a view's bytes came from, as runs: most of a view copies its original byte for
/// byte (ASCII), so a run of such bytes is one entry, and only the characters that changed
/// length (a collapsed space, an accent stripped, a full-width digit) add entries. Built in
/// one pass and looked up by binary search, instead of two `u32`s for every byte of the view.
#[derive(Debug, Default)]
struct ByteMap {
    runs: Vec<Run>,
}

/// View bytes `view..view_end` came from the original starting at `src`: byte for byte
/// (`whole == false`; a byte maps to the original character holding `src + offset`), or all
/// from the one original character `src..src_end` (`whole == true`).
#[derive(Clone, Copy, Debug)]
struct Run {
    view: u32,
    view_end: u32,
    src: u32,
    src_end: u32,
    whole: bool,
}

impl ByteMap {
    /// Records that the next `bytes` bytes of the view (from `view`) came from the original
    /// character `start..end`.
    fn push(&mut self, view: usize, start: usize, end: usize, bytes: usize) {
        if bytes == 0 {
            return;
        }
        // Texts are bounded by `detection.max_text_bytes` (at most 64 MiB) before they get here.
        let u = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let (view, start, end, bytes) = (u(view), u(start), u(end), u(bytes));
        let copy = bytes == end.saturating_sub(start);
        if copy
            && let Some(last) = self.runs.last_mut()
            && !last.whole
            && last.view_end == view
            && last.src_end == start
        {
            last.view_end = view.saturating_add(bytes);
            last.src_end = end;
            return;
        }
        self.runs.push(Run { view, view_end: view.saturating_add(bytes), src: start, src_end: end, whole: !copy });
    }

    /// The run holding view byte `i`.
    fn run(&self, i: usize) -> Option<&Run> {
        let i = u32::try_from(i).ok()?;
        let k = self.runs.partition_point(|r| r.view <= i).checked_sub(1)?;
        self.runs.get(k).filter(|r| i < r.view_end)
    }
}

/// Widens `i` down (`up == false`) or up to a char boundary of `s`.
fn widen(s: &str, mut i: usize, up: bool) -> Option<usize> {
    if i > s.len() {
        return None;
    }
    while !s.is_char_boundary(i) {
        if up { i += 1 } else { i -= 1 }
    }
    Some(i)
}

impl<'a> View<'a> {
    /// The view for regex detectors.
    pub fn plain(src: &'a str) -> View<'a> {
        build(src, false)
    }

    /// The view for keyword and context matching.
    pub fn folded(src: &'a str) -> View<'a> {
        build(src, true)
    }

    /// The plain view with hard line breaks inside numbers removed ("1234 567\n897",
    /// "416-555-\n0199", "> 1234\n> 567 897" in a quoted reply): a break, with the spaces and
    /// quote markers around it, between a digit (or a `-` after one) and a digit. `None` when
    /// the text has no such break (the common case: no copy is made).
    /// Also returns where, in the joined text, a break was removed. Built from the plain
    /// view `plain`, which the scan has made already.
    pub fn joined(plain: &View<'a>) -> Option<(View<'a>, Vec<usize>)> {
        let src = plain.src;
        if !src.contains('\n') {
            return None;
        }
        let t = plain.text().as_bytes();
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        // Line breaks found by `memchr` (through the char searcher), not byte by byte.
        for (k, _) in plain.text().match_indices('\n') {
            let mut p = k;
            while p > 0 && matches!(t.get(p - 1), Some(b' ' | b'\t' | b'\r')) {
                p -= 1;
            }
            let mut f = k + 1;
            while matches!(t.get(f), Some(b' ' | b'\t' | b'>')) {
                f += 1;
            }
            let prev_ok = p > 0 && t.get(p - 1).is_some_and(|c| c.is_ascii_digit() || *c == b'-');
            let next_ok = t.get(f).is_some_and(u8::is_ascii_digit);
            if prev_ok && next_ok && cuts.last().is_none_or(|&(_, e)| e <= p) {
                cuts.push((p, f));
            }
        }
        if cuts.is_empty() {
            return None;
        }
        let mut text = String::with_capacity(t.len());
        let mut map = ByteMap::default();
        let mut joins = Vec::with_capacity(cuts.len());
        let mut pos = 0;
        for (a, b) in cuts.into_iter().chain(std::iter::once((t.len(), t.len()))) {
            let seg = plain.text().get(pos..a)?;
            let at = text.len();
            text.push_str(seg);
            if b > a {
                joins.push(text.len());
            }
            if plain.map.is_none() {
                // The plain view is the original byte for byte: the segment is one run (a
                // byte maps to the original character holding it, as byte by byte).
                map.push(at, pos, a, a - pos);
            } else {
                for k in pos..a {
                    let (s, e) = plain.original(k, k + 1)?;
                    map.push(at + (k - pos), s, e, 1);
                }
            }
            pos = b;
        }
        Some((View { text: Cow::Owned(text), src, map: Some(map) }, joins))
    }

    /// The rewritten text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Maps the view's byte range `start..end` back to the original text. `None` for an
    /// empty or out-of-range span.
    pub fn original(&self, start: usize, end: usize) -> Option<(usize, usize)> {
        if start >= end {
            return None;
        }
        match &self.map {
            Some(m) => {
                let (first, last) = (m.run(start)?, m.run(end - 1)?);
                let s = if first.whole {
                    first.src as usize
                } else {
                    widen(self.src, first.src as usize + (start - first.view as usize), false)?
                };
                let e = if last.whole {
                    last.src_end as usize
                } else {
                    widen(self.src, last.src as usize + (end - last.view as usize), true)?
                };
                Some((s, e))
            }
            None => {
                // The text has the original's length and char boundaries: widen the span to
                // the original characters holding its first and last bytes.
                if end > self.src.len() {
                    return None;
                }
                Some((widen(self.src, start, false)?, widen(self.src, end, true)?))
            }
        }
    }
}

/// What one original character becomes in the plain view.
fn plain_char(c: char) -> Option<char> {
    let u = c as u32;
    Some(match u {
        // Full-width ASCII (digits, letters, @, -, ., +, parentheses…).
        0xFF01..=0xFF5E => char::from_u32(u - 0xFEE0).unwrap_or(c),
        // Arabic-Indic and extended Arabic-Indic digits.
        0x0660..=0x0669 => char::from_u32(u - 0x0660 + 0x30).unwrap_or(c),
        0x06F0..=0x06F9 => char::from_u32(u - 0x06F0 + 0x30).unwrap_or(c),
        // Hyphens, dashes and minus signs.
        0x2010..=0x2015 | 0x2212 | 0xFE58 | 0xFE63 => '-',
        // Spaces other than U+0020 (tabs are left alone: they separate, they do not join).
        0x00A0 | 0x2000..=0x200A | 0x202F | 0x205F | 0x3000 => ' ',
        // Apostrophes.
        0x2018 | 0x2019 | 0x02BC => '\'',
        // Zero-width characters, word joiner, BOM, soft hyphen: dropped.
        0x200B..=0x200D | 0x2060 | 0xFEFF | 0x00AD => return None,
        _ => c,
    })
}

/// Accent-stripped replacement of a lower-case character, when it needs one.
fn unaccent(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => "a",
        'ç' => "c",
        'è' | 'é' | 'ê' | 'ë' => "e",
        'ì' | 'í' | 'î' | 'ï' => "i",
        'ñ' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' => "o",
        'ù' | 'ú' | 'û' | 'ü' => "u",
        'ý' | 'ÿ' => "y",
        'œ' => "oe",
        'æ' => "ae",
        'ß' => "ss",
        _ => return None,
    })
}

fn build(src: &str, fold: bool) -> View<'_> {
    // Most texts are plain already: borrow them instead of copying.
    if !fold && (src.is_ascii() || src.chars().all(|c| c.is_ascii() || plain_char(c) == Some(c))) {
        return View { text: Cow::Borrowed(src), src, map: None };
    }
    if fold && src.is_ascii() {
        return fold_ascii(src);
    }
    let mut out: Vec<u8> = Vec::with_capacity(src.len());
    let mut map: Option<ByteMap> = None;
    let mut last_space = false;
    let bytes = src.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let before = out.len();
        // The hot loop, folded: a run of ASCII bytes is copied lower-cased, its whitespace
        // written as one space each, up to a whitespace byte that collapses into the space
        // before it (left to the general path below, which drops it). Every byte of the run
        // becomes one byte, so it is one entry of the byte map at most, as the general path
        // would have made it byte by byte.
        if fold {
            // Where the run ends is found first, then it is copied and folded in place, in
            // one go (what byte-by-byte pushes would write).
            let mut j = i;
            while let Some(&b) = bytes.get(j) {
                let space = is_ascii_space(b);
                if !b.is_ascii() || (space && last_space) {
                    break;
                }
                last_space = space;
                j += 1;
            }
            if j > i {
                out.extend_from_slice(bytes.get(i..j).unwrap_or_default());
                fold_ascii_bytes(out.get_mut(before..).unwrap_or_default());
                if let Some(m) = &mut map {
                    m.push(before, i, j, j - i);
                }
                i = j;
                continue;
            }
        }
        // Plain: a run of ASCII bytes is copied at once, one entry of the byte map at most.
        let run = bytes
            .get(i..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| b.is_ascii() && !(fold && (b.is_ascii_whitespace() || b == 0x0B)))
            .count();
        if run > 0 {
            out.extend_from_slice(bytes.get(i..i + run).unwrap_or_default());
            if fold && let Some(copied) = out.get_mut(before..) {
                copied.make_ascii_lowercase();
            }
            last_space = false;
            if let Some(m) = &mut map {
                m.push(before, i, i + run, run);
            }
            i += run;
            continue;
        }
        let Some(c) = src.get(i..).and_then(|t| t.chars().next()) else { break };
        let len = c.len_utf8();
        let put = |out: &mut Vec<u8>, c: char| out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        match if c.is_ascii() { Some(c) } else { plain_char(c) } {
            None => {
                map.get_or_insert_with(|| identity_map(i));
            }
            Some(p) if fold && (p.is_whitespace() || p == '\u{0B}') => {
                if !last_space {
                    out.push(b' ');
                }
                last_space = true;
            }
            Some(p) if fold => {
                last_space = false;
                for l in p.to_lowercase() {
                    match unaccent(l) {
                        Some(s) => out.extend_from_slice(s.as_bytes()),
                        None => put(&mut out, l),
                    }
                }
            }
            Some(p) => put(&mut out, p),
        }
        let written = out.len() - before;
        match &mut map {
            None if written == len => {}
            None => map.get_or_insert_with(|| identity_map(i)).push(before, i, i + len, written),
            Some(m) => m.push(before, i, i + len, written),
        }
        i += len;
    }
    // Only whole characters were written: this cannot fail; if it did, fall back to the
    // original text with no folding rather than panic.
    match String::from_utf8(out) {
        Ok(text) => View { text: Cow::Owned(text), src, map },
        Err(_) => View { text: Cow::Borrowed(src), src, map: None },
    }
}

/// The folded view of an ASCII text (most texts): no Unicode to fold, so it is the text
/// lower-cased with runs of whitespace collapsed to one space, in one pass over the bytes.
/// The byte map only records where a collapsed space dropped bytes; everything else is
/// copied byte for byte. Gives exactly what the general path of [`build`] gives.
fn fold_ascii(src: &str) -> View<'_> {
    // Folded byte for byte in one loop the compiler vectorises (whitespace becomes a space),
    // then each space after a space is dropped: where, is what the byte map records (most
    // texts have none, and no map).
    let mut out = src.as_bytes().to_vec();
    fold_ascii_bytes(&mut out);
    let mut map: Option<ByteMap> = None;
    // Start of the bytes copied one for one since the last dropped byte; bytes dropped so far.
    let (mut copied_from, mut dropped) = (0, 0);
    for (i, pair) in out.windows(2).enumerate() {
        if pair == b"  " {
            // Byte `i + 1` is dropped: the bytes before it were copied one for one.
            let gone = i + 1;
            let at = (gone - dropped) - (gone - copied_from);
            map.get_or_insert_with(ByteMap::default).push(at, copied_from, gone, gone - copied_from);
            copied_from = gone + 1;
            dropped += 1;
        }
    }
    if let Some(m) = &mut map {
        let n = out.len();
        m.push((n - dropped) - (n - copied_from), copied_from, n, n - copied_from);
        out.dedup_by(|later, kept| *later == b' ' && *kept == b' ');
    }
    match String::from_utf8(out) {
        Ok(text) => View { text: Cow::Owned(text), src, map },
        Err(_) => View { text: Cow::Borrowed(src), src, map: None },
    }
}

/// The ASCII characters `char::is_whitespace` accepts: tab, line feed, vertical tab, form
/// feed, carriage return, space.
fn is_ascii_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ')
}

/// Folds ASCII bytes in place, byte for byte: lower case, whitespace to a space.
fn fold_ascii_bytes(bytes: &mut [u8]) {
    for b in bytes {
        *b = if is_ascii_space(*b) { b' ' } else { b.to_ascii_lowercase() };
    }
}

/// The byte map of a view whose first `upto` bytes came one for one from the original (each
/// character became as many bytes as it had), ready for the rest.
fn identity_map(upto: usize) -> ByteMap {
    let mut m = ByteMap::default();
    m.push(0, 0, upto, upto);
    m
}

/// The character just before byte `i` of `s`, if any.
pub(crate) fn char_before(s: &str, i: usize) -> Option<char> {
    s.get(..i).and_then(|h| h.chars().next_back())
}

/// The character starting at byte `i` of `s`, if any.
pub(crate) fn char_at(s: &str, i: usize) -> Option<char> {
    s.get(i..).and_then(|t| t.chars().next())
}

/// The byte offset just past the character at `i` (or `i + 1` past the end, to stop loops).
pub(crate) fn next_boundary(s: &str, i: usize) -> usize {
    char_at(s, i).map_or(i + 1, |c| i + c.len_utf8())
}

/// Whether the match `start..end` of the plain view stands on its own: a match that starts
/// (ends) with a digit must not touch another digit on that side, nor a `-`, `.` or `/` that
/// joins it to one (so `12345678971`, `3.1234567897` and `12-1234567897` are not 10-digit
/// numbers); one that starts (ends) with a letter must not touch a letter or digit.
pub(crate) fn isolated(s: &str, start: usize, end: usize) -> bool {
    let Some(m) = s.get(start..end) else { return false };
    let (Some(first), Some(last)) = (m.chars().next(), m.chars().next_back()) else { return false };
    let before = char_before(s, start);
    let after = char_at(s, end);
    let left_ok = if first.is_ascii_digit() {
        match before {
            Some(b) if b.is_ascii_digit() => false,
            Some('-' | '.' | '/') => !char_before(s, start.saturating_sub(1)).is_some_and(|c| c.is_ascii_digit()),
            _ => true,
        }
    } else if first.is_alphabetic() {
        !before.is_some_and(char::is_alphanumeric)
    } else {
        true
    };
    let right_ok = if last.is_ascii_digit() {
        match after {
            Some(a) if a.is_ascii_digit() => false,
            Some('-' | '.' | '/') => !char_at(s, end + 1).is_some_and(|c| c.is_ascii_digit()),
            _ => true,
        }
    } else if last.is_alphabetic() {
        !after.is_some_and(char::is_alphanumeric)
    } else {
        true
    };
    left_ok && right_ok
}

/// Whether `start..end` of a folded view is a whole word or phrase: not glued to a letter on
/// either side (digits may touch: `ohip1234567897`).
pub(crate) fn whole_word(s: &str, start: usize, end: usize) -> bool {
    !char_before(s, start).is_some_and(char::is_alphabetic) && !char_at(s, end).is_some_and(char::is_alphabetic)
}

/// Folds a configured term the way the folded view folds text (so terms match it).
pub(crate) fn fold_term(term: &str) -> String {
    build(term.trim(), true).text.into_owned()
}

/// The letters and digits of `s`, lower-cased: how allow-list entries and findings compare
/// (`+1 (416) 555-0100` and `416.555.0100` are the same number).
pub(crate) fn compact(s: &str) -> String {
    let p = build(s, true);
    let c: String = p.text().chars().filter(|c| c.is_alphanumeric()).collect();
    if c.len() == 11 && c.starts_with('1') && c.bytes().all(|b| b.is_ascii_digit()) { c[1..].to_string() } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_view_maps_back_to_char_boundaries() {
        let src = "n°\u{FF11}\u{FF12}\u{200B}3–4\u{00A0}é";
        let v = View::plain(src);
        assert_eq!(v.text(), "n°123-4 é");
        // "12" in the view comes from two full-width digits (3 bytes each).
        let at = v.text().find("12").unwrap_or(0);
        let (s, e) = v.original(at, at + 2).unwrap_or((0, 0));
        assert_eq!(&src[s..e], "\u{FF11}\u{FF12}");
        // "3" is preceded by a dropped zero-width space: the span does not include it.
        let at = v.text().find('3').unwrap_or(0);
        let (s, e) = v.original(at, at + 1).unwrap_or((0, 0));
        assert_eq!(&src[s..e], "3");
        assert_eq!(v.original(3, 3), None);
        assert_eq!(v.original(0, 999), None);
    }

    #[test]
    fn folded_view_lowercases_strips_accents_and_collapses_spaces() {
        let src = "RÉSULTATS  de\n\nla Prise  de sang — Œuvre";
        let v = View::folded(src);
        assert_eq!(v.text(), "resultats de la prise de sang - oeuvre");
        let at = v.text().find("oeuvre").unwrap_or(0);
        let (s, e) = v.original(at, at + 6).unwrap_or((0, 0));
        assert_eq!(&src[s..e], "Œuvre");
        assert_eq!(fold_term("  Carte Santé "), "carte sante");
    }

    /// The straightforward build: a table entry for every byte, however plain the text.
    fn reference(src: &str, fold: bool) -> (String, Vec<(usize, usize)>) {
        let (mut text, mut map, mut last_space) = (String::new(), Vec::new(), false);
        for (i, c) in src.char_indices() {
            let Some(p) = plain_char(c) else { continue };
            let before = text.len();
            if fold && p.is_whitespace() {
                if !last_space {
                    text.push(' ');
                }
                last_space = true;
            } else if fold {
                last_space = false;
                for l in p.to_lowercase() {
                    text.push_str(unaccent(l).unwrap_or(l.encode_utf8(&mut [0; 4])));
                }
            } else {
                text.push(p);
            }
            map.extend((before..text.len()).map(|_| (i, i + c.len_utf8())));
        }
        (text, map)
    }

    #[test]
    fn views_without_a_table_map_back_like_the_table() {
        let texts = [
            "plain ascii, Upper Case\tand\x0btabs",
            "double  space and\r\nnewlines",
            "œuvre Œuvre ß é É \u{0130} ﬁ",
            "\u{200B}lead \u{FF11}\u{FF12} – \u{00A0}trail\u{00AD}",
            "mixed é then ascii then\u{2019}s",
            "  lead and trail  \n\n",
            " a\t\t\x0c\rb  c d\x0b\x0b",
            "",
        ];
        for src in texts {
            for fold in [false, true] {
                let v = build(src, fold);
                let (text, map) = reference(src, fold);
                assert_eq!(v.text(), text, "{src:?} fold={fold}");
                for start in 0..=text.len() + 1 {
                    for end in 0..=text.len() + 1 {
                        let want = (start < end).then(|| Some((map.get(start)?.0, map.get(end - 1)?.1))).flatten();
                        assert_eq!(v.original(start, end), want, "{src:?} fold={fold} {start}..{end}");
                    }
                }
            }
        }
    }

    #[test]
    fn joined_view_removes_breaks_inside_numbers() {
        let src = "OHIP 1234 567\n897 and\n> 416-555-\r\n> 0199\nline 2\n3 items";
        let plain = View::plain(src);
        let (v, joins) = View::joined(&plain).unwrap_or_else(|| (View::plain(""), Vec::new()));
        assert_eq!(v.text(), "OHIP 1234 567897 and\n> 416-555-0199\nline 23 items");
        assert_eq!(joins, [13, 31, 42]);
        let at = v.text().find("567897").unwrap_or(0);
        let (s, e) = v.original(at, at + 6).unwrap_or((0, 0));
        assert_eq!(&src[s..e], "567\n897");
        assert!(View::joined(&View::plain("no break 123")).is_none());
        assert!(View::joined(&View::plain("line one\nline two 5")).is_none());
        // Through a plain view that rewrote characters, the map still lands on the original's.
        let src = "OHIP\u{00A0}1234 567\n897 é";
        let plain = View::plain(src);
        let (v, _) = View::joined(&plain).unwrap_or_else(|| (View::plain(""), Vec::new()));
        let at = v.text().find("567897").unwrap_or(0);
        let (s, e) = v.original(at, at + 6).unwrap_or((0, 0));
        assert_eq!(&src[s..e], "567\n897");
        let at = v.text().find('é').unwrap_or(0);
        assert_eq!(v.original(at, at + 1), Some((src.len() - 2, src.len())));
    }

    #[test]
    fn isolation_rules() {
        let cases: &[(&str, usize, usize, bool)] = &[
            ("x 1234567897 y", 2, 12, true),
            ("11234567897", 1, 11, false),
            ("12345678971", 0, 10, false),
            ("3.1234567897", 2, 12, false),
            ("ohip1234567897", 4, 14, true),
            ("aK1A 0B1", 1, 8, false),
            ("(K1A 0B1)", 1, 8, true),
            ("1234567897-2", 0, 10, false),
            ("1234567897-", 0, 10, true),
        ];
        for &(s, a, b, want) in cases {
            assert_eq!(isolated(s, a, b), want, "{s:?} {a}..{b}");
        }
    }

    #[test]
    fn compact_ignores_formatting_and_country_code() {
        assert_eq!(compact("+1 (416) 555-0100"), "4165550100");
        assert_eq!(compact("416.555.0100"), "4165550100");
        assert_eq!(compact("Front.Desk@Clinic.example"), "frontdeskclinicexample");
    }
}
