//! One raw update (its JSON text) → what to do with it: an [`Envelope`] draft (plus the files to
//! fetch), something to ignore, or malformed input to quarantine.
//!
//! Pure: no network, no clock, no logs, so every mapping rule is unit-tested here. The update is
//! parsed with teloxide's [`Update`] from the *text* (never from a `serde_json::Value`, which
//! teloxide silently turns into `UpdateKind::Error`).
//!
//! Public only so the fuzz target `fuzz/fuzz_targets/bot_update.rs` can call [`parse_update`]
//! exactly as the intake does; nothing else outside the crate should use it.
//!
//! Mapping:
//! - `SourceKey.native_id` = `u<update_id>-<unix date>` (the date of the message, or of the edit):
//!   stable across redelivery, and still unique when Telegram restarts its update ids at a random
//!   number after a week without updates;
//! - `native_message_id` = `<chat_id>:<message_id>`; replies carry
//!   `references = ["<chat_id>:<reply_to_message_id>"]`; edits carry `edit_of` = the original's
//!   native id (and no `native_message_id` of their own, it would be the same);
//! - `from` = `telegram:<user id>` (in a private chat, the chat id), `display_name` = first name;
//! - `/start CODE` or `/link CODE` in a private chat → `link_code`, and the body keeps only the
//!   command, so the code is not stored as message text.

use carebridge_contract::{AccountId, Address, AddressKind, Envelope, Redacted, SourceKey};
use serde::Deserialize;
use std::time::{Duration, SystemTime};
use teloxide::types::{Message, MessageKind, Update, UpdateKind};

/// What the parser needs to know besides the update.
#[derive(Clone, Debug)]
pub struct ParseOptions {
    /// The inbound account (for the `SourceKey`).
    pub account: AccountId,
    /// The only group whose messages are accepted.
    pub staff_chat_id: Option<i64>,
    /// Photos: the largest size at most this big is chosen.
    pub max_attachment_bytes: u64,
}

/// A parsed update.
#[derive(Debug)]
pub struct Parsed {
    /// `update_id`, if the update had one (it decides the getUpdates offset).
    pub update_id: Option<i64>,
    /// What to do with it.
    pub action: Action,
}

/// What the adapter does with an update.
#[derive(Debug)]
pub enum Action {
    /// Submit it (after fetching `files`).
    Submit(Box<Draft>),
    /// Confirm it without submitting (another group, a service message, an update kind we do
    /// not handle). The reason is PHI-free and logged.
    Ignore(&'static str),
    /// Quarantine it: it is not a Telegram update we can read. The reason is PHI-free.
    Malformed {
        /// The dedup key (from `update_id`, or from a hash of the bytes when there is none).
        source: SourceKey,
        /// What was wrong.
        reason: String,
    },
}

/// An envelope still missing its attachments.
#[derive(Debug)]
pub struct Draft {
    /// The envelope; attachments and notes are added by [`crate::intake`].
    pub envelope: Envelope,
    /// Files to download.
    pub files: Vec<FileRef>,
    /// PHI-free notes to append to the body (content that is not forwarded).
    pub notes: Vec<String>,
}

/// A file referenced by a message.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRef {
    /// Telegram's id for getFile.
    pub file_id: String,
    /// Size announced by Telegram, if any.
    pub size: Option<u64>,
    /// The sender's file name (PHI).
    pub filename: Option<Redacted<String>>,
    /// Declared MIME type.
    pub content_type: String,
    /// "photo" or "document", for PHI-free notes and logs.
    pub what: &'static str,
}

#[derive(Deserialize)]
struct Head {
    update_id: i64,
}

/// Reads just the `update_id` of a raw update, for the offset.
pub fn update_id(raw: &str) -> Option<i64> {
    serde_json::from_str::<Head>(raw).ok().map(|h| h.update_id)
}

/// The dedup id of input that has no usable `update_id`: a hash of its bytes.
pub fn hashed_native_id(raw: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(raw);
    format!("x{}", hex::encode(&digest[..12]))
}

/// Parses one raw update.
pub fn parse_update(raw: &str, opts: &ParseOptions) -> Parsed {
    let source = |native_id: String| SourceKey { account: opts.account.clone(), native_id };
    let Some(id) = update_id(raw) else {
        return Parsed {
            update_id: None,
            action: Action::Malformed {
                source: source(hashed_native_id(raw.as_bytes())),
                reason: "not a JSON object with an integer update_id".to_string(),
            },
        };
    };
    let malformed = |reason: String| Parsed {
        update_id: Some(id),
        action: Action::Malformed { source: source(format!("u{id}")), reason },
    };
    let update: Update = match serde_json::from_str(raw) {
        Ok(u) => u,
        // serde's message may quote the offending value: keep only its class and position.
        Err(e) => {
            return malformed(format!(
                "update does not match the Bot API schema ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ));
        }
    };
    let action = match update.kind {
        UpdateKind::Message(m) => message(id, &m, false, opts),
        UpdateKind::EditedMessage(m) => message(id, &m, true, opts),
        UpdateKind::Error(_) => {
            if has_message_key(raw) {
                return malformed("message could not be parsed as a Telegram message".to_string());
            }
            Action::Ignore("update kind not handled")
        }
        _ => Action::Ignore("update kind not handled"),
    };
    Parsed { update_id: Some(id), action }
}

/// True when the update claims to be a (possibly edited) message, so a parse failure means bad
/// input rather than an update kind newer than our types.
fn has_message_key(raw: &str) -> bool {
    #[derive(Deserialize)]
    struct Keys {
        message: Option<serde::de::IgnoredAny>,
        edited_message: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_str::<Keys>(raw).is_ok_and(|k| k.message.is_some() || k.edited_message.is_some())
}

fn message(update_id: i64, m: &Message, is_edit: bool, opts: &ParseOptions) -> Action {
    let chat_id = m.chat.id.0;
    let private = m.chat.is_private();
    if !private && opts.staff_chat_id != Some(chat_id) {
        return Action::Ignore(if m.chat.is_channel() {
            "message from a channel"
        } else {
            "message from a group that is not the staff chat"
        });
    }
    match &m.kind {
        MessageKind::Common(_) => {}
        // teloxide's untagged `MessageKind` falls back to `Empty` when a message's content does
        // not parse: quarantine it rather than lose a patient's message.
        MessageKind::Empty {} => {
            return Action::Malformed {
                source: SourceKey { account: opts.account.clone(), native_id: format!("u{update_id}") },
                reason: "message content could not be parsed as any Telegram message kind".to_string(),
            };
        }
        _ => return Action::Ignore("service message"),
    }

    let when = if is_edit { m.edit_date().copied().unwrap_or(m.date) } else { m.date };
    let unix = when.timestamp();
    let source = SourceKey { account: opts.account.clone(), native_id: format!("u{update_id}-{unix}") };

    let (from, display_name) = match &m.from {
        Some(user) => (user.id.0.to_string(), Some(Redacted::new(user.first_name.clone()))),
        // Anonymous group admins and channel-style senders: the sending chat is all we have.
        None => (m.sender_chat.as_ref().map_or(chat_id, |c| c.id.0).to_string(), None),
    };

    let mut body = m.text().or_else(|| m.caption()).unwrap_or("").to_string();
    let mut link_code = None;
    if private
        && !is_edit
        && let Some((command, code)) = link_command(&body)
    {
        link_code = code.map(|c| Redacted::new(c.to_string()));
        body = command.to_string();
    }

    let mut envelope = Envelope::new(source, Address::new(AddressKind::Telegram, from), body);
    envelope.display_name = display_name;
    envelope.link_code = link_code;
    envelope.received_at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    let own_id = format!("{chat_id}:{}", m.id.0);
    if is_edit {
        envelope.edit_of = Some(own_id);
    } else {
        envelope.native_message_id = Some(own_id);
    }
    if let Some(r) = m.reply_to_message() {
        envelope.references.push(format!("{chat_id}:{}", r.id.0));
    }

    let mut files = Vec::new();
    let mut notes = Vec::new();
    if let Some(sizes) = m.photo() {
        if let Some(f) = pick_photo(sizes, opts.max_attachment_bytes) {
            files.push(f);
        }
    } else if let Some(d) = m.document() {
        files.push(FileRef {
            file_id: d.file.id.0.clone(),
            size: known_size(d.file.size),
            filename: d.file_name.clone().map(Redacted::new),
            content_type: d
                .mime_type
                .as_ref()
                .map_or_else(|| "application/octet-stream".to_string(), |m| m.to_string()),
            what: "document",
        });
    } else if let Some(what) = unsupported_content(m) {
        notes.push(format!("[carebridge: a {what} was not forwarded; this kind of content is not supported]"));
    }
    if envelope.body.expose().is_empty() && files.is_empty() && notes.is_empty() {
        notes.push("[carebridge: the message had no text or content carebridge can forward]".to_string());
    }
    Action::Submit(Box::new(Draft { envelope, files, notes }))
}

/// `/start CODE`, `/link CODE` (also `/start@bot CODE`) → the command and its code, if any.
fn link_command(text: &str) -> Option<(&'static str, Option<&str>)> {
    let mut words = text.split_whitespace();
    let first = words.next()?;
    let command = match first.split('@').next()? {
        "/start" => "/start",
        "/link" => "/link",
        _ => return None,
    };
    let code = words.next().filter(|c| c.len() <= 128);
    Some((command, code))
}

/// Telegram sends every photo in several sizes: take the largest that fits the limit, or the
/// smallest (which the intake will then report as too large).
fn pick_photo(sizes: &[teloxide::types::PhotoSize], max: u64) -> Option<FileRef> {
    let mut by_size: Vec<_> = sizes.iter().collect();
    by_size.sort_by_key(|p| (u64::from(p.width) * u64::from(p.height), known_size(p.file.size)));
    let chosen =
        by_size.iter().rev().find(|p| known_size(p.file.size).is_some_and(|s| s <= max)).or_else(|| by_size.first())?;
    Some(FileRef {
        file_id: chosen.file.id.0.clone(),
        size: known_size(chosen.file.size),
        filename: None,
        content_type: "image/jpeg".to_string(),
        what: "photo",
    })
}

/// teloxide fills a missing `file_size` with `u32::MAX`.
fn known_size(size: u32) -> Option<u64> {
    (size != u32::MAX).then_some(u64::from(size))
}

fn unsupported_content(m: &Message) -> Option<&'static str> {
    let kinds: [(&'static str, bool); 8] = [
        ("voice message", m.voice().is_some()),
        ("video", m.video().is_some()),
        ("audio file", m.audio().is_some()),
        ("animation", m.animation().is_some()),
        ("video note", m.video_note().is_some()),
        ("sticker", m.sticker().is_some()),
        ("contact card", m.contact().is_some()),
        ("location", m.location().is_some()),
    ];
    kinds.iter().find(|(_, present)| *present).map(|(what, _)| *what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts() -> ParseOptions {
        ParseOptions {
            account: "telegram.desk".parse().expect("valid account"),
            staff_chat_id: Some(-100_777),
            max_attachment_bytes: 5_000,
        }
    }

    fn private_msg(extra: serde_json::Value) -> serde_json::Value {
        let mut m = json!({
            "message_id": 7, "date": 1_700_000_000,
            "chat": {"id": 42, "type": "private", "first_name": "Ann"},
            "from": {"id": 42, "is_bot": false, "first_name": "Ann"},
        });
        if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        m
    }

    fn submit(p: Parsed) -> Draft {
        match p.action {
            Action::Submit(d) => *d,
            other => panic!("expected a submission, got {other:?}"),
        }
    }

    #[test]
    fn text_message_maps_to_an_envelope() {
        let raw = json!({"update_id": 1000, "message": private_msg(json!({"text": "hello"}))}).to_string();
        let p = parse_update(&raw, &opts());
        assert_eq!(p.update_id, Some(1000));
        let d = submit(p);
        let e = d.envelope;
        assert_eq!(e.source.native_id, "u1000-1700000000");
        assert_eq!(e.from.key().expose(), "telegram:42");
        assert_eq!(e.display_name.as_ref().map(|n| n.expose().as_str()), Some("Ann"));
        assert_eq!(e.body.expose(), "hello");
        assert_eq!(e.native_message_id.as_deref(), Some("42:7"));
        assert!(e.references.is_empty() && e.edit_of.is_none() && e.link_code.is_none());
        assert_eq!(e.received_at, SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert!(d.files.is_empty() && d.notes.is_empty());
    }

    #[test]
    fn start_and_link_commands_carry_the_code_not_the_body() {
        for (text, command) in
            [("/start AB12-cd", "/start"), ("/link AB12-cd", "/link"), ("/start@clinic_bot AB12-cd", "/start")]
        {
            let raw = json!({"update_id": 1, "message": private_msg(json!({"text": text}))}).to_string();
            let e = submit(parse_update(&raw, &opts())).envelope;
            assert_eq!(e.link_code.as_ref().map(|c| c.expose().as_str()), Some("AB12-cd"), "{text}");
            assert_eq!(e.body.expose(), command);
        }
        let raw = json!({"update_id": 1, "message": private_msg(json!({"text": "/start"}))}).to_string();
        let e = submit(parse_update(&raw, &opts())).envelope;
        assert!(e.link_code.is_none());
        assert_eq!(e.body.expose(), "/start");
    }

    #[test]
    fn edits_and_replies_point_at_the_original() {
        let edited = private_msg(json!({"text": "fixed", "edit_date": 1_700_000_050}));
        let raw = json!({"update_id": 5, "edited_message": edited}).to_string();
        let e = submit(parse_update(&raw, &opts())).envelope;
        assert_eq!(e.edit_of.as_deref(), Some("42:7"));
        assert_eq!(e.native_message_id, None);
        assert_eq!(e.source.native_id, "u5-1700000050");

        let original = private_msg(json!({"text": "first", "message_id": 3}));
        let raw =
            json!({"update_id": 6, "message": private_msg(json!({"text": "again", "reply_to_message": original}))})
                .to_string();
        let e = submit(parse_update(&raw, &opts())).envelope;
        assert_eq!(e.references, vec!["42:3".to_string()]);
    }

    #[test]
    fn staff_group_is_accepted_other_groups_are_ignored() {
        let group = |id: i64| {
            json!({"update_id": 9, "message": {
                "message_id": 11, "date": 1_700_000_000,
                "chat": {"id": id, "type": "supergroup", "title": "Clinic"},
                "from": {"id": 77, "is_bot": false, "first_name": "Dr"},
                "text": "/start SHOULD-NOT-LINK"
            }})
            .to_string()
        };
        let e = submit(parse_update(&group(-100_777), &opts())).envelope;
        assert_eq!(e.from.key().expose(), "telegram:77");
        assert_eq!(e.native_message_id.as_deref(), Some("-100777:11"));
        assert!(e.link_code.is_none(), "link codes are for private chats only");
        let p = parse_update(&group(-100_888), &opts());
        assert!(matches!(p.action, Action::Ignore(_)));
        assert_eq!(p.update_id, Some(9));
    }

    #[test]
    fn photos_pick_the_largest_size_that_fits() {
        let photo = json!([
            {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90, "file_size": 1000},
            {"file_id": "mid", "file_unique_id": "m", "width": 320, "height": 320, "file_size": 4000},
            {"file_id": "big", "file_unique_id": "b", "width": 1280, "height": 1280, "file_size": 90000}
        ]);
        let raw =
            json!({"update_id": 2, "message": private_msg(json!({"photo": photo, "caption": "rash"}))}).to_string();
        let d = submit(parse_update(&raw, &opts()));
        assert_eq!(d.envelope.body.expose(), "rash");
        assert_eq!(d.files.len(), 1);
        assert_eq!(d.files[0].file_id, "mid");
        assert_eq!(d.files[0].what, "photo");
    }

    #[test]
    fn documents_keep_name_and_type() {
        let doc = json!({"file_id": "d1", "file_unique_id": "u", "file_name": "lab.pdf", "mime_type": "application/pdf", "file_size": 10});
        let raw = json!({"update_id": 2, "message": private_msg(json!({"document": doc}))}).to_string();
        let d = submit(parse_update(&raw, &opts()));
        let f = &d.files[0];
        assert_eq!(f.filename.as_ref().map(|n| n.expose().as_str()), Some("lab.pdf"));
        assert_eq!(f.content_type, "application/pdf");
        assert_eq!(f.size, Some(10));
    }

    #[test]
    fn unsupported_content_becomes_a_note() {
        let voice = json!({"file_id": "v", "file_unique_id": "v", "duration": 3, "mime_type": "audio/ogg"});
        let raw = json!({"update_id": 2, "message": private_msg(json!({"voice": voice}))}).to_string();
        let d = submit(parse_update(&raw, &opts()));
        assert_eq!(d.notes.len(), 1);
        assert!(d.notes[0].contains("voice message"));
    }

    #[test]
    fn content_teloxide_cannot_read_is_quarantined_not_dropped() {
        // teloxide needs `mime_type` on voice messages; without it the message becomes `Empty`.
        let voice = json!({"file_id": "v", "file_unique_id": "v", "duration": 3});
        let raw = json!({"update_id": 2, "message": private_msg(json!({"voice": voice}))}).to_string();
        match parse_update(&raw, &opts()).action {
            Action::Malformed { source, .. } => assert_eq!(source.native_id, "u2"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_updates_are_quarantined_with_a_phi_free_reason() {
        // No date: teloxide yields UpdateKind::Error.
        let raw = r#"{"update_id": 12, "message": {"message_id": 1, "chat": {"id": 42, "type": "private"}, "text": "Ann Example"}}"#;
        let p = parse_update(raw, &opts());
        assert_eq!(p.update_id, Some(12));
        match p.action {
            Action::Malformed { source, reason } => {
                assert_eq!(source.native_id, "u12");
                assert!(!reason.contains("Ann"));
            }
            other => panic!("{other:?}"),
        }
        // Wrong types where serde would quote the value.
        let raw = r#"{"update_id": "Ann Example"}"#;
        let p = parse_update(raw, &opts());
        assert_eq!(p.update_id, None);
        match p.action {
            Action::Malformed { source, reason } => {
                assert!(source.native_id.starts_with('x'));
                assert!(!reason.contains("Ann"));
            }
            other => panic!("{other:?}"),
        }
        let p = parse_update("not json", &opts());
        assert!(matches!(p.action, Action::Malformed { .. }));
    }

    #[test]
    fn other_update_kinds_are_ignored() {
        let raw = r#"{"update_id": 3, "some_future_kind": {"x": 1}}"#;
        assert!(matches!(parse_update(raw, &opts()).action, Action::Ignore(_)));
        let raw = json!({"update_id": 4, "message": private_msg(json!({"new_chat_title": "x"}))}).to_string();
        // A private chat cannot have a title change; teloxide still parses it as a service message.
        assert!(matches!(parse_update(&raw, &opts()).action, Action::Ignore(_)));
    }
}
