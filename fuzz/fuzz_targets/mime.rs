//! Raw RFC 5322 bytes → the email adapter's MIME normalisation, called exactly as the IMAP reader
//! calls it (`parse::parse_message` with the account's `ParseOptions`).
//!
//! Besides "never panics", checks what the router relies on: the envelope keeps the source key,
//! the sender is a plausible lower-cased address, threading ids are clean (no brackets, no
//! whitespace, bounded), a conversation token is a bounded token, and the body is not blown up
//! far beyond the input's size.
#![no_main]

use carebridge_contract::{AccountId, AddressKind, SourceKey, Submission};
use carebridge_email::parse::{ParseOptions, parse_message};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The account's options, as `ImapInbound::new` builds them (a small attachment limit so the
/// "attachment removed" path is reached with small inputs).
fn options() -> &'static ParseOptions {
    static OPTS: OnceLock<ParseOptions> = OnceLock::new();
    OPTS.get_or_init(|| ParseOptions::new("clinic@clinic.test", 64))
}

fn source() -> SourceKey {
    let account: AccountId = "email.clinic".parse().expect("a valid account id");
    SourceKey { account, native_id: "7:42".to_string() }
}

fn is_clean_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 250 && id.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | ','))
}

fuzz_target!(|data: &[u8]| {
    let source = source();
    match parse_message(source.clone(), data.to_vec(), options()) {
        Submission::Message(envelope) => {
            assert_eq!(envelope.source, source, "the source key is kept");
            assert_eq!(envelope.from.kind, AddressKind::Email);
            let from = envelope.from.value.expose();
            assert!(from.contains('@'), "sender has an @");
            assert!(!from.chars().any(|c| c.is_whitespace() || c.is_control()), "sender has no spaces");
            assert!(!from.chars().any(|c| c.is_ascii_uppercase()), "sender is lower-cased");
            if let Some(id) = &envelope.native_message_id {
                assert!(is_clean_id(id), "Message-ID is clean");
            }
            for (i, id) in envelope.references.iter().enumerate() {
                assert!(is_clean_id(id), "reference is clean");
                assert!(!envelope.references[..i].contains(id), "references are de-duplicated");
            }
            if let Some(token) = &envelope.conversation_token {
                assert!(!token.is_empty() && token.len() <= 128, "token is bounded");
                assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b)), "token charset");
            }
            // Decoding can grow text (a Latin-1 byte is two UTF-8 bytes, an invalid byte a
            // three-byte U+FFFD) and each dropped attachment adds a note; nothing should grow it
            // more than that.
            let notes = envelope.body.expose().matches(carebridge_email::parse::ATTACHMENT_REMOVED_NOTE).count();
            let bound = 4 * data.len() + notes * (carebridge_email::parse::ATTACHMENT_REMOVED_NOTE.len() + 2);
            assert!(envelope.body.expose().len() <= bound, "body is bounded by the input's size");
            for a in &envelope.attachments {
                assert!(a.data.expose().len() <= options().max_attachment_bytes, "attachment within the limit");
                assert!(!a.content_type.is_empty(), "attachment has a content type");
            }
        }
        Submission::Malformed { source: s, raw, reason } => {
            assert_eq!(s, source, "the source key is kept");
            assert_eq!(raw.expose().as_slice(), data, "quarantine keeps the exact bytes");
            assert!(!reason.is_empty());
        }
    }
});
