//! Turning a delivery's text into what Telegram accepts: pieces of at most 4096 characters as
//! Telegram counts them (UTF-16 code units), split where a reader expects a break, and escaped for
//! the configured `parse_mode` (plain text by default).
//!
//! Pure functions, tested here.

use crate::config::ParseMode;

/// Telegram's limit for one message's text, in UTF-16 code units after entity parsing.
pub const MAX_MESSAGE_UNITS: usize = 4096;

/// The length Telegram measures: UTF-16 code units (an emoji outside the BMP counts twice).
pub fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Splits `text` into pieces of at most `first_max` units (the first piece) and `max` units (the
/// rest). Prefers paragraph breaks, then line breaks, then spaces, and cuts inside a word only when
/// a piece has none of them in its second half; never splits a character. Pieces that would be
/// blank (Telegram rejects empty text) are dropped; the break itself is not repeated.
pub fn split_text(text: &str, first_max: usize, max: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut limit = first_max.max(1);
    loop {
        if utf16_len(rest) <= limit {
            if !rest.trim().is_empty() {
                pieces.push(rest.to_string());
            }
            return pieces;
        }
        // The longest prefix that fits, on a char boundary.
        let mut units = 0;
        let mut fit = 0;
        for (i, c) in rest.char_indices() {
            if units + c.len_utf16() > limit {
                break;
            }
            units += c.len_utf16();
            fit = i + c.len_utf8();
        }
        let window = &rest[..fit];
        let floor = fit / 2;
        let cut = [("\n\n", 2), ("\n", 1), (" ", 1)]
            .iter()
            .find_map(|(sep, len)| window.rfind(sep).filter(|&at| at > 0 && at >= floor).map(|at| (at, at + len)));
        let (end, next) = match cut {
            Some(c) => c,
            // No separator in the second half: cut hard (at least one char, so we always progress).
            None => {
                let end = if fit == 0 { rest.chars().next().map_or(rest.len(), char::len_utf8) } else { fit };
                (end, end)
            }
        };
        let piece = &rest[..end];
        if !piece.trim().is_empty() {
            pieces.push(piece.to_string());
        }
        rest = &rest[next..];
        limit = max.max(1);
    }
}

/// Escapes text for `parse_mode = "MarkdownV2"`: every character Telegram reserves gets a
/// backslash, so patient text is shown literally.
pub fn escape_markdown_v2(s: &str) -> String {
    const RESERVED: &str = "_*[]()~`>#+-=|{}.!\\";
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        if RESERVED.contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Escapes text for `parse_mode = "HTML"` (the three entities Telegram requires, plus quotes).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `s` for `mode`; plain text is sent as is.
pub fn escape(s: &str, mode: Option<ParseMode>) -> String {
    match mode {
        None => s.to_string(),
        Some(ParseMode::MarkdownV2) => escape_markdown_v2(s),
        Some(ParseMode::Html) => escape_html(s),
    }
}

/// Makes an already plain header bold for `mode` (and escapes it); plain text stays plain.
pub fn bold(s: &str, mode: Option<ParseMode>) -> String {
    match mode {
        None => s.to_string(),
        Some(ParseMode::MarkdownV2) => format!("*{}*", escape_markdown_v2(s)),
        Some(ParseMode::Html) => format!("<b>{}</b>", escape_html(s)),
    }
}

/// Builds the final text pieces of one delivery: an optional header (bold when a parse mode is
/// set) at the top of the first piece, then the body split to fit. Limits are counted on the
/// text as the reader sees it, which is what Telegram counts after parsing entities.
pub fn compose(header: Option<&str>, body: &str, mode: Option<ParseMode>) -> Vec<String> {
    let header_units = header.map_or(0, |h| utf16_len(h) + 2);
    let first_max = MAX_MESSAGE_UNITS.saturating_sub(header_units).max(1);
    let mut pieces: Vec<String> =
        split_text(body, first_max, MAX_MESSAGE_UNITS).iter().map(|p| escape(p, mode)).collect();
    if let Some(h) = header {
        let h = bold(h, mode);
        match pieces.first_mut() {
            Some(first) => *first = format!("{h}\n\n{first}"),
            None => pieces.push(h),
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_piece() {
        assert_eq!(split_text("hello", 10, 10), vec!["hello"]);
        assert!(split_text("   ", 10, 10).is_empty());
    }

    #[test]
    fn prefers_paragraphs_then_lines_then_spaces() {
        let t = "aaaa bbbb\ncccc\n\ndddd eeee";
        assert_eq!(split_text(t, 16, 16), vec!["aaaa bbbb\ncccc", "dddd eeee"]);
        assert_eq!(split_text("aaaa bbbb\ncccc dddd", 12, 12), vec!["aaaa bbbb", "cccc dddd"]);
        assert_eq!(split_text("aaaa bbbb cccc", 10, 10), vec!["aaaa bbbb", "cccc"]);
    }

    #[test]
    fn cuts_words_only_when_it_must() {
        assert_eq!(split_text("abcdefghij", 4, 4), vec!["abcd", "efgh", "ij"]);
    }

    #[test]
    fn counts_utf16_and_never_splits_a_character() {
        // Each emoji is 2 UTF-16 units: 3 of them do not fit in 5 units.
        let t = "😀😀😀";
        assert_eq!(utf16_len(t), 6);
        let pieces = split_text(t, 5, 5);
        assert_eq!(pieces, vec!["😀😀", "😀"]);
        // A limit smaller than one character still progresses.
        assert_eq!(split_text("😀", 1, 1), vec!["😀"]);
    }

    #[test]
    fn long_messages_fit_telegram_and_keep_every_word() {
        let para = "word ".repeat(300);
        let text = [para.as_str(); 12].join("\n\n");
        let pieces = compose(Some("Patient P-1"), &text, None);
        assert!(pieces.len() > 1);
        for p in &pieces {
            assert!(utf16_len(p) <= MAX_MESSAGE_UNITS, "{}", utf16_len(p));
        }
        assert!(pieces[0].starts_with("Patient P-1\n\n"));
        let words: usize = pieces.iter().map(|p| p.matches("word").count()).sum();
        assert_eq!(words, 300 * 12);
    }

    #[test]
    fn escaping_for_each_parse_mode() {
        assert_eq!(escape_markdown_v2("1.5*2 (ok)!"), "1\\.5\\*2 \\(ok\\)\\!");
        assert_eq!(escape_markdown_v2("a\\b"), "a\\\\b");
        assert_eq!(escape_html("<b>&\"x\""), "&lt;b&gt;&amp;&quot;x&quot;");
        assert_eq!(escape("x.y", None), "x.y");
        assert_eq!(bold("P-1", Some(ParseMode::MarkdownV2)), "*P\\-1*");
        assert_eq!(bold("P<1", Some(ParseMode::Html)), "<b>P&lt;1</b>");
        let pieces = compose(Some("H"), "a.b", Some(ParseMode::MarkdownV2));
        assert_eq!(pieces, vec!["*H*\n\na\\.b"]);
        assert_eq!(compose(Some("H"), "", None), vec!["H"]);
    }
}
