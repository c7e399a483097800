//! Webhook mode over real loopback HTTP: the secret header is checked, 200 means recorded, 503
//! means Telegram must try again, and setWebhook wires the fake Bot API to our server.

mod common;
use carebridge_fakes::bot_api as fake_bot_api;

use carebridge_contract::testkit::{Answers, FakeRouter};
use carebridge_contract::{AdapterError, Health, HealthReporter, Inbound, InboundContext, Receipt, Submission};
use carebridge_telegram::SECRET_HEADER;
use fake_bot_api::FakeBotApi;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "hook_SECRET-123";

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), AdapterError>>,
    health: HealthReporter,
}

async fn start(fake: &FakeBotApi, router: &FakeRouter, extra: &str) -> Running {
    let cfg = common::config(
        &fake.url(),
        &format!(
            "mode = \"webhook\"\nwebhook_listen = \"127.0.0.1:0\"\nwebhook_path = \"/tg/hook\"\nwebhook_secret_file = \"hook-secret\"\n{extra}"
        ),
    );
    let cx = common::build_context(common::config_dir(fake.token()));
    let mut inbound = carebridge_telegram::inbound(&cfg, &cx).expect("builds");
    let addr = inbound.bind().await.expect("binds").expect("webhook mode has an address");
    let shutdown = CancellationToken::new();
    let health = HealthReporter::new();
    let icx = InboundContext {
        account: common::account(),
        submitter: router.submitter(),
        shutdown: shutdown.clone(),
        health: health.clone(),
    };
    let task = tokio::spawn(Box::new(inbound).run(icx));
    Running { addr, shutdown, task, health }
}

impl Running {
    fn url(&self) -> String {
        format!("http://{}/tg/hook", self.addr)
    }
    async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        let r = r.expect("server stops after shutdown").expect("no panic");
        assert!(r.is_ok(), "{r:?}");
    }
}

fn update(id: i64, text: &str) -> String {
    json!({"update_id": id, "message": {
        "message_id": 5, "date": 1_700_000_000,
        "chat": {"id": 42, "type": "private", "first_name": "Ann"},
        "from": {"id": 42, "is_bot": false, "first_name": "Ann"},
        "text": text
    }})
    .to_string()
}

async fn post(url: &str, secret: Option<&str>, body: String) -> reqwest::StatusCode {
    let mut req = reqwest::Client::new().post(url).header("content-type", "application/json").body(body);
    if let Some(s) = secret {
        req = req.header(SECRET_HEADER, s);
    }
    req.send().await.expect("webhook answers").status()
}

#[tokio::test]
async fn the_secret_header_is_required_and_checked() {
    let fake = FakeBotApi::start().await;
    let router = FakeRouter::start(Answers::Router { unavailable: 0 });
    let run = start(&fake, &router, "").await;

    assert_eq!(post(&run.url(), None, update(1, "hi")).await, 401);
    assert_eq!(post(&run.url(), Some("hook_SECRET-124"), update(1, "hi")).await, 403);
    assert_eq!(post(&run.url(), Some(""), update(1, "hi")).await, 403);
    assert_eq!(router.len(), 0, "nothing reached the router");
    assert_eq!(post(&run.url(), Some(SECRET), update(1, "hi")).await, 200);
    router.with(0, |s| match &s.submission {
        Submission::Message(e) => assert_eq!(e.body.expose(), "hi"),
        other => panic!("{other:?}"),
    });
    assert_eq!(run.health.get(), Health::Up, "a listening webhook server reports itself up");
    // The path is exact: a token-looking path elsewhere is not served.
    assert_eq!(post(&format!("http://{}/tg/other", run.addr), Some(SECRET), update(2, "x")).await, 404);
    run.stop().await;
}

/// Sends only a request head over a raw socket (no body follows) and returns the status line of
/// the answer: a server that wanted the body first would never answer.
async fn status_of_head_only(addr: SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connects");
    s.write_all(head.as_bytes()).await.expect("writes the head");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("answered without waiting for the body")
        .expect("reads");
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn the_secret_is_checked_before_the_body_is_read() {
    let fake = FakeBotApi::start().await;
    let router = FakeRouter::start(Answers::Router { unavailable: 0 });
    let run = start(&fake, &router, "").await;
    // A 3 MB upload announced without the secret: refused from its head alone.
    let head = "POST /tg/hook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 3000000\r\n\r\n";
    assert_eq!(status_of_head_only(run.addr, head).await, "HTTP/1.1 401 Unauthorized");
    let wrong =
        format!("POST /tg/hook HTTP/1.1\r\nhost: x\r\n{SECRET_HEADER}: nope\r\ncontent-length: 3000000\r\n\r\n");
    assert_eq!(status_of_head_only(run.addr, &wrong).await, "HTTP/1.1 403 Forbidden");
    // The same body sent in full without the secret is 401 too, not 413.
    assert_eq!(post(&run.url(), None, "x".repeat(3_000_000)).await, 401);
    // Authenticated, the size limit applies.
    assert_eq!(post(&run.url(), Some(SECRET), "x".repeat(3_000_000)).await, 413);
    assert_eq!(router.len(), 0, "nothing reached the router");
    run.stop().await;
}

#[tokio::test]
async fn ok_only_after_a_durable_receipt() {
    let fake = FakeBotApi::start().await;
    let router = FakeRouter::start(Answers::Router { unavailable: 1 });
    let run = start(&fake, &router, "").await;
    assert_eq!(post(&run.url(), Some(SECRET), update(7, "call me")).await, 503);
    router.with(0, |s| assert_eq!(s.answer, Receipt::Unavailable));
    assert_eq!(post(&run.url(), Some(SECRET), update(7, "call me")).await, 200);
    assert_eq!(post(&run.url(), Some(SECRET), update(7, "call me")).await, 200, "a duplicate is acked");
    router.with(2, |s| assert!(matches!(s.answer, Receipt::Duplicate(_))));
    // Malformed input is quarantined and acked, so Telegram stops resending it.
    assert_eq!(post(&run.url(), Some(SECRET), "{\"update_id\": 8, \"message\": 1}".to_string()).await, 200);
    router.with(3, |s| assert!(matches!(s.submission, Submission::Malformed { .. })));
    assert_eq!(post(&run.url(), Some(SECRET), "\u{0}garbage".to_string()).await, 200);
    run.stop().await;
}

#[tokio::test]
async fn set_webhook_registers_the_secret_and_telegram_pushes_updates() {
    let fake = FakeBotApi::start().await;
    // The first push is refused (router unavailable): the fake retries, as Telegram does.
    let router = FakeRouter::start(Answers::Router { unavailable: 1 });
    // The URL is only known after binding, so register it through a second build: bind a
    // port first, then start with that exact address.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let cfg = common::config(
        &fake.url(),
        &format!(
            "mode = \"webhook\"\nwebhook_listen = \"{addr}\"\nwebhook_path = \"/tg/hook\"\nwebhook_secret_file = \"hook-secret\"\nwebhook_url = \"http://{addr}/tg/hook\"\n"
        ),
    );
    let cx = common::build_context(common::config_dir(fake.token()));
    let inbound = carebridge_telegram::build_inbound(&cfg, &cx).expect("builds").expect("inbound");
    let shutdown = CancellationToken::new();
    let icx = InboundContext {
        account: common::account(),
        submitter: router.submitter(),
        shutdown: shutdown.clone(),
        health: Default::default(),
    };
    let task = tokio::spawn(inbound.run(icx));

    let u = fake.patient_text(42, "Ann", "pushed to us");
    fake.wait_until("setWebhook", |f| f.webhook().is_some()).await;
    let (url, secret) = fake.webhook().expect("webhook set");
    assert_eq!(url, format!("http://{addr}/tg/hook"));
    assert_eq!(secret.as_deref(), Some(SECRET));
    let call = &fake.calls("setWebhook")[0];
    assert_eq!(call.params["max_connections"], 1, "one update at a time keeps the order");

    fake.wait_until("the update to be accepted", |f| f.pending_update_ids().is_empty()).await;
    let posts = fake.webhook_posts();
    assert_eq!(posts.first(), Some(&(u.update_id, 503)));
    assert_eq!(posts.last(), Some(&(u.update_id, 200)));
    router.with(1, |s| match &s.submission {
        Submission::Message(e) => assert_eq!(e.body.expose(), "pushed to us"),
        other => panic!("{other:?}"),
    });
    // getUpdates is refused while a webhook is set, exactly like Telegram.
    assert_eq!(fake.calls("getUpdates").len(), 0);

    shutdown.cancel();
    let r = tokio::time::timeout(Duration::from_secs(30), task).await.expect("stops").expect("no panic");
    assert!(r.is_ok(), "{r:?}");
}
