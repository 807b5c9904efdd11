//! The built `idem` binary, and `idem` child processes whose whole output
//! (stdout and stderr) is kept, for the suites that check what the binary
//! prints (secrets, TLS) or run it as a separate process (crashes, admin
//! commands, the chaos workers).

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::TestEnv;

/// The built `idem` binary (cargo builds it for `cargo test --workspace`,
/// because the `idem` package has integration tests of its own), or
/// `$IDEM_BIN` when set — a copy kept aside, so a long run is not changed
/// under its feet by a rebuild.
pub fn idem_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("IDEM_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = dir.join("idem");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p idem` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// Run `idem <args> --database-url <url>` to its end (blocking, `RUST_LOG=warn`):
/// for the operator commands, whose output the suites read.
pub fn run_against(database_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(idem_binary())
        .args(args)
        .args(["--database-url", database_url])
        .env("RUST_LOG", "warn")
        .output()
        .expect("the idem binary runs")
}

/// An `idem` command with no `IDEM_*` or `RUST_LOG` inherited from the test's
/// environment: a test states every setting it means.
pub fn idem(args: &[&str]) -> Command {
    let mut cmd = Command::new(idem_binary());
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("IDEM_") || key == "RUST_LOG" || key.starts_with("OTEL_") {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Run `cmd` to its end: exit status and everything it printed.
pub async fn output(cmd: &mut Command) -> (ExitStatus, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the command ends within 120 s")
        .expect("the command starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// A running child whose output lines are collected as they come.
pub struct Proc {
    /// What the test calls it, in messages.
    name: String,
    /// The child.
    child: Child,
    /// Every line so far, stdout and stderr interleaved as read.
    lines: Arc<Mutex<Vec<String>>>,
    /// The readers; they end at EOF.
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Spawn `cmd` with its output piped to us.
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the child starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![
            tokio::spawn(collect(stdout, lines.clone())),
            tokio::spawn(collect(stderr, lines.clone())),
        ];
        Self {
            name: name.to_owned(),
            child,
            lines,
            readers,
        }
    }

    /// The first line so far (or within `timeout`) that `pick` maps to a value.
    pub async fn wait_for_line<T>(&self, timeout: Duration, pick: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.lines.lock().unwrap().iter().find_map(|l| pick(l)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no such line within {timeout:?}; output so far:\n{}",
                self.name,
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send `signal` to the child (SIGKILL, SIGSTOP, SIGCONT…).
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id() {
            kill(Pid::from_raw(pid as i32), signal).expect("the child can be signalled");
        }
    }

    /// Whether the child has not exited (nor been killed) yet.
    pub fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything printed so far.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGTERM (graceful stop), wait for the exit; returns the exit status
    /// and the whole output.
    pub async fn stop(mut self) -> (ExitStatus, String) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within 60 s of SIGTERM", self.name))
            .expect("wait");
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        (status, self.text())
    }
}

async fn collect(pipe: impl AsyncRead + Unpin, lines: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        lines.lock().unwrap().push(line);
    }
}

/// `idem provider-sim` on a free port with `envs` (json logs, so its
/// address can be read), and its base URL once it listens.
pub async fn simulator(extra: &[&str], envs: &[(&str, &str)]) -> (Proc, String) {
    let mut args = vec!["provider-sim", "--addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut cmd = idem(&args);
    cmd.env("IDEM_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .envs(envs.iter().copied());
    let sim = Proc::spawn("provider-sim", &mut cmd);
    let url = sim
        .wait_for_line(Duration::from_secs(30), |line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            value["fields"]["url"].as_str().map(str::to_owned)
        })
        .await;
    (sim, url)
}

/// The value of a JSON log line's field `name`, from the first line that has it.
pub fn json_field(line: &str, name: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value["fields"][name].as_str().map(str::to_owned)
}

/// The env's `idem run` flags (fast test timings, its queue) without the
/// flags in `drop` (each with its value), for a test that gives those its
/// own way (a variable, a file).
pub fn run_flags_without(env: &TestEnv, drop: &[&str]) -> Vec<String> {
    let mut flags = Vec::new();
    let mut given = env.run_flags().into_iter();
    while let Some(flag) = given.next() {
        let value = given.next().unwrap();
        if !drop.contains(&flag.as_str()) {
            flags.extend([flag, value]);
        }
    }
    flags
}

/// `idem run` with `flags` and `envs`.
pub fn run(flags: &[String], envs: &[(&str, &str)]) -> Command {
    let mut cmd = idem(&["run"]);
    cmd.args(flags).envs(envs.iter().copied());
    cmd
}

/// [`run_against`], its output as text: (success, stdout, stderr).
pub fn run_against_text(database_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = run_against(database_url, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
