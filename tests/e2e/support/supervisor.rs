//! The test as the daemon's supervisor (what systemd is in production, `Restart=on-failure`):
//! runs the real binary, sees how it exited, and starts it again. [`Daemon`](super::daemon::Daemon)
//! is the harness for daemons that should keep running; this one is for tests where exiting is
//! the behaviour under test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A supervised daemon process. Dropping it kills the process.
pub struct Supervised {
    child: Option<Child>,
    /// The config file.
    pub config: PathBuf,
    /// Every log line (stderr) of every run.
    pub log: Arc<Mutex<Vec<String>>>,
    /// How every run that ended so far ended (`None`: killed by a signal).
    pub exits: Vec<Option<i32>>,
}

impl Supervised {
    /// Writes `toml` to `dir/carebridge.toml` and starts the daemon on it.
    pub fn start(dir: &Path, toml: &str) -> Supervised {
        let config = dir.join("carebridge.toml");
        std::fs::write(&config, toml).unwrap();
        let mut s = Supervised { child: None, config, log: Arc::default(), exits: Vec::new() };
        s.spawn();
        s
    }

    /// Starts a new run (the previous one must have ended).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the previous run is still going");
        let mut child = Command::new(super::daemon::bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
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

    /// Waits (up to `timeout`, an upper bound) for the run to end; its exit code, `Some(None)`
    /// if a signal ended it, `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let end = Instant::now() + timeout;
        loop {
            let status = self.child.as_mut().map(|c| c.try_wait());
            match status {
                None => return None,
                Some(Ok(Some(s))) => return Some(self.ended(s)),
                Some(Err(_)) => return None,
                Some(Ok(None)) if Instant::now() >= end => return None,
                Some(Ok(None)) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Whether a run is going.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM and wait (up to 40 s) for the exit; returns whether it exited successfully.
    pub async fn terminate(&mut self) -> bool {
        let Some(pid) = self.child.as_ref().map(Child::id) else { return false };
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        match self.wait_exit(Duration::from_secs(40)).await {
            Some(code) => code == Some(0),
            None => {
                self.kill9();
                false
            }
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            if let Ok(s) = c.wait() {
                self.exits.push(s.code());
            }
        }
    }

    /// All log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Number of log lines so far.
    pub fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// `carebridge export` (no run going): every JSON line.
    pub fn export(&self) -> Vec<serde_json::Value> {
        let (ok, out, err) = super::daemon::cli(&self.config, &["export"]);
        assert!(ok, "export failed: {err}");
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn ended(&mut self, s: ExitStatus) -> Option<i32> {
        self.child = None;
        self.exits.push(s.code());
        s.code()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill9();
    }
}
