//! The stand-ins carebridge's tests share, in one dev-only crate so that the daemon's tests and
//! each adapter's tests depend on them like on any crate (before, they were included across
//! crates with `#[path = "../../../tests/support/…"]`).
//!
//! - [`bot_api`]: a faithful local Telegram Bot API server (the real API is out of reach here).
//! - [`mail_env`]: the connection settings of the real Postfix and Dovecot that
//!   `tests/mail-servers.sh` starts.
//!
//! The router's side of the adapter contract (a fake router, a log capture) is not here but in
//! `carebridge-contract`'s `testkit` feature, next to the contract it fakes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod bot_api;
pub mod mail_env;
