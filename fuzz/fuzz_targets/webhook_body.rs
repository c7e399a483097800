//! Bytes → the webhook adapter's body parsing (`inbound::parse`: UTF-8, the JSON wire shape of
//! `wire::InboundMessage`, field checks, base64 attachments), called exactly as the listener calls
//! it on an authenticated body, once for each `from_kind`.
//!
//! Besides "never panics", checks: an accepted body keeps its id as both the dedup key and the
//! native message id, and its fields are within the documented bounds; a refused body's reason
//! (sent to the client and logged) does not quote the input: serde_json quotes input strings in
//! `"…"`, and no reason template has a `"` or an `@`.
#![no_main]

use carebridge_contract::AccountId;
use carebridge_webhook::FromKind;
use carebridge_webhook::inbound::parse;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn account() -> &'static AccountId {
    static ACCOUNT: OnceLock<AccountId> = OnceLock::new();
    ACCOUNT.get_or_init(|| "webhook.forms".parse().expect("a valid account id"))
}

fuzz_target!(|data: &[u8]| {
    for kind in [FromKind::Opaque, FromKind::Phone, FromKind::Email] {
        match parse(data, account(), kind) {
            Ok(envelope) => {
                assert_eq!(&envelope.source.account, account());
                let id = &envelope.source.native_id;
                assert!(!id.is_empty() && id.len() <= 200, "id is bounded");
                assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)), "id charset");
                assert_eq!(envelope.native_message_id.as_ref(), Some(id), "the id is the native message id");
                assert_eq!(envelope.from.kind, kind.address_kind());
                assert!(!envelope.from.value.expose().is_empty(), "a sender");
                if let Some(c) = &envelope.conversation_token {
                    assert!(!c.is_empty() && c.len() <= 200 && c.bytes().all(|b| b.is_ascii_graphic()));
                }
                assert!(envelope.references.len() <= 100, "at most 100 references");
                for r in &envelope.references {
                    assert!(!r.is_empty() && r.len() <= 998 && !r.chars().any(char::is_control));
                }
                assert!(
                    !envelope.body.expose().trim().is_empty() || !envelope.attachments.is_empty(),
                    "text or attachments"
                );
                let decoded: usize = envelope.attachments.iter().map(|a| a.data.expose().len()).sum();
                assert!(decoded <= data.len(), "base64 decodes to fewer bytes than the body");
            }
            Err(reason) => {
                assert!(!reason.is_empty() && reason.len() <= 400, "reason is short: {} bytes", reason.len());
                assert!(reason.is_ascii(), "reason is ASCII (never quotes non-ASCII input): {reason}");
                assert!(!reason.contains('"') && !reason.contains('@'), "reason quotes no input: {reason}");
            }
        }
    }
});
