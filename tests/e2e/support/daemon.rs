//! The real `carebridge` binary run as a child process, with its log lines captured.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running daemon. Dropping it kills the process.
pub struct Daemon {
    child: Option<Child>,
    /// The config file it runs with.
    pub config: PathBuf,
    /// Every log line it wrote so far (stderr), across restarts.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_carebridge")
}

impl Daemon {
    /// Writes `toml` to `dir/carebridge.toml` and starts the daemon on it.
    pub fn start(dir: &Path, toml: &str) -> Daemon {
        let config = dir.join("carebridge.toml");
        std::fs::write(&config, toml).unwrap();
        let mut d = Daemon { child: None, config, log: Arc::new(Mutex::new(Vec::new())) };
        d.spawn();
        d
    }

    /// (Re)starts the process on the same config and log buffer.
    pub fn spawn(&mut self) {
        let mut child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG") // the config's log_level decides
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("daemon starts");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
    }

    /// Waits until a log line contains `needle` (counting only lines after `from`).
    pub fn wait_log(&self, needle: &str, from: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log.lock().unwrap().iter().skip(from).any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Number of log lines so far.
    pub fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// All log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no shutdown at all.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let end = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.success();
            }
            if Instant::now() > end {
                let _ = c.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGHUP: the daemon reads its config file again.
    pub fn sighup(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg("-HUP").arg(c.id().to_string()).status();
        }
    }

    /// Writes `toml` over the config file, sends SIGHUP and waits for the daemon's verdict:
    /// true if it logged `Configuration reloaded.`, false if `Configuration reload refused.`
    /// (or nothing within 30 s).
    pub fn reload(&self, toml: &str) -> bool {
        let from = self.log_len();
        std::fs::write(&self.config, toml).unwrap();
        self.sighup();
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            for l in self.log.lock().unwrap().iter().skip(from) {
                if l.contains("Configuration reloaded.") {
                    return true;
                }
                if l.contains("Configuration reload refused.") {
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The running process's id (benches read its memory from `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Runs another carebridge command on the same config; returns (exit ok, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        cli(&self.config, args)
    }

    /// `carebridge export` (the daemon must be stopped): every JSON line.
    pub fn export(&self) -> Vec<serde_json::Value> {
        let (ok, out, err) = self.cli(&["export"]);
        assert!(ok, "export failed: {err}");
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// Runs `carebridge <args> --config <config>`.
pub fn cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).arg("--config").arg(config).output().expect("cli runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until an HTTP GET of `url` answers 200.
pub async fn wait_http(url: &str, timeout: Duration) -> bool {
    let client = reqwest::Client::new();
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
