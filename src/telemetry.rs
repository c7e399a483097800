//! Logging: tracing with human or JSON lines, to stderr (journald / the container runtime picks
//! it up). Logs are carebridge's only monitoring, and they must never carry PHI: every PHI value
//! in the code is a `Redacted<T>`, whose `Debug` is `<redacted>` and which has no `Display`.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Third-party crates that can log protocol traffic (and so PHI) at debug/trace: capped at
/// `warn` whatever `log_level` says. Only an explicit `RUST_LOG` lifts the cap (documented as a
/// debugging tool that must not be used on production data).
const THIRD_PARTY_CAPS: &str = "async_imap=warn,imap_proto=warn,lettre=warn,hyper=warn,hyper_util=warn,reqwest=warn,teloxide=warn,teloxide_core=warn,fjall=warn,lsm_tree=warn,sled=warn,rustls=warn,h2=warn,axum=warn,tower_http=warn";

/// Installs the global subscriber. `RUST_LOG` overrides `level`. Safe to call twice (the second
/// call does nothing), so tests and the CLI can both call it.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},{THIRD_PARTY_CAPS}")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
