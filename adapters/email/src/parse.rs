//! One raw RFC 5322 message → one [`Submission`]: an [`Envelope`] when it can be understood,
//! [`Submission::Malformed`] (quarantined by the router, then acked) when it cannot or must not
//! be forwarded.
//!
//! - Body: `text/plain` preferred; HTML-only mail converted by [`crate::html`]. mail-parser
//!   decodes charsets; an unknown charset falls back to lossy UTF-8 instead of failing.
//! - Replies (with `In-Reply-To`/`References` or a conversation token) lose quoted text and
//!   signatures ([`crate::quotes`]).
//! - Attachments are kept up to `max_attachment_bytes` each; a larger one is dropped and a
//!   PHI-free note line is added to the body, so staff know something was sent.
//! - Threading: `native_message_id` is the `Message-ID` without angle brackets; `references`
//!   are the `In-Reply-To` then `References` ids, in the same form. Outbound mail reports its own
//!   ids the same way ([`crate::outbound`]), so the router can match them.
//! - `conversation_token`: the `+token` part of a `To`/`Cc`/`Delivered-To`/`X-Original-To`
//!   address whose base is the account's own address.
//!
//! Quarantined rather than forwarded: input with no usable sender, automatic mail
//! (`Auto-Submitted`, bounces, out-of-office replies: they must never reach a patient as if a
//! clinician had answered) and carebridge's own outgoing mail coming back (a mail loop).

use crate::{html, quotes};
use carebridge_contract::{Address, AddressKind, Attachment, Envelope, Redacted, SourceKey, Submission};
use mail_parser::{Addr, HeaderValue, MessageParser, MimeHeaders, PartType};
use std::time::{Duration, SystemTime};

/// The header carebridge puts on every message it sends (value: the delivery id), so its own mail
/// is recognised if it ever comes back into a watched mailbox.
pub const DELIVERY_HEADER: &str = "X-Carebridge-Delivery";

/// The note added to the body for each attachment dropped for size. PHI-free on purpose: no
/// file name.
pub const ATTACHMENT_REMOVED_NOTE: &str = "[attachment removed: over size limit]";

/// What parsing needs to know about the account.
#[derive(Clone, Debug)]
pub struct ParseOptions {
    /// The local part of the account's `address`, lower-cased (`clinic`).
    pub local: String,
    /// The domain of the account's `address`, lower-cased (`clinic.test`).
    pub domain: String,
    /// Attachments larger than this are dropped with a note.
    pub max_attachment_bytes: usize,
}

impl ParseOptions {
    /// Options for the account `address` (which `Config::validate` has checked).
    pub fn new(address: &str, max_attachment_bytes: usize) -> Self {
        let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
        Self { local: local.to_ascii_lowercase(), domain: domain.to_ascii_lowercase(), max_attachment_bytes }
    }
}

/// Turns raw message bytes into what the router is given. Never panics on any input.
pub fn parse_message(source: SourceKey, raw: Vec<u8>, opts: &ParseOptions) -> Submission {
    match build_envelope(source.clone(), &raw, opts) {
        Ok(envelope) => Submission::Message(envelope),
        Err(reason) => Submission::Malformed { source, raw: Redacted::new(raw), reason: reason.to_string() },
    }
}

/// A message too large to download: its headers are quarantined with the size in the reason.
pub fn oversized_message(source: SourceKey, headers: Vec<u8>, size: u64, limit: u64) -> Submission {
    Submission::Malformed {
        source,
        raw: Redacted::new(headers),
        reason: format!("message of {size} bytes is over the {limit}-byte limit; only its headers were kept"),
    }
}

fn build_envelope(source: SourceKey, raw: &[u8], opts: &ParseOptions) -> Result<Envelope, &'static str> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("empty message");
    }
    let msg = MessageParser::default().parse(raw).ok_or("not a parsable MIME message")?;
    if msg.parts.first().is_none_or(|root| root.headers.is_empty()) {
        return Err("no message headers");
    }
    if header_text(&msg, DELIVERY_HEADER).is_some() {
        return Err("carebridge's own outgoing message came back (mail loop)");
    }
    if is_automatic(&msg) {
        return Err("automatic message (auto-reply, bounce or auto-generated); not forwarded");
    }

    let sender = msg.from().and_then(|a| a.iter().find(|a| a.address().is_some_and(is_plausible_address)));
    let Some(sender) = sender else {
        return Err("no usable sender address in From");
    };
    let from = Address::new(AddressKind::Email, sender.address().unwrap_or_default());

    let native_message_id = msg.message_id().and_then(clean_id);
    let mut references: Vec<String> = Vec::new();
    for id in header_ids(msg.in_reply_to()).chain(header_ids(msg.references())) {
        if !references.contains(&id) {
            references.push(id);
        }
    }
    let conversation_token = find_token(&msg, opts);

    let mut body = body_text(&msg);
    let is_reply = !references.is_empty() || conversation_token.is_some();
    if is_reply {
        body = quotes::strip_quoted(&body);
    }

    let mut attachments = Vec::new();
    let mut removed = 0usize;
    for part in msg.attachments() {
        let data = part.contents();
        if data.len() > opts.max_attachment_bytes {
            removed += 1;
            continue;
        }
        let content_type = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_string(),
            })
            .map(|ct| ct.to_ascii_lowercase())
            .unwrap_or_else(|| match part.body {
                PartType::Message(_) => "message/rfc822".to_string(),
                PartType::Text(_) => "text/plain".to_string(),
                PartType::Html(_) => "text/html".to_string(),
                _ => "application/octet-stream".to_string(),
            });
        attachments.push(Attachment {
            filename: part.attachment_name().map(|n| Redacted::new(n.to_string())),
            content_type,
            data: Redacted::new(data.to_vec()),
        });
    }
    for _ in 0..removed {
        if !body.is_empty() {
            body.push_str("\n\n");
        }
        body.push_str(ATTACHMENT_REMOVED_NOTE);
    }

    let received_at = msg
        .date()
        .filter(|d| d.is_valid())
        .map(|d| d.to_timestamp())
        .filter(|&t| t > 0)
        .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t as u64))
        .unwrap_or_else(SystemTime::now);

    let mut envelope = Envelope::new(source, from, body);
    envelope.display_name =
        sender.name().map(str::trim).filter(|n| !n.is_empty()).map(|n| Redacted::new(n.to_string()));
    envelope.subject = msg.subject().map(|s| Redacted::new(s.to_string()));
    envelope.attachments = attachments;
    envelope.native_message_id = native_message_id;
    envelope.references = references;
    envelope.conversation_token = conversation_token;
    envelope.received_at = received_at;
    Ok(envelope)
}

/// The readable body: every text body part, HTML ones converted.
fn body_text(msg: &mail_parser::Message<'_>) -> String {
    let mut pieces: Vec<String> = Vec::new();
    for part in msg.text_bodies() {
        let text = match &part.body {
            PartType::Text(t) => t.replace("\r\n", "\n"),
            PartType::Html(h) => html::html_to_text(h),
            _ => continue,
        };
        let text = text.trim_end().to_string();
        if !text.is_empty() {
            pieces.push(text);
        }
    }
    pieces.join("\n\n")
}

/// RFC 3834 `Auto-Submitted` other than `no`, delivery reports (bounces), and the common
/// vacation-responder markers.
fn is_automatic(msg: &mail_parser::Message<'_>) -> bool {
    if let Some(v) = header_text(msg, "Auto-Submitted")
        && !v.trim().eq_ignore_ascii_case("no")
    {
        return true;
    }
    if msg.is_content_type("multipart", "report") {
        return true;
    }
    if header_text(msg, "X-Autoreply").is_some() || header_text(msg, "X-Autorespond").is_some() {
        return true;
    }
    header_text(msg, "Precedence").is_some_and(|v| v.trim().eq_ignore_ascii_case("auto_reply"))
}

/// The raw text of the first top-level header named `name` (case-insensitive).
fn header_text<'a>(msg: &'a mail_parser::Message<'_>, name: &'a str) -> Option<&'a str> {
    header_texts(msg, name).next()
}

fn header_texts<'a>(msg: &'a mail_parser::Message<'_>, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let raw = msg.raw_message();
    msg.parts
        .first()
        .map(|root| root.headers.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(move |h| h.name.as_str().eq_ignore_ascii_case(name))
        .filter_map(move |h| raw.get(h.offset_start as usize..h.offset_end as usize))
        .filter_map(|bytes| std::str::from_utf8(bytes).ok())
        .map(str::trim)
}

/// Message ids from an `In-Reply-To`/`References` value, without angle brackets.
fn header_ids<'a>(value: &'a HeaderValue<'_>) -> Box<dyn Iterator<Item = String> + 'a> {
    match value {
        HeaderValue::Text(t) => Box::new(t.split_whitespace().filter_map(clean_id)),
        HeaderValue::TextList(list) => Box::new(list.iter().flat_map(|t| t.split_whitespace()).filter_map(clean_id)),
        _ => Box::new(std::iter::empty()),
    }
}

/// A message id as the router stores it: no angle brackets, no whitespace or control characters,
/// bounded length. Anything else is dropped rather than passed on.
pub fn clean_id(id: &str) -> Option<String> {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>').trim();
    let ok = !id.is_empty()
        && id.len() <= 250
        && id.chars().all(|c| c.is_ascii_graphic() && c != '<' && c != '>' && c != ',');
    ok.then(|| id.to_string())
}

fn is_plausible_address(a: &str) -> bool {
    match a.trim().rsplit_once('@') {
        Some((l, d)) => !l.is_empty() && !d.is_empty() && !a.chars().any(|c| c.is_whitespace() || c.is_control()),
        None => false,
    }
}

/// The conversation token from a `local+token@domain` recipient matching the account address.
fn find_token(msg: &mail_parser::Message<'_>, opts: &ParseOptions) -> Option<String> {
    let from_headers = msg
        .all_to()
        .chain(msg.all_cc())
        .flat_map(|a| a.iter())
        .filter_map(Addr::address)
        .map(str::to_string)
        .collect::<Vec<_>>();
    let delivered = header_texts(msg, "Delivered-To")
        .chain(header_texts(msg, "X-Original-To"))
        .map(|v| v.trim_start_matches('<').trim_end_matches('>').to_string());
    from_headers.into_iter().chain(delivered).find_map(|addr| token_of(&addr, opts))
}

fn token_of(addr: &str, opts: &ParseOptions) -> Option<String> {
    let (local, domain) = addr.trim().rsplit_once('@')?;
    if !domain.eq_ignore_ascii_case(&opts.domain) {
        return None;
    }
    let (base, token) = local.split_once('+')?;
    let ok = base.eq_ignore_ascii_case(&opts.local)
        && !token.is_empty()
        && token.len() <= 128
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'=');
    ok.then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ParseOptions {
        ParseOptions::new("clinic@clinic.test", 1024)
    }

    fn source() -> SourceKey {
        SourceKey { account: "email.clinic".parse().expect("account id"), native_id: "7:42".into() }
    }

    fn parse(raw: &str) -> Submission {
        parse_message(source(), raw.as_bytes().to_vec(), &opts())
    }

    fn envelope(raw: &str) -> Envelope {
        match parse(raw) {
            Submission::Message(e) => e,
            Submission::Malformed { reason, .. } => panic!("unexpectedly malformed: {reason}"),
        }
    }

    fn malformed_reason(raw: &[u8]) -> String {
        match parse_message(source(), raw.to_vec(), &opts()) {
            Submission::Malformed { reason, raw: kept, .. } => {
                assert_eq!(kept.expose().as_slice(), raw, "raw bytes are kept as received");
                reason
            }
            Submission::Message(_) => panic!("expected malformed"),
        }
    }

    #[test]
    fn a_plain_message_becomes_an_envelope() {
        let e = envelope(
            "From: \"Ann Example\" <Ann@Patients.TEST>\r\nTo: clinic@clinic.test\r\nSubject: My knee\r\n\
             Message-ID: <abc.123@patients.test>\r\nDate: Mon, 3 Feb 2025 10:00:00 +0000\r\n\r\n\
             It still hurts.\r\n\r\n-- \r\nAnn\r\n",
        );
        assert_eq!(e.from.key().expose(), "email:ann@patients.test");
        assert_eq!(e.display_name.as_ref().map(|n| n.expose().as_str()), Some("Ann Example"));
        assert_eq!(e.subject.as_ref().map(|s| s.expose().as_str()), Some("My knee"));
        // Not a reply: kept whole, signature included.
        assert_eq!(e.body.expose(), "It still hurts.\n\n-- \nAnn");
        assert_eq!(e.native_message_id.as_deref(), Some("abc.123@patients.test"));
        assert!(e.references.is_empty());
        assert_eq!(e.conversation_token, None);
        assert_eq!(e.source, source());
        assert_eq!(e.received_at, SystemTime::UNIX_EPOCH + Duration::from_secs(1_738_576_800));
    }

    #[test]
    fn a_reply_carries_token_and_references_and_loses_its_quote() {
        let e = envelope(
            "From: Dr Lee <dr.lee@clinic.test>\r\nTo: \"Clinic\" <Clinic+Tok_9-x@CLINIC.test>\r\n\
             Subject: Re: New patient message\r\nMessage-ID: <r1@clinic.test>\r\n\
             In-Reply-To: <carebridge.dlv-0000000042.clinic@clinic.test>\r\n\
             References: <p0@patients.test> <carebridge.dlv-0000000042.clinic@clinic.test>\r\n\r\n\
             Rest and ice.\r\n\r\nOn Mon, Clinic wrote:\r\n> Patient: p-1\r\n> It still hurts.\r\n",
        );
        assert_eq!(e.conversation_token.as_deref(), Some("Tok_9-x"));
        assert_eq!(e.references, vec!["carebridge.dlv-0000000042.clinic@clinic.test", "p0@patients.test"]);
        assert_eq!(e.body.expose(), "Rest and ice.");
    }

    #[test]
    fn the_token_is_found_in_cc_or_delivered_to_and_only_for_our_address() {
        let cc = envelope("From: a@x.test\r\nTo: b@x.test\r\nCc: clinic+t1@clinic.test\r\n\r\nhi\r\n");
        assert_eq!(cc.conversation_token.as_deref(), Some("t1"));
        let dt = envelope(
            "Delivered-To: clinic+t2@clinic.test\r\nFrom: a@x.test\r\nTo: undisclosed-recipients:;\r\n\r\nhi\r\n",
        );
        assert_eq!(dt.conversation_token.as_deref(), Some("t2"));
        for other in
            ["other+t3@clinic.test", "clinic+t3@elsewhere.test", "clinic+@clinic.test", "clinic+a b@clinic.test"]
        {
            let e = envelope(&format!("From: a@x.test\r\nTo: {other}\r\n\r\nhi\r\n"));
            assert_eq!(e.conversation_token, None, "{other}");
        }
    }

    #[test]
    fn html_only_mail_is_converted_and_blockquotes_stripped_in_replies() {
        let e = envelope(
            "From: a@x.test\r\nTo: clinic+t@clinic.test\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
             <html><head><style>p{}</style></head><body><p>Yes &amp; thanks</p>\
             <div class=gmail_quote>On Mon, X wrote:<blockquote><p>old</p></blockquote></div></body></html>\r\n",
        );
        assert_eq!(e.body.expose(), "Yes & thanks");
    }

    #[test]
    fn text_plain_is_preferred_over_html() {
        let e = envelope(
            "From: a@x.test\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\nplain version\r\n--b\r\n\
             Content-Type: text/html; charset=utf-8\r\n\r\n<p>html version</p>\r\n--b--\r\n",
        );
        assert_eq!(e.body.expose(), "plain version");
        assert!(e.attachments.is_empty());
    }

    #[test]
    fn charsets_are_decoded_and_unknown_ones_fall_back_to_lossy() {
        let latin1 = b"From: a@x.test\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nCaf\xe9\r\n";
        match parse_message(source(), latin1.to_vec(), &opts()) {
            Submission::Message(e) => assert_eq!(e.body.expose(), "Café"),
            other => panic!("{other:?}"),
        }
        let unknown = b"From: a@x.test\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\nab\xff\xfecd\r\n";
        match parse_message(source(), unknown.to_vec(), &opts()) {
            Submission::Message(e) => assert_eq!(e.body.expose(), "ab\u{fffd}\u{fffd}cd"),
            other => panic!("{other:?}"),
        }
        let encoded_subject = envelope("From: a@x.test\r\nSubject: =?utf-8?q?R=C3=A9sultats?=\r\n\r\nx\r\n");
        assert_eq!(encoded_subject.subject.as_ref().map(|s| s.expose().as_str()), Some("Résultats"));
    }

    #[test]
    fn attachments_are_kept_up_to_the_limit_and_noted_when_dropped() {
        let small = "QUJD"; // "ABC"
        let big = "QUFB".repeat(400); // 1200 bytes decoded, over the 1024-byte limit
        let e = envelope(&format!(
            "From: a@x.test\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
             Content-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\n\
             Content-Type: image/png; name=\"rash.png\"\r\nContent-Disposition: attachment; filename=\"rash.png\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{small}\r\n--b\r\n\
             Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{big}\r\n--b--\r\n"
        ));
        assert_eq!(e.attachments.len(), 1);
        let a = &e.attachments[0];
        assert_eq!(a.content_type, "image/png");
        assert_eq!(a.filename.as_ref().map(|f| f.expose().as_str()), Some("rash.png"));
        assert_eq!(a.data.expose().as_slice(), b"ABC");
        assert_eq!(*e.body.expose(), format!("See attached.\n\n{ATTACHMENT_REMOVED_NOTE}"));
    }

    #[test]
    fn unusable_or_automatic_input_is_malformed_with_a_phi_free_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty message"),
            (b"\x00\x01\x02 binary junk without headers", "no"),
            (b"Subject: no sender\r\n\r\nbody\r\n", "no usable sender"),
            (b"From: not an address\r\n\r\nbody\r\n", "no usable sender"),
            (b"From: a@x.test\r\nAuto-Submitted: auto-replied\r\n\r\nI am away\r\n", "automatic"),
            (b"From: a@x.test\r\nX-Autoreply: yes\r\n\r\nI am away\r\n", "automatic"),
            (
                b"From: MAILER-DAEMON@x.test\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n\r\nbounce\r\n--b--\r\n",
                "automatic",
            ),
            (b"From: clinic@clinic.test\r\nX-Carebridge-Delivery: dlv-0000000001\r\n\r\nx\r\n", "mail loop"),
        ];
        for (raw, want) in cases {
            let reason = malformed_reason(raw);
            assert!(reason.contains(want), "{raw:?}: {reason}");
            assert!(!reason.contains("x.test") && !reason.contains("away"), "reason must be PHI-free: {reason}");
        }
        // Auto-Submitted: no is an ordinary message.
        let e = envelope("From: a@x.test\r\nAuto-Submitted: no\r\n\r\nhello\r\n");
        assert_eq!(e.body.expose(), "hello");
    }

    #[test]
    fn ids_are_cleaned() {
        assert_eq!(clean_id("<a@b>").as_deref(), Some("a@b"));
        assert_eq!(clean_id("  a@b ").as_deref(), Some("a@b"));
        assert_eq!(clean_id("<a b@c>"), None);
        assert_eq!(clean_id("<>"), None);
        assert_eq!(clean_id("a\r\nBcc: x@y"), None);
    }
}
