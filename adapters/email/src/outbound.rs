//! Sending over SMTP with lettre (async, Tokio).
//!
//! Each delivery becomes one message:
//! - `From: "<display_name>" <local+<token>@domain>`: the conversation token rides in the
//!   address, so a reply from any mail client carries it back (see `parse`);
//! - `Message-ID: <carebridge.dlv-0000000042.<account>@domain>`: derived from the delivery id, so
//!   a resend after a lost answer is recognisably the same message; reported in
//!   [`Sent::native_ids`] without angle brackets, the form inbound uses for `references`;
//! - `In-Reply-To`/`References` from `delivery.in_reply_to` (oldest first; the last is the parent);
//! - a subject from config (PHI-free), never from the message;
//! - a `text/plain; charset=utf-8` body (for staff forwards, a short header block first) and
//!   the attachments as MIME parts.
//!
//! SMTP 4xx answers, timeouts and connection problems are [`SendError::Retry`]; 5xx answers are
//! [`SendError::Permanent`]. Reasons carry the code and a category, never addresses or text.

use crate::config::{Config, SmtpConfig, TlsMode};
use crate::parse::{DELIVERY_HEADER, clean_id};
use carebridge_contract::config::ConfigError;
use carebridge_contract::{AccountId, AdapterError, AddressKind, Delivery, DeliveryKind, Outbound, SendError, Sent};
use futures::future::BoxFuture;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::Tls;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;
use tracing::{debug, warn};

/// One account's SMTP sender. Cheap to share: lettre pools its connections.
pub struct SmtpOutbound {
    account: AccountId,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    local: String,
    domain: String,
    display_name: Option<String>,
    forward_to: Option<String>,
    subject_forward: String,
    subject_reply: String,
    subject_notice: String,
}

impl std::fmt::Debug for SmtpOutbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpOutbound").field("account", &self.account).finish_non_exhaustive()
    }
}

impl SmtpOutbound {
    /// Builds the sender: loads the password and CA file (I/O), but does not connect.
    pub(crate) fn new(
        account: AccountId,
        cfg: &Config,
        smtp: &SmtpConfig,
        config_dir: &std::path::Path,
    ) -> Result<Self, AdapterError> {
        let (local, domain) = crate::config::split_address(&cfg.address)
            .ok_or_else(|| ConfigError::Value { key: "address".into(), reason: "not a valid email address".into() })?;
        let tls_name = smtp.tls_name.as_deref().unwrap_or(&smtp.host);
        let ca_pem = match &smtp.ca_file {
            Some(path) => {
                let path = config_dir.join(path);
                // Parse once with rustls-pemfile for a clear error, then hand lettre the PEM.
                crate::tls::read_ca_file(&path)?;
                Some(std::fs::read(&path).map_err(|e| ConfigError::Unreadable {
                    what: "ca_file",
                    path: path.clone(),
                    kind: e.kind(),
                })?)
            }
            None => None,
        };
        let tls = match smtp.tls {
            TlsMode::Implicit => Tls::Wrapper(crate::tls::smtp_parameters(tls_name, ca_pem.as_deref())?),
            TlsMode::Starttls => Tls::Required(crate::tls::smtp_parameters(tls_name, ca_pem.as_deref())?),
            TlsMode::Plain => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
            .port(smtp.port())
            .tls(tls)
            .timeout(Some(Duration::from_secs(smtp.timeout_secs)));
        if let Some(user) = &smtp.username {
            let password =
                carebridge_contract::config::load_secret(&smtp.password_env, &smtp.password_file, config_dir)?
                    .ok_or_else(|| ConfigError::Missing {
                        what: "smtp password_env or password_file (with a username)".into(),
                    })?;
            builder = builder.credentials(Credentials::new(user.clone(), password.into_inner()));
        }
        Ok(Self {
            account,
            transport: builder.build(),
            local: local.to_string(),
            domain: domain.to_string(),
            display_name: cfg.display_name.clone(),
            forward_to: cfg.forward_to.clone(),
            subject_forward: cfg.subject_forward.clone(),
            subject_reply: cfg.subject_reply.clone(),
            subject_notice: cfg.subject_notice.clone(),
        })
    }

    /// The Message-ID (without angle brackets) a delivery is sent with: stable across resends.
    pub fn message_id_for(&self, delivery: &Delivery) -> String {
        format!("carebridge.{}.{}@{}", delivery.id, self.account.name(), self.domain)
    }

    fn sender_mailbox(&self, token: &str) -> Result<Mailbox, SendError> {
        let local = if token.is_empty() {
            self.local.clone()
        } else if is_token_safe(token) {
            format!("{}+{}", self.local, token)
        } else {
            // The router's tokens are URL-safe; anything else cannot go in an address.
            warn!(account = %self.account, "Conversation token is not address-safe; sending without it.");
            self.local.clone()
        };
        let address = lettre::Address::new(local, &self.domain)
            .map_err(|_| SendError::permanent("configured sender address is invalid"))?;
        Ok(Mailbox::new(self.display_name.clone(), address))
    }

    fn recipient(&self, delivery: &Delivery) -> Result<Mailbox, SendError> {
        let value = match &delivery.to {
            Some(addr) if addr.kind == AddressKind::Email => addr.value.expose().clone(),
            Some(_) => return Err(SendError::permanent("recipient is not an email address")),
            None => self
                .forward_to
                .clone()
                .ok_or_else(|| SendError::permanent("delivery has no recipient and `forward_to` is not set"))?,
        };
        let address: lettre::Address =
            value.trim().parse().map_err(|_| SendError::permanent("recipient email address is invalid"))?;
        Ok(Mailbox::new(None, address))
    }

    /// Builds the full message for a delivery (public for tests and `check-config` previews).
    pub fn build_message(&self, delivery: &Delivery) -> Result<Message, SendError> {
        let subject = delivery.subject.clone().unwrap_or_else(|| match delivery.kind {
            DeliveryKind::Forward => self.subject_forward.clone(),
            DeliveryKind::Reply => self.subject_reply.clone(),
            DeliveryKind::Notice => self.subject_notice.clone(),
        });
        let subject: String = subject.chars().filter(|c| !c.is_control()).collect();
        let mut builder = Message::builder()
            .from(self.sender_mailbox(delivery.conversation.expose())?)
            .to(self.recipient(delivery)?)
            .subject(subject)
            .message_id(Some(format!("<{}>", self.message_id_for(delivery))))
            .date_now()
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str(DELIVERY_HEADER), delivery.id.to_string()));
        let ids: Vec<String> = delivery.in_reply_to.iter().filter_map(|id| clean_id(id)).collect();
        if let Some(parent) = ids.last() {
            builder = builder
                .in_reply_to(format!("<{parent}>"))
                .references(ids.iter().map(|id| format!("<{id}>")).collect::<Vec<_>>().join(" "));
        }
        if delivery.kind == DeliveryKind::Notice {
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".into(),
            ));
        }
        let text = self.body_text(delivery);
        let result = if delivery.attachments.is_empty() {
            builder.singlepart(SinglePart::plain(text))
        } else {
            let mut parts = MultiPart::mixed().singlepart(SinglePart::plain(text));
            for a in &delivery.attachments {
                let name = a
                    .filename
                    .as_ref()
                    .map(|f| f.expose().chars().filter(|c| !c.is_control()).collect::<String>())
                    .filter(|f| !f.trim().is_empty())
                    .unwrap_or_else(|| "attachment".to_string());
                let ct = ContentType::parse(&a.content_type).unwrap_or_else(|_| {
                    ContentType::parse("application/octet-stream").unwrap_or(ContentType::TEXT_PLAIN)
                });
                parts = parts.singlepart(Attachment::new(name).body(a.data.expose().clone(), ct));
            }
            builder.multipart(parts)
        };
        result.map_err(|_| SendError::permanent("message could not be built"))
    }

    fn body_text(&self, delivery: &Delivery) -> String {
        let body = delivery.body.expose();
        match delivery.kind {
            DeliveryKind::Forward => {
                let patient = delivery.patient_id.as_ref().map(|p| p.expose().as_str()).unwrap_or("not identified");
                let mut head = format!("Patient: {patient}\n");
                if let Some(label) = &delivery.sender_label {
                    head.push_str(&format!("From: {}\n", label.expose()));
                }
                head.push_str(&format!("Record: {}\n", delivery.record_id));
                head.push_str("Reply to this email to answer the patient; only your new text is sent.\n");
                format!("{head}----------------------------------------\n\n{body}\n")
            }
            DeliveryKind::Reply | DeliveryKind::Notice => format!("{body}\n"),
        }
    }

    async fn send_delivery(&self, delivery: &Delivery) -> Result<Sent, SendError> {
        let message = self.build_message(delivery)?;
        match self.transport.send(message).await {
            Ok(_) => {
                debug!(account = %self.account, delivery_id = %delivery.id, "SMTP server accepted the message.");
                Ok(Sent { native_ids: vec![self.message_id_for(delivery)], outcome: None })
            }
            Err(e) => Err(classify(&e)),
        }
    }
}

/// Tokens go in the local part of an address: only unreserved characters.
fn is_token_safe(token: &str) -> bool {
    token.len() <= 128
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'=')
}

/// Maps lettre's error to what the outbox should do. The reason is PHI-free: lettre's own
/// message may quote the server's answer, which can echo an address, so it is not used.
fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    if let Some(code) = e.status() {
        let reason = format!("SMTP {code} ({:?})", code.category);
        return if e.is_permanent() { SendError::permanent(reason) } else { SendError::retry(reason) };
    }
    let kind = if e.is_timeout() {
        "SMTP timeout"
    } else if e.is_tls() {
        "SMTP TLS failure"
    } else if e.is_response() {
        "SMTP response could not be read"
    } else if e.is_client() {
        "SMTP client error"
    } else {
        "SMTP connection failed"
    };
    SendError::retry(kind)
}

impl Outbound for SmtpOutbound {
    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(self.send_delivery(delivery))
    }

    fn healthcheck(&self) -> BoxFuture<'_, Result<(), AdapterError>> {
        Box::pin(async move {
            match self.transport.test_connection().await {
                Ok(true) => Ok(()),
                Ok(false) => Err(AdapterError::Connection("SMTP server did not answer NOOP".into())),
                Err(e) => Err(AdapterError::Connection(match classify(&e) {
                    SendError::Retry { reason, .. }
                    | SendError::Permanent { reason }
                    | SendError::Hold { reason, .. } => reason,
                })),
            }
        })
    }
}
