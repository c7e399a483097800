//! Bytes → the Telegram adapter's Bot API update parsing, exactly as the intake does it: UTF-8
//! first (other bytes are quarantined under a hash of themselves), then `parse::parse_update`,
//! which reads `update_id` and decodes teloxide's `Update` from the text.
//!
//! Besides "never panics", checks: the update id is the one `parse::update_id` reads (it decides
//! the getUpdates offset, i.e. the ack); a quarantine reason quotes no input; a submitted draft
//! is a Telegram sender's message with exactly one of `native_message_id` / `edit_of`, a
//! `/start CODE` keeps the code out of the body, and photos respect the size limit when they can.
#![no_main]

use carebridge_contract::{AccountId, AddressKind};
use carebridge_telegram::parse::{Action, ParseOptions, hashed_native_id, parse_update, update_id};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const STAFF_CHAT: i64 = -1001234567890;

fn options() -> &'static ParseOptions {
    static OPTS: OnceLock<ParseOptions> = OnceLock::new();
    OPTS.get_or_init(|| ParseOptions {
        account: "telegram.front_desk".parse::<AccountId>().expect("a valid account id"),
        staff_chat_id: Some(STAFF_CHAT),
        max_attachment_bytes: 1024,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // The intake quarantines it under this id: it must be stable and PHI-free.
        let id = hashed_native_id(data);
        assert!(id.len() == 25 && id.starts_with('x'));
        return;
    };
    let opts = options();
    let parsed = parse_update(text, opts);
    assert_eq!(parsed.update_id, update_id(text), "the offset comes from the same update_id");
    match parsed.action {
        Action::Ignore(reason) => assert!(!reason.is_empty()),
        Action::Malformed { source, reason } => {
            assert_eq!(source.account, opts.account);
            assert!(source.native_id.starts_with('u') || source.native_id.starts_with('x'));
            assert!(reason.is_ascii() && !reason.contains('"'), "reason quotes no input: {reason}");
        }
        Action::Submit(draft) => {
            let id = parsed.update_id.expect("a submitted update has an update_id");
            let e = &draft.envelope;
            assert_eq!(e.source.account, opts.account);
            assert!(e.source.native_id.starts_with(&format!("u{id}-")), "native id is u<update_id>-<date>");
            assert_eq!(e.from.kind, AddressKind::Telegram);
            assert!(e.from.value.expose().parse::<i64>().is_ok(), "sender is a numeric id");
            assert!(e.native_message_id.is_some() != e.edit_of.is_some(), "either a message or an edit");
            if let Some(code) = &e.link_code {
                let body = e.body.expose();
                assert!(body == "/start" || body == "/link", "a link command keeps only the command");
                assert!(code.expose().len() <= 128);
                assert!(e.edit_of.is_none(), "edits never carry link codes");
            }
            assert!(e.references.len() <= 1);
            for f in &draft.files {
                assert!(f.what == "photo" || f.what == "document");
            }
            if e.body.expose().is_empty() && draft.files.is_empty() {
                assert!(!draft.notes.is_empty(), "an empty message gets a note");
            }
        }
    }
});
