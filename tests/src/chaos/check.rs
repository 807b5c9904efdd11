//! The end of a run: waiting for quiescence, and every invariant checked
//! at the provider's ledger and in the run's database.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::bail;
use idem_store::OutboxState;
use sqlx::PgPool;

use super::plan::Plan;
use super::report::Report;
use super::world::World;
use crate::rabbit;

/// Wait until every key is recorded and settled, every conflict and
/// malformed message is recorded, and no row is open.
pub(super) async fn quiesce(world: &World, plan: &Plan, timeout: Duration) -> anyhow::Result<()> {
    let want_keys = plan.expected.len() as i64;
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(mut conn) = world.pool.acquire().await
            && let Ok(st) = idem_store::status::read(&mut conn).await
        {
            if st.inbox_keys == want_keys
                && st.open_rows() == 0
                && st.conflicts as usize >= plan.conflicts.len()
                && st.quarantined as usize >= plan.malformed.len()
            {
                return Ok(());
            }
            last = Some(st);
        }
        if Instant::now() > deadline {
            bail!("not quiet after {timeout:?}; last status: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every 30 s, one line on stderr: how far the run has got (long runs must
/// show they are alive).
pub(super) async fn report_progress(pool: PgPool, keys: usize, started: Instant) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let Ok(mut conn) = pool.acquire().await else {
            continue;
        };
        if let Ok(st) = idem_store::status::read(&mut conn).await {
            eprintln!(
                "chaos [{:>5.0} s] inbox keys {}/{keys}, succeeded {}, declined {}, open {}, duplicates absorbed {}, quarantined {}",
                started.elapsed().as_secs_f64(),
                st.inbox_keys,
                st.outbox_in(OutboxState::Succeeded),
                st.outbox_in(OutboxState::Declined),
                st.open_rows(),
                st.duplicates,
                st.quarantined,
            );
        }
    }
}

/// Check every invariant; record violations in the report.
pub(super) async fn check(world: &World, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let ledger = world.sim.ledger();
    let stats = world.sim.stats();
    report.provider_faults = BTreeMap::from([
        ("request drops", stats.dropped_requests),
        ("response drops", stats.dropped_responses),
        ("5xx", stats.errors_5xx),
    ]);
    report.charges = ledger.charges.len();
    let mut per_ref: HashMap<&str, Vec<&idem_charge::Charge>> = HashMap::new();
    for c in &ledger.charges {
        per_ref.entry(c.reference_id.as_str()).or_default().push(c);
    }
    report.double = per_ref.values().filter(|v| v.len() > 1).count();
    if report.double > 0 {
        report.violations.push(format!(
            "{} references charged more than once",
            report.double
        ));
    }
    for (reference, (amount, declined)) in &plan.expected {
        match (per_ref.get(reference.as_str()), declined) {
            (Some(charges), true) => report.violations.push(format!("declined reference {reference} was charged {} times", charges.len())),
            (None, false) => report.missing += 1,
            (Some(charges), false) if charges[0].amount != *amount => report.violations.push(format!(
                "reference {reference} charged {} instead of {amount} (a conflict's payload won?)",
                charges[0].amount
            )),
            _ => {}
        }
    }
    if report.missing > 0 {
        report
            .violations
            .push(format!("{} valid keys never charged", report.missing));
    }
    let strays = per_ref
        .keys()
        .filter(|r| !plan.expected.contains_key(**r))
        .count();
    if strays > 0 {
        report.violations.push(format!(
            "{strays} charges for references no valid message has"
        ));
    }

    let st = idem_store::status::read(&mut *world.pool.acquire().await?).await?;
    report.declined = st.outbox_in(OutboxState::Declined);
    report.absorbed = st.duplicates;
    report.quarantined = st.quarantined;
    let declines = plan.expected.values().filter(|(_, d)| *d).count() as i64;
    if report.declined != declines {
        report.violations.push(format!(
            "{} declined rows, expected {declines}",
            report.declined
        ));
    }
    if st.inbox_keys != plan.expected.len() as i64 {
        report.violations.push(format!(
            "{} inbox keys, expected {}",
            st.inbox_keys,
            plan.expected.len()
        ));
    }
    if st.open_rows() > 0 || st.outbox_in(OutboxState::Dead) > 0 {
        report
            .violations
            .push(format!("rows not settled: {:?}", st.outbox));
    }
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM account_slot")
        .fetch_one(&world.pool)
        .await?;
    if slots > 0 {
        report
            .violations
            .push(format!("{slots} account slots still held"));
    }
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM quarantine")
        .fetch_all(&world.pool)
        .await?;
    let missing_malformed = plan
        .malformed
        .iter()
        .filter(|b| {
            !bodies.contains(&b[..b.len().min(idem_store::quarantine::MAX_KEPT_BODY)].to_vec())
        })
        .count();
    if missing_malformed > 0 {
        report.violations.push(format!(
            "{missing_malformed} malformed messages not in quarantine"
        ));
    }
    if (st.conflicts as usize) < plan.conflicts.len() {
        report.violations.push(format!(
            "{} conflicts recorded, {} published",
            st.conflicts,
            plan.conflicts.len()
        ));
    }
    let topology = idem_inbox::Topology::for_queue(&world.queue);
    for queue in [&topology.queue, &topology.dead_letter_queue] {
        let depth = rabbit::queue_depth(&world.rabbit.amqp_url(), queue).await?;
        if depth > 0 {
            report
                .violations
                .push(format!("{depth} messages left in {queue}"));
        }
    }
    Ok(())
}
