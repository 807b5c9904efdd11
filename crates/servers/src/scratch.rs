//! Scratch dirs and the owner token: what lets a process that starts
//! servers (a test process, the demo) clean up after an earlier one that
//! died without unwinding.
//!
//! Every server started here carries `IDEM_HARNESS_OWNER=<pid>:<start
//! time>` in its environment, and every scratch dir an `owner` file with the
//! same token: the first start in a process kills leftovers of owners that
//! died without unwinding (SIGKILL, a timeout) and removes their dirs.

use std::fs;
use std::path::PathBuf;
use std::sync::Once;

use anyhow::Context;
use uuid::Uuid;

use crate::child::{all_pids, is_alive, kill_tree, proc_stat};

/// Environment variable that marks the processes we start with their owner.
pub(crate) const OWNER_ENV: &str = "IDEM_HARNESS_OWNER";
/// File in each scratch dir naming its owner (same token as [`OWNER_ENV`]).
const OWNER_FILE: &str = "owner";
/// Scratch dir prefix of PostgreSQL clusters.
pub(crate) const PG_PREFIX: &str = "idem-pgcluster-";
/// Scratch dir prefix of RabbitMQ nodes.
pub(crate) const RABBIT_PREFIX: &str = "idem-rabbitnode-";

/// A scratch dir under the system temp dir, stamped with its owner, removed
/// on drop.
pub(crate) struct Scratch {
    /// Its path.
    pub(crate) path: PathBuf,
}

impl Scratch {
    /// Create `<tmp>/<prefix><random>` with an owner file.
    pub(crate) fn create(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}{}", Uuid::new_v4().simple()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let scratch = Self { path };
        fs::write(scratch.path.join(OWNER_FILE), owner_token())?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), "removing scratch dir: {e}");
        }
    }
}

/// This process's owner token: `<pid>:<start time>` (the start time
/// tells a reused pid apart).
pub(crate) fn owner_token() -> String {
    let pid = std::process::id();
    let start = i32::try_from(pid)
        .ok()
        .and_then(proc_stat)
        .map_or(0, |(_, _, start)| start);
    format!("{pid}:{start}")
}

/// Whether the process of an owner token is still running.
fn owner_alive(token: &str) -> bool {
    let Some((pid, start)) = token.trim().split_once(':') else {
        return true; // not ours to judge
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return true;
    };
    proc_stat(pid).is_some_and(|(state, _, s)| state != 'Z' && state != 'X' && s == start)
}

/// Once per process: SIGKILL servers started by owners
/// that are gone (they died without running `Drop`) and remove their dirs.
pub(crate) fn sweep_orphans() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let marker = format!("{OWNER_ENV}=");
        for pid in all_pids() {
            let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let owner = environ
                .split(|&b| b == 0)
                .find_map(|var| var.strip_prefix(marker.as_bytes()))
                .map(|token| String::from_utf8_lossy(token).into_owned());
            // An epmd that a node of ours started (`epmd -daemon`, detached
            // from its tree) carries the owner too, but every Erlang node on
            // the machine may have registered with it since: never ours to
            // end.
            let epmd = fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "epmd");
            if let Some(owner) = owner
                && !epmd
                && !owner_alive(&owner)
                && is_alive(pid)
            {
                tracing::warn!(
                    pid,
                    owner,
                    "killing a server whose owner died without stopping it"
                );
                kill_tree(pid);
            }
        }
        for entry in fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with(PG_PREFIX) || name.starts_with(RABBIT_PREFIX)) {
                continue;
            }
            let owner = fs::read_to_string(entry.path().join(OWNER_FILE)).unwrap_or_default();
            if !owner.is_empty() && !owner_alive(&owner) {
                tracing::warn!(dir = %entry.path().display(), "removing a leftover scratch dir");
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    });
}
