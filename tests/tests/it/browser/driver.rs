//! The `chromedriver` process the harness starts for itself: found on the
//! machine (or not, with the one line that says what to install), bound to a
//! free port on 127.0.0.1, its log kept in the harness's own temporary
//! directory, and killed by its process group on drop.
//!
//! It runs in a process group of its own, so the Chromium it launches (and
//! every renderer and helper Chromium forks) is in that group too: one signal
//! to the group ends all of them and nothing else on the machine.

use std::ffi::OsString;
use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// What to do when either binary is missing: CI installs them, so a machine
/// without them fails loudly instead of skipping the browser suite.
pub(super) const INSTALL: &str = "the browser suite needs Chromium and its WebDriver: \
     install chromium chromium-driver (`apt-get install -y chromium chromium-driver`; scripts/test does it as root)";

/// How long chromedriver may take to answer `/status` on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a terminated chromedriver (and its browser) may take to go.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many ports to try: another process may take the free port we picked
/// between our probe and chromedriver's bind.
const PORT_TRIES: usize = 3;
/// How much of the log a failure message carries.
const LOG_TAIL_LINES: usize = 40;

/// The two programs, as found on this machine.
pub(super) struct Programs {
    /// `chromedriver` (Debian's `chromium-driver`).
    pub(super) driver: PathBuf,
    /// The Chromium binary chromedriver is told to launch (Debian's `chromium`).
    pub(super) chromium: PathBuf,
}

impl Programs {
    /// `IDEM_CHROMEDRIVER` / `IDEM_CHROMIUM` when set (a browser installed
    /// elsewhere), else `chromedriver` and `chromium` on `PATH`.
    pub(super) fn find() -> anyhow::Result<Self> {
        Self::find_with(|var| std::env::var_os(var))
    }

    /// [`Programs::find`] with the environment read through `env`.
    pub(super) fn find_with(env: impl Fn(&str) -> Option<OsString>) -> anyhow::Result<Self> {
        let driver = program(&env, "IDEM_CHROMEDRIVER", "chromedriver");
        let chromium = program(&env, "IDEM_CHROMIUM", "chromium");
        match (driver, chromium) {
            (Some(driver), Some(chromium)) => Ok(Self { driver, chromium }),
            (None, _) => bail!("chromedriver not found; {INSTALL}"),
            (_, None) => bail!("chromium not found; {INSTALL}"),
        }
    }
}

/// The executable named by `var`, or `name` found on `PATH`.
fn program(env: &impl Fn(&str) -> Option<OsString>, var: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = env(var) {
        let path = PathBuf::from(path);
        return is_executable(&path).then_some(path);
    }
    let path = env("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running chromedriver, ready for sessions.
pub(super) struct Driver {
    /// The process; its pid is also its process group's id.
    child: Child,
    /// `http://127.0.0.1:<port>`, what the WebDriver client connects to.
    pub(super) url: String,
    /// chromedriver's log (`--log-path`), and its stdout and stderr.
    log: PathBuf,
}

impl Driver {
    /// Start `program` on a free port with its log under `dir`, and wait
    /// until it answers `/status`.
    pub(super) async fn start(program: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut last = None;
        for attempt in 0..PORT_TRIES {
            let log = dir.join(format!("chromedriver-{attempt}.log"));
            let mut driver = Self::spawn(program, &log)?;
            match driver.ready().await {
                Ok(()) => return Ok(driver),
                // Dropping it kills what is left of it.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("chromedriver was never started")))
    }

    fn spawn(program: &Path, log: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let output = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            // Appended to by chromedriver's own writes too: its banner and
            // anything it prints before the log file is open.
            .stdout(output.try_clone()?)
            .stderr(output)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}; {INSTALL}", program.display()))?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
        })
    }

    /// Poll `/status` until it says ready, the process exits, or the timeout.
    async fn ready(&mut self) -> anyhow::Result<()> {
        // reqwest is built without a default crypto provider (one backend: ring).
        idem_daemon::telemetry::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "chromedriver exited ({status}) before it was ready; {}",
                    self.log_tail()
                );
            }
            let status = http.get(format!("{}/status", self.url)).send().await;
            if let Ok(response) = status {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                if body["value"]["ready"] == true {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "chromedriver did not answer {}/status within {READY_TIMEOUT:?}; {}",
                    self.url,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of chromedriver's log, for a failure message.
    pub(super) fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!("chromedriver log {} ends:\n{tail}", self.log.display())
    }

    /// SIGTERM to the group, then SIGKILL to what is left of it, chromedriver reaped.
    fn stop(&mut self) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        // The group's id is chromedriver's pid (`process_group(0)`): a
        // negative pid signals that group, which holds only what it started.
        let group = Pid::from_raw(-pid);
        let _ = kill(group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Chromium's helpers may outlive chromedriver; they are still in the group.
        let _ = kill(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        self.stop();
    }
}

/// A port free on 127.0.0.1 at the moment of asking.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("probing for a free port")?;
    Ok(listener.local_addr()?.port())
}
