//! The bounded HTTP listener over real loopback sockets: a connection flood is capped, idle and
//! slow-loris clients are dropped on time, and the listener keeps answering afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::routing::{get, post};
use carebridge_contract::http::{Limits, is_body_timeout, serve};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const SHORT: Limits =
    Limits { max_connections: 4, header_timeout: Duration::from_millis(500), body_timeout: Duration::from_millis(500) };

async fn echo(body: Result<Bytes, BytesRejection>) -> (StatusCode, String) {
    match body {
        Ok(b) => (StatusCode::OK, b.len().to_string()),
        Err(e) if is_body_timeout(&e) => (StatusCode::REQUEST_TIMEOUT, "slow".into()),
        Err(e) => (e.status(), "bad".into()),
    }
}

async fn start(limits: Limits) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let app = Router::new().route("/", get(|| async { "ok" })).route("/echo", post(echo));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(listener, app, limits, stop.clone()));
    (addr, stop, task)
}

/// One `GET /` on a fresh connection; the status line, or `None` if nothing came within `wait`.
async fn get_status(addr: SocketAddr, wait: Duration) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 512];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string()),
        _ => None,
    }
}

/// Reads until the server closes the connection (EOF or reset), up to `limit`; how long it took.
async fn time_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    while started.elapsed() < limit {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
    None
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_and_are_served_when_one_closes() {
    let limits = Limits { header_timeout: Duration::from_secs(30), ..SHORT };
    let (addr, stop, task) = start(limits).await;
    let mut idle = Vec::new();
    for _ in 0..limits.max_connections {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Give the listener time to accept all four.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get_status(addr, Duration::from_millis(500)).await, None, "a fifth client waits in the backlog");
    idle.pop();
    assert_eq!(get_status(addr, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 200 OK"));
    drop(idle);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").unwrap();
}

#[tokio::test]
async fn a_flood_holds_no_more_descriptors_than_the_cap_and_the_listener_survives() {
    // 200 idle clients, 8 served at a time, each dropped after 300 ms: the backlog drains in
    // about 8 s, bounded by the loops below.
    let limits = Limits { max_connections: 8, header_timeout: Duration::from_millis(300), ..SHORT };
    let (addr, stop, task) = start(limits).await;
    let before = open_fds();
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = open_fds();
    // Our 200 client sockets plus at most the cap on the server side (and a little slack for
    // the runtime); without a cap the server would hold another 200.
    assert!(during <= before + 200 + limits.max_connections + 8, "before {before}, during {during}");
    // Idle connections are dropped after the header timeout, so the backlog drains and ordinary
    // traffic gets through while the flood's sockets are still open on our side.
    let mut answered = None;
    for _ in 0..40 {
        if let Some(s) = get_status(addr, Duration::from_millis(500)).await {
            answered = Some(s);
            break;
        }
    }
    assert_eq!(answered.as_deref(), Some("HTTP/1.1 200 OK"));
    drop(flood);
    assert_eq!(get_status(addr, Duration::from_secs(5)).await.as_deref(), Some("HTTP/1.1 200 OK"));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").unwrap();
}

#[tokio::test]
async fn idle_and_slow_header_connections_are_closed_on_time() {
    let (addr, stop, task) = start(SHORT).await;
    // Connected, sends nothing.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let took = time_until_closed(&mut idle, Duration::from_secs(5)).await.expect("idle connection closed");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // Slow loris: one header byte every 100 ms never completes the head; the deadline is for the
    // whole head, so trickling does not extend it.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut_off = false;
    for b in head.iter().cycle().take(200) {
        if slow.write_all(&[*b]).await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "a trickled head was never cut off");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").unwrap();
}

#[tokio::test]
async fn a_slow_body_is_cut_off_and_a_prompt_one_is_served() {
    let (addr, stop, task) = start(SHORT).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789").await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("answered").unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(time_until_closed(&mut s, Duration::from_secs(5)).await.is_some(), "closed after the answer");

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 10\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer)).await.expect("answered").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("10"), "{answer}");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").unwrap();
}
