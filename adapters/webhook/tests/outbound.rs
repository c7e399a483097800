//! The sender against a real axum sink on 127.0.0.1:0: signing, idempotency keys and how each
//! kind of answer is classified for the outbox.
#![allow(clippy::unwrap_used)]

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use carebridge_contract::config::BuildContext;
use carebridge_contract::{
    Address, AddressKind, Attachment, Delivery, DeliveryId, DeliveryKind, Outbound, RecordId, Redacted, SendError, Sent,
};
use carebridge_webhook::{SigningKey, WebhookOutbound, verify};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// One request as the sink received it.
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// One scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    delay: Duration,
}

fn reply(status: u16, body: &'static str) -> Reply {
    Reply { status, headers: Vec::new(), body, delay: Duration::ZERO }
}

#[derive(Clone)]
struct Sink {
    replies: Arc<Mutex<Vec<Reply>>>,
    received: mpsc::UnboundedSender<Received>,
}

async fn sink_handler(State(sink): State<Sink>, headers: HeaderMap, body: Bytes) -> Response {
    let _ = sink.received.send(Received { headers, body });
    let next = {
        let mut replies = sink.replies.lock().unwrap();
        if replies.is_empty() { reply(200, "") } else { replies.remove(0) }
    };
    tokio::time::sleep(next.delay).await;
    let mut response = (StatusCode::from_u16(next.status).unwrap(), next.body).into_response();
    for (name, value) in next.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// Starts a sink answering `replies` in order (then 200 with an empty body).
async fn sink(replies: Vec<Reply>) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Sink { replies: Arc::new(Mutex::new(replies)), received: tx };
    let app = Router::new().route("/in", axum::routing::post(sink_handler)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/in"), rx)
}

fn outbound(url: &str, timeout: Duration) -> WebhookOutbound {
    WebhookOutbound::new(common::account(), url, timeout, SigningKey::new(common::SECRET)).unwrap()
}

fn forward(id: u64) -> Delivery {
    Delivery {
        id: DeliveryId(id),
        record_id: RecordId(17),
        account: common::account(),
        kind: DeliveryKind::Forward,
        to: None,
        conversation: Redacted::new("tok-abc".into()),
        patient_id: Some(Redacted::new("P-1001".into())),
        sender_label: Some(Redacted::new("Ann Example".into())),
        subject: None,
        body: Redacted::new("I need a refill".into()),
        attachments: vec![Attachment {
            filename: Some(Redacted::new("a.txt".into())),
            content_type: "text/plain".into(),
            data: Redacted::new(b"hello".to_vec()),
        }],
        in_reply_to: vec!["m-1".into()],
        rerouted_from: None,
        filed_as: None,
    }
}

#[tokio::test]
async fn a_delivery_is_posted_signed_with_its_idempotency_key() {
    let (url, mut received) = sink(vec![reply(200, r#"{"id":"ehr-77","extra":true}"#)]).await;
    let out = outbound(&url, Duration::from_secs(10));
    let sent = out.send(&forward(42)).await.unwrap();
    assert_eq!(sent, Sent { native_ids: vec!["ehr-77".into()], outcome: None });

    let r = received.recv().await.unwrap();
    let header = |name: &str| r.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(header("idempotency-key").as_deref(), Some("dlv-0000000042"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    let verified = verify(
        common::SECRET,
        header("x-carebridge-timestamp").as_deref(),
        header("x-carebridge-signature").as_deref(),
        &r.body,
        common::now(),
        Duration::from_secs(300),
    );
    assert_eq!(verified, Ok(()));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        json!({
            "delivery_id": "dlv-0000000042",
            "record_id": "rec-0000000017",
            "kind": "forward",
            "conversation": "tok-abc",
            "to": null,
            "patient_id": "P-1001",
            "sender": "Ann Example",
            "subject": null,
            "text": "I need a refill",
            "attachments": [{"filename": "a.txt", "content_type": "text/plain", "data_base64": "aGVsbG8="}],
            "in_reply_to": ["m-1"]
        })
    );
}

#[tokio::test]
async fn a_reply_names_its_recipient() {
    let (url, mut received) = sink(vec![reply(202, "")]).await;
    let mut d = forward(7);
    d.kind = DeliveryKind::Reply;
    d.to = Some(Address::new(AddressKind::Phone, "+1 416 555 0199"));
    d.patient_id = None;
    d.sender_label = None;
    d.attachments.clear();
    d.subject = Some("Your clinic".into());
    assert_eq!(outbound(&url, Duration::from_secs(10)).send(&d).await, Ok(Sent::default()));
    let body: serde_json::Value = serde_json::from_slice(&received.recv().await.unwrap().body).unwrap();
    assert_eq!(body["kind"], "reply");
    assert_eq!(body["to"], json!({"kind": "phone", "value": "+14165550199"}));
    assert_eq!(body["subject"], "Your clinic");
    assert_eq!(body["attachments"], json!([]));
    assert_eq!(body["patient_id"], json!(null));
}

#[tokio::test]
async fn odd_2xx_answers_are_still_sent() {
    let (url, _received) = sink(vec![
        reply(200, "not json at all"),
        reply(204, ""),
        reply(201, r#"{"id": 5}"#),
        reply(200, r#"{"id": ""}"#),
    ])
    .await;
    let out = outbound(&url, Duration::from_secs(10));
    for i in 0..4 {
        assert_eq!(out.send(&forward(i)).await, Ok(Sent::default()), "answer {i}");
    }
}

#[tokio::test]
async fn failures_are_classified_for_the_outbox() {
    let mut too_many = reply(429, "slow down");
    too_many.headers.push(("retry-after", "7"));
    let mut unavailable = reply(503, "");
    unavailable.headers.push(("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT"));
    let (url, mut received) = sink(vec![
        reply(500, "oops"),
        too_many,
        reply(400, r#"{"error":"patient Ann Example unknown"}"#),
        reply(408, ""),
        unavailable,
        reply(404, ""),
        reply(301, ""),
    ])
    .await;
    let out = outbound(&url, Duration::from_secs(10));
    let expected = [
        SendError::Retry { after: None, reason: "HTTP 500".into() },
        SendError::Retry { after: Some(Duration::from_secs(7)), reason: "HTTP 429".into() },
        SendError::permanent("HTTP 400"),
        SendError::Retry { after: None, reason: "HTTP 408".into() },
        SendError::Retry { after: Some(Duration::ZERO), reason: "HTTP 503".into() },
        SendError::permanent("HTTP 404"),
        SendError::permanent("HTTP 301 (redirects are not followed)"),
    ];
    for (i, want) in expected.into_iter().enumerate() {
        assert_eq!(out.send(&forward(i as u64)).await, Err(want));
        // Each attempt reached the sink with its own idempotency key.
        let r = received.recv().await.unwrap();
        assert_eq!(r.headers["idempotency-key"], format!("dlv-{i:010}").as_str());
    }
}

#[tokio::test]
async fn a_retry_keeps_the_same_idempotency_key() {
    let (url, mut received) = sink(vec![reply(503, ""), reply(200, "")]).await;
    let out = outbound(&url, Duration::from_secs(10));
    let d = forward(9);
    assert!(matches!(out.send(&d).await, Err(SendError::Retry { .. })));
    assert_eq!(out.send(&d).await, Ok(Sent::default()));
    for _ in 0..2 {
        assert_eq!(received.recv().await.unwrap().headers["idempotency-key"], "dlv-0000000009");
    }
}

#[tokio::test]
async fn a_refused_connection_is_retried() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = outbound(&format!("http://127.0.0.1:{port}/in"), Duration::from_secs(10));
    match out.send(&forward(1)).await {
        Err(SendError::Retry { after: None, reason }) => {
            assert!(reason.starts_with("connection failed"), "{reason}");
            assert!(!reason.contains("127.0.0.1"), "{reason}");
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    assert!(out.healthcheck().await.is_err());
}

#[tokio::test]
async fn a_slow_receiver_times_out_into_a_retry() {
    let mut slow = reply(200, "");
    slow.delay = Duration::from_secs(5);
    let (url, _received) = sink(vec![slow]).await;
    let out = outbound(&url, Duration::from_millis(200));
    match out.send(&forward(1)).await {
        Err(SendError::Retry { after: None, reason }) => assert_eq!(reason, "timed out"),
        other => panic!("expected a retry, got {other:?}"),
    }
}

#[tokio::test]
async fn the_daemon_path_builds_a_sender_that_passes_its_healthcheck() {
    let (url, mut received) = sink(vec![]).await;
    let dir = common::scratch_dir();
    std::fs::write(dir.join("ehr.secret"), b"test-shared-secret\n").unwrap();
    let cfg = common::config(&format!("secret_file = \"ehr.secret\"\nurl = \"{url}\"\ntimeout_ms = 3000"));
    let bcx = BuildContext { account: common::account(), config_dir: dir };
    assert!(carebridge_webhook::build_inbound(&cfg, &bcx).unwrap().is_none());
    let out = carebridge_webhook::build_outbound(&cfg, &bcx).unwrap().unwrap();
    out.healthcheck().await.unwrap();
    assert_eq!(out.send(&forward(3)).await, Ok(Sent::default()));
    // The secret file's trailing newline is not part of the key.
    let r = received.recv().await.unwrap();
    let header = |name: &str| r.headers.get(name).map(|v| v.to_str().unwrap());
    let ok = verify(
        common::SECRET,
        header("x-carebridge-timestamp"),
        header("x-carebridge-signature"),
        &r.body,
        common::now(),
        Duration::from_secs(300),
    );
    assert_eq!(ok, Ok(()));
}
