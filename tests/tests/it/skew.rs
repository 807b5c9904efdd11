//! The per-account claim against skewed backlogs, on the real PostgreSQL: its
//! cost follows the accounts it walks, not the rows behind them; its plans
//! stay index reads, custom or generic; every account is reached, one row of
//! each in flight, in outbox order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use idem_store::claim::{self, AccountCursor};
use idem_tests::pg;
use sqlx::{Connection, PgConnection, PgPool};

const LEASE: Duration = Duration::from_secs(30);

/// A fresh, migrated database.
pub(crate) async fn database(tag: &str) -> (String, PgPool) {
    let name = format!("idem_t_skew_{tag}_{}", uuid::Uuid::new_v4().simple());
    let pool = pg::scratch_database(&name, 4).await.unwrap();
    (name, pool)
}

/// `rows` pending rows over `accounts` accounts (`acc_<i % accounts>`), oldest
/// first, plus `history` settled ones; vacuumed and analyzed, as autovacuum
/// leaves a table.
pub(crate) async fn load(pool: &PgPool, rows: i64, accounts: i64, history: i64) {
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency)
         SELECT 'skew', 'skew-' || g, md5('skew-' || g)::uuid, 'acc_' || (g % $2), 100, 'EUR'
         FROM generate_series(1, $1::bigint) g",
    )
    .bind(rows)
    .bind(accounts)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                             state, attempts, settled_at)
         SELECT 'old', 'old-' || g, md5('old-' || g)::uuid, 'acc_' || (g % 1000), 100, 'EUR',
                'succeeded', 1, now()
         FROM generate_series(1, $1::bigint) g",
    )
    .bind(history)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE outbox")
        .execute(pool)
        .await
        .unwrap();
}

/// Settle `ids` as succeeded and free their slots, as a settle does.
async fn settle(conn: &mut PgConnection, ids: &[i64]) {
    sqlx::query(
        "WITH done AS (
             UPDATE outbox SET state = 'succeeded', settled_at = now(), lease_token = NULL,
                               lease_expires_at = NULL, lease_owner = NULL
             WHERE id = ANY($1) RETURNING id)
         DELETE FROM account_slot WHERE outbox_id IN (SELECT id FROM done)",
    )
    .bind(ids)
    .execute(conn)
    .await
    .unwrap();
}

/// Settle `rows` as succeeded through the group settle, as a dispatcher
/// does (one statement, fenced by each row's lease); the ids written.
pub(crate) async fn settle_succeeded(
    conn: &mut PgConnection,
    rows: &[idem_store::Claimed],
) -> Vec<i64> {
    let succeeded = idem_store::Settlement::Succeeded {
        charge_id: "ch".to_owned(),
        result: serde_json::json!({}),
    };
    let batch: Vec<idem_store::settle::Fenced<'_>> = rows
        .iter()
        .map(|r| idem_store::settle::Fenced {
            id: r.id,
            token: r.lease_token,
            settlement: &succeeded,
            chain: false,
        })
        .collect();
    idem_store::settle::settle_many(conn, &batch, "t", &[])
        .await
        .unwrap()
}

/// Shared buffers the per-account claim's two statements touch (from
/// `EXPLAIN (ANALYZE, BUFFERS)`, rolled back), and their plans.
async fn claim_buffers(pool: &PgPool, limit: i64) -> (u64, Vec<String>) {
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let plan = idem_store::bench::explain_claim(&mut tx, "explain", LEASE, limit, true)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // The top line of each statement's plan carries its total.
    let mut total = 0;
    let mut top = true;
    for line in &plan {
        if line.starts_with("-- statement") {
            top = true;
        } else if top && line.trim_start().starts_with("Buffers:") {
            total += line
                .split_whitespace()
                .filter_map(|w| w.split_once('=').and_then(|(_, n)| n.parse::<u64>().ok()))
                .sum::<u64>();
            top = false;
        }
    }
    (total, plan)
}

/// Invariant: with every account's head in flight, a claim over 20,000
/// pending rows on 5 accounts (and 100,000 settled rows of history) reads
/// about as many buffers as over 2,000 rows on the same accounts (a claim
/// costs O(accounts walked), not O(backlog)); once the heads settle, the
/// claim takes exactly the 5 new heads, one per account, each its account's
/// oldest open row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_under_skew_reads_the_accounts_not_the_backlog() {
    let mut cost = Vec::new();
    for rows in [2_000, 20_000] {
        let (name, pool) = database("cost").await;
        load(&pool, rows, 5, 100_000).await;
        let mut conn = pool.acquire().await.unwrap();
        let heads = claim::claim(&mut conn, "a", LEASE, 50, true).await.unwrap();
        assert_eq!(heads.len(), 5, "one head per account");
        let (buffers, plan) = claim_buffers(&pool, 50).await;
        assert!(
            claim::claim(&mut conn, "a", LEASE, 50, true)
                .await
                .unwrap()
                .is_empty(),
            "every account busy: nothing to claim"
        );
        cost.push((rows, buffers, plan));

        let ids: Vec<i64> = heads.iter().map(|h| h.id).collect();
        settle(&mut conn, &ids).await;
        let next = claim::claim(&mut conn, "a", LEASE, 50, true).await.unwrap();
        let oldest: Vec<(String, i64)> = sqlx::query_as(
            "SELECT account_id, min(id) FROM outbox WHERE state IN ('pending', 'in_flight')
             GROUP BY account_id ORDER BY account_id",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let mut claimed: Vec<(String, i64)> =
            next.iter().map(|r| (r.account_id.clone(), r.id)).collect();
        claimed.sort();
        assert_eq!(claimed, oldest, "the next heads, oldest first per account");
        drop(conn);
        pool.close().await;
        pg::drop_database(&name).await.unwrap();
    }
    let (small, large) = (cost[0].1, cost[1].1);
    assert!(
        large <= small * 2 + 20,
        "a claim over 20,000 rows read {large} buffers, over 2,000 rows {small}:\n{}",
        cost[1].2.join("\n")
    );
}

/// Invariant: a claim costs the same whether the planner's statistics are
/// fresh or say the queue is empty. Statistics taken while the outbox held
/// only history (its open-rows indexes empty), then a burst of 50,000
/// pending rows over 1,000 accounts that no `ANALYZE` has seen — a queue
/// table between two autovacuum passes, the shape of the stall a 10-minute
/// bench run hit (the lease of the walked heads planned as a scan of every
/// due row per head). The claim reads about as many buffers as the same
/// claim after `ANALYZE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_costs_the_same_under_statistics_that_say_the_queue_is_empty() {
    let (name, pool) = database("stale").await;
    load(&pool, 0, 1_000, 100_000).await;
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency)
         SELECT 'burst', 'burst-' || g, md5('burst-' || g)::uuid, 'acc_' || (g % 1000), 100, 'EUR'
         FROM generate_series(1, 50000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut cost = Vec::new();
    for fresh in [false, true] {
        if fresh {
            sqlx::query("ANALYZE outbox").execute(&pool).await.unwrap();
        }
        let (buffers, plan) = claim_buffers(&pool, 512).await;
        cost.push((buffers, plan));
    }
    let mut conn = pool.acquire().await.unwrap();
    let taken = claim::claim(&mut conn, "a", LEASE, 512, true)
        .await
        .unwrap();
    assert_eq!(taken.len(), 512, "a full batch of heads, one per account");
    drop(conn);
    pool.close().await;
    pg::drop_database(&name).await.unwrap();
    let ((stale, plan), (fresh, _)) = (&cost[0], &cost[1]);
    eprintln!(
        "claim of 512 heads over 50,000 pending rows: {stale} buffers under stale statistics, {fresh} under fresh ones"
    );
    assert!(
        *stale <= fresh * 2 + 100,
        "under stale statistics the claim read {stale} buffers, under fresh ones {fresh}:\n{}",
        plan.join("\n")
    );
}

/// Invariant: the claim's statements are index reads of the outbox whether
/// PostgreSQL plans them for the parameters or generically (a prepared
/// statement's plan flips to a generic one after five executions): no
/// sequential scan of `outbox` in either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_plans_stay_index_reads_custom_and_generic() {
    let (name, pool) = database("plans").await;
    load(&pool, 20_000, 5, 50_000).await;
    for mode in ["force_custom_plan", "force_generic_plan"] {
        for ordered in [true, false] {
            let mut conn = pool.acquire().await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            sqlx::query(&format!("SET LOCAL plan_cache_mode = {mode}"))
                .execute(&mut *tx)
                .await
                .unwrap();
            let plan = idem_store::bench::explain_claim(&mut tx, "explain", LEASE, 50, ordered)
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            let text = plan.join("\n");
            assert!(
                !text.contains("Seq Scan on outbox"),
                "{mode}, ordered {ordered}:\n{text}"
            );
            assert!(text.contains("Index"), "{mode}, ordered {ordered}:\n{text}");
        }
    }
    pool.close().await;
    pg::drop_database(&name).await.unwrap();
}

/// Invariant: with 300 accounts — more than one walk visits for a claim of
/// 10 — one cursor's claims reach every account: all 600 rows are claimed,
/// never two rows of one account in flight at once, each account's rows in
/// outbox order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_goes_round_every_account() {
    let (name, pool) = database("round").await;
    load(&pool, 600, 300, 0).await;
    assert!(claim::walk_bound(10) < 300, "the test needs several walks");
    let mut conn = pool.acquire().await.unwrap();
    let mut cursor = AccountCursor::default();
    let mut order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut claims = 0;
    while order.values().map(Vec::len).sum::<usize>() < 600 {
        claims += 1;
        assert!(claims < 500, "claims stopped making progress: {order:?}");
        let rows = claim::claim_ordered(&mut conn, "r", LEASE, 10, &mut cursor)
            .await
            .unwrap();
        let accounts: BTreeSet<&str> = rows.iter().map(|r| r.account_id.as_str()).collect();
        assert_eq!(
            accounts.len(),
            rows.len(),
            "two rows of one account in one claim"
        );
        for row in &rows {
            order
                .entry(row.account_id.clone())
                .or_default()
                .push(row.id);
        }
        let in_flight: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM outbox
             WHERE state = 'in_flight' GROUP BY account_id) c",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert!(in_flight <= 1, "an account has {in_flight} rows in flight");
        // Settle half of what is in flight, so some accounts stay busy.
        let ids: Vec<i64> = rows.iter().map(|r| r.id).step_by(2).collect();
        settle(&mut conn, &ids).await;
        let rest: Vec<i64> = rows.iter().map(|r| r.id).skip(1).step_by(2).collect();
        if claims % 3 == 0 {
            settle(&mut conn, &rest).await;
            sqlx::query(
                "WITH done AS (
                     UPDATE outbox SET state = 'succeeded', settled_at = now(),
                                       lease_token = NULL, lease_expires_at = NULL
                     WHERE state = 'in_flight' RETURNING id)
                 DELETE FROM account_slot WHERE outbox_id IN (SELECT id FROM done)",
            )
            .execute(&mut *conn)
            .await
            .unwrap();
        }
    }
    assert_eq!(order.len(), 300, "every account reached");
    for (account, ids) in &order {
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, &sorted, "{account} out of order");
        assert_eq!(ids.len(), 2, "{account}: {ids:?}");
    }
    drop(conn);
    pool.close().await;
    pg::drop_database(&name).await.unwrap();
}

/// Invariant: a claim's walk costs the same after thousands of charges on
/// its accounts as before them. `outbox_open_by_account` keeps an entry for
/// every version of a settled row until `outbox` is vacuumed (here never:
/// autovacuum off on the table, as between two passes over a table of
/// months of history), all below the accounts' heads; a walk that looked
/// for each head from its account's start stepped over them (36 buffers
/// before 2,000 charges on 5 accounts, 279 after). From the accounts'
/// floors (`account_head`) it does not. The charges are real group settles,
/// and each claim takes exactly the 5 next heads, one per account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_costs_the_same_after_thousands_of_charges_on_its_accounts() {
    let (name, pool) = database("settled").await;
    load(&pool, 20_000, 5, 0).await;
    sqlx::query("ALTER TABLE outbox SET (autovacuum_enabled = false)")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut heads = claim::claim(&mut conn, "a", LEASE, 50, true).await.unwrap();
    let (before, _) = claim_buffers(&pool, 50).await;
    for _ in 0..400 {
        assert_eq!(heads.len(), 5, "one head per account");
        let written = settle_succeeded(&mut conn, &heads).await;
        assert_eq!(written.len(), 5);
        heads = claim::claim(&mut conn, "a", LEASE, 50, true).await.unwrap();
    }
    let (after, plan) = claim_buffers(&pool, 50).await;
    drop(conn);
    pool.close().await;
    pg::drop_database(&name).await.unwrap();
    eprintln!("walk with every head in flight: {before} buffers, {after} after 2,000 charges");
    assert!(
        after <= before * 2 + 20,
        "after 2,000 charges the claim read {after} buffers, before {before}:\n{}",
        plan.join("\n")
    );
}
