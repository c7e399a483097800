//! The JSON shapes on the wire, in both directions, and a PHI-free description of JSON errors.
//!
//! Inbound shapes borrow from the request body where that saves a copy (the base64 of an
//! attachment is decoded straight from the body). Outbound shapes borrow from the [`Delivery`]
//! and base64-encode attachments while serializing, so a send builds exactly one buffer.

use base64::Engine as _;
use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD;
use carebridge_contract::{Address, AddressKind, Attachment, Delivery, DeliveryKind};
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;

/// The body a client POSTs to the inbound path. Unknown fields are refused, so a misspelt
/// optional field (`conversaton`) is an error rather than a silently new conversation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundMessage<'a> {
    /// The client's unique id for this message: the dedup key (1-200 of `A-Za-z0-9._:-`).
    /// Resending the same id is answered `duplicate` with the first record id.
    pub id: String,
    /// The sender's address, interpreted per the account's `from_kind`.
    pub from: String,
    /// The message text (may be empty when there are attachments).
    pub text: String,
    /// The sender's name as the client knows it.
    #[serde(default)]
    pub display_name: Option<String>,
    /// The conversation token of an earlier delivery this message continues.
    #[serde(default)]
    pub conversation: Option<String>,
    /// Ids of earlier messages this one answers (ids returned to the client or sent to it).
    #[serde(default)]
    pub in_reply_to: Option<Vec<String>>,
    /// Files, base64-encoded.
    #[serde(default, borrow)]
    pub attachments: Option<Vec<InboundAttachment<'a>>>,
}

/// One attachment of an [`InboundMessage`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundAttachment<'a> {
    /// The sender's file name.
    #[serde(default)]
    pub filename: Option<String>,
    /// The declared MIME type.
    pub content_type: String,
    /// The bytes, standard base64 with padding (RFC 4648 §4).
    #[serde(borrow)]
    pub data_base64: Cow<'a, str>,
}

impl InboundAttachment<'_> {
    /// Decodes the attachment, or says (PHI-free) why it cannot be.
    pub fn decode(self, index: usize) -> Result<Attachment, String> {
        if self.content_type.trim().is_empty() {
            return Err(format!("attachments[{index}].content_type is empty"));
        }
        let data = STANDARD
            .decode(self.data_base64.as_bytes())
            .map_err(|e| format!("attachments[{index}].data_base64 is not valid base64: {}", base64_error_kind(&e)))?;
        Ok(Attachment { filename: self.filename.map(Into::into), content_type: self.content_type, data: data.into() })
    }
}

/// The category of a base64 error without the offending byte (which is input).
fn base64_error_kind(e: &base64::DecodeError) -> String {
    match e {
        base64::DecodeError::InvalidByte(offset, _) => {
            format!("invalid character at offset {offset}")
        }
        base64::DecodeError::InvalidLength(_) => "invalid length".into(),
        base64::DecodeError::InvalidLastSymbol(offset, _) => {
            format!("invalid last symbol at offset {offset}")
        }
        base64::DecodeError::InvalidPadding => "invalid padding".into(),
    }
}

/// What the inbound path answers on 202.
#[derive(Debug, Serialize, Deserialize)]
pub struct Accepted {
    /// `recorded` (new) or `duplicate` (this id was recorded before).
    pub status: String,
    /// The record's id (`rec-0000000042`).
    pub record_id: String,
}

/// What every error answer carries.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, PHI-free.
    pub error: String,
    /// For authenticated but malformed input: where it was quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_id: Option<String>,
}

/// The body carebridge POSTs to an outbound URL.
#[derive(Debug, Serialize)]
pub struct OutboundMessage<'a> {
    /// The delivery id, also sent as `Idempotency-Key`: stable across retries.
    pub delivery_id: String,
    /// The exchange this delivery belongs to.
    pub record_id: String,
    /// `forward`, `reply` or `notice`.
    pub kind: DeliveryKind,
    /// The conversation token; send it back as `conversation` to continue the conversation.
    pub conversation: &'a str,
    /// The recipient, or `null` for the receiver's own default destination.
    pub to: Option<WireAddress<'a>>,
    /// The directory's patient id (forwards to staff only).
    pub patient_id: Option<&'a str>,
    /// A display label for who wrote the message.
    pub sender: Option<&'a str>,
    /// A subject line, where the route has one.
    pub subject: Option<&'a str>,
    /// The message text.
    pub text: &'a str,
    /// Files, base64-encoded.
    pub attachments: Vec<OutboundAttachment<'a>>,
    /// Native ids this message answers.
    pub in_reply_to: &'a [String],
    /// The account the message was meant to go by, when the privacy policy rerouted it to this
    /// one (`"webhook.sms"`: the patient wrote by SMS, the answer may not go back that way).
    /// Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerouted_from: Option<String>,
}

impl<'a> OutboundMessage<'a> {
    /// Borrows a delivery's fields into the wire shape.
    pub fn from_delivery(d: &'a Delivery) -> Self {
        Self {
            delivery_id: d.id.to_string(),
            record_id: d.record_id.to_string(),
            kind: d.kind,
            conversation: d.conversation.expose(),
            to: d.to.as_ref().map(WireAddress::from),
            patient_id: d.patient_id.as_ref().map(|p| p.expose().as_str()),
            sender: d.sender_label.as_ref().map(|s| s.expose().as_str()),
            subject: d.subject.as_deref(),
            text: d.body.expose(),
            attachments: d.attachments.iter().map(OutboundAttachment::from).collect(),
            in_reply_to: &d.in_reply_to,
            rerouted_from: d.rerouted_from.as_ref().map(ToString::to_string),
        }
    }
}

/// An address on the wire: `{"kind":"phone","value":"+14165550199"}`.
#[derive(Debug, Serialize)]
pub struct WireAddress<'a> {
    /// `email`, `telegram`, `phone` or `opaque`.
    pub kind: AddressKind,
    /// The normalised address.
    pub value: &'a str,
}

impl<'a> From<&'a Address> for WireAddress<'a> {
    fn from(a: &'a Address) -> Self {
        Self { kind: a.kind, value: a.value.expose() }
    }
}

/// An attachment on the wire, base64-encoded as it is serialized.
#[derive(Debug, Serialize)]
pub struct OutboundAttachment<'a> {
    /// The file name, if any.
    pub filename: Option<&'a str>,
    /// The MIME type.
    pub content_type: &'a str,
    /// The bytes, standard base64 with padding.
    #[serde(serialize_with = "as_base64")]
    pub data_base64: &'a [u8],
}

impl<'a> From<&'a Attachment> for OutboundAttachment<'a> {
    fn from(a: &'a Attachment) -> Self {
        Self {
            filename: a.filename.as_ref().map(|f| f.expose().as_str()),
            content_type: &a.content_type,
            data_base64: a.data.expose(),
        }
    }
}

fn as_base64<S: Serializer>(data: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Base64Display::new(data, &STANDARD))
}

/// The part of a receiver's 2xx answer we read: an optional string `id`, its own id for the
/// message (returned in `Sent::native_ids` so a reply referencing it finds the conversation).
#[derive(Debug, Deserialize)]
pub struct RemoteAck {
    /// Anything; only a string is used.
    #[serde(default)]
    pub id: Option<serde_json::Value>,
}

/// Describes a JSON error for the client and the logs without echoing input.
///
/// serde_json's syntax messages are fixed texts (`expected value at line 1 column 1`), so they
/// are kept. Its data messages can quote input (`invalid type: string "Ann…", expected …`), so
/// only their category, the schema's side (`missing field \`from\``, `expected a string`) and
/// the position are kept.
pub fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => format!("body is not valid JSON: {e}"),
        Category::Io => "body could not be read".to_string(),
        Category::Data => {
            let text = e.to_string();
            let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(m, _)| m);
            let what = describe_data_error(message);
            if e.line() == 0 {
                format!("body is not a valid message: {what}")
            } else {
                format!("body is not a valid message: {what} at line {} column {}", e.line(), e.column())
            }
        }
    }
}

/// Keeps the schema-side part of a serde data error message.
fn describe_data_error(message: &str) -> String {
    // Field names in these two come from our own struct (`&'static str`), not from input.
    for prefix in ["missing field `", "duplicate field `"] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((field, _)) = rest.split_once('`')
        {
            return format!("{prefix}{field}`");
        }
    }
    // These quote the input first and the schema last (", expected <what we wanted>"); the
    // schema's text contains no ", expected ", so the last occurrence splits them.
    for category in ["invalid type", "invalid value", "invalid length", "unknown field", "unknown variant"] {
        if message.starts_with(category) {
            return match message.rsplit_once(", expected ") {
                Some((_, expected)) => format!("{category}, expected {expected}"),
                None => category.to_string(),
            };
        }
    }
    "does not match the message format".to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        match serde_json::from_str::<InboundMessage<'_>>(json) {
            Ok(m) => panic!("parsed: {m:?}"),
            Err(e) => describe_json_error(&e),
        }
    }

    #[test]
    fn json_errors_keep_category_and_position_but_no_input() {
        assert_eq!(err("Ann Example"), "body is not valid JSON: expected value at line 1 column 1");
        assert_eq!(
            err(r#"{"id":"a","from":"x""#),
            "body is not valid JSON: EOF while parsing an object at line 1 column 20"
        );
        assert_eq!(
            err(r#"{"id":"a","from":"Ann Example"}"#),
            "body is not a valid message: missing field `text` at line 1 column 31"
        );
        let e = err(r#"{"id":"a","from":"x","text":["Ann Example at line 9"]}"#);
        assert_eq!(e, "body is not a valid message: invalid type, expected a string at line 1 column 28");
        let e = err(r#"{"id":"a","from":"x","text":"t","Ann_Example, expected ":1}"#);
        assert!(e.starts_with("body is not a valid message: unknown field, expected one of `id`"), "{e}");
        assert!(!e.contains("Ann"), "{e}");
        let e = err(r#"{"id":"a","from":"x","text":"t","attachments":[{"content_type":"a","data_base64":7}]}"#);
        assert_eq!(e, "body is not a valid message: invalid type, expected a string at line 1 column 82");
    }

    #[test]
    fn escaped_base64_still_parses() {
        let m: InboundMessage<'_> = match serde_json::from_str(
            r#"{"id":"a","from":"x","text":"t","attachments":[{"content_type":"text/plain","data_base64":"aGk\u003d"}]}"#,
        ) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        let a = m.attachments.into_iter().flatten().next().map(|a| a.decode(0));
        assert_eq!(a.map(|a| a.map(|a| a.data.into_inner())), Some(Ok(b"hi".to_vec())));
    }

    #[test]
    fn base64_errors_do_not_echo_input() {
        let a = InboundAttachment { filename: None, content_type: "x/y".into(), data_base64: "Zm9v!!!".into() };
        assert_eq!(
            a.decode(2).unwrap_err(),
            "attachments[2].data_base64 is not valid base64: invalid character at offset 4"
        );
    }
}
