//! Turning one submission into one exchange: who sent it, which conversation it belongs to,
//! where it goes, what the privacy policy allows there, and the rows to write.
//!
//! Everything here is synchronous and reads the store; the only write is the final
//! [`Store::commit_exchanges`]. Logs carry ids, channels, actions and rule ids only.

use super::identify::Directory;
use super::notices::{LinkNotice, link_notice, unverified_notice};
use crate::config::{UnknownSender, ValidConfig};
use crate::policy::{Action, Audience, CheckInput, Class, ConsentGrant, Decision, Direction, NoticeTarget, Scan};
use crate::record::flusher::Wake;
use crate::record::schema::*;
use crate::record::{Committed, Exchange, OutboxKey, Store, StoreError, now_ms};
use carebridge_contract::{
    AccountId, Address, AddressKind, Attachment, ChannelKind, Delivery, DeliveryId, DeliveryKind, Envelope, Receipt,
    RecordId, Redacted, Submission,
};
use sha2::Digest;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tracing::info;

/// How long a link code stays valid, by default.
pub const LINK_CODE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// Hash of a link code as stored (the code itself is never stored).
pub fn link_code_hash(code: &str) -> String {
    hex::encode(sha2::Sha256::digest(code.trim().to_ascii_uppercase().as_bytes()))
}

/// Everything the planner needs, built once from the validated config.
pub struct Planner {
    /// The store.
    pub store: Store,
    /// The config (routes, router options) and its compiled policy.
    pub config: Arc<ValidConfig>,
    /// The directory.
    pub directory: Directory,
    /// Accounts that can send (for notices back to senders).
    pub senders: BTreeSet<AccountId>,
}

/// What [`Planner::prepare`] made of a submission.
pub enum Step {
    /// Answered without writing an exchange (duplicate, quarantined).
    Done(Receipt),
    /// An exchange to commit with the batch.
    Commit(Box<Exchange>),
}

/// How a message relates to earlier ones.
enum Thread {
    /// First message of a new conversation.
    New,
    /// The patient writing again in a known conversation.
    FollowUp(ConversationV1),
    /// Staff answering a known conversation: goes back to the patient.
    Reply(ConversationV1),
}

struct Draft<'a> {
    env: &'a Envelope,
    /// The detectors' findings in the body: every hop is decided on them.
    scan: &'a Scan<'a>,
    record_id: RecordId,
    conversation: &'a ConversationV1,
    patient_id: Option<String>,
    outbox: Vec<(OutboxKey, OutboxItemV1)>,
    review: Vec<ReviewItemV1>,
    decisions: Vec<RouteDecisionV1>,
    consents: Vec<ConsentGrant>,
}

impl Planner {
    /// Prepares one submission: either it is answered already (duplicate, quarantined) or it
    /// yields an exchange to commit with the rest of the batch (then call [`Planner::finish`]).
    pub fn prepare(&self, submission: Submission) -> Result<Step, StoreError> {
        match submission {
            Submission::Message(env) => self.message(env),
            Submission::Malformed { source, raw, reason } => {
                let id = RecordId(self.store.next_id()?);
                let q = QuarantineV1 { v: 1, id, at_ms: now_ms(), source, reason: reason.clone(), raw };
                match self.store.commit_quarantine(&q)? {
                    Committed::New => {
                        info!(quarantine_id = %id, account = %q.source.account, reason = %reason, "Malformed input quarantined.");
                        Ok(Step::Done(Receipt::Quarantined { id, reason }))
                    }
                    Committed::Duplicate(prev) => Ok(Step::Done(Receipt::Duplicate(prev))),
                }
            }
        }
    }

    /// After the batch's transaction: the receipt and the outbox rows to wake after the flush.
    pub fn finish(&self, ex: Exchange, committed: Committed) -> (Receipt, Vec<Wake>) {
        match committed {
            Committed::Duplicate(prev) => {
                info!(record_id = %prev, account = %ex.record.source.account, "Redelivered message de-duplicated.");
                (Receipt::Duplicate(prev), Vec::new())
            }
            Committed::New => {
                let actions: Vec<String> =
                    ex.record.decisions.iter().map(|d| format!("{}:{}", d.account, d.action)).collect();
                let rules: BTreeSet<&str> =
                    ex.record.decisions.iter().flat_map(|d| d.rules.iter().map(String::as_str)).collect();
                info!(
                    record_id = %ex.record.id,
                    account = %ex.record.source.account,
                    sender = role_name(&ex.record.sender),
                    patient = %ex.record.patient_id.as_deref().map(|p| self.store.patient_ref(p)).unwrap_or_else(|| "-".into()),
                    class = ex.record.class.as_str(),
                    findings = ex.record.finding_kinds.len(),
                    decisions = ?actions,
                    rules = ?rules,
                    deliveries = ex.outbox.len(),
                    held = ex.review.len(),
                    "Message recorded."
                );
                // The rows go to their workers as committed: they need not read them back.
                let wake = ex.outbox.into_iter().map(|(key, row)| Wake { key, row: Some(Box::new(row)) }).collect();
                (Receipt::Recorded(ex.record.id), wake)
            }
        }
    }

    fn message(&self, env: Envelope) -> Result<Step, StoreError> {
        // No dedup lookup here: the commit checks the source key inside its single-writer
        // transaction (also against earlier messages of the same batch) and `finish` answers a redelivery with the
        // first record's id. Looking up first cost a second index read for every new message.
        let account = env.source.account.clone();
        let kind = account.kind().as_str();
        let mut notes = Vec::new();

        // Who is writing.
        let mut sender = self.identify(&env.from)?;
        let mut link = None;
        let mut notices: Vec<String> = Vec::new();
        if let Some(code) = &env.link_code {
            match self.redeem(code.expose(), &account, &env.from)? {
                Some((patient, l)) => {
                    sender = SenderV1::Patient { id: patient };
                    link = Some(l);
                    notes.push("link_redeemed".to_string());
                    notices.push(link_notice(&self.config, &account, LinkNotice::Linked));
                }
                None => {
                    notes.push("link_code_invalid".to_string());
                    notices.push(link_notice(&self.config, &account, LinkNotice::Unlinked));
                }
            }
        }
        if sender == SenderV1::Unknown {
            notes.push("unverified_sender".to_string());
        }

        // Which conversation.
        let mut known = None;
        if let Some(token) = &env.conversation_token {
            known = self.store.conversation(token)?;
        }
        if known.is_none() {
            for r in &env.references {
                if let Some(n) = self.store.native_ref(kind, r)? {
                    known = self.store.conversation(&n.conversation)?;
                    if known.is_some() {
                        break;
                    }
                }
            }
        }
        let thread = match known {
            Some(c) if matches!(sender, SenderV1::Staff { .. }) => Thread::Reply(c),
            Some(c) if same_party(&c, &sender, &account, &env.from) => Thread::FollowUp(c),
            Some(_) => {
                notes.push("conversation_mismatch".to_string());
                Thread::New
            }
            None => Thread::New,
        };
        let edit_of = match &env.edit_of {
            Some(n) => self.store.native_ref(kind, n)?.map(|r| r.record),
            None => None,
        };

        let scan = self.config.policy().scan(env.body.expose());
        let inbound = self.config.policy().check_scanned(
            &CheckInput {
                text: env.body.expose(),
                direction: Direction::In,
                account: &account,
                audience: Audience::Staff,
                consents: &[],
                conversation_class: Class::None,
                has_attachments: !env.attachments.is_empty(),
            },
            &scan,
        );

        let patient_id = match (&thread, &sender) {
            (Thread::Reply(c) | Thread::FollowUp(c), _) => c.patient_id.clone(),
            (Thread::New, SenderV1::Patient { id }) => Some(id.clone()),
            _ => None,
        };
        let is_new = matches!(thread, Thread::New);
        let mut conversation = match &thread {
            Thread::Reply(c) | Thread::FollowUp(c) => c.clone(),
            Thread::New => ConversationV1 {
                v: 1,
                token: new_token(),
                patient_id: patient_id.clone(),
                origin_account: account.to_string(),
                origin_address: AddressV1::from(&env.from),
                class: Class::None,
                last_patient_message: None,
                created_at_ms: now_ms(),
            },
        };
        if !matches!(thread, Thread::Reply(_)) {
            conversation.class = conversation.class.max(inbound.class);
            if env.native_message_id.is_some() {
                conversation.last_patient_message = env.native_message_id.clone();
            }
        }

        let record_id = RecordId(self.store.next_id()?);
        let mut d = Draft {
            env: &env,
            scan: &scan,
            record_id,
            conversation: &conversation,
            patient_id: patient_id.clone(),
            outbox: Vec::new(),
            review: Vec::new(),
            decisions: Vec::new(),
            consents: Vec::new(),
        };

        let mut staff_marks = Vec::new();
        match &thread {
            Thread::Reply(c) => match c.origin_account.parse::<AccountId>() {
                Ok(dest) if self.senders.contains(&dest) => {
                    self.plan_delivery(&mut d, &dest, DeliveryKind::Reply, Some(Address::from(&c.origin_address)))?;
                }
                _ => d.decisions.push(skip(&c.origin_account, "builtin.reply.origin_cannot_send")),
            },
            // A link request (`/start CODE`) is recorded and answered, not forwarded: it has no
            // content for the clinic, and the code must not travel anywhere.
            Thread::New | Thread::FollowUp(_) if env.link_code.is_some() => {
                for dest in self.config.destinations(&account) {
                    d.decisions.push(skip(&dest.to_string(), "builtin.link.not_forwarded"));
                }
            }
            Thread::New | Thread::FollowUp(_) => {
                let dests = self.config.destinations(&account);
                let record_only =
                    sender == SenderV1::Unknown && self.config.router.unknown_sender == UnknownSender::RecordOnly;
                for dest in dests {
                    if record_only {
                        d.decisions.push(skip(&dest.to_string(), "builtin.unknown_sender.record_only"));
                    } else if sender == SenderV1::Unknown && self.insecure_staff_channel(&dest) {
                        // Nobody knows who wrote it: their words and address stay in the record
                        // (`records unassigned`); the channel gets a PHI-free notice, at most
                        // once per interval per sender.
                        d.decisions.push(skip(&dest.to_string(), "builtin.unknown_sender.insecure_channel"));
                        if let Some(mark) = self.unthrottled("unverified", &dest, &env.from)? {
                            let text = unverified_notice(&self.config, &dest);
                            if let Some(n) = self.notice(&d, &dest, None, text, Vec::new())? {
                                d.outbox.push(n);
                                staff_marks.push(mark);
                            }
                        }
                    } else {
                        self.plan_delivery(&mut d, &dest, DeliveryKind::Forward, None)?;
                    }
                }
            }
        }
        // A clinician's reply goes into the patient's file at the clinic too: every `fhir`
        // account on the routes the patient's messages took files the answer as well.
        if let Thread::Reply(c) = &thread
            && let Ok(origin) = c.origin_account.parse::<AccountId>()
        {
            for dest in self.config.destinations(&origin) {
                // Already on its way there (the policy rerouted the answer to it): filed once.
                let going = d.outbox.iter().any(|(_, i)| i.delivery.account == dest)
                    || d.review.iter().any(|r| r.item.delivery.account == dest);
                if dest.kind() == ChannelKind::Fhir && self.senders.contains(&dest) && !going {
                    self.plan_delivery(&mut d, &dest, DeliveryKind::Forward, None)?;
                }
            }
        }
        // Unprompted notices (how to link an unknown chat; the policy's advisory to a patient who
        // put health details on an insecure channel) go at most once per interval per sender and
        // kind, however many messages they send: every new message is a new conversation.
        let mut notice_marks = staff_marks;
        if sender == SenderV1::Unknown
            && env.link_code.is_none()
            && account.kind() == ChannelKind::Telegram
            && let Some(mark) = self.unthrottled("unlinked", &account, &env.from)?
        {
            notices.push(link_notice(&self.config, &account, LinkNotice::Unlinked));
            notice_marks.push(mark);
        }
        if is_new
            && !matches!(thread, Thread::Reply(_))
            && let (Some(text), Some(NoticeTarget::Sender)) = (inbound.notice.clone(), inbound.notice_to)
            && let Some(mark) = self.unthrottled("advisory", &account, &env.from)?
        {
            notices.push(text);
            notice_marks.push(mark);
        }
        for text in notices {
            if let Some(n) = self.notice(&d, &account, Some(env.from.clone()), text, own_message(&env))? {
                d.outbox.push(n);
            }
        }
        // Every notice is in the patient's file at the clinic: one that no filing of this record
        // carries (a link confirmation: the link request itself goes nowhere) is filed alone.
        if let Some(patient) = d.patient_id.clone()
            && let Ok(origin) = d.conversation.origin_account.parse::<AccountId>()
        {
            let carried = |a: &AccountId| {
                d.outbox.iter().any(|(_, i)| i.delivery.account == *a && i.delivery.kind != DeliveryKindV1::Notice)
                    || d.review.iter().any(|r| r.item.delivery.account == *a)
            };
            let accounts: Vec<AccountId> = self
                .config
                .filing_accounts(&origin)
                .into_iter()
                .filter(|a| self.senders.contains(a) && !carried(a))
                .collect();
            if !accounts.is_empty() {
                for item in self.store.notice_filings(d.outbox.iter().map(|(_, i)| i), &accounts, &patient)? {
                    let key = OutboxKey { account: item.delivery.account.clone(), seq: self.store.next_id()? };
                    d.outbox.push((key, item));
                }
            }
        }

        let mut native_refs = Vec::new();
        if let Some(n) = &env.native_message_id {
            native_refs.push((
                format!("{kind}\0{n}"),
                NativeRefV1 { v: 1, conversation: conversation.token.clone(), record: record_id },
            ));
        }
        let decisions = std::mem::take(&mut d.decisions);
        let outbox = std::mem::take(&mut d.outbox);
        let review = std::mem::take(&mut d.review);
        let consents = std::mem::take(&mut d.consents);
        let record = RecordV1 {
            v: 1,
            id: record_id,
            recorded_at_ms: now_ms(),
            sent_at_ms: env.received_at.duration_since(UNIX_EPOCH).map(|t| t.as_millis() as u64).unwrap_or(0),
            // The envelope's last use: its fields move into the record instead of copying.
            source: env.source,
            from: env.from.into(),
            sender,
            display_name: env.display_name,
            subject: env.subject,
            body: env.body,
            attachments: blobs_of(record_id, &env.attachments),
            native_message_id: env.native_message_id,
            conversation: conversation.token.clone(),
            patient_id,
            edit_of,
            class: inbound.class,
            finding_kinds: inbound.findings.iter().map(|f| f.kind.clone()).collect(),
            consents,
            decisions,
            notes,
        };
        Ok(Step::Commit(Box::new(Exchange { record, conversation, native_refs, outbox, review, link, notice_marks })))
    }

    /// A staff destination where the platform can read everything: no place for the words (or
    /// the phone number) of someone nobody has verified. Chat and email accounts count by their
    /// trust (Telegram is `insecure` by default); a webhook only when `[policy.channels]` says
    /// `insecure`, since its receiver is usually a clinic system (the EHR) whatever its default.
    fn insecure_staff_channel(&self, dest: &AccountId) -> bool {
        let settings = self.config.policy().settings(dest);
        let insecure = settings.trust == crate::policy::Trust::Insecure;
        match dest.kind() {
            ChannelKind::Webhook => settings.trust_configured && insecure,
            _ => insecure,
        }
    }

    /// The mark to record for an unprompted notice of `kind` to `to` on `account`, or `None` if
    /// one went out within `router.notice_interval_secs`.
    fn unthrottled(&self, kind: &str, account: &AccountId, to: &Address) -> Result<Option<String>, StoreError> {
        let mark = format!("{kind}\0{account}\0{}", to.key().expose());
        let interval_ms = self.config.router.notice_interval_secs.saturating_mul(1000);
        Ok(match self.store.notice_sent_at(&mark)? {
            Some(at) if now_ms().saturating_sub(at) < interval_ms => None,
            _ => Some(mark),
        })
    }

    fn identify(&self, from: &Address) -> Result<SenderV1, StoreError> {
        if let Some(s) = self.directory.lookup(from) {
            return Ok(s.clone());
        }
        Ok(match self.store.linked_patient(from.key().expose())? {
            Some(l) => SenderV1::Patient { id: l.patient_id },
            None => SenderV1::Unknown,
        })
    }

    #[allow(clippy::type_complexity)]
    fn redeem(
        &self,
        code: &str,
        account: &AccountId,
        from: &Address,
    ) -> Result<Option<(String, (String, LinkV1, String, ConsentGrant))>, StoreError> {
        let hash = link_code_hash(code);
        let Some(c) = self.store.link_code(&hash)? else { return Ok(None) };
        if c.account != account.to_string() || c.expires_at_ms < now_ms() {
            return Ok(None);
        }
        let now = now_ms();
        let link = LinkV1 { v: 1, patient_id: c.patient_id.clone(), account: c.account.clone(), linked_at_ms: now };
        let grant = ConsentGrant {
            account: c.account.clone(),
            purpose: c.purpose.clone(),
            source: "link-code".into(),
            granted_at: now / 1000,
        };
        Ok(Some((c.patient_id.clone(), (from.key().into_inner(), link, hash, grant))))
    }

    /// Checks one destination against the policy and adds the resulting delivery (or review
    /// item, or notices) to the draft.
    fn plan_delivery(
        &self,
        d: &mut Draft<'_>,
        dest: &AccountId,
        kind: DeliveryKind,
        to: Option<Address>,
    ) -> Result<(), StoreError> {
        let audience = if kind == DeliveryKind::Reply { Audience::Patient } else { Audience::Staff };
        let decision = self.check_out(d, dest, audience)?;
        let original = d.env.body.expose();
        let mut delivery_id = None;
        let mut rerouted_to = None;
        let existing = match decision.action {
            Action::Allow | Action::Redact | Action::Hold => shared(d, dest, kind, &to),
            Action::Block | Action::Reroute { .. } => None,
        };
        match &decision.action {
            _ if existing.is_some() => delivery_id = existing,
            Action::Allow | Action::Redact => {
                let body = decision.body_to_send(original).unwrap_or(original).to_string();
                let requires_consent = audience == Audience::Patient && !d.consents.is_empty();
                let item =
                    self.item(d, dest, kind, to.clone(), body, requires_consent, decision.action == Action::Allow)?;
                delivery_id = Some(item.1.delivery.id);
                d.outbox.push(item);
            }
            Action::Hold => {
                let (_, item) = self.item(d, dest, kind, to.clone(), original.clone(), false, true)?;
                delivery_id = Some(item.delivery.id);
                // Sent if a clinician rejects the held message (PHI-free, from the policy).
                let reject_notice = self.notice_for(d, &decision, dest, to.clone())?.map(|(_, i)| i.delivery);
                d.review.push(ReviewItemV1 {
                    v: 1,
                    at_ms: now_ms(),
                    item,
                    rules: decision.rules.clone(),
                    reject_notice,
                });
            }
            Action::Block => {
                if let Some(n) = self.notice_for(d, &decision, dest, to.clone())? {
                    d.outbox.push(n);
                }
            }
            Action::Reroute { to: secure } => {
                if let Some((id, target)) = self.reroute(d, dest, secure.as_deref(), kind, audience)? {
                    delivery_id = Some(id);
                    rerouted_to = Some(target.to_string());
                }
                if let Some(n) = self.notice_for(d, &decision, dest, to.clone())? {
                    d.outbox.push(n);
                }
            }
        }
        d.decisions.push(RouteDecisionV1 {
            account: dest.to_string(),
            action: decision.action.name().to_string(),
            rules: decision.rules.clone(),
            class: decision.effective_class,
            delivery: delivery_id,
            rerouted_to,
        });
        Ok(())
    }

    /// The policy's decision for this message leaving by `dest` to `audience`, with the
    /// patient's consents on `dest` (recorded in the draft: the record snapshots them).
    fn check_out(&self, d: &mut Draft<'_>, dest: &AccountId, audience: Audience) -> Result<Decision, StoreError> {
        let consents = match (&d.patient_id, audience) {
            (Some(p), Audience::Patient) => self.store.consents(p, &dest.to_string())?,
            _ => Vec::new(),
        };
        let decision = self.config.policy().check_scanned(
            &CheckInput {
                text: d.env.body.expose(),
                direction: Direction::Out,
                account: dest,
                audience,
                consents: &consents,
                conversation_class: d.conversation.class,
                has_attachments: !d.env.attachments.is_empty(),
            },
            d.scan,
        );
        for c in consents {
            if !d.consents.contains(&c) {
                d.consents.push(c);
            }
        }
        Ok(decision)
    }

    /// Sends what may not go on the patient's channel to the secure account instead, after
    /// checking it against that account too. A reply needs the patient's address there (from
    /// the directory); a forward goes to the secure account's default destination. What the
    /// secure account may not carry either is held for review.
    /// Returns the delivery and the account it goes by. The delivery names `meant_for`, the
    /// account it was meant to go by, so the receiver can tell where the patient wrote from.
    fn reroute(
        &self,
        d: &mut Draft<'_>,
        meant_for: &AccountId,
        secure: Option<&str>,
        kind: DeliveryKind,
        audience: Audience,
    ) -> Result<Option<(DeliveryId, AccountId)>, StoreError> {
        let Some(target) = secure.and_then(|s| s.parse::<AccountId>().ok()).filter(|a| self.senders.contains(a)) else {
            return Ok(None);
        };
        let to = match (kind, &d.patient_id) {
            // Filed in the patient's file at the clinic (the EMR): no address of theirs needed.
            (DeliveryKind::Reply, Some(_)) if target.kind() == ChannelKind::Fhir => None,
            (DeliveryKind::Reply, Some(p)) => {
                match self.directory.addresses_of(p, address_kind_of(&target)).into_iter().next() {
                    Some(a) => Some(a),
                    None => return Ok(None),
                }
            }
            (DeliveryKind::Reply, None) => return Ok(None),
            _ => None,
        };
        if let Some(id) = shared(d, &target, kind, &to) {
            return Ok(Some((id, target)));
        }
        let decision = self.check_out(d, &target, audience)?;
        let original = d.env.body.expose();
        match decision.body_to_send(original) {
            Some(body) => {
                let body = body.to_string();
                let mut item = self.item(d, &target, kind, to, body, false, decision.action == Action::Allow)?;
                item.1.delivery.rerouted_from = Some(meant_for.clone());
                let id = item.1.delivery.id;
                d.outbox.push(item);
                Ok(Some((id, target)))
            }
            None => {
                let (_, mut item) = self.item(d, &target, kind, to, original.clone(), false, true)?;
                item.delivery.rerouted_from = Some(meant_for.clone());
                let id = item.delivery.id;
                d.review.push(ReviewItemV1 { v: 1, at_ms: now_ms(), item, rules: decision.rules, reject_notice: None });
                Ok(Some((id, target)))
            }
        }
    }

    /// The decision's PHI-free notice as a delivery: to the recipient of this hop (on `dest`),
    /// or to the message's author (on the account they wrote from), as the policy says.
    fn notice_for(
        &self,
        d: &Draft<'_>,
        decision: &Decision,
        dest: &AccountId,
        to: Option<Address>,
    ) -> Result<Option<(OutboxKey, OutboxItemV1)>, StoreError> {
        let Some(text) = decision.notice.clone() else { return Ok(None) };
        match decision.notice_to {
            // The reader of this hop: for a reply, the patient, under their own latest message
            // on their channel (never under the clinician's message, whose id is internal and
            // means nothing in the patient's mailbox); for a forward, a staff channel.
            Some(NoticeTarget::Recipient) => {
                let thread = match to {
                    Some(_) => d.conversation.last_patient_message.iter().cloned().collect(),
                    None => Vec::new(),
                };
                self.notice(d, dest, to, text, thread)
            }
            // The author, under the message they wrote.
            Some(NoticeTarget::Sender) | None => {
                let author = d.env.source.account.clone();
                self.notice(d, &author, Some(d.env.from.clone()), text, own_message(d.env))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn item(
        &self,
        d: &Draft<'_>,
        dest: &AccountId,
        kind: DeliveryKind,
        to: Option<Address>,
        body: String,
        requires_consent: bool,
        with_attachments: bool,
    ) -> Result<(OutboxKey, OutboxItemV1), StoreError> {
        let id = DeliveryId(self.store.next_id()?);
        // A reply threads under the patient's latest message on the patient's channel.
        let in_reply_to = match kind {
            DeliveryKind::Reply => d.conversation.last_patient_message.iter().cloned().collect(),
            _ => Vec::new(),
        };
        let delivery = DeliveryV1 {
            id,
            record_id: d.record_id,
            account: dest.clone(),
            kind: kind.into(),
            to: to.as_ref().map(AddressV1::from),
            conversation: Redacted::new(d.conversation.token.clone()),
            patient_id: d.patient_id.clone().map(Redacted::new),
            sender_label: d.env.display_name.clone(),
            subject: None,
            body: Redacted::new(body),
            // By reference: the bytes are stored once, with the record.
            attachments: if with_attachments {
                blobs_of(d.record_id, &d.env.attachments).into_iter().map(AttachmentV1::without_data).collect()
            } else {
                Vec::new()
            },
            in_reply_to,
            rerouted_from: None,
            files_notice: None,
        };
        let item = OutboxItemV1 {
            v: 1,
            delivery,
            attempts: 0,
            not_before_ms: 0,
            patient_id: d.patient_id.clone(),
            requires_consent,
        };
        Ok((OutboxKey { account: dest.clone(), seq: self.store.next_id()? }, item))
    }

    /// A PHI-free notice to `to` on `account` (`None`: the account's default destination), if
    /// that account can send.
    fn notice(
        &self,
        d: &Draft<'_>,
        account: &AccountId,
        to: Option<Address>,
        text: String,
        in_reply_to: Vec<String>,
    ) -> Result<Option<(OutboxKey, OutboxItemV1)>, StoreError> {
        if !self.senders.contains(account) {
            return Ok(None);
        }
        let id = DeliveryId(self.store.next_id()?);
        let delivery = Delivery {
            id,
            record_id: d.record_id,
            account: account.clone(),
            kind: DeliveryKind::Notice,
            to,
            conversation: Redacted::new(d.conversation.token.clone()),
            patient_id: None,
            sender_label: None,
            subject: None,
            body: Redacted::new(text),
            attachments: Vec::new(),
            in_reply_to,
            rerouted_from: None,
            filed_as: None,
        };
        let item = OutboxItemV1 {
            v: 1,
            delivery: delivery.into(),
            attempts: 0,
            not_before_ms: 0,
            patient_id: None,
            requires_consent: false,
        };
        Ok(Some((OutboxKey { account: account.clone(), seq: self.store.next_id()? }, item)))
    }
}

/// A record's attachments as stored: each with its blob reference (record id, index) and, until
/// the store's commit moves them into the blob, its bytes.
fn blobs_of(record: RecordId, attachments: &[Attachment]) -> Vec<AttachmentV1> {
    attachments
        .iter()
        .enumerate()
        .map(|(i, a)| AttachmentV1 { blob: Some(BlobRefV1 { record, index: i as u32 }), ..AttachmentV1::from(a) })
        .collect()
}

/// The delivery this message already has to `account` (same kind, same recipient), queued or
/// held. A second destination that resolves to the same place shares it: a route naming the EHR
/// and a staff group whose copy is rerouted to the EHR sends the EHR one delivery, not the same
/// message twice under two idempotency keys. The same text, too: both hops were decided
/// against the same account for the same audience.
fn shared(d: &Draft<'_>, account: &AccountId, kind: DeliveryKind, to: &Option<Address>) -> Option<DeliveryId> {
    let to = to.as_ref().map(AddressV1::from);
    let same = |x: &DeliveryV1| x.account == *account && DeliveryKind::from(x.kind) == kind && x.to == to;
    d.outbox
        .iter()
        .map(|(_, i)| &i.delivery)
        .chain(d.review.iter().map(|r| &r.item.delivery))
        .find(|x| same(x))
        .map(|x| x.id)
}

/// The message being planned, as the thread a notice to its author goes under.
fn own_message(env: &Envelope) -> Vec<String> {
    env.native_message_id.iter().cloned().collect()
}

/// The address kind an account's recipients have.
pub(crate) fn address_kind_of(account: &AccountId) -> AddressKind {
    match account.kind() {
        ChannelKind::Email => AddressKind::Email,
        ChannelKind::Telegram => AddressKind::Telegram,
        ChannelKind::Webhook => AddressKind::Phone,
        ChannelKind::Fhir => AddressKind::Opaque,
    }
}

fn same_party(c: &ConversationV1, sender: &SenderV1, account: &AccountId, from: &Address) -> bool {
    match (sender, &c.patient_id) {
        (SenderV1::Patient { id }, Some(p)) => id == p,
        _ => c.origin_account == account.to_string() && Address::from(&c.origin_address) == *from,
    }
}

fn skip(account: &str, rule: &str) -> RouteDecisionV1 {
    RouteDecisionV1 {
        account: account.to_string(),
        action: "skip".into(),
        rules: vec![rule.to_string()],
        class: Class::None,
        delivery: None,
        rerouted_to: None,
    }
}

fn role_name(s: &SenderV1) -> &'static str {
    match s {
        SenderV1::Patient { .. } => "patient",
        SenderV1::Staff { .. } => "staff",
        SenderV1::Unknown => "unknown",
    }
}

/// A new conversation's token: the current unix second (4 bytes, big-endian), then 12 random
/// bytes, in hex. 32 characters as before, so an email reply address (`local+token@…`) stays
/// within its 64-character limit, and unguessable (96 random bits; a token is never enough on its
/// own: a reply must also come from staff or the patient). The time prefix makes each new
/// conversation's key in the store's `conversations` tree sort after the last one, so new
/// conversations append to the tree (on sled, a random insert into a million records took
/// 34 µs, the most of any write of a message; an LSM tree minds less, but its tables stay
/// ordered by time, which compaction likes).
fn new_token() -> String {
    token_at(std::time::SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

fn token_at(secs: u64) -> String {
    let mut token = [0u8; 16];
    token[..4].copy_from_slice(&(secs as u32).to_be_bytes());
    token[4..].copy_from_slice(&rand::random::<[u8; 12]>());
    hex::encode(token)
}

#[cfg(test)]
mod tests {
    use super::token_at;

    #[test]
    fn tokens_are_32_hex_characters_sorted_by_time_and_random_within_a_second() {
        let (a, b, later) = (token_at(1_764_000_000), token_at(1_764_000_000), token_at(1_764_000_001));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(&a[..8], &b[..8], "same second, same prefix");
        assert_ne!(a, b, "96 random bits after it");
        assert!(a < later && b < later, "a later second sorts after: {a} {b} {later}");
    }
}
