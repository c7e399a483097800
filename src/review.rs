//! The review queue's decisions that need the policy: `review show` and `review approve`.
//!
//! A held delivery was decided when it was recorded. Approving it used to queue it as held,
//! without asking the policy again, so an approved clinical reply went out in clear by plain
//! email. Approval now re-runs the policy for that hop with what is in force now (consents,
//! the conversation's class, the config): what the clinician can waive is a rule that asks for
//! review (a configured `hold` rule, a text too long to scan); what a channel may carry is not
//! theirs to waive, so content above the hop's ceiling goes to the secure account (with the
//! policy's notice where it was meant to go), and is refused if it cannot go there either.
//! `review show` says which, with every rule that applies, before anyone decides.

use crate::config::{Config, ValidConfig};
use crate::policy::{Action, Audience, CheckInput, Decision, Direction, Policy};
use crate::record::schema::{AddressV1, OutboxItemV1, ReviewItemV1};
use crate::record::{Actor, OutboxKey, Store, StoreError};
use crate::router::identify::Directory;
use crate::router::plan::address_kind_of;
use carebridge_contract::{AccountId, ChannelKind, DeliveryId, DeliveryKind, Redacted};
use serde_json::{Value, json};

/// Why a review decision failed.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The policy does not allow the held delivery on its hop, nor on the secure account: it
    /// stays held (reject it to tell its author).
    #[error("{0}")]
    Refused(String),
}

/// What approving would do now.
#[derive(Debug)]
pub enum OnApproval {
    /// Send it on its hop (the text as held, or redacted as the policy says).
    Send,
    /// Send it by the secure account instead, with the policy's notice on the hop.
    Reroute(AccountId),
    /// Nothing may be sent: the reason.
    Refuse(String),
}

/// A held delivery checked again: the decision, what approval would do, and the rows it would
/// queue.
pub struct Recheck {
    /// The policy's decision for the hop now.
    pub decision: Decision,
    /// What approving does.
    pub outcome: OnApproval,
    /// The outbox rows approving queues.
    pub queue: Vec<OutboxItemV1>,
}

/// Rules a reviewer may waive by approving: they ask for review, not for another channel.
fn waivable(rule: &str) -> bool {
    !rule.starts_with("builtin.") || rule == "builtin.too_long"
}

/// Runs the policy again for a held delivery's hop.
pub fn recheck(store: &Store, config: &Config, policy: &Policy, held: &ReviewItemV1) -> Result<Recheck, StoreError> {
    let d = &held.item.delivery;
    let audience = if DeliveryKind::from(d.kind) == DeliveryKind::Reply { Audience::Patient } else { Audience::Staff };
    let consents = match (&held.item.patient_id, audience) {
        (Some(p), Audience::Patient) => store.consents(p, &d.account.to_string())?,
        _ => Vec::new(),
    };
    let conversation = store.conversation(d.conversation.expose())?;
    let class = conversation.as_ref().map(|c| c.class).unwrap_or_default();
    let text = d.body.expose();
    let check = |account: &AccountId| {
        policy.check(&CheckInput {
            text,
            direction: Direction::Out,
            account,
            audience,
            consents: &consents,
            conversation_class: class,
            has_attachments: !d.attachments.is_empty(),
        })
    };
    let decision = check(&d.account);
    // A notice (PHI-free by construction) held by a withdrawn consent goes as it is.
    if DeliveryKind::from(d.kind) == DeliveryKind::Notice {
        return Ok(Recheck { decision, outcome: OnApproval::Send, queue: vec![held.item.clone()] });
    }
    let send_as = |body: Option<&str>, with_attachments: bool| {
        let mut item = held.item.clone();
        if let Some(b) = body {
            item.delivery.body = Redacted::new(b.to_string());
        }
        if !with_attachments {
            item.delivery.attachments.clear();
        }
        item
    };
    let target = match &decision.action {
        Action::Allow => return Ok(Recheck { decision, outcome: OnApproval::Send, queue: vec![send_as(None, true)] }),
        Action::Redact => {
            let body = decision.rendered.clone();
            let queue = vec![send_as(body.as_deref(), false)];
            return Ok(Recheck { decision, outcome: OnApproval::Send, queue });
        }
        Action::Hold if decision.rules.iter().all(|r| waivable(r)) => {
            return Ok(Recheck { decision, outcome: OnApproval::Send, queue: vec![send_as(None, true)] });
        }
        // A ceiling held it (`over_ceiling = "hold"`): the secure account, as a reroute would.
        Action::Hold => config.policy.secure_account.clone(),
        Action::Reroute { to } => to.clone(),
        Action::Block => {
            let why = format!("the policy blocks it on {} (rules: {})", d.account, decision.rules.join(", "));
            return Ok(Recheck { decision, outcome: OnApproval::Refuse(why), queue: Vec::new() });
        }
    };
    let refuse =
        |decision: Decision, why: String| Recheck { decision, outcome: OnApproval::Refuse(why), queue: vec![] };
    let over = format!("it may not go by {} (rules: {})", d.account, decision.rules.join(", "));
    let Some(target) = target.and_then(|t| t.parse::<AccountId>().ok()) else {
        return Ok(refuse(decision, format!("{over}, and no secure account is configured")));
    };
    if !config.accounts.get(&target).is_some_and(|a| a.sends()) {
        return Ok(refuse(decision, format!("{over}, and the secure account {target} cannot send")));
    }
    let to = match (DeliveryKind::from(d.kind), &held.item.patient_id) {
        (DeliveryKind::Reply, Some(p)) => {
            match Directory::new(&config.directory).addresses_of(p, address_kind_of(&target)).into_iter().next() {
                Some(a) => Some(a),
                None => {
                    let why = format!("{over}, and the patient has no address on the secure account {target}");
                    return Ok(refuse(decision, why));
                }
            }
        }
        (DeliveryKind::Reply, None) => return Ok(refuse(decision, format!("{over}, and the patient is not known"))),
        _ => None,
    };
    let there = check(&target);
    let Some(body) = there.body_to_send(text) else {
        let why = format!("{over}, nor by the secure account {target} (rules: {})", there.rules.join(", "));
        return Ok(refuse(decision, why));
    };
    let mut item = send_as(Some(body), there.action == Action::Allow);
    item.delivery.rerouted_from = Some(d.account.clone());
    item.delivery.account = target.clone();
    item.delivery.to = to.as_ref().map(AddressV1::from);
    item.requires_consent = false;
    let mut queue = vec![item];
    // Where it was meant to go, what a reroute leaves there: "you have a new secure message"
    // (threaded as the held reply would have been), or for staff "read it in the secure inbox".
    {
        let text = policy.reroute_notice(&d.account, audience);
        let mut n = held.item.clone();
        n.delivery.id = DeliveryId(store.next_id()?);
        n.delivery.kind = DeliveryKind::Notice.into();
        n.delivery.body = Redacted::new(text);
        n.delivery.attachments.clear();
        n.delivery.patient_id = None;
        n.delivery.sender_label = None;
        n.patient_id = None;
        n.requires_consent = false;
        n.attempts = 0;
        queue.push(n);
    }
    Ok(Recheck { decision, outcome: OnApproval::Reroute(target), queue })
}

/// One held delivery in full, for the clinician deciding (contains PHI: audited as
/// `review.show`): the rules that held it, every rule that applies to its hop now, and what
/// approving would do.
pub fn show(store: &Store, config: &ValidConfig, id: DeliveryId, actor: &Actor) -> Result<Option<Value>, ReviewError> {
    let Some(h) = store.held_item(id)? else { return Ok(None) };
    let r = recheck(store, config, config.policy(), &h)?;
    store.audit(actor, "review.show", h.item.patient_id.as_deref(), vec![h.item.delivery.record_id], None)?;
    let on_approval = match &r.outcome {
        OnApproval::Send if r.decision.action == Action::Redact => json!({ "action": "send_redacted" }),
        OnApproval::Send => json!({ "action": "send" }),
        OnApproval::Reroute(to) => json!({ "action": "reroute", "to": to.to_string() }),
        OnApproval::Refuse(why) => json!({ "action": "refuse", "reason": why }),
    };
    Ok(Some(json!({
        "delivery": h.item.delivery.id.to_string(),
        "record": h.item.delivery.record_id.to_string(),
        "account": h.item.delivery.account.to_string(),
        "kind": h.item.delivery.kind,
        "rules": h.rules,
        "applied": r.decision.applied,
        "on_approval": on_approval,
        "text": h.item.delivery.body.expose(),
        "attachments": h.item.delivery.attachments.len(),
    })))
}

/// Approves a held delivery: queues what the policy allows for its hop now ([`recheck`]).
/// `Ok(None)` if it is not held; [`ReviewError::Refused`] (nothing changes, it stays held) if
/// nothing may be sent.
pub fn approve(
    store: &Store,
    config: &ValidConfig,
    id: DeliveryId,
    by: &str,
) -> Result<Option<(OnApproval, Vec<OutboxKey>)>, ReviewError> {
    let Some(h) = store.held_item(id)? else { return Ok(None) };
    let r = recheck(store, config, config.policy(), &h)?;
    if let OnApproval::Refuse(why) = r.outcome {
        return Err(ReviewError::Refused(format!("not approved: {why}; it stays held (reject it to tell its author)")));
    }
    let queue = with_notice_filings(store, config, &h, r.queue)?;
    Ok(store.resolve_held(id, "approved", queue, by)?.map(|keys| (r.outcome, keys)))
}

/// Rejects a held delivery: nothing of it is sent; the notice its author is owed (if the hold
/// prepared one) is queued instead. `Ok(None)` if it is not held.
pub fn reject(store: &Store, config: &Config, id: DeliveryId, by: &str) -> Result<Option<Vec<OutboxKey>>, StoreError> {
    let Some(h) = store.held_item(id)? else { return Ok(None) };
    let mut queue = Vec::new();
    if let Some(notice) = h.reject_notice.clone() {
        let mut delivery = notice;
        delivery.id = DeliveryId(store.next_id()?);
        queue.push(OutboxItemV1 {
            v: 1,
            delivery,
            attempts: 0,
            not_before_ms: 0,
            patient_id: None,
            requires_consent: false,
        });
    }
    let queue = with_notice_filings(store, config, &h, queue)?;
    store.resolve_held(id, "rejected", queue, by)
}

/// `queue` (what a verdict on `held` queues) with the filing of each new notice in it in every
/// `fhir` account that files the conversation: those on the routes of the account the
/// conversation began on, and those the record went to (a `fhir` secure account). The notice
/// was sent after its message was filed, so no filing of the message carries it, unless the
/// verdict queues one too (approving a held filing): then that one does.
fn with_notice_filings(
    store: &Store,
    config: &Config,
    held: &ReviewItemV1,
    mut queue: Vec<OutboxItemV1>,
) -> Result<Vec<OutboxItemV1>, StoreError> {
    let d = &held.item.delivery;
    // A held notice approved goes as it was queued: it is in the file already.
    let new_notice =
        |i: &OutboxItemV1| DeliveryKind::from(i.delivery.kind) == DeliveryKind::Notice && i.delivery.id != d.id;
    if !queue.iter().any(new_notice) {
        return Ok(queue);
    }
    let conversation = store.conversation(d.conversation.expose())?;
    let Some(patient) =
        held.item.patient_id.clone().or_else(|| conversation.as_ref().and_then(|c| c.patient_id.clone()))
    else {
        return Ok(queue);
    };
    let mut accounts: Vec<AccountId> = conversation
        .and_then(|c| c.origin_account.parse::<AccountId>().ok())
        .map(|origin| config.filing_accounts(&origin))
        .unwrap_or_default();
    if let Some(record) = store.record(d.record_id)? {
        let went_to =
            record.decisions.iter().filter(|x| x.delivery.is_some()).filter_map(|x| {
                if x.action == "reroute" { x.rerouted_to.as_deref() } else { Some(x.account.as_str()) }
            });
        for a in went_to.filter_map(|a| a.parse::<AccountId>().ok()) {
            if a.kind() == ChannelKind::Fhir && !accounts.contains(&a) {
                accounts.push(a);
            }
        }
    }
    accounts.retain(|a| {
        !queue.iter().any(|i| i.delivery.account == *a && DeliveryKind::from(i.delivery.kind) != DeliveryKind::Notice)
    });
    if accounts.is_empty() {
        return Ok(queue);
    }
    let filings = store.notice_filings(queue.iter().filter(|i| new_notice(i)), &accounts, &patient)?;
    queue.extend(filings);
    Ok(queue)
}
