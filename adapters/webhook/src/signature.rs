//! The request signature both directions use (see the crate docs for the scheme).
//!
//! `X-Carebridge-Timestamp: <unix seconds>` and
//! `X-Carebridge-Signature: v1=<hex(HMAC-SHA256(secret, "<timestamp>.<raw body>"))>`.
//! Signing the timestamp with the body lets the receiver refuse replays older than the allowed
//! skew; comparing tags goes through [`hmac::Mac::verify_slice`], which is constant-time.
//!
//! [`SigningKey`] keys the HMAC once, so a busy listener clones a ready state per request instead
//! of re-hashing the secret; [`sign`] and [`verify`] are the one-shot forms for clients and tests.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The header carrying the signing time, in unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-carebridge-timestamp";
/// The header carrying the signature (`v1=<hex>`).
pub const SIGNATURE_HEADER: &str = "x-carebridge-signature";
/// The version prefix of the only scheme so far; a new scheme gets a new prefix.
pub const SCHEME_PREFIX: &str = "v1=";

/// At most this many comma-separated signatures are tried (room for a secret rotation, not for
/// a CPU-burning header).
const MAX_SIGNATURES: usize = 4;

/// Why a request's signature was refused. The messages are PHI-free and go back to the client
/// in the 401 body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// `X-Carebridge-Timestamp` is absent.
    #[error("missing X-Carebridge-Timestamp header")]
    MissingTimestamp,
    /// `X-Carebridge-Signature` is absent.
    #[error("missing X-Carebridge-Signature header")]
    MissingSignature,
    /// The timestamp is not an integer number of seconds.
    #[error("X-Carebridge-Timestamp must be unix seconds")]
    BadTimestamp,
    /// The signature header is not `v1=<64 hex digits>`.
    #[error("X-Carebridge-Signature must be v1=<64 hex digits>")]
    BadSignatureFormat,
    /// The timestamp is older than the allowed skew (a replay, or a slow or wrong clock).
    #[error("timestamp is too old (allowed skew is {0} s)")]
    Stale(u64),
    /// The timestamp is further in the future than the allowed skew (a wrong clock).
    #[error("timestamp is in the future (allowed skew is {0} s)")]
    Future(u64),
    /// The HMAC does not match: wrong secret, or the body or timestamp was altered.
    #[error("signature does not match")]
    Mismatch,
}

/// A shared secret ready to sign and verify: the HMAC is keyed once and cloned per message.
#[derive(Clone)]
pub struct SigningKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Keys HMAC-SHA256 with `secret` (the secret's bytes as configured, not hex-decoded).
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length (long keys are hashed), so this cannot fail; the
        // fallback keeps `expect` out of the code anyway.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        Self { mac }
    }

    fn mac_for(&self, timestamp: &[u8], body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(timestamp);
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `X-Carebridge-Signature` value for `body` signed at `timestamp` (unix seconds).
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac_for(timestamp.to_string().as_bytes(), body).finalize().into_bytes();
        let mut out = String::with_capacity(SCHEME_PREFIX.len() + 64);
        out.push_str(SCHEME_PREFIX);
        out.push_str(&hex::encode(tag));
        out
    }

    /// Checks a request's headers against its raw body. `now` is the receiver's clock in unix
    /// seconds; timestamps further than `max_skew` from it either way are refused. The signature
    /// header may list several comma-separated `v1=` values (any one matching is enough), so a
    /// client can sign with an old and a new secret during a rotation.
    pub fn verify(
        &self,
        timestamp_header: Option<&str>,
        signature_header: Option<&str>,
        body: &[u8],
        now: i64,
        max_skew: Duration,
    ) -> Result<(), SignatureError> {
        let ts_text = timestamp_header.ok_or(SignatureError::MissingTimestamp)?.trim();
        let sig_text = signature_header.ok_or(SignatureError::MissingSignature)?;
        let timestamp = parse_timestamp(ts_text)?;
        let (tags, count) = parse_tags(sig_text)?;
        let skew = max_skew.as_secs();
        if timestamp < now && now.abs_diff(timestamp) > skew {
            return Err(SignatureError::Stale(skew));
        }
        if timestamp > now && timestamp.abs_diff(now) > skew {
            return Err(SignatureError::Future(skew));
        }
        let mac = self.mac_for(ts_text.as_bytes(), body);
        for tag in &tags[..count] {
            if mac.clone().verify_slice(tag).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// Parses the timestamp header: decimal digits only (an optional leading `-` is tolerated so a
/// pre-1970 clock is reported as stale, not as garbage).
fn parse_timestamp(text: &str) -> Result<i64, SignatureError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::BadTimestamp);
    }
    text.parse().map_err(|_| SignatureError::BadTimestamp)
}

/// Parses `v1=<hex>[, v1=<hex>…]` into up to [`MAX_SIGNATURES`] 32-byte tags. Entries with other
/// scheme prefixes are skipped (forward compatibility); at least one `v1` entry must be present.
fn parse_tags(text: &str) -> Result<([[u8; 32]; MAX_SIGNATURES], usize), SignatureError> {
    let mut tags = [[0u8; 32]; MAX_SIGNATURES];
    let mut count = 0;
    for entry in text.split(',').map(str::trim).take(MAX_SIGNATURES * 2) {
        let Some(hex_tag) = entry.strip_prefix(SCHEME_PREFIX) else {
            continue;
        };
        if count == MAX_SIGNATURES {
            break;
        }
        hex::decode_to_slice(hex_tag, &mut tags[count]).map_err(|_| SignatureError::BadSignatureFormat)?;
        count += 1;
    }
    if count == 0 {
        return Err(SignatureError::BadSignatureFormat);
    }
    Ok((tags, count))
}

/// `X-Carebridge-Signature` value for `body` signed with `secret` at `timestamp` (unix seconds):
/// `v1=<hex(HMAC-SHA256(secret, "<timestamp>.<body>"))>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    SigningKey::new(secret).sign(timestamp, body)
}

/// Verifies a request signed with [`sign`]: both headers present, the timestamp within
/// `max_skew` of `now` (unix seconds) and the HMAC matching (compared in constant time).
pub fn verify(
    secret: &[u8],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now: i64,
    max_skew: Duration,
) -> Result<(), SignatureError> {
    SigningKey::new(secret).verify(timestamp_header, signature_header, body, now, max_skew)
}

/// The current time in unix seconds, for signing and verifying.
pub fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SKEW: Duration = Duration::from_secs(300);

    #[test]
    fn a_known_vector() {
        // printf %s '1700000000.{"a":1}' | openssl dgst -sha256 -hmac topsecret -r
        assert_eq!(
            sign(b"topsecret", 1_700_000_000, br#"{"a":1}"#),
            "v1=6a939b0c71853d606167625a15168ee9188c6a511c773ef4f42d307f3849e50f"
        );
    }

    #[test]
    fn round_trip_and_tampering() {
        let sig = sign(b"k", 1000, b"body");
        assert_eq!(verify(b"k", Some("1000"), Some(&sig), b"body", 1000, SKEW), Ok(()));
        assert_eq!(verify(b"k", Some("1000"), Some(&sig), b"bodY", 1000, SKEW), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"K", Some("1000"), Some(&sig), b"body", 1000, SKEW), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"k", Some("1001"), Some(&sig), b"body", 1000, SKEW), Err(SignatureError::Mismatch));
    }

    #[test]
    fn skew_is_enforced_both_ways() {
        let sig = sign(b"k", 1000, b"x");
        assert_eq!(verify(b"k", Some("1000"), Some(&sig), b"x", 1300, SKEW), Ok(()));
        assert_eq!(verify(b"k", Some("1000"), Some(&sig), b"x", 700, SKEW), Ok(()));
        assert_eq!(verify(b"k", Some("1000"), Some(&sig), b"x", 1301, SKEW), Err(SignatureError::Stale(300)));
        assert_eq!(verify(b"k", Some("1000"), Some(&sig), b"x", 699, SKEW), Err(SignatureError::Future(300)));
    }

    #[test]
    fn malformed_headers_are_named() {
        let sig = sign(b"k", 1000, b"x");
        assert_eq!(verify(b"k", None, Some(&sig), b"x", 1000, SKEW), Err(SignatureError::MissingTimestamp));
        assert_eq!(verify(b"k", Some("1000"), None, b"x", 1000, SKEW), Err(SignatureError::MissingSignature));
        for bad_ts in ["", "abc", "1e3", "+1000", "10 00", "99999999999999999999"] {
            assert_eq!(verify(b"k", Some(bad_ts), Some(&sig), b"x", 1000, SKEW), Err(SignatureError::BadTimestamp));
        }
        for bad_sig in ["", "v1=", "v1=zz", "v2=abcd", "sha256=00", &sig[3..]] {
            assert_eq!(
                verify(b"k", Some("1000"), Some(bad_sig), b"x", 1000, SKEW),
                Err(SignatureError::BadSignatureFormat),
                "{bad_sig}"
            );
        }
    }

    #[test]
    fn any_listed_signature_may_match() {
        let old = sign(b"old", 1000, b"x");
        let new = sign(b"new", 1000, b"x");
        let both = format!("{old}, {new}");
        assert_eq!(verify(b"new", Some("1000"), Some(&both), b"x", 1000, SKEW), Ok(()));
        assert_eq!(verify(b"old", Some("1000"), Some(&both), b"x", 1000, SKEW), Ok(()));
        let v2_first = format!("v2=abc,{new}");
        assert_eq!(verify(b"new", Some("1000"), Some(&v2_first), b"x", 1000, SKEW), Ok(()));
    }

    #[test]
    fn the_key_does_not_debug_print() {
        assert_eq!(format!("{:?}", SigningKey::new(b"hunter2")), "SigningKey(<redacted>)");
    }
}
