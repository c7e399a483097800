//! SIGHUP through the real daemon: a reloaded config adds routes, accounts and policy rules to
//! the running daemon, removes accounts (their ports stop accepting), and an invalid one, or one
//! that changes what needs a restart, is refused whole with every problem in the log while the
//! old config keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::time::Duration;
use support::daemon::{Daemon, wait_http};
use support::sink::{Mode, Sink};
use support::{SECRET, free_port, message, post_message};

const PATIENT: &str = "+14165550199";

/// One daemon with `webhook.in` (patients post here), `webhook.out` (a sink), the admin API,
/// and whatever a test adds.
struct Setup {
    d: Daemon,
    in_port: u16,
    admin_port: u16,
    sink: Sink,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start(extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        std::fs::write(dir.path().join("admin-token"), "admin-test-token").unwrap();
        let sink = Sink::start(Mode::Accept).await;
        let (in_port, admin_port) = (free_port(), free_port());
        let text = config(dir.path(), in_port, admin_port, &sink.url(), "data", extra);
        let d = Daemon::start(dir.path(), &text);
        let s = Setup { d, in_port, admin_port, sink, dir };
        assert!(
            wait_http(&format!("http://127.0.0.1:{in_port}/healthz"), Duration::from_secs(20)).await,
            "daemon did not come up: {:?}",
            s.d.logs()
        );
        s
    }

    /// The config: the fixed parts plus `extra` (routes, accounts, rules).
    fn toml(&self, extra: &str) -> String {
        self.toml_with("data", extra)
    }

    fn toml_with(&self, data: &str, extra: &str) -> String {
        config(self.dir.path(), self.in_port, self.admin_port, &self.sink.url(), data, extra)
    }

    /// Posts one message to `port`; the HTTP status.
    async fn post(&self, port: u16, id: &str, text: &str) -> u16 {
        let c = reqwest::Client::new();
        let (status, body) = post_message(&c, port, &message(id, PATIENT, text)).await;
        assert!(status != 202 || body["status"] == "recorded", "{body}");
        status
    }

    /// The texts the sink accepted, in order.
    fn forwarded(&self) -> Vec<String> {
        self.sink.received().iter().map(|r| r.body["text"].as_str().unwrap_or_default().to_string()).collect()
    }

    fn review_list(&self) -> Vec<serde_json::Value> {
        let (ok, out, err) = self.d.cli(&["review", "list"]);
        assert!(ok, "review list failed: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
    }
}

/// The config: the fixed parts, the store in `dir/<data>`, plus `extra` (routes, accounts,
/// rules).
fn config(dir: &std::path::Path, in_port: u16, admin: u16, sink: &str, data: &str, extra: &str) -> String {
    format!(
        r#"
[daemon]
data_dir = "{data_dir}"

[outbox]
retry_initial_ms = 50
retry_max_secs = 1

[admin]
listen = "127.0.0.1:{admin}"
token_file = "admin-token"

[webhook.in]
listen = "127.0.0.1:{in_port}"
secret_file = "secret"
from_kind = "phone"

[webhook.out]
url = "{sink}"
secret_file = "secret"

[[directory.patient]]
id = "p-0001"
addresses = ["phone:{PATIENT}"]
{extra}
"#,
        data_dir = dir.join(data).display(),
    )
}

const ROUTE: &str = r#"
[[route]]
name = "in-to-out"
from = ["webhook.in"]
to = ["webhook.out"]
"#;

/// `webhook.extra` on `port` (a u32 so a test can write one that does not exist), routed to
/// `webhook.out`.
fn extra_account(port: u32) -> String {
    format!(
        r#"
[webhook.extra]
listen = "127.0.0.1:{port}"
secret_file = "secret"
from_kind = "phone"

[[route]]
name = "extra-to-out"
from = ["webhook.extra"]
to = ["webhook.out"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_added_by_reload_starts_forwarding() {
    let mut s = Setup::start("").await;
    assert_eq!(s.post(s.in_port, "before", "hello before the route").await, 202);

    assert!(s.d.reload(&s.toml(ROUTE)), "reload applied: {:?}", s.d.logs());
    let line = s.d.logs().into_iter().find(|l| l.contains("Configuration reloaded.")).unwrap();
    assert!(line.contains("routes=1") && line.contains("accounts_added=0"), "{line}");

    assert_eq!(s.post(s.in_port, "after", "hello after the route").await, 202);
    assert!(s.sink.wait_for(1, Duration::from_secs(10)).await, "forwarded once the route exists");
    assert_eq!(s.forwarded(), ["hello after the route"]);

    assert!(s.d.terminate());
    let export = s.d.export();
    let record = |id: &str| {
        export.iter().find(|l| l["type"] == "record" && l["record"]["source"]["native_id"] == id).unwrap().clone()
    };
    assert_eq!(record("before")["record"]["decisions"], serde_json::json!([]), "recorded, routed nowhere");
    assert_eq!(record("after")["record"]["decisions"][0]["account"], "webhook.out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_added_by_reload_accepts_and_a_removed_one_stops_listening() {
    let mut s = Setup::start(ROUTE).await;
    let extra = free_port();
    let extra_u32 = u32::from(extra);

    assert!(s.d.reload(&s.toml(&format!("{ROUTE}{}", extra_account(extra_u32)))), "{:?}", s.d.logs());
    let line = s.d.logs().into_iter().find(|l| l.contains("Configuration reloaded.")).unwrap();
    assert!(line.contains("accounts_added=1") && line.contains("routes=2"), "{line}");
    assert!(wait_http(&format!("http://127.0.0.1:{extra}/healthz"), Duration::from_secs(10)).await);
    assert_eq!(s.post(extra, "x1", "hello from the new account").await, 202);
    assert!(s.sink.wait_for(1, Duration::from_secs(10)).await, "the new account's route forwards");

    assert!(s.d.reload(&s.toml(ROUTE)), "{:?}", s.d.logs());
    let from = s.d.logs().iter().rposition(|l| l.contains("Reloading the configuration.")).unwrap();
    let after: Vec<String> = s.d.logs().into_iter().skip(from).collect();
    assert!(after.iter().any(|l| l.contains("Receiver stopped.") && l.contains("webhook.extra")), "{after:?}");
    assert!(after.iter().any(|l| l.contains("Configuration reloaded.") && l.contains("accounts_removed=1")));
    assert!(std::net::TcpStream::connect(("127.0.0.1", extra)).is_err(), "the removed account's port is closed");

    // The accounts that stayed are untouched.
    assert_eq!(s.post(s.in_port, "i1", "hello as before").await, 202);
    assert!(s.sink.wait_for(2, Duration::from_secs(10)).await);
    assert_eq!(s.forwarded(), ["hello from the new account", "hello as before"]);
    assert!(s.d.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_with_every_problem_and_the_old_one_keeps_serving() {
    let mut s = Setup::start(ROUTE).await;
    // Two problems: an unknown key in one account, a port that does not exist in another.
    let bad = s
        .toml(&format!("{ROUTE}{}", extra_account(70000)))
        .replace("from_kind = \"phone\"\n\n[webhook.out]", "from_kind = \"phone\"\ncolour = \"blue\"\n\n[webhook.out]");
    assert!(bad.contains("colour") && bad.contains(":70000"));
    let from = s.d.log_len();
    assert!(!s.d.reload(&bad), "refused: {:?}", s.d.logs());
    assert!(s.d.wait_log("webhook.in", from, Duration::from_secs(5)));
    let problems = |s: &Setup| -> Vec<String> {
        s.d.logs().into_iter().skip(from).filter(|l| l.contains("  - ")).collect::<Vec<_>>()
    };
    assert!(s.d.wait_log("webhook.extra", from, Duration::from_secs(5)), "{:?}", problems(&s));
    let p = problems(&s);
    assert!(p.iter().any(|l| l.contains("webhook.in") && l.contains("colour")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("webhook.extra")), "{p:?}");
    let header = s.d.logs().into_iter().skip(from).find(|l| l.contains("Configuration reload refused.")).unwrap();
    assert!(header.contains("problems=2"), "{header}");

    // The old config still runs: same route, same account, nothing new listening.
    assert_eq!(s.post(s.in_port, "still", "hello after a refused reload").await, 202);
    assert!(s.sink.wait_for(1, Duration::from_secs(10)).await);
    assert_eq!(s.forwarded(), ["hello after a refused reload"]);
    assert!(!s.d.logs().iter().any(|l| l.contains("Configuration reloaded.")));
    assert!(s.d.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_rule_added_by_reload_holds_the_next_message() {
    let mut s = Setup::start(ROUTE).await;
    assert_eq!(s.post(s.in_port, "m1", "hello before the rule").await, 202);
    assert!(s.sink.wait_for(1, Duration::from_secs(10)).await, "forwarded before the rule");

    let rule = r#"
[[policy.rule]]
id = "clinic.hold-for-ehr"
when = { accounts = ["webhook.out"] }
action = "hold"
"#;
    assert!(s.d.reload(&s.toml(&format!("{ROUTE}{rule}"))), "{:?}", s.d.logs());
    let line = s.d.logs().into_iter().find(|l| l.contains("Configuration reloaded.")).unwrap();
    assert!(line.contains("rules=1"), "{line}");

    assert_eq!(s.post(s.in_port, "m2", "hello after the rule").await, 202);
    let mut held = Vec::new();
    for _ in 0..200 {
        held = s.review_list();
        if !held.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held.len(), 1, "the next message is held: {held:?}");
    assert_eq!(held[0]["account"], "webhook.out");
    assert_eq!(held[0]["rules"], serde_json::json!(["clinic.hold-for-ehr"]));
    assert_eq!(s.forwarded(), ["hello before the rule"], "the held one is not sent");
    assert!(s.d.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_data_dir_is_refused_as_needing_a_restart() {
    let mut s = Setup::start(ROUTE).await;
    let from = s.d.log_len();
    assert!(!s.d.reload(&s.toml_with("elsewhere", ROUTE)), "refused: {:?}", s.d.logs());
    assert!(s.d.wait_log("daemon.data_dir", from, Duration::from_secs(5)));
    let line = s.d.logs().into_iter().skip(from).find(|l| l.contains("daemon.data_dir")).unwrap();
    assert!(line.contains("requires a restart"), "{line}");
    assert!(!s.dir.path().join("elsewhere").exists(), "nothing opened there");

    assert_eq!(s.post(s.in_port, "m1", "hello after the refusal").await, 202);
    assert!(s.sink.wait_for(1, Duration::from_secs(10)).await, "still serving on the old config");
    assert!(s.d.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_sender_takes_over_its_unsent_deliveries_and_sends_each_once() {
    let mut s = Setup::start(ROUTE).await;
    s.sink.set_mode(Mode::Always(503)); // the old endpoint is down
    let from = s.d.log_len();
    for i in 0..3 {
        assert_eq!(s.post(s.in_port, &format!("m{i}"), &format!("hello {i}")).await, 202);
    }
    assert!(s.d.wait_log("will retry", from, Duration::from_secs(10)), "deliveries are waiting");

    // The clinic moves its endpoint; the account's section changes, so its worker restarts.
    let moved = Sink::start(Mode::Accept).await;
    let text = s.toml(ROUTE).replace(&s.sink.url(), &moved.url());
    assert!(s.d.reload(&text), "{:?}", s.d.logs());
    let line = s.d.logs().into_iter().find(|l| l.contains("Configuration reloaded.")).unwrap();
    assert!(line.contains("accounts_changed=1"), "{line}");
    assert!(moved.wait_for(3, Duration::from_secs(20)).await, "the new endpoint gets what was waiting");

    // One more after the reload goes the new way too.
    assert_eq!(s.post(s.in_port, "m3", "hello 3").await, 202);
    assert!(moved.wait_for(4, Duration::from_secs(10)).await);
    assert!(s.d.terminate());
    let got = moved.received();
    let mut texts: Vec<String> = got.iter().map(|r| r.body["text"].as_str().unwrap().to_string()).collect();
    texts.sort();
    assert_eq!(texts, ["hello 0", "hello 1", "hello 2", "hello 3"], "each delivery sent once");
    let export = s.d.export();
    for l in export.iter().filter(|l| l["type"] == "record") {
        let sent = l["events"].as_array().unwrap().iter().filter(|e| e["outcome"] == "sent").count();
        assert_eq!(sent, 1, "{l}");
    }
}
