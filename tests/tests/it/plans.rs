//! The group settle under the plans a replica really runs: its work — rows
//! handled, counted from `EXPLAIN ANALYZE`, not timed — grows as its batch,
//! never as the batch's square, under a generic plan (what a prepared
//! statement may switch to after five runs, guessing 10 rows for every
//! `unnest`) as under a custom one, chained or not.

use std::time::Duration;

use idem_store::attempt::NewAttempt;
use idem_store::explain::{self, Plan};
use idem_store::outbox::Claimed;
use idem_store::settle::{Chain, Fenced};
use idem_store::{Settlement, claim};
use serde_json::json;
use sqlx::{Connection, PgPool};

use crate::skew::{database, load};

const LEASE: Duration = Duration::from_secs(30);

/// The work of settling `rows` as succeeded in one statement under `plan`,
/// rolled back; and how many rows the statement settled.
async fn settle_work(pool: &PgPool, plan: Plan, rows: &[Claimed], chain: bool) -> (u64, u64) {
    let settlement = Settlement::Succeeded {
        charge_id: "ch_plan".into(),
        result: json!({"id": "ch_plan"}),
    };
    let batch: Vec<Fenced<'_>> = rows
        .iter()
        .map(|r| Fenced {
            id: r.id,
            token: r.lease_token,
            settlement: &settlement,
            chain,
        })
        .collect();
    let calls: Vec<NewAttempt> = rows
        .iter()
        .map(|r| NewAttempt {
            outbox_id: r.id,
            kind: "charge",
            started_at: chrono::Utc::now(),
            latency_ms: 1.0,
            http_status: Some(201),
            error: None,
            provider_id: Some("ch_plan".into()),
        })
        .collect();
    let chain = chain.then_some(Chain {
        lease: LEASE,
        lock: None,
    });
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let explained = explain::settle(&mut tx, plan, &batch, "plans", &calls, chain)
        .await
        .unwrap();
    let settled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE id = ANY($1) AND state = 'succeeded'",
    )
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    (explain::work(&explained), settled.unsigned_abs())
}

/// Invariant: settling 512 leased rows in one statement handles at most
/// twice the rows per result that settling 32 does — under generic and
/// custom plans, with and without chaining each account's next row, under
/// statistics that say no row is in flight and under statistics that know
/// the leases — and every row is settled. (Before the settle carried each
/// result along with its locked row, the generic plan under fresh statistics
/// joined the batch to itself by a nested loop: 534,016 rows handled for 512
/// results against 3,136 for 32, and 1,592,320 chained; now 8,192 against
/// 512, and 18,944 against 1,184 chained, in every case.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settles_work_grows_as_its_batch_under_every_plan() {
    let (name, pool) = database("settle_plans").await;
    // Two rows per account: one in flight per account, and a next head for
    // the chained settle to lease.
    load(&pool, 1024, 512, 200_000).await;
    let mut conn = pool.acquire().await.unwrap();
    let mut rows = claim::claim(&mut conn, "plans", LEASE, 512, true)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(rows.len(), 512, "one row of each account in flight");
    rows.sort_by_key(|r| r.id);
    // Under statistics that say nothing is in flight (the table analyzed
    // before the claim), then under statistics that know the 512 leases.
    for stats in ["before the claim", "after the claim"] {
        if stats == "after the claim" {
            sqlx::query("ANALYZE outbox").execute(&pool).await.unwrap();
        }
        for plan in [Plan::Generic, Plan::Custom] {
            for chain in [false, true] {
                let (small, settled_small) = settle_work(&pool, plan, &rows[..32], chain).await;
                let (large, settled_large) = settle_work(&pool, plan, &rows, chain).await;
                let case = format!("{plan:?}, chain {chain}, analyzed {stats}");
                eprintln!("WORK {case}: {small} {large}");
                assert_eq!((settled_small, settled_large), (32, 512), "{case}");
                // Linear: large ≈ 16 × small; quadratic: ≈ 256 ×.
                assert!(
                    large <= 2 * 16 * small,
                    "{case}: 512 results handled {large} rows, 32 handled {small}"
                );
            }
        }
    }
    pool.close().await;
    idem_tests::pg::drop_database(&name).await.unwrap();
}
