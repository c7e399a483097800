//! carebridge: a clinic's message router. Adapters for email, Telegram and webhooks feed one
//! router that normalises each message, checks it against the privacy rules, records it in the
//! patient's file **before** forwarding it, and forwards it with retries.
//!
//! # Layout
//! - [`config`]: the one TOML file; parsing and pure validation that reports every problem.
//! - [`accounts`]: the closed set of adapters, glued to the daemon.
//! - [`policy`]: the privacy engine; pure, never fails.
//! - [`router`]: the router thread: identify, thread, decide, record (group commit).
//! - [`record`]: the record store over fjall (the only module that touches the engine) and the
//!   flusher.
//! - [`records`]: the privacy officer's view: list, show, export, verify, purge — all audited.
//! - [`outbox`]: durable delivery, one FIFO worker per destination, retries, dead letters.
//! - [`lease`], [`outbox_lease`]: on a shared PostgreSQL store, one poller per input and one
//!   sender per destination account across instances.
//! - [`store_wait`]: starting while a shared store's database is unreachable (503 until it is back).
//! - [`officer`]: the staff's and privacy officer's operations on the record, each written once.
//! - [`admin`]: the loopback admin API: the officer's operations over HTTP while the daemon runs.
//! - [`ops`]: the unauthenticated, PHI-free ops endpoint: `/healthz`, `/readyz`, `/metrics`.
//! - [`daemon`]: starts the fixed parts, runs everything; owns the shutdown order.
//! - [`assembly`]: the one way a config becomes running parts, at start-up and at a reload.
//! - [`receivers`]: the running inbound tasks, started and stopped per account.
//! - [`review`]: `review show` and `review approve`, which ask the policy again.
//! - [`reload`]: SIGHUP: check the config file again and apply it, or refuse it whole.
//! - [`telemetry`]: logging (never PHI).
//! - [`cli`]: the command-line interface behind `main.rs`; officer commands go through a
//!   backend (the daemon's admin API, or the store when it is stopped).
//! - [`exit`]: exit codes, and which errors end with which.
pub mod accounts;
pub mod admin;
pub mod assembly;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod exit;
pub mod lease;
pub mod officer;
pub mod ops;
pub mod outbox;
pub mod outbox_lease;
pub mod policy;
pub mod receivers;
pub mod record;
pub mod records;
pub mod reload;
pub mod review;
pub mod router;
pub mod store_wait;
pub mod telemetry;
