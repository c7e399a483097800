//! Synthetic exchanges for the benches, shaped like what the router writes for a webhook message
//! from a known patient forwarded to one destination (src/router/plan.rs, `Thread::New`): a
//! record of a ~300-byte text, a new conversation, the message's native id, one outbox row
//! carrying the text again. Patients come from a pool of 1000, so each patient's chain grows as
//! the store does. Deterministic (seeded), so two runs write the same shapes.

use carebridge::policy::Class;
use carebridge::record::schema::{ConversationV1, NativeRefV1, OutboxItemV1, RecordV1, RouteDecisionV1, SenderV1};
use carebridge::record::{Exchange, OutboxKey};
use carebridge_contract::{
    AccountId, Address, AddressKind, Delivery, DeliveryId, DeliveryKind, RecordId, Redacted, SourceKey,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Patients the synthetic messages come from.
pub const PATIENTS: usize = 1000;

/// Fragments the texts are made of: plain requests, some with a medication or a date, the way
/// patients write to a clinic's web form or SMS line.
const FRAGMENTS: &[&str] = &[
    "Hello, I would like to book an appointment for next week if possible.",
    "My daughter has had a fever since Sunday and a sore throat.",
    "Could you please renew my prescription for metformin 500 mg?",
    "I can come in any morning except Thursday, after 9 am is best.",
    "The pharmacy said they have not received the fax from the clinic yet.",
    "Thank you for the call yesterday, the new dose seems to work better.",
    "Is the lab open on Saturday for the blood test the doctor asked for?",
    "I need a note for my employer for the days I missed last week.",
    "Please let Dr. Lee know the swelling went down after two days.",
    "Can I reschedule my appointment on the 14th to later in the afternoon?",
];

/// Makes exchanges; ids come from the caller (the store's id generator).
pub struct Synth {
    rng: StdRng,
    inbound: AccountId,
    outbound: AccountId,
    /// Prefix of source ids, so two generators never collide in one store.
    prefix: String,
}

impl Synth {
    /// A generator for source ids `{prefix}{n}`.
    pub fn new(seed: u64, prefix: &str) -> Synth {
        Synth {
            rng: StdRng::seed_from_u64(seed),
            inbound: "webhook.in".parse().expect("account id"),
            outbound: "webhook.out".parse().expect("account id"),
            prefix: prefix.to_string(),
        }
    }

    /// A text of about 300 bytes (280–340).
    pub fn text(&mut self) -> String {
        let mut t = String::with_capacity(360);
        while t.len() < 280 {
            if !t.is_empty() {
                t.push(' ');
            }
            t.push_str(FRAGMENTS[self.rng.random_range(0..FRAGMENTS.len())]);
        }
        t
    }

    /// Exchange number `n`; `next_id` hands out the store's ids (record, delivery, outbox seq).
    pub fn exchange(&mut self, n: u64, next_id: &mut dyn FnMut() -> u64) -> Exchange {
        let p = self.rng.random_range(0..PATIENTS);
        let patient = format!("p-{p:04}");
        let from = Address::new(AddressKind::Phone, format!("+1416555{p:04}"));
        let native = format!("{}{n}", self.prefix);
        let text = self.text();
        let now = carebridge::record::now_ms();
        let token = hex::encode(self.rng.random::<[u8; 16]>());
        let record_id = RecordId(next_id());
        let delivery_id = DeliveryId(next_id());
        let seq = next_id();
        let delivery = Delivery {
            id: delivery_id,
            record_id,
            account: self.outbound.clone(),
            kind: DeliveryKind::Forward,
            to: None,
            conversation: Redacted::new(token.clone()),
            patient_id: Some(Redacted::new(patient.clone())),
            sender_label: None,
            subject: None,
            body: Redacted::new(text.clone()),
            attachments: Vec::new(),
            in_reply_to: Vec::new(),
            rerouted_from: None,
            filed_as: None,
        };
        let record = RecordV1 {
            v: 1,
            id: record_id,
            recorded_at_ms: now,
            sent_at_ms: now,
            source: SourceKey { account: self.inbound.clone(), native_id: native.clone() },
            from: (&from).into(),
            sender: SenderV1::Patient { id: patient.clone() },
            display_name: None,
            subject: None,
            body: Redacted::new(text),
            attachments: Vec::new(),
            native_message_id: Some(native.clone()),
            conversation: token.clone(),
            patient_id: Some(patient.clone()),
            edit_of: None,
            class: Class::Clinical,
            finding_kinds: vec!["medication".into()],
            consents: Vec::new(),
            decisions: vec![RouteDecisionV1 {
                rerouted_to: None,
                account: self.outbound.to_string(),
                action: "allow".into(),
                rules: Vec::new(),
                class: Class::Clinical,
                delivery: Some(delivery_id),
            }],
            notes: Vec::new(),
        };
        let conversation = ConversationV1 {
            v: 1,
            token: token.clone(),
            patient_id: Some(patient.clone()),
            origin_account: self.inbound.to_string(),
            origin_address: from.into(),
            class: Class::Clinical,
            last_patient_message: Some(native.clone()),
            created_at_ms: now,
        };
        let item = OutboxItemV1 {
            v: 1,
            delivery: delivery.into(),
            attempts: 0,
            not_before_ms: 0,
            patient_id: Some(patient),
            requires_consent: false,
        };
        Exchange {
            record,
            conversation,
            native_refs: vec![(
                format!("webhook\0{native}"),
                NativeRefV1 { v: 1, conversation: token, record: record_id },
            )],
            outbox: vec![(OutboxKey { account: self.outbound.clone(), seq }, item)],
            review: Vec::new(),
            link: None,
            notice_marks: Vec::new(),
        }
    }
}

/// Bytes a directory takes on disk (allocated blocks, like `du`), and its files' apparent size.
pub fn disk_usage(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut used = 0;
    let mut apparent = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                used += m.blocks() * 512;
                apparent += m.len();
            }
        }
    }
    (used, apparent)
}

/// `12.3 MB`.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// An environment knob with a default (underscores allowed: `1_000_000`).
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}
