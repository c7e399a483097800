//! The documented bash + openssl + curl example (docs/send-signed.sh, quoted in the crate docs
//! and the README) really produces a request the listener accepts.
#![allow(clippy::unwrap_used)]

mod common;

use carebridge_contract::AddressKind;
use common::{Answers, Seen};
use std::path::Path;
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
        || Command::new(tool).arg("version").output().is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn the_documented_curl_example_is_accepted() {
    if !["bash", "openssl", "curl"].iter().all(|t| have(t)) {
        eprintln!("skipped: bash, openssl or curl is not installed");
        return;
    }
    let mut server = common::start("from_kind = \"phone\"", Answers::Router { unavailable: 0 }).await;
    let dir = common::scratch_dir();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, [common::SECRET, b"\n"].concat()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/send-signed.sh");
    let url = server.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash").arg(script).env("CAREBRIDGE_URL", url).env("SECRET_FILE", secret_file).output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout, r#"{"status":"recorded","record_id":"rec-0000000001"}"#);
    let Some(Seen::Message(e)) = server.next_seen().await else { panic!("expected a message") };
    assert_eq!(e.source.native_id, "form-2024-000123");
    assert_eq!(e.from.kind, AddressKind::Phone);
    assert_eq!(e.from.key().expose(), "phone:+14165550199");
}
