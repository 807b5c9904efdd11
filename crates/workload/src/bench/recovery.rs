//! recovery: two replicas as child processes (this binary's `idem run`), a
//! provider with faults (lost answers, 5xx, latency), the same workload
//! twice: once undisturbed, once with a replica SIGKILLed every
//! `--recovery-kill-every-secs` and started again at once. Reported: each
//! kill's rows in flight and how long until the last of them was settled
//! (the lease is 30 s: without the liveness lock that is the wait), and the
//! killed run's duration over the undisturbed one's.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use idem_simulator::Faults;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::args::{BenchArgs, SCOPE, workload_spec};
use super::pipeline::{self, Configuration};
use super::scratch::{Provider, Scratch};
use crate::traffic;

/// Replicas per run.
const REPLICAS: usize = 2;

/// Both runs.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    /// Messages per run.
    pub messages: usize,
    /// Publish rate, msg/s.
    pub rate: u32,
    /// Seconds between two kills.
    pub kill_every_s: u64,
    /// The replicas' lease, s.
    pub lease_s: u64,
    /// The undisturbed run.
    pub steady: RunReport,
    /// The run with kills.
    pub killed: RunReport,
    /// killed / steady elapsed.
    pub killed_over_steady: f64,
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// First publish to every row settled, s.
    pub elapsed_s: f64,
    /// Distinct messages charged exactly once / more than once / never.
    pub charged_once: usize,
    /// Charged more than once.
    pub double_charges: usize,
    /// Never charged.
    pub missing_charges: usize,
    /// Each kill: rows the killed replica held in flight, and seconds from
    /// the kill until the last of them was settled.
    pub kills: Vec<Kill>,
}

/// One SIGKILL.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    /// Rows in flight under the killed replica at the kill.
    pub held: usize,
    /// Kill to the last of them settled, s.
    pub recovered_s: f64,
}

/// Run both and compare.
pub async fn run(args: &BenchArgs, shutdown: &CancellationToken) -> anyhow::Result<RecoveryReport> {
    let steady = one(args, None, shutdown).await?;
    let every = Duration::from_secs(args.recovery_kill_every_secs);
    let killed = one(args, Some(every), shutdown).await?;
    Ok(RecoveryReport {
        messages: args.recovery_messages,
        rate: args.recovery_rate,
        kill_every_s: args.recovery_kill_every_secs,
        lease_s: LEASE_SECS,
        killed_over_steady: killed.elapsed_s / steady.elapsed_s.max(1e-9),
        steady,
        killed,
    })
}

/// The replicas' lease: the daemon's default.
const LEASE_SECS: u64 = 30;

async fn one(
    args: &BenchArgs,
    kill_every: Option<Duration>,
    shutdown: &CancellationToken,
) -> anyhow::Result<RunReport> {
    let scratch = Scratch::create(&args.database_url, &args.broker.amqp_url, true).await?;
    let provider = Provider::with_faults(Faults {
        drop_response: 0.03,
        error_5xx: 0.03,
        latency_ms: args.recovery_latency_ms,
        latency_jitter_ms: args.recovery_latency_ms,
        ..Faults::default()
    })?;
    let name = if kill_every.is_some() {
        "killed"
    } else {
        "steady"
    };
    let cfg = Configuration {
        messages: args.recovery_messages,
        rate: args.recovery_rate,
        ..Configuration::new(args, &format!("recovery-{name}"), "", args.recovery_rate)
    };
    let outcome = drive(&cfg, &scratch, &provider, kill_every, shutdown).await;
    provider.stop();
    scratch.drop_all().await;
    outcome
}

async fn drive(
    cfg: &Configuration,
    scratch: &Scratch,
    provider: &Provider,
    kill_every: Option<Duration>,
    shutdown: &CancellationToken,
) -> anyhow::Result<RunReport> {
    let mut replicas = Vec::new();
    for n in 0..REPLICAS {
        replicas.push(spawn(cfg, scratch, &provider.url, n)?);
    }
    let spec = workload_spec(
        &format!("recovery-{}", scratch.id),
        cfg.messages,
        cfg.accounts,
    );
    let messages = Arc::new(traffic::generate(&spec));
    let published = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let publisher = tokio::spawn(pipeline::publish_all(
        scratch.amqp_url.clone(),
        scratch.queue.clone(),
        Arc::clone(&messages),
        cfg.rate,
        published,
    ));
    let mut kills = Vec::new();
    let mut watching: Vec<(Instant, HashSet<i64>)> = Vec::new();
    let mut next_kill = kill_every.map(|every| Instant::now() + every);
    let mut victim = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut conn = scratch.pool.acquire().await?;
        if let Some(at) = next_kill.filter(|at| Instant::now() >= *at) {
            signal(&replicas[victim], Signal::SIGKILL);
            let _ = replicas[victim].wait().await;
            let held =
                idem_store::bench::in_flight_of(&mut conn, &pipeline::replica_id(cfg, victim))
                    .await?;
            watching.push((Instant::now(), held.into_iter().collect()));
            replicas[victim] = spawn(cfg, scratch, &provider.url, victim)?;
            victim = (victim + 1) % REPLICAS;
            next_kill = kill_every.map(|every| at + every);
        }
        let unsettled: HashSet<i64> = if watching.is_empty() {
            HashSet::new()
        } else {
            let ids: Vec<i64> = watching
                .iter()
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect();
            idem_store::bench::unsettled_of(&mut conn, &ids)
                .await?
                .into_iter()
                .collect()
        };
        watching.retain(|(at, ids)| {
            let done = ids.iter().all(|id| !unsettled.contains(id));
            if done {
                kills.push(Kill {
                    held: ids.len(),
                    recovered_s: at.elapsed().as_secs_f64(),
                });
            }
            !done
        });
        let settled = idem_store::bench::count_settled(&mut conn, SCOPE).await? as usize;
        drop(conn);
        if settled >= cfg.messages && watching.is_empty() && publisher.is_finished() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{}: not every charge settled within 600 s", cfg.name);
        }
        tokio::select! {
            _ = shutdown.cancelled() => bail!("interrupted"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let elapsed = started.elapsed();
    publisher.await.context("the publisher panicked")??;
    for replica in &replicas {
        signal(replica, Signal::SIGTERM);
    }
    for mut replica in replicas {
        let _ = tokio::time::timeout(Duration::from_secs(30), replica.wait()).await;
    }
    let by_reference = provider.sim.ledger().gross_by_reference();
    let (mut once, mut double) = (0, 0);
    for m in messages.iter() {
        let Some(id) = &m.message_id else { continue };
        let reference = idem_message::reference_id(SCOPE, id).to_string();
        match by_reference.get(&reference).copied().unwrap_or(0) {
            0 => {}
            1 => once += 1,
            _ => double += 1,
        }
    }
    Ok(RunReport {
        elapsed_s: elapsed.as_secs_f64(),
        charged_once: once,
        double_charges: double,
        missing_charges: cfg.messages - once - double,
        kills,
    })
}

/// Replica `n` of `cfg` as a child process of this binary.
fn spawn(cfg: &Configuration, scratch: &Scratch, sim_url: &str, n: usize) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("finding this binary to run replicas")?;
    Command::new(exe)
        .arg("run")
        .args(pipeline::run_flags(cfg, scratch, sim_url, n))
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting a replica")
}

fn signal(child: &Child, signal: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}
