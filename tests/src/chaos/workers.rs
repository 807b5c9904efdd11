//! The `idem run` processes of a chaos run: spawned from the built binary
//! through the proxies, supervised (an exited worker is started again, as a
//! process manager would), killed, frozen and thawed on the fault scheduler's
//! orders. Each worker's output goes to its own log file, appended across
//! restarts.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::Rng;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::world::{CHARGE_TIMEOUT_MS, LEASE_SECS, World};
use crate::idem_binary;

/// How often the supervisor looks for exited workers.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// One worker slot.
struct Slot {
    /// The running process; `None` between an exit and the restart.
    child: Option<Child>,
    /// Its log file.
    log: PathBuf,
    /// Frozen with SIGSTOP (the supervisor leaves it alone).
    frozen: bool,
    /// Times it was started.
    starts: usize,
}

/// What the supervisor and the scheduler share.
struct Inner {
    /// The `idem run` flags every worker gets (plus its replica id).
    flags: Vec<String>,
    /// The worker slots.
    slots: Vec<Slot>,
}

/// The workers of a run; cheap to clone as a [`Handle`] for the scheduler.
pub struct Workers {
    /// Shared state.
    inner: Arc<Mutex<Inner>>,
    /// Stops the supervisor.
    supervisor: CancellationToken,
}

/// The scheduler's grip on the workers.
#[derive(Clone)]
pub struct Handle {
    /// Shared state.
    inner: Arc<Mutex<Inner>>,
}

impl Workers {
    /// `n` worker slots configured for `world` (not started yet).
    pub fn new(world: &World, n: usize) -> anyhow::Result<Self> {
        let flags = [
            "--database-url",
            &world.db_via_proxy,
            "--amqp-url",
            &world.amqp_via_proxy,
            "--queue",
            &world.queue,
            "--charge-api-url",
            &world.sim_url,
            "--http-addr",
            "127.0.0.1:0",
            "--lease-secs",
            &LEASE_SECS.to_string(),
            "--charge-timeout-ms",
            &CHARGE_TIMEOUT_MS.to_string(),
            "--retry-base-ms",
            "50",
            "--retry-max-ms",
            "1000",
            "--idle-poll-ms",
            "20",
            "--db-max-connections",
            "8",
            "--shutdown-grace-secs",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let slots = (0..n)
            .map(|i| Slot {
                child: None,
                log: world.logs.join(format!("worker-{i}.log")),
                frozen: false,
                starts: 0,
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner { flags, slots })),
            supervisor: CancellationToken::new(),
        })
    }

    /// Start every worker and the supervisor that restarts exited ones.
    pub fn spawn_all(&mut self) -> anyhow::Result<()> {
        self.handle().ensure_all_running()?;
        let (handle, stop) = (self.handle(), self.supervisor.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SUPERVISE_EVERY) => {}
                }
                if let Err(e) = handle.restart_exited() {
                    tracing::warn!("chaos supervisor: {e:#}");
                }
            }
        });
        Ok(())
    }

    /// The scheduler's handle.
    pub fn handle(&self) -> Handle {
        Handle {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Thaw frozen workers and start exited ones.
    pub fn ensure_all_running(&self) -> anyhow::Result<()> {
        self.handle().ensure_all_running()
    }

    /// Stop the supervisor, then every worker gracefully (SIGTERM), killing
    /// those that do not exit within 30 s.
    pub async fn stop_all(&mut self) {
        self.supervisor.cancel();
        let children: Vec<Child> = {
            let mut inner = self.inner.lock().unwrap();
            inner
                .slots
                .iter_mut()
                .filter_map(|s| s.child.take())
                .collect()
        };
        for mut child in children {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(Ok(status)) if !status.success() => {
                    tracing::warn!(%status, "chaos worker exited uncleanly on SIGTERM");
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("chaos worker ignored SIGTERM for 30 s; killing it");
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// Lines containing `needle` over every worker's log.
    pub fn count_in_logs(&self, needle: &str) -> usize {
        let logs: Vec<PathBuf> = {
            let inner = self.inner.lock().unwrap();
            inner.slots.iter().map(|s| s.log.clone()).collect()
        };
        logs.iter()
            .filter_map(|log| std::fs::read_to_string(log).ok())
            .map(|text| text.lines().filter(|l| l.contains(needle)).count())
            .sum()
    }

    /// Worker starts beyond the first of each slot (restarts after a kill
    /// or an exit).
    pub fn restarts(&self) -> usize {
        let inner = self.inner.lock().unwrap();
        inner.slots.iter().map(|s| s.starts.saturating_sub(1)).sum()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.supervisor.cancel();
        if let Ok(mut inner) = self.inner.lock() {
            for slot in &mut inner.slots {
                if let Some(child) = slot.child.as_mut() {
                    let _ = child.start_kill();
                }
            }
        }
    }
}

impl Handle {
    /// SIGKILL a random running worker and start it again at once; returns
    /// its slot.
    pub async fn kill_random(&self) -> anyhow::Result<usize> {
        let (i, child) = {
            let mut inner = self.inner.lock().unwrap();
            let i = pick_running(&inner.slots).context("no running worker to kill")?;
            // Marked frozen while we kill it, so the supervisor does not
            // start a second process in the slot meanwhile.
            inner.slots[i].frozen = true;
            (i, inner.slots[i].child.take())
        };
        if let Some(mut child) = child {
            child.kill().await.context("SIGKILL of a worker")?;
        }
        let mut inner = self.inner.lock().unwrap();
        inner.start(i)?;
        Ok(i)
    }

    /// The replica id (lease owner) of slot `i`'s current process.
    pub fn replica_id(&self, i: usize) -> String {
        let inner = self.inner.lock().unwrap();
        replica_id(i, inner.slots[i].starts.saturating_sub(1))
    }

    /// Slots with a live, unfrozen worker.
    pub fn running(&self) -> Vec<usize> {
        let inner = self.inner.lock().unwrap();
        running(&inner.slots)
    }

    /// SIGSTOP the worker of slot `i` (running, not frozen); returns `i` for
    /// [`Handle::thaw`].
    pub fn freeze(&self, i: usize) -> anyhow::Result<usize> {
        let mut inner = self.inner.lock().unwrap();
        let slot = &mut inner.slots[i];
        if let Some(pid) = slot.child.as_ref().and_then(Child::id) {
            kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).context("SIGSTOP")?;
            slot.frozen = true;
        }
        Ok(i)
    }

    /// SIGCONT the worker of slot `i`.
    pub fn thaw(&self, i: usize) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        let slot = &mut inner.slots[i];
        if let Some(pid) = slot.child.as_ref().and_then(Child::id) {
            kill(Pid::from_raw(pid as i32), Signal::SIGCONT).context("SIGCONT")?;
        }
        slot.frozen = false;
        Ok(())
    }

    /// Start every slot whose worker exited (not the frozen ones).
    fn restart_exited(&self) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        for i in 0..inner.slots.len() {
            let slot = &mut inner.slots[i];
            let exited = match slot.child.as_mut() {
                None => true,
                Some(child) => !matches!(child.try_wait(), Ok(None)),
            };
            if exited && !slot.frozen {
                if slot.starts > 0 {
                    tracing::info!(slot = i, "chaos worker had exited; starting it again");
                }
                inner.start(i)?;
            }
        }
        Ok(())
    }

    /// Thaw every frozen worker, start every exited one.
    fn ensure_all_running(&self) -> anyhow::Result<()> {
        let frozen: Vec<usize> = {
            let inner = self.inner.lock().unwrap();
            (0..inner.slots.len())
                .filter(|&i| inner.slots[i].frozen)
                .collect()
        };
        for i in frozen {
            self.thaw(i)?;
        }
        self.restart_exited()
    }
}

impl Inner {
    /// Spawn the worker of slot `i`.
    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let slot = &mut self.slots[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&slot.log)
            .with_context(|| format!("opening {}", slot.log.display()))?;
        let child = Command::new(idem_binary())
            .arg("run")
            .args(&self.flags)
            .args(["--replica-id", &replica_id(i, slot.starts)])
            .env("RUST_LOG", "warn")
            .env_remove(idem_crash::ENV)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning idem run")?;
        slot.child = Some(child);
        slot.frozen = false;
        slot.starts += 1;
        Ok(())
    }
}

/// The replica id of the `start`-th process of slot `i` (0-based).
fn replica_id(i: usize, start: usize) -> String {
    format!("chaos-{i}-{start}")
}

/// Slots with a live, unfrozen worker.
fn running(slots: &[Slot]) -> Vec<usize> {
    (0..slots.len())
        .filter(|&i| slots[i].child.is_some() && !slots[i].frozen)
        .collect()
}

/// A random slot with a live, unfrozen worker.
fn pick_running(slots: &[Slot]) -> Option<usize> {
    let running = running(slots);
    (!running.is_empty()).then(|| running[rand::rng().random_range(0..running.len())])
}
