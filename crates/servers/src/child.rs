//! The servers the harness runs as its own child processes (PostgreSQL
//! clusters, RabbitMQ nodes): stopping them, killing them with every process
//! they forked, the ports they listen on, their logs.
//!
//! They run as direct children of the test, never daemonised: pid 1 on this
//! machine reaps orphans only every ~2 s, and a zombie postmaster's pid in
//! `postmaster.pid` makes the next start refuse ("another server might be
//! running"). As our children they are reaped at once, and `Drop` can wait
//! for them synchronously, also while a test panics.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Child;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use uuid::Uuid;

/// How long a (re)start may take before we give up, crash recovery included.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a graceful stop may take before we SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Gracefully stop `child` with `signal`, SIGKILL its tree after
/// [`STOP_TIMEOUT`]; reaps it either way.
pub(crate) async fn stop_child(mut child: Child, signal: Signal, what: &str) -> anyhow::Result<()> {
    let pid = Pid::from_raw(i32::try_from(child.id())?);
    kill(pid, signal).with_context(|| format!("sending {signal} to {what}"))?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            kill_child_tree(child);
            bail!("{what} did not stop within {STOP_TIMEOUT:?} after {signal}; killed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`stop_child`] for `Drop`: blocking, never fails.
pub(crate) fn stop_child_blocking(mut child: Child, signal: Signal, timeout: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_child_tree(child);
}

/// SIGKILL `child` and all its descendants, reap it, and wait (up to 5 s)
/// until the descendants are dead too (they are reparented to pid 1, which
/// reaps them later: a zombie counts as dead, it holds no ports or memory).
pub(crate) fn kill_child_tree(mut child: Child) {
    let Ok(root) = i32::try_from(child.id()) else {
        return;
    };
    let killed = kill_tree(root);
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed.iter().any(|&pid| pid != root && is_alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGSTOP `root` (no more forks), then SIGKILL it and all its descendants.
/// Returns the pids killed.
pub(crate) fn kill_tree(root: i32) -> Vec<i32> {
    let _ = kill(Pid::from_raw(root), Signal::SIGSTOP);
    let mut pids = vec![root];
    pids.extend(descendants(root));
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    pids
}

/// `(state, ppid, start time)` of a process, from `/proc/<pid>/stat`.
pub(crate) fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

/// Whether `pid` exists and is not a zombie.
pub(crate) fn is_alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _, _)| state != 'Z' && state != 'X')
}

/// Pids of all processes.
pub(crate) fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// All live descendants of `root` (children, grandchildren, ...).
fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for pid in all_pids() {
        if let Some((state, ppid, _)) = proc_stat(pid)
            && state != 'Z'
        {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

/// A free TCP port on 127.0.0.1 for a server to listen on across restarts:
/// below the ephemeral range (so no outgoing connection takes it while the
/// server is down), not RabbitMQ's CLI range 35672-35682, and never handed
/// out twice by this process.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..500 {
        let random = u16::try_from(Uuid::new_v4().as_u128() % 12_000).unwrap_or(0);
        let port = 20_000 + random;
        if handed_out.contains(&port) {
            continue;
        }
        // A wildcard bind fails if any address holds the port.
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port found in 20000-31999")
}

/// The last `lines` lines of a log file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether the child in `slot` is still running; one that exited is taken
/// out of the slot (so a later stop is a no-op).
pub(crate) fn still_running(slot: &std::sync::Mutex<Option<std::process::Child>>) -> bool {
    let mut guard = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match guard.as_mut().map(std::process::Child::try_wait) {
        Some(Ok(None)) => true,
        Some(_) => {
            *guard = None;
            false
        }
        None => false,
    }
}
