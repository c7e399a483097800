//! Strips quoted earlier messages and signatures from a reply, so only what the clinician (or
//! patient) newly wrote is recorded and forwarded. Clinicians answer from their own mail
//! clients, which quote the whole thread — including the staff-only header block of a forward —
//! and that must not travel back to the patient.
//!
//! Rules, applied line by line from the top:
//! - lines starting with `>` are quoted text and dropped (inline answers between them are kept);
//! - an attribution line (`On … wrote:`, `Le … a écrit :`, `Am … schrieb …:`, `El … escribió:`,
//!   `Op … schreef …:`), possibly wrapped over up to three lines, is dropped; if what follows is
//!   not `>`-quoted (a client that quotes without markers) everything from it on is cut;
//! - `-----Original Message-----` (and its French/German forms) cuts everything after it;
//! - an Outlook header block (`From:` followed within a few lines by `Sent:`/`Date:` and
//!   `To:`/`Subject:`, also French and German), or the `_____` rule before one, cuts everything;
//! - the signature delimiter `-- ` (or a bare `--`) cuts everything after it;
//! - a trailing mobile footer ("Sent from my iPhone") is dropped.
//!
//! Only messages that are replies go through this (see `parse`): a patient's first message is
//! kept whole, so a forwarded lab report inside it is not lost.

/// Returns only the new text of a reply.
pub fn strip_quoted(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        if is_signature_delimiter(line) || is_original_message_marker(t) || starts_outlook_block(&lines, i) {
            break;
        }
        if let Some(len) = attribution_len(&lines, i) {
            let next = lines[i + len..].iter().find(|l| !l.trim().is_empty());
            match next {
                Some(n) if n.trim_start().starts_with('>') => {
                    i += len;
                    continue;
                }
                _ => break,
            }
        }
        if !t.starts_with('>') {
            kept.push(line.trim_end());
        }
        i += 1;
    }
    // Trailing mobile footers and blank lines.
    loop {
        match kept.last() {
            Some(l) if l.trim().is_empty() || is_mobile_footer(l.trim()) => {
                kept.pop();
            }
            _ => break,
        }
    }
    while kept.first().is_some_and(|l| l.trim().is_empty()) {
        kept.remove(0);
    }
    // Collapse runs of blank lines left where quotes were removed.
    let mut out = String::new();
    let mut blank = false;
    for line in kept {
        if line.trim().is_empty() {
            if blank {
                continue;
            }
            blank = true;
        } else {
            blank = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_string()
}

fn is_signature_delimiter(line: &str) -> bool {
    let l = line.trim_end_matches('\r');
    l == "-- " || l == "--"
}

fn is_original_message_marker(t: &str) -> bool {
    let core = t.trim_matches(|c: char| c == '-' || c == ' ').to_lowercase();
    t.starts_with("--")
        && matches!(
            core.as_str(),
            "original message"
                | "message d'origine"
                | "message d’origine"
                | "ursprüngliche nachricht"
                | "mensaje original"
        )
}

fn is_mobile_footer(t: &str) -> bool {
    let l = t.to_lowercase();
    ["sent from my ", "envoyé de mon ", "von meinem ", "get outlook for ", "sent from outlook", "enviado desde mi "]
        .iter()
        .any(|p| l.starts_with(p))
        && l.len() < 80
}

/// Lower-cased header names that open / continue an Outlook-style quoted header block.
const FROM_HEADERS: [&str; 4] = ["from:", "de :", "de:", "von:"];
const DATE_HEADERS: [&str; 6] = ["sent:", "date:", "envoyé :", "envoyé:", "gesendet:", "datum:"];
const TO_HEADERS: [&str; 8] = ["to:", "subject:", "à :", "à:", "objet :", "objet:", "an:", "betreff:"];

fn header_like(line: &str, names: &[&str]) -> bool {
    let l = line.trim().to_lowercase();
    names.iter().any(|n| l.starts_with(n))
}

fn starts_outlook_block(lines: &[&str], i: usize) -> bool {
    let t = lines[i].trim();
    // An underscore rule directly (blank lines aside) above a header block.
    if t.len() >= 10 && t.chars().all(|c| c == '_') {
        return lines[i + 1..]
            .iter()
            .position(|l| !l.trim().is_empty())
            .is_some_and(|off| starts_outlook_block(lines, i + 1 + off));
    }
    if !header_like(t, &FROM_HEADERS) {
        return false;
    }
    let window = &lines[i + 1..lines.len().min(i + 6)];
    window.iter().any(|l| header_like(l, &DATE_HEADERS)) && window.iter().any(|l| header_like(l, &TO_HEADERS))
}

/// If an attribution line starts at `i`, how many lines it spans (clients wrap long ones).
fn attribution_len(lines: &[&str], i: usize) -> Option<usize> {
    let first = lines[i].trim();
    let opener = ["On ", "Le ", "Am ", "El ", "Op "].iter().any(|p| first.starts_with(p));
    if !opener {
        return None;
    }
    let mut joined = String::new();
    for (n, line) in lines[i..lines.len().min(i + 3)].iter().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            return None;
        }
        if n > 0 {
            joined.push(' ');
        }
        joined.push_str(t);
        if is_attribution_end(&joined) {
            return Some(n + 1);
        }
    }
    None
}

fn is_attribution_end(s: &str) -> bool {
    let s = s.replace('\u{a0}', " ");
    let l = s.to_lowercase();
    (l.starts_with("on ") && l.ends_with("wrote:"))
        || (l.starts_with("le ") && (l.ends_with("a écrit :") || l.ends_with("a écrit:")))
        || (l.starts_with("am ") && l.contains("schrieb") && l.ends_with(':'))
        || (l.starts_with("el ") && l.ends_with("escribió:"))
        || (l.starts_with("op ") && l.contains("schreef") && l.ends_with(':'))
}

#[cfg(test)]
mod tests {
    use super::strip_quoted;

    /// (name, input, expected new text)
    const CASES: &[(&str, &str, &str)] = &[
        ("plain text untouched", "Hello,\nall good.\n\nThanks", "Hello,\nall good.\n\nThanks"),
        (
            "gmail top-post",
            "Take 2 tablets daily.\n\nOn Mon, 3 Feb 2025 at 10:00, Clinic <clinic+t@clinic.test> wrote:\n> Patient: p-1\n> I have a headache\n",
            "Take 2 tablets daily.",
        ),
        (
            "gmail attribution wrapped over two lines",
            "Yes.\n\nOn Mon, 3 Feb 2025 at 10:00, Clinic (carebridge) <\nclinic+tok@clinic.test> wrote:\n\n> old\n",
            "Yes.",
        ),
        (
            "bottom-posting keeps the answer after the quote",
            "On 3 Feb 2025, Ann wrote:\n> Can I come on Tuesday?\n\nTuesday at 10 is fine.\n",
            "Tuesday at 10 is fine.",
        ),
        (
            "inline answers between quotes",
            "> Question one?\nAnswer one.\n> Question two?\nAnswer two.\n",
            "Answer one.\nAnswer two.",
        ),
        (
            "french attribution",
            "Oui, c'est noté.\n\nLe lun. 3 févr. 2025 à 10:00, Clinique <c@x.test> a écrit :\n> Bonjour\n",
            "Oui, c'est noté.",
        ),
        (
            "french attribution with no-break space",
            "D'accord.\nLe 3 févr. 2025, Ann a\u{a0}écrit\u{a0}:\n> texte\n",
            "D'accord.",
        ),
        ("german attribution", "Passt.\n\nAm 03.02.2025 um 10:00 schrieb Klinik <k@x.test>:\n> Hallo\n", "Passt."),
        (
            "attribution followed by unquoted original cuts",
            "New answer.\n\nOn Tue, Dr Lee wrote:\nThe old message without markers\n",
            "New answer.",
        ),
        (
            "outlook original message marker",
            "Please call us.\n\n-----Original Message-----\nFrom: Clinic\nSent: Monday\nTo: Ann\nSubject: x\n\nOld text\n",
            "Please call us.",
        ),
        (
            "outlook header block with rule",
            "See you then.\n\n________________________________\nFrom: Clinic <clinic@clinic.test>\nSent: Monday, February 3, 2025 10:00 AM\nTo: Dr Lee <dr.lee@clinic.test>\nSubject: New patient message\n\nPatient: p-1\n",
            "See you then.",
        ),
        (
            "outlook header block without rule",
            "Noted.\nFrom: Clinic <clinic@clinic.test>\nDate: Monday\nTo: Dr Lee\n\nold",
            "Noted.",
        ),
        (
            "french outlook block",
            "Merci.\n\nDe : Clinique <c@x.test>\nEnvoyé : lundi 3 février 2025 10:00\nÀ : Dr Lee\nObjet : Message\n\nancien",
            "Merci.",
        ),
        (
            "a From: line in the text is not a header block",
            "From: my GP, the results are fine.\nNothing else.",
            "From: my GP, the results are fine.\nNothing else.",
        ),
        ("signature delimiter", "Results are normal.\n\n-- \nDr Lee\nClinic, +1 416 555 0199\n", "Results are normal."),
        ("signature delimiter without the space", "Fine.\n--\nDr Lee\n", "Fine."),
        ("mobile footer", "Thanks!\n\nSent from my iPhone\n", "Thanks!"),
        ("only a quote leaves nothing", "On Mon, X wrote:\n> all old\n", ""),
        ("crlf line endings", "New\r\n\r\n> old\r\n", "New"),
        (
            "a line saying On … without wrote stays",
            "On Monday I felt better.\nThanks",
            "On Monday I felt better.\nThanks",
        ),
        ("dashes that are not a marker stay", "Step 1 -- rest\n---\nStep 2", "Step 1 -- rest\n---\nStep 2"),
    ];

    #[test]
    fn quote_stripping_table() {
        for (name, input, want) in CASES {
            assert_eq!(strip_quoted(input), *want, "case: {name}");
        }
    }
}
