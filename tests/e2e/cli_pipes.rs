//! The command line as a pipeline stage: a reader that stops early (`carebridge … | head`) ends
//! the command quietly, with the shell's SIGPIPE status, not a panic and exit 101.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test should panic with the value

use crate::support;

use std::process::{Command, Stdio};
use support::daemon::bin;

/// Runs `carebridge args…` with stdout a pipe whose reading end is already closed, so the first
/// write fails with `BrokenPipe` every time (no race with a reader that might read first).
fn run_into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin()).args(args).stdout(writer).stderr(Stdio::piped()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let (code, err) = run_into_closed_pipe(&["print-default-config"]);
    assert_eq!(code, Some(141), "the SIGPIPE status a shell expects; stderr: {err}");
    assert!(!err.contains("panicked"), "no panic message: {err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");

    let default = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let (code, err) = run_into_closed_pipe(&["check-config", "--no-environment", default.to_str().unwrap()]);
    assert_eq!(code, Some(141), "println! in a command that succeeded; stderr: {err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
}
