//! Logging: tracing with human or JSON lines, to stderr (journald / the container runtime picks
//! it up). Logs are carebridge's only monitoring, and they must never carry PHI: every PHI value
//! in the code is a `Redacted<T>`, whose `Debug` is `<redacted>` and which has no `Display`.
//!
//! Lines are written by a thread of their own (`carebridge-log`), which takes whatever lines are
//! queued and writes them with one `write`: the router and the HTTP workers only format and
//! queue. Nothing is dropped: when the queue is full, loggers wait as they did on stderr. Lines
//! still queued when the process ends are lost unless [`flush`] ran first, so every exit path
//! calls it.

use crate::config::LogFormat;
use std::sync::Mutex;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Third-party crates that can log protocol traffic (and so PHI) at debug/trace: capped at
/// `warn` whatever `log_level` says. Only an explicit `RUST_LOG` lifts the cap (documented as a
/// debugging tool that must not be used on production data).
const THIRD_PARTY_CAPS: &str = "async_imap=warn,imap_proto=warn,lettre=warn,hyper=warn,hyper_util=warn,reqwest=warn,teloxide=warn,teloxide_core=warn,sled=warn,rustls=warn,h2=warn,axum=warn,tower_http=warn";

/// The log thread's handle: dropping it writes out the queued lines and stops the thread.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Installs the global subscriber. `RUST_LOG` overrides `level`. Safe to call twice (the second
/// call does nothing), so tests and the CLI can both call it.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},{THIRD_PARTY_CAPS}")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Buffered: the log thread writes everything it found queued at once, then flushes.
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("carebridge-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(false).with_ansi(ansi);
    let installed = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_ok() {
        *WRITER.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    }
}

/// Writes out every queued log line and stops the log thread. Called before the process exits
/// (the end of `main`, the exit on an unwritable store) so the last lines, which say why, are
/// not lost. Later lines are dropped.
pub fn flush() {
    drop(WRITER.lock().unwrap_or_else(|e| e.into_inner()).take());
}
