//! Shared test harness for the end-to-end tests: the real daemon binary as a child process, and
//! a real HTTP sink that verifies carebridge's signatures. Nothing here imitates our own code.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod clinic;
pub mod daemon;
pub mod fhir_server;
pub mod gate;
pub mod load;
#[allow(unused_imports)] // not every test binary reads the mail settings
pub use carebridge_fakes::mail_env;
pub mod sink;
pub mod supervisor;

/// A port that was free a moment ago on 127.0.0.1 (the daemon binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// The secret the tests' webhook accounts share with the test clients and sinks.
pub const SECRET: &str = "test-secret-0123456789";

/// A signed POST of `body` to a daemon's webhook listener, as a web form or an SMS gateway sends
/// it, ready to send: tests that must see transport errors or headers send it themselves.
pub fn signed_post(client: &reqwest::Client, port: u16, body: &[u8]) -> reqwest::RequestBuilder {
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let sig = carebridge_webhook::SigningKey::new(SECRET.as_bytes()).sign(ts, body);
    client
        .post(format!("http://127.0.0.1:{port}/v1/messages"))
        .header("content-type", "application/json")
        .header(carebridge_webhook::TIMESTAMP_HEADER, ts.to_string())
        .header(carebridge_webhook::SIGNATURE_HEADER, sig)
        .body(body.to_vec())
}

/// Signs and POSTs one message to a daemon's webhook listener; returns status and JSON body.
pub async fn post_message(client: &reqwest::Client, port: u16, body: &[u8]) -> (u16, serde_json::Value) {
    let r = signed_post(client, port, body).send().await.expect("request reaches the daemon");
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// The config of the common end-to-end shape: a signed webhook listener `webhook.in` on `port`
/// (senders are phones) routed to the sink `webhook.out` at `sink_url`, fast retries (at most
/// `max_attempts`, else the default), the store in `data`. `extra` is appended (more tables, e.g.
/// `[[directory.patient]]`). Writes the shared secret into `dir`, next to where the config goes.
pub fn relay_config(
    dir: &std::path::Path,
    data: &std::path::Path,
    port: u16,
    sink_url: &str,
    max_attempts: Option<u32>,
    extra: &str,
) -> String {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let attempts = max_attempts.map(|n| format!("max_attempts = {n}")).unwrap_or_default();
    format!(
        r#"
[daemon]
data_dir = "{data}"
[outbox]
retry_initial_ms = 50
retry_max_secs = 1
{attempts}
[webhook.in]
listen = "127.0.0.1:{port}"
secret_file = "secret"
from_kind = "phone"
[webhook.out]
url = "{sink_url}"
secret_file = "secret"
[[route]]
name = "in-to-out"
from = ["webhook.in"]
to = ["webhook.out"]
{extra}
"#,
        data = data.display(),
    )
}

/// POSTs with explicit signature headers (for negative tests).
pub async fn post_raw(
    client: &reqwest::Client,
    port: u16,
    body: &[u8],
    ts: &str,
    sig: &str,
) -> (u16, serde_json::Value) {
    let r = client
        .post(format!("http://127.0.0.1:{port}/v1/messages"))
        .header("content-type", "application/json")
        .header(carebridge_webhook::TIMESTAMP_HEADER, ts)
        .header(carebridge_webhook::SIGNATURE_HEADER, sig)
        .body(body.to_vec())
        .send()
        .await
        .expect("request reaches the daemon");
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// A JSON message as a web form would send it.
pub fn message(id: &str, from: &str, text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "id": id, "from": from, "text": text })).unwrap()
}
