//! No PHI in logs: drives every inbound and outbound path with recognisable personal data and
//! checks that none of it reaches the log output (captured at TRACE for this crate).
#![allow(clippy::unwrap_used)]

mod common;

use carebridge_contract::{Attachment, Delivery, DeliveryId, DeliveryKind, Outbound, RecordId, Redacted};
use carebridge_webhook::{SigningKey, WebhookOutbound};
use common::{Answers, answer, post};
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NAME: &str = "Zelda Quux";
const TEXT: &str = "ZQX my HIV test results";
const PHONE: &str = "+1 555 867 5309";
const FILE: &str = "zq-labs.pdf";
const TOKEN: &str = "zqx-conversation-token";
const MARKERS: [&str; 7] = ["Zelda", "Quux", "ZQX", "8675309", "zq-labs", "zqx-conv", "aGVsbG8"];

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_personal_data_reaches_the_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,carebridge_webhook=trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    // Inbound: recorded, duplicate, malformed (several ways), unauthenticated, unavailable.
    let server = common::start("from_kind = \"phone\"", Answers::Router { unavailable: 0 }).await;
    let client = reqwest::Client::new();
    let good = serde_json::to_vec(&json!({
        "id": "m-1", "from": PHONE, "text": TEXT, "display_name": NAME, "conversation": TOKEN,
        "attachments": [{"filename": FILE, "content_type": "application/pdf", "data_base64": "aGVsbG8="}]
    }))
    .unwrap();
    assert_eq!(answer(post(&client, &server.url, good.clone()).await).await.0, 202);
    assert_eq!(answer(post(&client, &server.url, good.clone()).await).await.0, 202);
    let malformed: Vec<Vec<u8>> = vec![
        format!("{NAME} {TEXT}").into_bytes(),
        serde_json::to_vec(&json!({"id": "m-2", "from": PHONE, "text": [TEXT]})).unwrap(),
        serde_json::to_vec(&json!({"id": "m-3", "from": NAME, "text": TEXT})).unwrap(),
        serde_json::to_vec(&json!({"id": "m-4", "from": PHONE, "text": TEXT, NAME: 1})).unwrap(),
        serde_json::to_vec(&json!({"id": "m-5", "from": PHONE, "text": TEXT,
            "attachments": [{"filename": FILE, "content_type": "x/y", "data_base64": NAME}]}))
        .unwrap(),
    ];
    for body in malformed {
        assert_eq!(answer(post(&client, &server.url, body).await).await.0, 400);
    }
    let unsigned = client.post(&server.url).body(good.clone()).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);

    let held = common::start("submit_timeout_ms = 50", Answers::Never).await;
    assert_eq!(post(&client, &held.url, good).await.status(), 503);

    // Outbound: a receiver that echoes PHI in its error body, and one that is down.
    let app = axum::Router::new().route(
        "/in",
        axum::routing::post(|| async { (axum::http::StatusCode::BAD_REQUEST, format!("unknown patient {NAME}")) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let delivery = Delivery {
        id: DeliveryId(1),
        record_id: RecordId(1),
        account: common::account(),
        kind: DeliveryKind::Forward,
        to: None,
        conversation: Redacted::new(TOKEN.into()),
        patient_id: None,
        sender_label: Some(Redacted::new(NAME.into())),
        subject: None,
        body: Redacted::new(TEXT.into()),
        attachments: vec![Attachment {
            filename: Some(Redacted::new(FILE.into())),
            content_type: "application/pdf".into(),
            data: Redacted::new(b"hello".to_vec()),
        }],
        in_reply_to: vec![],
        rerouted_from: None,
        filed_as: None,
    };
    let key = SigningKey::new(common::SECRET);
    let out =
        WebhookOutbound::new(common::account(), &format!("http://{addr}/in"), Duration::from_secs(5), key.clone())
            .unwrap();
    let err = out.send(&delivery).await.unwrap_err();
    assert!(!err.to_string().contains("Zelda"), "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down =
        WebhookOutbound::new(common::account(), &format!("http://127.0.0.1:{port}/in"), Duration::from_secs(5), key)
            .unwrap();
    assert!(down.send(&delivery).await.is_err());

    server.shutdown.cancel();
    held.shutdown.cancel();
    server.task.await.unwrap().unwrap();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    // The capture works: the paths above did log.
    for expected in
        ["Webhook listening.", "not authenticated", "quarantined", "router unavailable", "Webhook delivery answered."]
    {
        assert!(logs.contains(expected), "no {expected:?} in logs:\n{logs}");
    }
    for marker in MARKERS {
        assert!(!logs.contains(marker), "{marker:?} leaked into logs:\n{logs}");
    }
}
