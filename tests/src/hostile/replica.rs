//! [`Replica`]: an `idem run` child process watched the way the hostile
//! suite needs — alive or dead (and by which signal), its peak RSS, its
//! consumer's reconnects (metric and log lines) — with its whole output kept
//! for the report.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::binary::json_field;

/// What the consumer logs each time it lost its session and reconnects
/// (`idem_periodic::Reconnect`).
pub const RECONNECT_LINE: &str = "inbox lost its broker session; reconnecting";
/// The consumer's reconnect counter on `/metrics`.
pub const RECONNECT_METRIC: &str = "idem_inbox_reconnects_total";

/// One `idem run` child (json logs), watched.
pub struct Replica {
    pub name: String,
    child: Child,
    pid: i32,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    /// Its health and metrics listener, once it logged it.
    http: Option<String>,
    /// How and when (since spawn) it ended, if it did.
    exit: Option<(ExitStatus, Duration)>,
    started: Instant,
    /// The last VmHWM read while it ran, in KiB.
    peak_rss_kib: u64,
}

impl Replica {
    /// Spawn `cmd` (an `idem run` with `IDEM_LOG_FORMAT=json`), output piped.
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("idem run starts");
        let pid = child.id().expect("a running child") as i32;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            tokio::spawn(collect(child.stdout.take().unwrap(), lines.clone())),
            tokio::spawn(collect(child.stderr.take().unwrap(), lines.clone())),
        ];
        Self {
            name: name.to_owned(),
            child,
            pid,
            lines,
            readers,
            http: None,
            exit: None,
            started: Instant::now(),
            peak_rss_kib: 0,
        }
    }

    /// Wait until it logged its listener's address (it is up), or panic.
    pub async fn wait_listening(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.http.is_none() {
            self.http = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| json_field(l, "http_addr"));
            assert!(
                self.poll().is_none() && Instant::now() < deadline,
                "{} did not come up within {timeout:?}:\n{}",
                self.name,
                self.tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it has ended (checked now), and how; reads its peak RSS while
    /// it runs.
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(rss) = proc_status_kib(self.pid, "VmHWM") {
                self.peak_rss_kib = self.peak_rss_kib.max(rss);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some((status, self.started.elapsed()));
            }
        }
        self.exit.map(|(status, _)| status)
    }

    /// How it ended, in words ("signal 6 (SIGABRT) after 12.3 s"), if it did.
    pub fn death(&self) -> Option<String> {
        self.exit.map(|(status, after)| {
            let how = match status.signal() {
                Some(n) => format!(
                    "signal {n} ({})",
                    Signal::try_from(n).map_or("?", |s| s.as_str())
                ),
                None => format!("exit code {:?}", status.code()),
            };
            format!("{how} after {:.1} s", after.as_secs_f64())
        })
    }

    /// Peak resident set (VmHWM) seen while it ran, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.peak_rss_kib
    }

    /// Resident set now (VmRSS), in KiB, if it runs.
    pub fn rss_now_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmRSS")
    }

    /// Its consumer's reconnect counter on `/metrics` (0 before the first
    /// reconnect: a counter never incremented is not rendered), or `None`
    /// when `/metrics` does not answer.
    pub async fn reconnects_metric(&self) -> Option<u64> {
        let addr = self.http.as_ref()?;
        let get = reqwest::get(format!("http://{addr}/metrics"));
        let text = tokio::time::timeout(Duration::from_secs(5), get)
            .await
            .ok()?
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(RECONNECT_METRIC))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }

    /// Its output lines that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Write everything it printed so far to `path`.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let lines = self.lines.lock().unwrap();
        std::fs::write(path, lines.join("\n") + "\n")
    }

    /// The last `n` lines it printed.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, wait (SIGKILL after 30 s); returns its exit status.
    pub async fn stop(mut self) -> ExitStatus {
        if self.poll().is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        }
        let status = match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = self.child.start_kill();
                self.child.wait().await.unwrap()
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        status
    }
}

async fn collect(pipe: impl AsyncRead + Unpin, lines: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        lines.lock().unwrap().push(line);
    }
}

/// Field `name` (`VmHWM`, `VmRSS`) of `/proc/<pid>/status`, in KiB.
fn proc_status_kib(pid: i32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    line.split_whitespace().nth(1)?.parse().ok()
}
