//! Where the CLI's officer commands run. Each command is one [`Request`]; a [`Backend`] carries
//! it out: the running daemon's admin API ([`Daemon`]: the daemon holds the store's lock), or the
//! store itself when the daemon is stopped ([`Stopped`]). Both end in
//! [`crate::officer::execute`], so a command exists once and answers alike either way.

use crate::config::ValidConfig;
use crate::officer::{Request, execute};
use anyhow::{Context, Result, anyhow, bail};
use carebridge_contract::Redacted;
use serde_json::Value;
use std::net::SocketAddr;

/// Carries out officer requests.
pub trait Backend {
    /// Carries out `request`; the answer is durable when this returns.
    fn call(&self, request: Request) -> Result<Value>;
}

/// The running daemon, through `POST /admin/request` with the bearer token.
pub struct Daemon {
    addr: SocketAddr,
    token: Redacted<String>,
    runtime: tokio::runtime::Runtime,
}

/// A stopped daemon's store, opened by the CLI. Rows it queues go out when the daemon next runs.
pub struct Stopped<'c> {
    config: &'c ValidConfig,
}

/// The daemon if its admin API is configured and answers, else the store (opened per request:
/// whether it may be created on a new install depends on the request, see
/// [`Request::may_create_store`]).
pub fn backend(config: &ValidConfig) -> Result<Box<dyn Backend + '_>> {
    let Some(addr) = config.admin.listen else { return Ok(Box::new(Stopped { config })) };
    let token =
        carebridge_contract::config::load_secret(&config.admin.token_env, &config.admin.token_file, &config.config_dir)
            .map_err(|e| anyhow!("admin: {e}"))?
            .ok_or_else(|| anyhow!("admin: token not configured"))?;
    // Nobody listening: the daemon is stopped, and the store is ours to open.
    if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_err() {
        return Ok(Box::new(Stopped { config }));
    }
    let runtime = super::runtime()?;
    Ok(Box::new(Daemon { addr, token, runtime }))
}

impl Backend for Daemon {
    fn call(&self, request: Request) -> Result<Value> {
        self.runtime.block_on(async {
            let resp = reqwest::Client::new()
                .post(format!("http://{}/admin/request", self.addr))
                .bearer_auth(self.token.expose())
                .json(&request)
                .send()
                .await
                .map_err(|e| anyhow!("admin API: {e}"))?;
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("admin API answered {status}: {}", v["error"].as_str().unwrap_or("(no detail)"));
            }
            Ok(v)
        })
    }
}

impl Backend for Stopped<'_> {
    fn call(&self, request: Request) -> Result<Value> {
        let config = self.config;
        let store = if request.may_create_store() {
            // On a new install, before the daemon's first start, it may be created as `run` would.
            crate::record::open_configured(config)?
        } else {
            // The others need a store that exists (see `record::open_existing`).
            crate::record::open_existing(config, config.file.is_some())?
        };
        let answer = execute(&store, config, "cli", request)?;
        store.flush_blocking().context("making the change durable")?;
        let mut value = answer.value;
        if !answer.queued.is_empty()
            && let Some(map) = value.as_object_mut()
        {
            map.insert("note".into(), "queued; sent when the daemon next runs".into());
        }
        Ok(value)
    }
}
