//! The batch statements of the dispatcher under the plans a replica really
//! runs — the group settle, chained or not, and the rescue of a dead
//! holder's rows: their work (rows handled, counted from `EXPLAIN ANALYZE`,
//! not timed) grows as their batch, never as the batch's square or the rows
//! in flight times the batch, under a generic plan (what a prepared
//! statement may switch to after five runs, guessing 10 rows for every
//! `unnest`) as under a custom one.

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

/// Rows a statement may handle per row of its batch: a few index probes
/// each (the statements here handle 13 to 37), far fewer than the 512 rows
/// in flight that a walk of `outbox_lease` per row would handle. With the
/// growth from 32 to 512 rows bounded too, neither O(batch²) nor O(rows in
/// flight × batch) passes.
const PER_ROW: u64 = 64;

/// A database of 200,000 settled rows and 1,024 pending ones over 512
/// accounts (two per account: one in flight each after the claim, and a next
/// head for a chained settle to lease), analyzed before the claim; and the
/// 512 rows claimed, in id order.
async fn in_flight(tag: &str) -> (String, PgPool, Vec<Claimed>) {
    let (name, pool) = database(tag).await;
    load(&pool, 1024, 512, 200_000).await;
    let mut conn = pool.acquire().await.unwrap();
    let mut rows = claim::claim(&mut conn, tag, LEASE, 512, true)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(rows.len(), 512, "one row of each account in flight");
    rows.sort_by_key(|r| r.id);
    (name, pool, rows)
}

/// The work of 32 rows against 512: at most twice as much per row
/// (linear: large ≈ 16 × small; quadratic: ≈ 256 ×), and at most
/// [`PER_ROW`] per row.
fn assert_linear(case: &str, small: u64, large: u64) {
    assert!(
        large <= 2 * 16 * small && small <= 32 * PER_ROW && large <= 512 * PER_ROW,
        "{case}: 512 rows handled {large} rows, 32 handled {small}"
    );
}

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
/// twice the rows per result that settling 32 does, and at most
/// [`PER_ROW`] rows per result — under generic and
/// custom plans, with and without chaining each account's next row, under
/// statistics that say no row is in flight and under statistics that know
/// the leases — and every row is settled. (Before the settle carried each
/// result along with its locked row, the generic plan under fresh statistics
/// joined the batch to itself by a nested loop: 534,016 rows handled for 512
/// results against 3,136 for 32, and 1,592,320 chained; now 8,192 against
/// 512, and 18,944 against 1,184 chained, in every case.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settles_work_grows_as_its_batch_under_every_plan() {
    let (name, pool, rows) = in_flight("settle_plans").await;
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
                assert_eq!((settled_small, settled_large), (32, 512), "{case}");
                assert_linear(&case, small, large);
            }
        }
    }
    pool.close().await;
    idem_tests::pg::drop_database(&name).await.unwrap();
}

/// Invariant: rescuing 512 rows of a holder whose liveness key nobody holds
/// handles at most twice the rows per row that rescuing 32 does, and at
/// most [`PER_ROW`] rows per row, generic or
/// custom, under statistics that say nothing is in flight and under
/// statistics that know the leases, and every row is rescued. (Before the
/// rows were found by primary key inside the CTE that locks them, a
/// generic plan walked `outbox_lease` — all 512 rows in flight — and
/// scanned the batch once per row in flight: 33,628 rows handled for 32,
/// 529,948 for 512; now 445 and 6,685.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rescue_of_a_dead_holders_rows_grows_as_its_batch() {
    let (name, pool, rows) = in_flight("rescue_plans").await;
    // Their holder's liveness key: one no session holds.
    sqlx::query(
        "UPDATE outbox SET lease_lock = 4242, lease_lock_token = lease_token
         WHERE state = 'in_flight'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let rows: Vec<(i64, uuid::Uuid)> = rows.iter().map(|r| (r.id, r.lease_token)).collect();
    let work = |plan: Plan, rows: Vec<(i64, uuid::Uuid)>| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            let explained = explain::rescue_orphaned(&mut tx, plan, &rows)
                .await
                .unwrap();
            let rescued: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE id = ANY($1) AND state = 'unknown'",
            )
            .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            tx.rollback().await.unwrap();
            (explain::work(&explained), rescued.unsigned_abs())
        }
    };
    for stats in ["before the claim", "after the claim"] {
        if stats == "after the claim" {
            sqlx::query("ANALYZE outbox").execute(&pool).await.unwrap();
        }
        for plan in [Plan::Generic, Plan::Custom] {
            let (small, rescued_small) = work(plan, rows[..32].to_vec()).await;
            let (large, rescued_large) = work(plan, rows.clone()).await;
            let case = format!("{plan:?}, analyzed {stats}");
            assert_eq!((rescued_small, rescued_large), (32, 512), "{case}");
            assert_linear(&case, small, large);
        }
    }
    pool.close().await;
    idem_tests::pg::drop_database(&name).await.unwrap();
}
