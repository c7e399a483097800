//! Shared pieces of the adapter's integration tests: a config pointing at the fake Bot API
//! (`carebridge_fakes::bot_api`). The router's side and the log capture are the contract's
//! `testkit` (`carebridge_contract::testkit`).
#![allow(dead_code)]

use carebridge_contract::AccountId;
use carebridge_contract::config::BuildContext;
use carebridge_telegram::Config;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub fn account() -> AccountId {
    "telegram.desk".parse().expect("account id")
}

/// A fresh directory holding `token` (the fake's token), as a config directory.
pub fn config_dir(token: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cb-telegram-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("token"), format!("{token}\n")).expect("token file");
    std::fs::write(dir.join("hook-secret"), "hook_SECRET-123\n").expect("secret file");
    dir
}

/// `[telegram.desk]` pointing at `api_url`, plus `extra` TOML lines.
pub fn config(api_url: &str, extra: &str) -> Config {
    let text = format!("token_file = \"token\"\napi_url = \"{api_url}\"\npoll_timeout_secs = 1\n{extra}\n");
    let cfg: Config = toml::from_str(&text).expect("test config parses");
    let problems = cfg.validate("telegram.desk");
    assert!(problems.is_empty(), "test config invalid: {problems:?}");
    cfg
}

pub fn build_context(dir: PathBuf) -> BuildContext {
    BuildContext { account: account(), config_dir: dir }
}
