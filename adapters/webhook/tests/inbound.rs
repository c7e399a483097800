//! The inbound listener over real loopback HTTP, with a stand-in router answering receipts
//! through the real `Submitter` channel.
#![allow(clippy::unwrap_used)]

mod common;

use carebridge_contract::config::{BuildContext, ConfigError};
use carebridge_contract::{AdapterError, AddressKind, Health, HealthReporter, InboundContext, Submitter};
use common::{Answers, FakeRouter, Seen, answer, post, post_signed, start};
use serde_json::json;
use sha2::Digest as _;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn message(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"id": id, "from": "+1 (416) 555-0199", "text": "hello"})).unwrap()
}

/// A healthy server answers its health check (proves it is still serving after a bad request).
async fn assert_serving(client: &reqwest::Client, server: &common::Server) {
    let (status, body) = answer(client.get(format!("{}/healthz", server.base())).send().await.unwrap()).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
}

#[tokio::test]
async fn a_message_is_recorded_then_recognised_as_a_duplicate() {
    let mut server = start("from_kind = \"phone\"", Answers::Router { unavailable: 0 }).await;
    let client = reqwest::Client::new();
    let body = serde_json::to_vec(&json!({
        "id": "form-1",
        "from": "+1 (416) 555-0199",
        "text": "I need a refill",
        "display_name": "Ann Example",
        "conversation": "tok-abc",
        "in_reply_to": ["ehr-77", "<m1@clinic.test>"],
        "attachments": [{"filename": "a.txt", "content_type": "text/plain", "data_base64": "aGVsbG8="}]
    }))
    .unwrap();

    let (status, json) = answer(post(&client, &server.url, body.clone()).await).await;
    assert_eq!(status, 202);
    assert_eq!(json, json!({"status": "recorded", "record_id": "rec-0000000001"}));
    let Some(Seen::Message(e)) = server.next_seen().await else { panic!("expected a message") };
    assert_eq!(e.source.account, common::account());
    assert_eq!(e.source.native_id, "form-1");
    assert_eq!(e.native_message_id.as_deref(), Some("form-1"));
    assert_eq!(e.from.kind, AddressKind::Phone);
    assert_eq!(e.from.key().expose(), "phone:+14165550199");
    assert_eq!(e.body.expose(), "I need a refill");
    assert_eq!(e.display_name.as_ref().unwrap().expose(), "Ann Example");
    assert_eq!(e.conversation_token.as_deref(), Some("tok-abc"));
    assert_eq!(e.references, ["ehr-77", "<m1@clinic.test>"]);
    assert_eq!(e.attachments.len(), 1);
    assert_eq!(e.attachments[0].content_type, "text/plain");
    assert_eq!(e.attachments[0].data.expose(), b"hello");

    // The client retries (a new signature, same id): answered as a duplicate of the same record.
    let (status, json) = answer(post(&client, &server.url, body).await).await;
    assert_eq!((status, json), (202, json!({"status": "duplicate", "record_id": "rec-0000000001"})));
    let (status, json) = answer(post(&client, &server.url, message("form-2")).await).await;
    assert_eq!((status, json), (202, json!({"status": "recorded", "record_id": "rec-0000000002"})));
}

#[tokio::test]
async fn the_answer_waits_for_the_receipt() {
    let mut server = start("", Answers::OnDemand).await;
    let client = reqwest::Client::new();
    let url = server.url.clone();
    let request = tokio::spawn(async move { answer(post(&client, &url, message("m-1")).await).await });

    // The router has the submission but has not answered: the client must not have its 202.
    assert!(matches!(server.next_seen().await, Some(Seen::Message(_))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!request.is_finished(), "answered before the receipt");

    server.release();
    let (status, json) = request.await.unwrap();
    assert_eq!((status, json), (202, json!({"status": "recorded", "record_id": "rec-0000000001"})));
}

#[tokio::test]
async fn unauthenticated_requests_are_refused_and_not_submitted() {
    let mut server = start("", Answers::Router { unavailable: 0 }).await;
    let client = reqwest::Client::new();
    let body = message("m-1");
    let now = common::now();
    let other_body = message("m-2");

    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "signature does not match",
            client
                .post(&server.url)
                .header("x-carebridge-timestamp", now.to_string())
                .header("x-carebridge-signature", carebridge_webhook::sign(b"wrong secret", now, &body))
                .body(body.clone()),
        ),
        (
            "signature does not match",
            client
                .post(&server.url)
                .header("x-carebridge-timestamp", now.to_string())
                .header("x-carebridge-signature", carebridge_webhook::sign(common::SECRET, now, &other_body))
                .body(body.clone()),
        ),
        (
            "timestamp is too old",
            client
                .post(&server.url)
                .header("x-carebridge-timestamp", (now - 301).to_string())
                .header("x-carebridge-signature", carebridge_webhook::sign(common::SECRET, now - 301, &body))
                .body(body.clone()),
        ),
        (
            "timestamp is in the future",
            client
                .post(&server.url)
                .header("x-carebridge-timestamp", (now + 3600).to_string())
                .header("x-carebridge-signature", carebridge_webhook::sign(common::SECRET, now + 3600, &body))
                .body(body.clone()),
        ),
        (
            "missing X-Carebridge-Timestamp",
            client
                .post(&server.url)
                .header("x-carebridge-signature", carebridge_webhook::sign(common::SECRET, now, &body))
                .body(body.clone()),
        ),
        (
            "missing X-Carebridge-Signature",
            client.post(&server.url).header("x-carebridge-timestamp", now.to_string()).body(body.clone()),
        ),
        (
            "must be v1=",
            client
                .post(&server.url)
                .header("x-carebridge-timestamp", now.to_string())
                .header("x-carebridge-signature", "v1=not-hex")
                .body(body.clone()),
        ),
        // Malformed input that is not signed is refused, not quarantined: strangers cannot
        // fill the quarantine.
        ("missing X-Carebridge-Timestamp", client.post(&server.url).body("not json")),
    ];
    for (expected, request) in cases {
        let (status, json) = answer(request.send().await.unwrap()).await;
        assert_eq!(status, 401, "{expected}");
        assert!(json["error"].as_str().unwrap().contains(expected), "{json} lacks {expected}");
        assert_serving(&client, &server).await;
    }

    // None of them reached the router: the next thing it sees is this good request.
    let (status, _) = answer(post(&client, &server.url, body).await).await;
    assert_eq!(status, 202);
    let Some(Seen::Message(e)) = server.next_seen().await else { panic!("expected a message") };
    assert_eq!(e.source.native_id, "m-1");
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let mut server = start("max_body_bytes = 1024", Answers::Router { unavailable: 0 }).await;
    let client = reqwest::Client::new();
    let big = serde_json::to_vec(&json!({"id": "big", "from": "x", "text": "a".repeat(2000)})).unwrap();
    let (status, json) = answer(post(&client, &server.url, big).await).await;
    assert_eq!(status, 413);
    assert_eq!(json, json!({"error": "body is larger than 1024 bytes"}));

    // A body exactly at the limit is fine.
    let mut at_limit = serde_json::to_vec(&json!({"id": "fits", "from": "x", "text": ""})).unwrap();
    let pad = 1024 - at_limit.len();
    at_limit = serde_json::to_vec(&json!({"id": "fits", "from": "x", "text": "a".repeat(pad)})).unwrap();
    assert_eq!(at_limit.len(), 1024);
    let (status, _) = answer(post(&client, &server.url, at_limit).await).await;
    assert_eq!(status, 202);
    let Some(Seen::Message(e)) = server.next_seen().await else { panic!("expected a message") };
    assert_eq!(e.source.native_id, "fits", "the oversized request must not have been submitted");
}

#[tokio::test]
async fn signed_malformed_input_is_quarantined_and_answered_400() {
    let mut server = start("", Answers::Router { unavailable: 0 }).await;
    let client = reqwest::Client::new();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"Ann Example wants a refill".to_vec(), "body is not valid JSON: expected value at line 1 column 1"),
        (
            b"{\"id\":\"m\",\"from\":\"x\",\"text\":\"caf\xe9\"}".to_vec(),
            "body is not valid UTF-8 (invalid byte at offset 32)",
        ),
        (
            br#"{"id":"m","text":"Ann Example"}"#.to_vec(),
            "body is not a valid message: missing field `from` at line 1 column 31",
        ),
        (
            br#"{"id":"m","from":"x","text":"t","attachments":[{"content_type":"image/png","data_base64":"Ann Example"}]}"#
                .to_vec(),
            "attachments[0].data_base64 is not valid base64: invalid character at offset 3",
        ),
        (br#"{"id":"a b","from":"x","text":"t"}"#.to_vec(), "field `id` must be 1-200 characters"),
    ];
    for (i, (body, expected)) in cases.into_iter().enumerate() {
        let (status, json) = answer(post(&client, &server.url, body.clone()).await).await;
        assert_eq!(status, 400, "{expected}");
        let error = json["error"].as_str().unwrap();
        assert!(error.starts_with(expected), "{error:?} does not start with {expected:?}");
        assert!(!error.contains("Ann"), "{error:?} echoes input");
        let quarantine_id = format!("rec-{:010}", i + 1);
        assert_eq!(json["quarantine_id"], json!(quarantine_id));

        let Some(Seen::Malformed { native_id, raw, reason }) = server.next_seen().await else {
            panic!("expected a malformed submission")
        };
        assert_eq!(raw, body, "the raw bytes are quarantined as received");
        assert_eq!(native_id, format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body))));
        assert_eq!(reason, error);
        assert_serving(&client, &server).await;
    }
}

#[tokio::test]
async fn no_receipt_in_time_is_503_with_retry_after() {
    let mut server = start("submit_timeout_ms = 200", Answers::Never).await;
    let client = reqwest::Client::new();
    for id in ["m-1", "m-2"] {
        let response = post(&client, &server.url, message(id)).await;
        assert_eq!(response.headers().get("retry-after").unwrap(), "5");
        let (status, json) = answer(response).await;
        assert_eq!((status, json), (503, json!({"error": "not recorded, try again later"})));
        assert!(matches!(server.next_seen().await, Some(Seen::Message(_))));
        assert_serving(&client, &server).await;
    }
    // Malformed input is not answered 400 without a quarantine receipt either.
    let response = post(&client, &server.url, "nonsense").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers().get("retry-after").unwrap(), "5");
}

#[tokio::test]
async fn a_stopped_router_is_503_and_health_says_so() {
    let (submitter, rx) = Submitter::channel(4);
    drop(rx);
    let cfg = common::config("secret_env = \"X\"\nlisten = \"127.0.0.1:1\"");
    let server = common::start_with(cfg, submitter, None).await;
    let client = reqwest::Client::new();
    let response = post(&client, &server.url, message("m-1")).await;
    assert_eq!(response.headers().get("retry-after").unwrap(), "5");
    assert_eq!(answer(response).await.0, 503);
    let (status, json) = answer(client.get(format!("{}/healthz", server.base())).send().await.unwrap()).await;
    assert_eq!((status, json), (503, json!({"status": "router unavailable"})));
}

#[tokio::test]
async fn other_paths_and_methods_get_json_errors() {
    let server = start("path = \"/hooks/sms\"", Answers::Router { unavailable: 0 }).await;
    let client = reqwest::Client::new();
    assert!(server.url.ends_with("/hooks/sms"));
    let (status, json) = answer(client.get(&server.url).send().await.unwrap()).await;
    assert_eq!((status, json), (405, json!({"error": "method not allowed"})));
    let (status, json) = answer(post(&client, &format!("{}/v1/messages", server.base()), message("m")).await).await;
    assert_eq!((status, json), (404, json!({"error": "not found"})));
    let (status, _) = answer(client.post(format!("{}/healthz", server.base())).send().await.unwrap()).await;
    assert_eq!(status, 405);
    assert_serving(&client, &server).await;
    let (status, _) = answer(post(&client, &server.url, message("m")).await).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_stops() {
    let mut server = start("", Answers::OnDemand).await;
    let client = reqwest::Client::new();
    let url = server.url.clone();
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { answer(post(&client, &url, message("m-1")).await).await })
    };
    assert!(matches!(server.next_seen().await, Some(Seen::Message(_))));

    server.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!server.task.is_finished(), "stopped with a request in flight");
    server.release();
    assert_eq!(in_flight.await.unwrap().0, 202);
    let base = server.base();
    server.task.await.unwrap().unwrap();
    // Not accepting any more.
    let refused = reqwest::Client::new().get(format!("{base}/healthz")).send().await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn the_daemon_path_builds_binds_and_runs() {
    let dir = common::scratch_dir();
    std::fs::write(dir.join("forms.secret"), b"test-shared-secret\n").unwrap();
    // Find a free port, then let the adapter bind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = common::config(&format!("secret_file = \"forms.secret\"\nlisten = \"127.0.0.1:{port}\""));
    let bcx = BuildContext { account: common::account(), config_dir: dir };
    assert!(carebridge_webhook::build_outbound(&cfg, &bcx).unwrap().is_none());
    let inbound = carebridge_webhook::build_inbound(&cfg, &bcx).unwrap().unwrap();

    let mut router = FakeRouter::start(Answers::Router { unavailable: 0 });
    let submitter = router.submitter();
    let shutdown = CancellationToken::new();
    let health = HealthReporter::new();
    let cx =
        InboundContext { account: common::account(), submitter, shutdown: shutdown.clone(), health: health.clone() };
    let task = tokio::spawn(inbound.run(cx));
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/messages");
    let mut answered = None;
    for _ in 0..100 {
        match client.post(&url).body(message("d-1")).send().await {
            Ok(r) => {
                answered = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await, // not bound yet
        }
    }
    // The unsigned probe is refused; a signed message is recorded.
    assert_eq!(answer(answered.expect("listener never came up")).await.0, 401);
    let (status, _) = answer(post(&client, &url, message("d-1")).await).await;
    assert_eq!(status, 202);
    let i = router.next_arrival(common::WAIT).await.expect("a submission");
    assert!(router.with(i, |s| matches!(common::seen(&s.submission), Seen::Message(_))));
    assert_eq!(health.get(), Health::Up, "a listening webhook reports itself up");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_bind_failure_is_a_config_error_naming_the_address() {
    let dir = common::scratch_dir();
    std::fs::write(dir.join("s"), b"x").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = common::config(&format!("secret_file = \"s\"\nlisten = \"{addr}\""));
    let bcx = BuildContext { account: common::account(), config_dir: dir };
    let inbound = carebridge_webhook::build_inbound(&cfg, &bcx).unwrap().unwrap();
    let (submitter, _rx) = Submitter::channel(1);
    let health = HealthReporter::new();
    let cx = InboundContext {
        account: common::account(),
        submitter,
        shutdown: CancellationToken::new(),
        health: health.clone(),
    };
    match inbound.run(cx).await {
        Err(AdapterError::Config(ConfigError::Listen { addr: a, .. })) => assert_eq!(a, addr.to_string()),
        other => panic!("expected a config error, got {other:?}"),
    }
    assert_eq!(health.get(), Health::Starting, "a listener that never bound never reported up");
}

#[tokio::test]
async fn a_missing_secret_fails_the_build() {
    let cfg = common::config("secret_file = \"does-not-exist\"\nlisten = \"127.0.0.1:1\"");
    let bcx = BuildContext { account: common::account(), config_dir: common::scratch_dir() };
    match carebridge_webhook::build_inbound(&cfg, &bcx) {
        Err(AdapterError::Config(ConfigError::Unreadable { what, path, kind })) => {
            assert_eq!((what, kind), ("secret file", std::io::ErrorKind::NotFound));
            assert!(path.ends_with("does-not-exist"), "{}", path.display());
        }
        other => panic!("expected a config error, got {:?}", other.map(|o| o.is_some())),
    }
}

#[tokio::test]
async fn signed_with_an_old_timestamp_inside_the_skew_is_fine() {
    let mut server = start("max_skew_secs = 60", Answers::Router { unavailable: 0 }).await;
    let client = reqwest::Client::new();
    let (status, _) =
        answer(post_signed(&client, &server.url, common::SECRET, common::now() - 30, message("m")).await).await;
    assert_eq!(status, 202);
    assert!(matches!(server.next_seen().await, Some(Seen::Message(_))));
    let (status, _) =
        answer(post_signed(&client, &server.url, common::SECRET, common::now() - 120, message("n")).await).await;
    assert_eq!(status, 401);
}
