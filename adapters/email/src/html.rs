//! HTML-only mail to plain text, simply and safely: tags are dropped (never interpreted),
//! `script`/`style`/`head` content is skipped, entities are decoded, block elements and `<br>`
//! become line breaks, list items get a dash, and `<blockquote>` content is prefixed with `> `
//! so the quote stripper treats it like a plain-text quote.
//!
//! It is a single forward pass over the input with no recursion, so hostile HTML (unclosed tags,
//! deep nesting, huge attributes) costs linear time and cannot panic.

/// Converts an HTML body to readable text.
pub fn html_to_text(html: &str) -> String {
    let mut out = Output::default();
    let mut rest = html;
    let mut skip_until: Option<&'static str> = None;
    let mut pre_depth = 0usize;

    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if skip_until.is_none() {
                out.text(rest, pre_depth > 0);
            }
            break;
        };
        if lt > 0 && skip_until.is_none() {
            out.text(&rest[..lt], pre_depth > 0);
        }
        rest = &rest[lt..];

        // Comments, doctype, CDATA: skip whole.
        if let Some(body) = rest.strip_prefix("<!--") {
            rest = body.find("-->").map_or("", |end| &body[end + 3..]);
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            rest = rest.find('>').map_or("", |end| &rest[end + 1..]);
            continue;
        }

        let Some(tag) = parse_tag(rest) else {
            // A lone '<' (as in "a < b"): keep it as text.
            if skip_until.is_none() {
                out.text("<", pre_depth > 0);
            }
            rest = &rest[1..];
            continue;
        };
        rest = &rest[tag.len..];

        if let Some(end) = skip_until {
            if tag.closing && tag.name == end {
                skip_until = None;
            }
            continue;
        }
        match (tag.name.as_str(), tag.closing) {
            ("script" | "style" | "head" | "title" | "template" | "noscript", false) if !tag.self_closing => {
                skip_until = Some(match tag.name.as_str() {
                    "script" => "script",
                    "style" => "style",
                    "head" => "head",
                    "title" => "title",
                    "template" => "template",
                    _ => "noscript",
                });
            }
            ("br", _) => out.newline(),
            (
                "p" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "table" | "ul" | "ol" | "dl" | "section"
                | "article" | "header" | "footer" | "address" | "hr",
                _,
            ) => out.paragraph(),
            ("tr" | "dt" | "dd" | "center" | "caption", _) => out.newline(),
            ("li", false) => {
                out.newline();
                out.raw("- ");
            }
            ("td" | "th", false) => out.space(),
            ("pre", false) => {
                out.paragraph();
                pre_depth += 1;
            }
            ("pre", true) => {
                pre_depth = pre_depth.saturating_sub(1);
                out.paragraph();
            }
            ("blockquote", false) => {
                out.newline();
                out.quote_depth += 1;
            }
            ("blockquote", true) => {
                out.quote_depth = out.quote_depth.saturating_sub(1);
                out.newline();
            }
            _ => {}
        }
    }
    out.finish()
}

struct Tag {
    name: String,
    closing: bool,
    self_closing: bool,
    /// Bytes of input the tag takes, `<` to `>` inclusive.
    len: usize,
}

/// Parses the tag at the start of `s` (which starts with `<`), honouring quoted attribute values
/// so a `>` inside quotes does not end it. `None` if it is not a tag.
fn parse_tag(s: &str) -> Option<Tag> {
    let bytes = s.as_bytes();
    let mut i = 1;
    let closing = bytes.get(i) == Some(&b'/');
    if closing {
        i += 1;
    }
    let name_start = i;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric()) {
        i += 1;
    }
    if i == name_start {
        return None;
    }
    let name = s[name_start..i].to_ascii_lowercase();
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => {
                let self_closing = i > 0 && bytes[i - 1] == b'/';
                return Some(Tag { name, closing, self_closing, len: i + 1 });
            }
            None => {}
        }
        i += 1;
    }
    // Unterminated tag: swallow the rest rather than show markup.
    Some(Tag { name, closing, self_closing: false, len: s.len() })
}

#[derive(Default)]
struct Output {
    text: String,
    quote_depth: usize,
    at_line_start: bool,
    pending_space: bool,
    /// Newlines owed before the next text (1 = line break, 2 = paragraph).
    pending_newlines: usize,
}

impl Output {
    fn newline(&mut self) {
        self.pending_newlines = self.pending_newlines.max(1);
        self.pending_space = false;
    }

    fn paragraph(&mut self) {
        self.pending_newlines = 2;
        self.pending_space = false;
    }

    fn space(&mut self) {
        self.pending_space = true;
    }

    fn flush_breaks(&mut self) {
        if self.text.is_empty() {
            self.pending_newlines = 0;
            self.at_line_start = true;
        }
        if self.pending_newlines > 0 {
            for _ in 0..self.pending_newlines {
                self.text.push('\n');
            }
            self.pending_newlines = 0;
            self.pending_space = false;
            self.at_line_start = true;
        }
        if self.at_line_start {
            for _ in 0..self.quote_depth {
                self.text.push_str("> ");
            }
            self.at_line_start = false;
        } else if self.pending_space {
            self.text.push(' ');
        }
        self.pending_space = false;
    }

    fn raw(&mut self, s: &str) {
        self.flush_breaks();
        self.text.push_str(s);
    }

    fn text(&mut self, s: &str, preformatted: bool) {
        let decoded = decode_entities(s);
        if preformatted {
            for (i, line) in decoded.split('\n').enumerate() {
                if i > 0 {
                    self.pending_newlines = self.pending_newlines.max(1);
                }
                if !line.is_empty() {
                    self.raw(line.trim_end_matches('\r'));
                }
            }
            return;
        }
        for (i, word) in decoded.split(|c: char| c.is_whitespace() && c != '\u{a0}').enumerate() {
            if i > 0 {
                self.pending_space = true;
            }
            if word.is_empty() {
                continue;
            }
            let word = word.replace('\u{a0}', " ");
            self.flush_breaks();
            self.text.push_str(&word);
        }
    }

    fn finish(self) -> String {
        let mut lines: Vec<&str> = self.text.lines().map(str::trim_end).collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        // At most one blank line in a row.
        let mut out = String::with_capacity(self.text.len());
        let mut blank = 0;
        for line in lines {
            if line.is_empty() {
                blank += 1;
                if blank > 1 {
                    continue;
                }
            } else {
                blank = 0;
            }
            out.push_str(line);
            out.push('\n');
        }
        out.trim_end().to_string()
    }
}

/// Decodes the entities mail clients actually produce; unknown ones stay as written.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest.char_indices().take(12).find(|&(_, c)| c == ';').map(|(i, _)| i);
        let decoded = end.and_then(|end| decode_entity(&rest[1..end]).map(|c| (c, end)));
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn decode_entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(code).filter(|c| *c != '\0');
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" | "#39" => '\'',
        "nbsp" => '\u{a0}',
        "shy" => '\u{ad}',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "hellip" => '…',
        "ndash" => '–',
        "mdash" => '—',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "bull" => '•',
        "middot" => '·',
        "deg" => '°',
        "euro" => '€',
        "pound" => '£',
        "eacute" => 'é',
        "Eacute" => 'É',
        "egrave" => 'è',
        "Egrave" => 'È',
        "ecirc" => 'ê',
        "euml" => 'ë',
        "agrave" => 'à',
        "Agrave" => 'À',
        "acirc" => 'â',
        "aacute" => 'á',
        "iacute" => 'í',
        "icirc" => 'î',
        "iuml" => 'ï',
        "oacute" => 'ó',
        "ocirc" => 'ô',
        "uacute" => 'ú',
        "ugrave" => 'ù',
        "ucirc" => 'û',
        "ccedil" => 'ç',
        "Ccedil" => 'Ç',
        "ntilde" => 'ñ',
        "auml" => 'ä',
        "Auml" => 'Ä',
        "ouml" => 'ö',
        "Ouml" => 'Ö',
        "uuml" => 'ü',
        "Uuml" => 'Ü',
        "szlig" => 'ß',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let cases: &[(&str, &str)] = &[
            ("<p>Hello</p><p>World</p>", "Hello\n\nWorld"),
            ("Line one<br>Line two<br/>Line three", "Line one\nLine two\nLine three"),
            ("<div>a   b\n c</div>", "a b c"),
            (
                "Fish &amp; chips &lt;3 &eacute;t&eacute; &#233;&#xE9; &bogus; & done",
                "Fish & chips <3 été éé &bogus; & done",
            ),
            ("<ul><li>one</li><li>two</li></ul>", "- one\n- two"),
            (
                "<head><title>t</title><style>p{color:red}</style></head><body>shown<script>alert(1)</script></body>",
                "shown",
            ),
            ("<!-- hidden --><p>visible</p>", "visible"),
            ("<a href=\"x>y\">link</a> text", "link text"),
            ("a < b and c > d", "a < b and c > d"),
            (
                "<p>New text</p><blockquote><p>old line 1</p><p>old line 2</p></blockquote>",
                "New text\n\n> old line 1\n\n> old line 2",
            ),
            ("<pre>  keep\n    indent</pre>", "  keep\n    indent"),
            ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", "a b\nc"),
            ("non&nbsp;breaking", "non breaking"),
            ("<p>unterminated <b", "unterminated"),
            ("", ""),
        ];
        for (html, want) in cases {
            assert_eq!(html_to_text(html), *want, "input: {html:?}");
        }
    }

    #[test]
    fn hostile_input_does_not_panic() {
        let deep = "<blockquote>".repeat(10_000) + "x";
        assert!(html_to_text(&deep).ends_with('x'));
        for s in ["<", "<<<>>>", "&", "&#;", "&#x110000;", "&#0;", "<!--", "<!", "</", "<a '>", "é<é>é"] {
            let _ = html_to_text(s);
        }
    }
}
