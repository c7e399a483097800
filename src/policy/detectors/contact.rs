//! Contact detectors: phone numbers, email addresses, Canadian postal codes, US ZIP codes.
//!
//! - `phone`: North American numbers (`(416) 555-0199`, `416.555.0199`, `+1 416 555 0199`,
//!   bare `4165550199`; area code and exchange start with 2–9) and international `+` numbers
//!   of 8–15 digits. Formatted numbers score higher than bare digit runs.
//! - `email`: a conservative address shape with bounded parts (no catastrophic inputs: the
//!   regex crate is linear, and bounded parts keep retries cheap).
//! - `postal_code_ca`: `A1A 1A1` with Canada Post's letter rules (no D, F, I, O, Q, U; no W or
//!   Z first), any case.
//! - `zip_us`: ZIP+4 on its own, a 5-digit ZIP only near a word like `zip`.

use super::identifiers::digits;
use super::normalize::{char_at, char_before};
use super::{Judged, Prefilter, Spec};
use crate::policy::Class;

const PHONE_CONTEXT: &[&str] = &[
    "phone",
    "tel",
    "telephone",
    "cell",
    "cellphone",
    "mobile",
    "call",
    "text me",
    "fax",
    "téléphone",
    "cellulaire",
    "appelez",
    "appeler",
    "rejoindre",
    "reach me",
    "texto",
    "text",
    "texter",
    "textez",
    "textez-moi",
    "sms",
    "whatsapp",
    "appelle",
    "appelle-moi",
    "joindre",
    "cel",
];
/// Score of an unformatted digit run that could be a phone number: below the threshold, so a
/// phone word must be near.
const BARE_PHONE: u8 = 30;

const POSTAL_CONTEXT: &[&str] = &["postal code", "code postal", "address", "adresse"];
const ZIP_CONTEXT: &[&str] = &["zip", "zip code", "zipcode"];

/// The built-in contact detectors, in tie-break order.
pub(crate) fn specs() -> Vec<Spec> {
    let mut address = Spec::regex(
        "email",
        Class::Contact,
        r"[A-Za-z0-9_%+-][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}",
        email,
    );
    // An address glued to non-ASCII letters (`courriel:ann@…`, CJK text) is still an address:
    // the regex takes the longest ASCII run, which is the part worth masking.
    address.isolated = false;
    address.prefilter = Prefilter::Byte(b'@');
    vec![
        Spec::regex(
            "phone",
            Class::Contact,
            r"(?:\+?1[-. ]?)?(?:\([2-9][0-9]{2}\)|[2-9][0-9]{2})[-. ]?[2-9][0-9]{2}[-. ]?[0-9]{4}|\+[2-9][0-9]{0,3}(?:[-. ]?[0-9]{1,4}){2,5}",
            phone,
        )
        .with_context(PHONE_CONTEXT),
        address,
        Spec::regex(
            "postal_code_ca",
            Class::Contact,
            "(?i)[ABCEGHJ-NPRSTVXY][0-9][ABCEGHJ-NPRSTV-Z][ -]?[0-9][ABCEGHJ-NPRSTV-Z][0-9]",
            postal_code,
        )
        .with_context(POSTAL_CONTEXT),
        Spec::regex("zip_us", Class::Contact, "[0-9]{5}(?:-[0-9]{4})?", zip).with_context(ZIP_CONTEXT),
    ]
}

fn phone(view: &str, start: usize, end: usize) -> Option<Judged> {
    let m = view.get(start..end)?;
    let d = digits(m);
    if m.starts_with('+') && !m.starts_with("+1") {
        return (8..=15).contains(&d.len()).then_some(Judged { pct: 50, end });
    }
    let national = match d.len() {
        10 => d.as_slice(),
        11 if d.first() == Some(&1) => d.get(1..)?,
        _ => return None,
    };
    // The regex already requires it; the check keeps the judge honest on its own.
    if !matches!(national.first(), Some(2..=9)) || !matches!(national.get(3), Some(2..=9)) {
        return None;
    }
    // A bare digit run glued to letters is a reference (`REF4165550199`, `4165550199A`).
    if char_before(view, start).is_some_and(char::is_alphabetic) || char_at(view, end).is_some_and(char::is_alphabetic)
    {
        return None;
    }
    // A bare 10-digit run is as often an order or reference number as a phone number: it
    // needs a phone word near it (`call 4165550199`).
    let formatted = m.bytes().any(|b| !b.is_ascii_digit());
    Some(Judged { pct: if formatted { 60 } else { BARE_PHONE }, end })
}

fn email(view: &str, start: usize, end: usize) -> Option<Judged> {
    let m = view.get(start..end)?;
    let (local, domain) = m.split_once('@')?;
    if local.ends_with('.') || local.contains("..") || domain.split('.').any(|l| l.starts_with('-') || l.ends_with('-'))
    {
        return None;
    }
    Some(Judged { pct: 85, end })
}

fn postal_code(view: &str, start: usize, end: usize) -> Option<Judged> {
    view.get(start..end)?;
    Some(Judged { pct: 60, end })
}

fn zip(view: &str, start: usize, end: usize) -> Option<Judged> {
    let m = view.get(start..end)?;
    Some(Judged { pct: if m.contains('-') { 50 } else { 5 }, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_judge() {
        for (p, want) in [
            ("(416) 555-0199", Some(60)),
            ("4165550199", Some(30)),
            ("+1 416 555 0199", Some(60)),
            ("14165550199", Some(30)),
            ("+44 20 7946 0958", Some(50)),
            ("+44 12", None),
            ("1165550199", None),
            ("4161550199", None),
        ] {
            assert_eq!(phone(p, 0, p.len()).map(|j| j.pct), want, "{p}");
        }
    }

    #[test]
    fn email_judge() {
        assert!(email("ann@example.com", 0, 15).is_some());
        assert!(email("ann..b@example.com", 0, 18).is_none());
        assert!(email("ann@-example.com", 0, 16).is_none());
    }
}
