//! The ceiling: the SQL the pipeline runs per message, in a tight loop
//! straight against PostgreSQL — no broker, no HTTP — with the tuned
//! configuration's batch sizes and concurrency. What end to end would reach
//! if the broker, the provider calls and the daemon's own work were free.
//!
//! Per replica, as in the daemon, three loops run at once:
//! - inbox: `record_batch` of `--inbox-batch-size` messages in one
//!   transaction (the consumer's [`idem_inbox::record_batch`], whichever
//!   version is there);
//! - dispatch: `claim::claim` of up to `--claim-batch` rows, then
//!   `settle::settle_many` of them as succeeded, with a charge like the
//!   provider's, in one statement (the dispatcher's recorder groups the
//!   results that queue up the same way);
//! - results: `event::claim` and `event::published` of the result events
//!   the settles wrote (the result publisher's SQL, without the publish).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idem_inbox::Incoming;
use idem_store::attempt::NewAttempt;
use idem_store::settle::{self, Fenced};
use idem_store::{Claimed, Settlement, claim, event};
use lapin::BasicProperties;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinSet;

use super::args::{BenchArgs, workload_spec};
use super::cpu::{PerMessage, Watch};
use super::pipeline::{Configuration, Settings, daemon_config};
use super::progress::{self, Progress};
use super::scratch::Scratch;
use crate::traffic;
use idem_daemon::Config;

/// What the ceiling reached.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingReport {
    /// Which configuration's sizes it used.
    pub sizes_of: String,
    /// Those sizes.
    pub settings: Settings,
    /// Messages recorded, claimed, settled and their events consumed.
    pub messages: usize,
    /// Seconds from the first inbox transaction to the last event deleted.
    pub elapsed_s: f64,
    /// Messages per second.
    pub msg_per_s: f64,
    /// CPU per message (`idem_us` is this loop's client side).
    pub cpu: PerMessage,
}

/// Run the ceiling with the sizes of `cfg`.
pub async fn run(
    args: &BenchArgs,
    cfg: &Configuration,
    watch: &Watch,
) -> anyhow::Result<CeilingReport> {
    let scratch = Scratch::create(&args.database_url, &args.broker.amqp_url, false).await?;
    let outcome = async {
        scratch.preload(args.backlog).await?;
        let config = daemon_config(cfg, &scratch, "http://127.0.0.1:1", 0)?;
        // The daemon's pool size, per replica.
        let pool = idem_store::connect(
            &scratch.database_url,
            config.db_max_connections * args.replicas as u32,
        )
        .await?;
        // The dispatch loops' claims and settles, as a dispatcher's: on
        // connections of their own that plan each statement once.
        let dispatch =
            idem_store::connect_dispatch(&scratch.database_url, 2 * args.replicas as u32).await?;
        let vacuum = scratch.vacuum_every(Duration::from_millis(args.vacuum_ms));
        let pools = Pools {
            shared: &pool,
            dispatch: &dispatch,
        };
        let outcome = measure(args, cfg, &config, &scratch, pools, watch).await;
        vacuum.cancel();
        dispatch.close().await;
        pool.close().await;
        outcome
    }
    .await;
    scratch.drop_all().await;
    outcome
}

/// The ceiling's pools: the shared one, and the dispatch loops' own.
#[derive(Clone, Copy)]
struct Pools<'a> {
    shared: &'a PgPool,
    dispatch: &'a PgPool,
}

async fn measure(
    args: &BenchArgs,
    cfg: &Configuration,
    config: &Config,
    scratch: &Scratch,
    pools: Pools<'_>,
    watch: &Watch,
) -> anyhow::Result<CeilingReport> {
    let pool = pools.shared;
    let spec = workload_spec(
        &format!("ceiling-{}", scratch.id),
        args.messages,
        args.accounts,
    );
    let messages = traffic::generate(&spec);
    let total = messages.len();
    // The deliveries as the consumer would see them.
    let deliveries: Arc<Vec<(BasicProperties, Vec<u8>)>> = Arc::new(
        messages
            .into_iter()
            .map(|m| (m.properties(), m.body))
            .collect(),
    );
    let settled = Arc::new(AtomicUsize::new(0));
    let events_done = Arc::new(AtomicUsize::new(0));
    let before = watch.sample(&scratch.database(), scratch.upkeep_pid());
    let started = Instant::now();
    let mut loops = JoinSet::new();
    let replicas = args.replicas.max(1);
    for r in 0..replicas {
        loops.spawn(inbox_loop(
            pool.clone(),
            Arc::clone(&deliveries),
            r,
            replicas,
            config.clone(),
        ));
        loops.spawn(dispatch_loop(
            pools.dispatch.clone(),
            config.clone(),
            format!("ceiling-{r}"),
            total,
            Arc::clone(&settled),
        ));
        loops.spawn(events_loop(
            pool.clone(),
            config.results.batch,
            total,
            Arc::clone(&events_done),
        ));
    }
    let mut progress = Progress::new("ceiling", total as u64);
    progress::drive(&mut progress, "ceiling", &mut loops, || {
        (
            events_done.load(Ordering::Relaxed) as u64,
            format!("done, {} settled", settled.load(Ordering::Relaxed)),
        )
    })
    .await?;
    let elapsed = started.elapsed();
    let after = watch.sample(&scratch.database(), scratch.upkeep_pid());
    progress.finish();
    Ok(CeilingReport {
        sizes_of: cfg.name.clone(),
        settings: Settings::of(config),
        messages: total,
        elapsed_s: elapsed.as_secs_f64(),
        msg_per_s: total as f64 / elapsed.as_secs_f64(),
        cpu: PerMessage::between(&before, &after, total),
    })
}

/// Record this replica's share of the deliveries (every `replicas`-th batch),
/// one transaction per batch, as the consumer does.
async fn inbox_loop(
    pool: PgPool,
    deliveries: Arc<Vec<(BasicProperties, Vec<u8>)>>,
    replica: usize,
    replicas: usize,
    config: Config,
) -> anyhow::Result<()> {
    let size = config.inbox.batch_size;
    for chunk in deliveries.chunks(size).skip(replica).step_by(replicas) {
        let items: Vec<Incoming<'_>> = chunk
            .iter()
            .map(|(properties, body)| Incoming {
                properties,
                body,
                redelivered: false,
            })
            .collect();
        let mut tx = pool.begin().await?;
        idem_inbox::record_batch(&mut tx, &items, &config.inbox.admission).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Claim and settle until `total` rows have settled (across replicas).
async fn dispatch_loop(
    pool: PgPool,
    config: Config,
    owner: String,
    total: usize,
    settled: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let d = &config.dispatch;
    while settled.load(Ordering::Relaxed) < total {
        let rows = {
            let mut conn = pool.acquire().await?;
            claim::claim(
                &mut conn,
                &owner,
                d.lease,
                d.claim_batch,
                d.per_account_ordering,
            )
            .await?
        };
        if rows.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        settle_all(&pool, &rows).await?;
        let n = rows.len();
        settled.fetch_add(n, Ordering::Relaxed);
    }
    Ok(())
}

/// Settle `rows` as succeeded in one fenced statement, as the dispatcher's
/// recorder does with the results that queue up while it writes (group
/// commit).
pub async fn settle_all(pool: &PgPool, rows: &[Claimed]) -> anyhow::Result<()> {
    let settlements: Vec<Settlement> = rows.iter().map(charged).collect();
    let batch: Vec<Fenced<'_>> = rows
        .iter()
        .zip(&settlements)
        .map(|(row, settlement)| Fenced {
            id: row.id,
            token: row.lease_token,
            settlement,
            chain: false,
        })
        .collect();
    // One charge call per row in the attempt history, as the dispatcher writes.
    let calls: Vec<NewAttempt> = rows
        .iter()
        .map(|row| NewAttempt {
            outbox_id: row.id,
            kind: "charge",
            started_at: chrono::Utc::now(),
            latency_ms: 0.1,
            http_status: Some(201),
            error: None,
            provider_id: Some(format!("ch_ceiling_{}", row.id)),
        })
        .collect();
    let mut conn = pool.acquire().await?;
    let recorded = settle::settle_many(&mut conn, &batch, "ceiling", &calls).await?;
    anyhow::ensure!(
        recorded.len() == rows.len(),
        "the fence refused {} of {} settles",
        rows.len() - recorded.len(),
        rows.len()
    );
    Ok(())
}

/// A success as the dispatcher would record it, with a charge shaped like
/// the provider's.
fn charged(row: &Claimed) -> Settlement {
    let charge_id = format!("ch_{}", row.reference_id.simple());
    Settlement::Succeeded {
        result: json!({
            "id": charge_id,
            "reference_id": row.reference_id,
            "account_id": row.account_id,
            "amount": row.amount,
            "currency": row.currency,
            "status": "succeeded",
            "created": chrono::Utc::now().timestamp(),
        }),
        charge_id,
    }
}

/// Claim and delete result events until `total` are gone (across replicas).
async fn events_loop(
    pool: PgPool,
    batch: i64,
    total: usize,
    done: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    while done.load(Ordering::Relaxed) < total {
        // The publisher's step without the broker: claim (row locks) and
        // forget in one transaction.
        let mut tx = pool.begin().await?;
        let events = event::claim(&mut tx, batch, idem_events::publisher::STEP_IDLE_LIMIT).await?;
        if events.is_empty() {
            tx.commit().await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        let deleted = event::published(&mut tx, &ids).await?;
        tx.commit().await?;
        done.fetch_add(deleted as usize, Ordering::Relaxed);
    }
    Ok(())
}
