//! The chaos suite: idem's guarantees while the world around it breaks.
//!
//! On one machine, without touching the shared services: its own PostgreSQL
//! cluster and RabbitMQ node, TCP proxies in front of both (connection cuts),
//! the provider simulator with faults, and several `idem run` processes. A
//! workload with every kind of duplicate, key conflicts, declines and malformed
//! messages runs while a scheduler injects faults in rotation; then the suite
//! waits for quiescence and checks every invariant, counted at the provider.
//!
//! A run has the test process to itself ([`gate::alone`]): its fault timings
//! and settle deadlines assume the machine is not shared with other suites.
//!
//! ## Layout
//! - this module: [`run`];
//! - `world`: [`Profile`] (how hard, how long) and the `World` a run starts
//!   (cluster, node, proxies, provider);
//! - `plan`: the workload and what it must end as;
//! - `publisher`: a producer that survives broker restarts;
//! - `faults`: the fault kinds and their scheduler;
//! - `workers`: the supervised `idem run` processes;
//! - `check`: quiescence and the invariants, into a [`Report`].

use std::time::Instant;

use anyhow::Context;
use idem_simulator::Faults;
use tokio_util::sync::CancellationToken;

use crate::{gate, init};

mod check;
mod faults;
mod plan;
mod publisher;
mod report;
mod workers;
mod world;

pub use faults::FaultKind;
use plan::Plan;
pub use publisher::Publisher;
pub use report::Report;
use workers::Workers;
pub use world::Profile;
use world::World;

/// Run a profile end to end; the report lists any violated invariant.
pub async fn run(profile: Profile) -> anyhow::Result<Report> {
    init();
    let _alone = gate::alone().await;
    let started = Instant::now();
    let world = World::start().await?;
    tracing::info!(logs = %world.logs.display(), "chaos: world started");
    let plan = Plan::new(&profile);
    let mut workers = Workers::new(&world, profile.workers)?;
    workers.spawn_all()?;

    let publishing_done = CancellationToken::new();
    let scheduler = tokio::spawn(faults::schedule(
        faults::Targets::from(&world),
        workers.handle(),
        profile.fault_interval,
        profile.min_rounds,
        publishing_done.clone(),
    ));
    let progress = tokio::spawn(check::report_progress(
        world.pool.clone(),
        plan.expected.len(),
        started,
    ));
    let published = plan.publish(&world, &profile).await;
    publishing_done.cancel();
    // Faults keep coming until every kind has had its rounds.
    let injected = scheduler.await.context("fault scheduler")??;
    let (published, republished) = published?;
    world.sim.set_faults(Faults::default());
    workers.ensure_all_running()?;

    let mut duplicates = plan.duplicates.clone();
    duplicates.insert("producer re-publishes", republished);
    let mut report = Report {
        profile: profile.name,
        published,
        distinct: plan.expected.len(),
        duplicates,
        conflicts: profile.conflicts,
        malformed: profile.malformed,
        faults: injected.counts,
        frozen_leases: injected.frozen_leases,
        logs: world.logs.clone(),
        ..Report::default()
    };
    if let Err(e) = check::quiesce(&world, &plan, profile.settle_timeout).await {
        report.violations.push(format!("no quiescence: {e:#}"));
    }
    progress.abort();
    workers.stop_all().await;
    check::check(&world, &plan, &mut report).await?;
    report.fence_refusals = workers.count_in_logs("refused by the lease fence");
    report.overran = workers.count_in_logs("outlived its lease budget");
    if report.frozen_leases > 0 && report.fence_refusals == 0 {
        report.violations.push(format!(
            "frozen workers held {} leases, yet no stale result met the fence",
            report.frozen_leases
        ));
    }
    report.worker_restarts = workers.restarts();
    report.elapsed = started.elapsed();
    Ok(report)
}
