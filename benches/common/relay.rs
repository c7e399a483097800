//! The HTTP floor for the pipeline bench: the webhook adapter's own inbound and outbound halves
//! joined by a relay that answers every submission at once and forwards it, with no router,
//! policy, record store or outbox in between.
//!
//! **Why.** The pipeline's load generator and sink share the machine's cores with the daemon.
//! This process does the same HTTP work per message as the daemon's adapters (axum, signature
//! check, JSON parse into an `Envelope`; a signed JSON POST over reqwest's keep-alive pool, up
//! to 32 at once) and nothing else, so its rate under the same load is what any daemon built on
//! this HTTP stack could reach on this machine: the ceiling to read the daemon's figures against.
//!
//! It runs as a child process (the bench binary started again with [`ROLE_ENV`] set), so its
//! CPU is counted apart from the bench's, as the daemon's is.

use carebridge_contract::{
    AccountId, ChannelKind, Delivery, DeliveryId, DeliveryKind, HealthReporter, Inbound, InboundContext, Outbound,
    Receipt, RecordId, Redacted, Submission, Submitter,
};
use carebridge_webhook::{SigningKey, WebhookInbound, WebhookOutbound};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Set (to `listen-port sink-url`) when the bench binary is started as the relay.
pub const ROLE_ENV: &str = "CAREBRIDGE_BENCH_RELAY";

/// Sends at once, as the daemon's `[outbox] max_in_flight` in the bench's config.
const IN_FLIGHT: usize = 32;

/// Runs the relay until the process is killed. `spec` is [`ROLE_ENV`]'s value.
pub fn main(spec: &str, secret: &str) {
    let (port, url) = spec.split_once(' ').expect("`<port> <sink url>`");
    let port: u16 = port.parse().expect("a port");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(relay(port, url, secret));
}

async fn relay(port: u16, url: &str, secret: &str) {
    // The daemon's `[webhook.in]` section of the bench's config, minus the secret file (the key
    // is passed directly).
    let cfg: carebridge_webhook::Config =
        toml::from_str(&format!("listen = \"127.0.0.1:{port}\"\nfrom_kind = \"phone\"\nsubmit_timeout_ms = 10000\n"))
            .unwrap();
    let inbound = WebhookInbound::new(&cfg, SigningKey::new(secret.as_bytes())).expect("listen is set");
    let account = AccountId::new(ChannelKind::Webhook, "out").unwrap();
    let outbound = Arc::new(
        WebhookOutbound::new(account.clone(), url, Duration::from_secs(10), SigningKey::new(secret.as_bytes()))
            .unwrap(),
    );
    let (submitter, mut rx) = Submitter::channel(4096);
    let cx = InboundContext {
        account: AccountId::new(ChannelKind::Webhook, "in").unwrap(),
        submitter,
        shutdown: CancellationToken::new(),
        health: HealthReporter::new(),
    };
    tokio::spawn(Box::new(inbound).run(cx));
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut seq = 0u64;
    while let Some(req) = rx.recv().await {
        seq += 1;
        let Submission::Message(envelope) = req.submission else {
            let _ = req.reply.send(Receipt::Unavailable);
            continue;
        };
        let _ = req.reply.send(Receipt::Recorded(RecordId(seq)));
        let delivery = Delivery {
            id: DeliveryId(seq),
            record_id: RecordId(seq),
            account: account.clone(),
            kind: DeliveryKind::Forward,
            to: None,
            conversation: Redacted::new(format!("{seq:032x}")),
            patient_id: None,
            sender_label: None,
            subject: None,
            body: envelope.body,
            attachments: Vec::new(),
            in_reply_to: Vec::new(),
            rerouted_from: None,
            filed_as: None,
        };
        let slot = slots.clone().acquire_owned().await.unwrap();
        let outbound = outbound.clone();
        tokio::spawn(async move {
            let _slot = slot;
            while outbound.send(&delivery).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
}
