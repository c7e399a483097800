//! Identifier detectors: provincial health numbers, SIN, MRN, dates of birth, and the check
//! digit algorithms that keep them from firing on every 9- or 10-digit number.
//!
//! Sources (docs/policy.md and ../shared/notes/privacy.md §2.2 have the details):
//! - **OHIP** (`health_number_on`): 10 digits, Luhn over all ten, optional 1–2 upper-case
//!   letter version code. A random 10-digit number passes Luhn one time in ten, so a bare
//!   number scores low (needs a context word); 4-3-3 grouping or a version code score high.
//! - **BC PHN** (`health_number_bc`): `9` + 8 digits + mod-11 check digit, weights
//!   (2,4,8,5,10,9,7,3) on digits 2–9 (python-stdnum `ca/bc_phn.py`).
//! - **RAMQ** (`health_number_qc`): 4 letters + 8 digits (YYMMDD with month+50 for women, then
//!   2 digits); no public checksum, so the encoded date must be plausible.
//! - **SIN** (`sin`): 9 digits, Luhn, never starting with 0 or 8 (python-stdnum `ca/sin.py`).
//! - **MRN** (`mrn`): clinic-specific chart numbers; the pattern is configurable and a context
//!   word (`chart`, `MRN`, `dossier`…) is required.
//! - **Date of birth** (`date_of_birth`): numeric and written dates (English and French month
//!   names), only near a birth word: an appointment date is not an identifier.

use super::normalize::char_at;
use super::{Judge, Judged, Spec};
use crate::policy::Class;

/// Score of a well-formatted number that passed its check (4-3-3 groups, version code).
const FORMATTED: u8 = 65;
/// Score of a bare digit run that passed its check: found only with a context word.
const BARE: u8 = 5;

/// The default chart-number pattern (`[policy.builtin.mrn] pattern` replaces it).
pub(crate) const MRN_DEFAULT_PATTERN: &str = "[0-9]{5,10}";

const OHIP_CONTEXT: &[&str] = &[
    "ohip",
    "health card",
    "health number",
    "health no",
    "hcn",
    "version code",
    "carte santé",
    "carte-santé",
    "numéro de carte santé",
    "assurance-santé",
    "assurance santé",
    "ontario health",
    "health insurance",
    "insurance",
    "card",
    "insurance number",
    "insurance card",
    "health card number",
    "carte d'assurance maladie",
    "numéro d'assurance maladie",
    "assurance maladie",
];
const BC_CONTEXT: &[&str] =
    &["phn", "personal health number", "msp", "care card", "carecard", "bc services card", "services card"];
const QC_CONTEXT: &[&str] = &[
    "ramq",
    "nam",
    "assurance maladie",
    "assurance-maladie",
    "carte soleil",
    "numéro d'assurance maladie",
    "carte d'assurance maladie",
];
const SIN_CONTEXT: &[&str] =
    &["sin", "social insurance", "social insurance number", "nas", "numéro d'assurance sociale", "assurance sociale"];
const MRN_CONTEXT: &[&str] = &[
    "mrn",
    "chart",
    "chart number",
    "chart no",
    "file number",
    "file no",
    "file #",
    "medical record",
    "record number",
    "patient id",
    "patient number",
    "dossier",
    "numéro de dossier",
    "no de dossier",
    "n° de dossier",
    "# de dossier",
    "dossier médical",
    "carte d'hôpital",
    "carte de l'hôpital",
    "carte d'hôpital numéro",
    "numéro d'hôpital",
    "no d'hôpital",
    "numéro de patient",
    "no de patient",
    "n° de patient",
    "numéro du patient",
    "identifiant patient",
    "hospital card",
    "hospital number",
    "hospital id",
    "patient #",
    "chart #",
    "record #",
];
const DOB_CONTEXT: &[&str] = &[
    "dob",
    "d.o.b",
    "born",
    "birth",
    "birthday",
    "birthdate",
    "date of birth",
    "né le",
    "née le",
    "naissance",
    "date de naissance",
    "ddn",
    "né en",
    "née en",
    "birth date",
];

const MONTHS: &str = "january|february|march|april|june|july|august|september|october|november|december|\
janvier|février|fevrier|mars|avril|juin|juillet|août|aout|septembre|octobre|novembre|décembre|decembre|\
sept|janv|févr|fevr|avr|juil|déc|jan|feb|mar|apr|may|mai|jun|jul|aug|sep|oct|nov|dec";

/// The built-in identifier detectors, in tie-break order.
pub(crate) fn specs() -> Vec<Spec> {
    let date = format!(
        "(?i)(?:[0-9]{{4}}[-/.][0-9]{{1,2}}[-/.][0-9]{{1,2}}\
         |[0-9]{{1,2}}[-/.][0-9]{{1,2}}[-/.](?:[0-9]{{4}}|[0-9]{{2}})\
         |(?:{MONTHS})\\.?[ ]{{0,2}}[0-9]{{1,2}}(?:st|nd|rd|th)?,?[ ]{{1,2}}[0-9]{{4}}\
         |[0-9]{{1,2}}(?:st|nd|rd|th|er)?[ ]{{1,2}}(?:{MONTHS})\\.?,?[ ]{{1,2}}[0-9]{{4}})"
    );
    vec![
        Spec::regex("health_number_on", Class::Identifier, "[0-9]{4}[-. ]?[0-9]{3}[-. ]?[0-9]{3}", ohip)
            .with_context(OHIP_CONTEXT)
            .fuzzy_context(),
        Spec::regex("health_number_bc", Class::Identifier, "9[0-9]{3}[-. ]?[0-9]{3}[-. ]?[0-9]{3}", bc_phn)
            .with_context(BC_CONTEXT)
            .fuzzy_context(),
        Spec::regex("health_number_qc", Class::Identifier, "(?i)[a-z]{4}[-. ]?[0-9]{4}[-. ]?[0-9]{4}", ramq)
            .with_context(QC_CONTEXT)
            .fuzzy_context(),
        Spec::regex("sin", Class::Identifier, "[0-9]{3}[-. ]?[0-9]{3}[-. ]?[0-9]{3}", sin)
            .with_context(SIN_CONTEXT)
            .fuzzy_context(),
        mrn_spec(MRN_DEFAULT_PATTERN, true),
        Spec::regex("date_of_birth", Class::Identifier, &date, date_of_birth)
            .with_context(DOB_CONTEXT)
            .requiring_context()
            .fuzzy_context()
            .not_sharing_across_labels(),
    ]
}

/// The MRN detector with a given pattern; `bounded` says whether the pattern's repetition is
/// bounded (the default is; a user's may not be).
pub(crate) fn mrn_spec(pattern: &str, bounded: bool) -> Spec {
    let mut s = Spec::judged("mrn", Class::Identifier, pattern, Judge::Fixed(BARE))
        .with_context(MRN_CONTEXT)
        .requiring_context()
        .fuzzy_context();
    s.bounded = bounded;
    s
}

/// The ASCII digits of `s` as numbers.
pub(crate) fn digits(s: &str) -> Vec<u8> {
    s.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect()
}

/// The Luhn (mod 10) check over all digits, the last being the check digit.
pub(crate) fn luhn(d: &[u8]) -> bool {
    if d.is_empty() {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let v = u32::from(x) * if i % 2 == 1 { 2 } else { 1 };
            if v > 9 { v - 9 } else { v }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The BC PHN check: ten digits, first `9`, mod-11 check digit (python-stdnum).
pub(crate) fn bc_phn_valid(d: &[u8]) -> bool {
    const WEIGHTS: [u32; 8] = [2, 4, 8, 5, 10, 9, 7, 3];
    let (Some(&9), Some(body), Some(&check)) = (d.first(), d.get(1..9), d.get(9)) else { return false };
    if d.len() != 10 {
        return false;
    }
    let s: u32 = body.iter().zip(WEIGHTS).map(|(&n, w)| (w * u32::from(n)) % 11).sum();
    (11 - i64::from(s)).rem_euclid(11) == i64::from(check)
}

/// Separators inside a digit match (`1234-567-897` has two).
fn separators(m: &str) -> usize {
    m.bytes().filter(|b| !b.is_ascii_digit()).count()
}

/// An OHIP version code right after `end`: optional space or dash, then 1–2 upper-case
/// letters standing alone. Returns the new end and whether one was found.
fn version_code(view: &str, end: usize) -> (usize, bool) {
    let Some(rest) = view.get(end..) else { return (end, false) };
    let b = rest.as_bytes();
    let skip = usize::from(matches!(b.first(), Some(b' ' | b'-')));
    let letters = b.iter().skip(skip).take(3).take_while(|c| c.is_ascii_uppercase()).count();
    if !(1..=2).contains(&letters) {
        return (end, false);
    }
    let new_end = end + skip + letters;
    if char_at(view, new_end).is_some_and(char::is_alphanumeric) {
        return (end, false);
    }
    (new_end, true)
}

fn ohip(view: &str, start: usize, end: usize) -> Option<Judged> {
    let m = view.get(start..end)?;
    let d = digits(m);
    if d.len() != 10 || !luhn(&d) {
        return None;
    }
    let (end, version) = version_code(view, end);
    let pct = if separators(m) == 2 || version { FORMATTED } else { BARE };
    Some(Judged { pct, end })
}

fn bc_phn(view: &str, start: usize, end: usize) -> Option<Judged> {
    let m = view.get(start..end)?;
    if !bc_phn_valid(&digits(m)) {
        return None;
    }
    Some(Judged { pct: if separators(m) == 2 { FORMATTED } else { BARE }, end })
}

fn ramq(view: &str, start: usize, end: usize) -> Option<Judged> {
    let d = digits(view.get(start..end)?);
    let (Some(&m1), Some(&m2), Some(&d1), Some(&d2)) = (d.get(2), d.get(3), d.get(4), d.get(5)) else {
        return None;
    };
    let month = m1 * 10 + m2;
    let day = d1 * 10 + d2;
    let month_ok = (1..=12).contains(&month) || (51..=62).contains(&month);
    if d.len() != 8 || !month_ok || !(1..=31).contains(&day) {
        return None;
    }
    Some(Judged { pct: 50, end })
}

fn sin(view: &str, start: usize, end: usize) -> Option<Judged> {
    let m = view.get(start..end)?;
    let d = digits(m);
    if d.len() != 9 || matches!(d.first(), Some(0 | 8)) || !luhn(&d) {
        return None;
    }
    Some(Judged { pct: if separators(m) == 2 { FORMATTED } else { BARE }, end })
}

fn date_of_birth(view: &str, start: usize, end: usize) -> Option<Judged> {
    let m = view.get(start..end)?;
    let groups: Vec<&str> = m.split(|c: char| !c.is_ascii_digit()).filter(|g| !g.is_empty()).collect();
    let num = |g: &str| g.parse::<u32>().unwrap_or(u32::MAX);
    let day_ok = |d: u32| (1..=31).contains(&d);
    let month_ok = |n: u32| (1..=12).contains(&n);
    let year_ok = |g: &str| g.len() == 2 || (1900..=2099).contains(&num(g));
    let ok = if m.chars().any(char::is_alphabetic) {
        // A month name: the numbers are the day and the year, in that order either way.
        matches!(groups.as_slice(), [d, y] if day_ok(num(d)) && y.len() == 4 && year_ok(y))
    } else {
        match groups.as_slice() {
            [y, mo, d] if y.len() == 4 => year_ok(y) && month_ok(num(mo)) && day_ok(num(d)),
            [a, b, y] => {
                let (a, b) = (num(a), num(b));
                year_ok(y) && ((month_ok(a) && day_ok(b)) || (month_ok(b) && day_ok(a)))
            }
            _ => false,
        }
    };
    ok.then_some(Judged { pct: 30, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_table() {
        for (n, want) in [
            ("1234567897", true),
            ("1234567890", false),
            ("123456782", true),
            ("046454286", true),
            ("79927398713", true),
            ("79927398710", false),
            ("", false),
        ] {
            assert_eq!(luhn(&digits(n)), want, "{n}");
        }
    }

    #[test]
    fn bc_phn_table() {
        for (n, want) in [
            ("9698 658 215", true),
            ("9698648215", false),
            ("5736504210", false),
            ("969865821", false),
            ("96986582150", false),
        ] {
            assert_eq!(bc_phn_valid(&digits(n)), want, "{n}");
        }
    }

    #[test]
    fn version_codes() {
        assert_eq!(version_code("1234567897 AB x", 10), (13, true));
        assert_eq!(version_code("1234567897-K.", 10), (12, true));
        assert_eq!(version_code("1234567897ABC", 10), (10, false));
        assert_eq!(version_code("1234567897 Thanks", 10), (10, false));
        assert_eq!(version_code("1234567897 ab", 10), (10, false));
        assert_eq!(version_code("1234567897", 10), (10, false));
    }

    #[test]
    fn dates_of_birth() {
        for (d, want) in [
            ("1984-03-07", true),
            ("07/03/1984", true),
            ("12/31/84", true),
            ("31/12/1984", true),
            ("13/13/1984", false),
            ("1984-13-07", false),
            ("1850-01-01", false),
            ("March 7, 1984", true),
            ("7 mars 1984", true),
            ("1er mars 1984", true),
            ("March 32, 1984", false),
        ] {
            assert_eq!(date_of_birth(d, 0, d.len()).is_some(), want, "{d}");
        }
    }
}
