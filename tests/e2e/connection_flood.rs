//! A connection flood against the real daemon under a low descriptor limit (`ulimit -n 512`):
//! more idle connections than it has descriptors must not kill it. Before the listeners were
//! bounded, 1,100 idle connections under systemd's default 1024 made it exit 74 ("Too many open
//! files") because the store could no longer open its files (issue 15, item 16).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::daemon::bin;
use support::sink::{Mode, Sink};
use support::{free_port, message, post_message, relay_config};

/// Descriptors the daemon may hold: fewer than the flood below, more than its listeners' caps
/// (256 + 32) plus the store's files.
const NOFILE: u32 = 512;
/// Idle connections opened against the daemon (the test process itself stays under its own
/// limit of 1024).
const FLOOD: usize = 600;

/// Kills the daemon if the test fails half-way, so no process outlives it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_idle_connections_than_descriptors_do_not_stop_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Mode::Accept).await;
    let (port, ops_port) = (free_port(), free_port());
    let extra = format!("[ops]\nlisten = \"127.0.0.1:{ops_port}\"\n");
    let toml = relay_config(dir.path(), &dir.path().join("data"), port, &sink.url(), None, &extra);
    let config = dir.path().join("carebridge.toml");
    std::fs::write(&config, toml).unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    // The limit is set by the shell, then the daemon replaces it (exec): the child we wait on.
    let mut daemon = KillOnDrop(
        Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {NOFILE} && exec \"$0\" run --config \"$1\""))
            .arg(bin())
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{ops_port}/healthz");
    let started = Instant::now();
    while client.get(&health).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(30), "daemon did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let target = if i % 6 == 0 { ops_port } else { port };
        flood.push(tokio::net::TcpStream::connect(("127.0.0.1", target)).await.unwrap());
    }
    // Ordinary traffic gets through while the flood is held open on our side: the idle
    // connections are dropped after the header timeout and the backlog drains.
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(60),
        post_message(&client, port, &message("flood-1", "+14165550199", "still there?")),
    )
    .await
    .expect("answered while flooded");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "recorded", "{body}");
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon is still running");
    drop(flood);
    assert!(sink.wait_for(1, Duration::from_secs(30)).await, "the message was forwarded");
    let r = client.get(&health).send().await.unwrap();
    assert_eq!(r.status(), 200);

    Command::new("kill").arg("-TERM").arg(daemon.0.id().to_string()).status().unwrap();
    let status = daemon.0.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert_eq!(status.code(), Some(0), "clean stop after the flood:\n{log}");
}
