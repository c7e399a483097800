//! carebridge's end-to-end tests, as one test binary: each module drives the real
//! `carebridge` binary (and real mail, database and FHIR servers where a test needs them).
//!
//! **Why one binary.** Each integration-test file used to be its own binary, each compiling the
//! shared `support` harness and linking the daemon's library again. One binary compiles and links
//! them once. Run one module with `cargo test --test e2e e2e_email::` (the module names are the
//! old file names).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

mod support;

mod check_environment;
mod cli_pipes;
mod cli_validation;
mod config_files;
mod connection_flood;
mod crash_loop;
mod crash_recovery;
mod disk_full;
mod downstream_outage;
mod e2e_conversation;
mod e2e_email;
mod e2e_fhir;
mod e2e_ops;
mod e2e_policy;
mod e2e_reload;
mod e2e_telegram;
mod e2e_webhook;
mod fhir_export;
mod no_phi_in_logs;
mod policy_eval;
mod record_store;
mod scale_out;
mod systemd_unit;
