//! The batch statements of the dispatcher under the plans a replica really
//! runs — the group settle, chained or not, and the rescue of a dead
//! holder's rows: their work (rows handled, counted from `EXPLAIN ANALYZE`,
//! not timed) grows as their batch, never as the batch's square or the rows
//! in flight times the batch, under a generic plan (what a prepared
//! statement may switch to after five runs, guessing 10 rows for every
//! `unnest`) as under a custom one.

use std::time::Duration;

use idem_store::attempt::NewAttempt;
use idem_store::claim::AccountCursor;
use idem_store::explain::{self, Plan};
use idem_store::heads::Behind;
use idem_store::outbox::Claimed;
use idem_store::settle::{Chain, Fenced};
use idem_store::{Settlement, claim, settle};
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};

use crate::skew::{database, load};

const LEASE: Duration = Duration::from_secs(30);

/// Rows a statement may handle per row of its batch: a few index probes
/// each (the statements here handle 13 to 37), far fewer than the 512 rows
/// in flight that a walk of `outbox_lease` per row would handle. With the
/// growth from 32 to 512 rows bounded too, neither O(batch²) nor O(rows in
/// flight × batch) passes.
const PER_ROW: u64 = 64;

/// `$body`'s value, run with `$tx`, a transaction on `$conn` rolled back
/// after it.
macro_rules! rolled_back {
    ($conn:expr, |$tx:ident| $body:expr) => {{
        let mut $tx = $conn.begin().await.unwrap();
        let value = $body;
        $tx.rollback().await.unwrap();
        value
    }};
}

/// The one count `sql` selects.
async fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
}

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

/// The results of `rows`, each recorded as `settlement` (chained or not),
/// and one provider call each for the attempt history.
fn results<'a>(
    rows: &[Claimed],
    settlement: &'a Settlement,
    chain: bool,
) -> (Vec<Fenced<'a>>, Vec<NewAttempt>) {
    let batch = rows
        .iter()
        .map(|r| Fenced {
            id: r.id,
            token: r.lease_token,
            settlement,
            chain,
        })
        .collect();
    let calls = rows
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
    (batch, calls)
}

fn succeeded() -> Settlement {
    Settlement::Succeeded {
        charge_id: "ch_plan".into(),
        result: json!({"id": "ch_plan"}),
    }
}

/// The work of settling `rows` as succeeded in one statement under `plan`,
/// rolled back; and how many rows the statement settled.
async fn settle_work(
    conn: &mut PgConnection,
    plan: Plan,
    rows: &[Claimed],
    chain: bool,
) -> (u64, u64) {
    let settlement = succeeded();
    let (batch, calls) = results(rows, &settlement, chain);
    let chain = chain.then_some(Chain {
        lease: LEASE,
        lock: None,
    });
    let mut tx = conn.begin().await.unwrap();
    let explained = explain::settle(&mut tx, plan, &batch, "plans", &calls, chain)
        .await
        .unwrap();
    assert_no_scan_of_outbox(&explained);
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
                let mut conn = pool.acquire().await.unwrap();
                let (small, settled_small) = settle_work(&mut conn, plan, &rows[..32], chain).await;
                let (large, settled_large) = settle_work(&mut conn, plan, &rows, chain).await;
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

/// The tables the dispatcher's statements read: a vacuum or an analyze of
/// any of them makes their plans again.
const KEPT_TABLES: [&str; 6] = [
    "outbox",
    "account_head",
    "account_slot",
    "attempt",
    "result_event",
    "result_reply",
];

/// `rows` outbox rows of scope `scope` over `accounts` accounts
/// (`<scope>_<i % accounts>`), in `state`; not analyzed.
async fn add(pool: &PgPool, scope: &str, rows: i64, accounts: i64, state: &str) {
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                             state, settled_at)
         SELECT $1, $1 || '-' || g, md5($1 || '-' || g)::uuid, $1 || '_' || (g % $3), 100, 'EUR',
                $4::outbox_state, CASE WHEN $4 = 'succeeded' THEN now() END
         FROM generate_series(1, $2::bigint) g",
    )
    .bind(scope)
    .bind(rows)
    .bind(accounts)
    .bind(state)
    .execute(pool)
    .await
    .unwrap();
}

/// No node of `explained` reads `outbox` by a sequential scan, and none
/// joins by hash or merge (which read a whole input to join a few rows).
fn assert_no_scan_of_outbox(explained: &serde_json::Value) {
    assert_no_whole_reads(explained, |relation| relation == "outbox");
}

/// No node of `explained` reads a relation `scanned` picks by a sequential
/// scan, and none joins by hash or merge.
fn assert_no_whole_reads(explained: &serde_json::Value, scanned: fn(&str) -> bool) {
    fn walk(n: &serde_json::Value, scanned: fn(&str) -> bool, found: &mut Vec<String>) {
        let kind = n["Node Type"].as_str().unwrap_or_default();
        let relation = n["Relation Name"].as_str().unwrap_or_default();
        if (kind == "Seq Scan" && scanned(relation)) || kind == "Hash Join" || kind == "Merge Join"
        {
            found.push(format!("{kind} {relation}"));
        }
        for child in n["Plans"].as_array().into_iter().flatten() {
            walk(child, scanned, found);
        }
    }
    let mut found = Vec::new();
    for statement in explained.as_array().into_iter().flatten() {
        walk(&statement["Plan"], scanned, &mut found);
    }
    assert!(found.is_empty(), "whole-table reads in the plan: {found:?}");
}

/// The dispatcher's statements the kept-plans test holds to their plans.
fn kept_statements() -> [&'static str; 6] {
    [
        claim::claim_sql(false)[0],
        claim::claim_sql(true)[0],
        claim::claim_sql(true)[1],
        explain::TIDY,
        settle::statement(false),
        settle::statement(true),
    ]
}

/// A dispatcher's round on the small table, on `conn` (a dispatch
/// connection), which plans its statements: claims with and without
/// ordering (walk, tidy, lease), results settled chained and not. Returns
/// the kept plans' costs, in [`kept_statements`]' order.
async fn plan_on_a_small_table(conn: &mut PgConnection, pool: &PgPool) -> Vec<f64> {
    let mut cursor = AccountCursor::default();
    let rows = claim::claim_ordered(conn, "small", LEASE, 512, &mut cursor)
        .await
        .unwrap();
    assert_eq!(rows.len(), 4, "one head of each small account");
    let settlement = succeeded();
    let (batch, calls) = results(&rows[..2], &settlement, true);
    let chain = Chain {
        lease: LEASE,
        lock: None,
    };
    let chained = settle::settle_and_chain(conn, &batch, "small", &calls, Some(chain))
        .await
        .unwrap();
    assert_eq!(chained.len(), 2);
    let (batch, calls) = results(&rows[2..], &settlement, false);
    let settled = settle::settle_many(conn, &batch, "small", &calls)
        .await
        .unwrap();
    assert_eq!(settled.len(), 2);
    // Floors left behind their heads (still below every open row): the next
    // claim's walk tidies them, and so plans the tidy too.
    sqlx::query("UPDATE account_head SET floor = 1")
        .execute(pool)
        .await
        .unwrap();
    let mut cursor = AccountCursor::default();
    claim::claim_ordered(conn, "small", LEASE, 512, &mut cursor)
        .await
        .unwrap();
    // And the claim of a dispatcher without ordering (the rows it takes
    // stay in flight: other accounts are used below).
    claim::claim(conn, "small", LEASE, 512, false)
        .await
        .unwrap();
    let mut costs = Vec::new();
    for sql in kept_statements() {
        costs.push(explain::kept_cost(conn, sql).await.unwrap());
    }
    costs
}

/// The claim's kept plans (`conn`, a dispatch connection) on the grown
/// table: the tidy, unordered claim, walk and lease of 512 each, rolled
/// back, read no table whole and handle at most [`PER_ROW`] rows per row.
async fn assert_the_kept_claims_read_by_key(conn: &mut PgConnection, pool: &PgPool) {
    let heads: Vec<i64> = sqlx::query_scalar(
        "SELECT min(id) FROM outbox WHERE scope = 'open' GROUP BY account_id ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(heads.len(), 512);
    // Every open account's floor behind its head, and what a walk would
    // tell the tidy of it.
    sqlx::query("UPDATE account_head SET floor = 1 WHERE account_id LIKE 'open%'")
        .execute(pool)
        .await
        .unwrap();
    let behind: Vec<Behind> = sqlx::query_as::<_, (String, i64, i64)>(
        "SELECT h.account_id, h.version, min(o.id) FROM account_head h
         JOIN outbox o ON o.account_id = h.account_id
         WHERE h.account_id LIKE 'open%' GROUP BY h.account_id, h.version",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(account_id, version, head)| Behind {
        account_id,
        version,
        head: Some(head),
    })
    .collect();
    assert_eq!(behind.len(), 512);
    let holder = claim::Holder {
        owner: "large",
        lease: LEASE,
        lock: None,
    };
    for (statement, explained) in [
        (
            "tidy",
            rolled_back!(conn, |tx| {
                let tidied = explain::tidy(&mut tx, Plan::Cached, &behind).await.unwrap();
                let raised = count(
                    &mut tx,
                    "SELECT count(*) FROM account_head WHERE account_id LIKE 'open%' AND floor > 1",
                )
                .await;
                assert_eq!(raised, 512, "the kept tidy raised every floor");
                tidied
            }),
        ),
        (
            "unordered claim",
            rolled_back!(conn, |tx| {
                explain::claim_unordered(&mut tx, Plan::Cached, &holder, 512)
                    .await
                    .unwrap()
            }),
        ),
        (
            "walk",
            rolled_back!(conn, |tx| {
                explain::walk(&mut tx, Plan::Cached, "", claim::walk_bound(512), 512)
                    .await
                    .unwrap()
            }),
        ),
        (
            "lease",
            rolled_back!(conn, |tx| {
                let leased = explain::lease(&mut tx, Plan::Cached, &holder, &heads)
                    .await
                    .unwrap();
                let in_flight = count(
                    &mut tx,
                    "SELECT count(*) FROM outbox WHERE scope = 'open' AND state = 'in_flight'",
                )
                .await;
                assert_eq!(in_flight, 512, "the cached lease leased every head");
                leased
            }),
        ),
    ] {
        // No table at all read whole (`account_head` holds few enough rows
        // for a scan of it to pass the bound on work).
        assert_no_whole_reads(&explained, |_| true);
        let work = explain::work(&explained);
        assert!(
            work <= 512 * PER_ROW,
            "{statement}: {work} rows handled for 512 accounts"
        );
    }
}

/// Invariant: on the dispatcher's own connections
/// (`idem_store::db::DISPATCH_SESSION`: each statement planned once), the
/// plans made while `outbox` held eight rows, analyzed — and kept, as a
/// generic plan is until a table it reads is vacuumed or analyzed (the
/// test checks their costs did not change) — still reach their
/// rows by key once it holds 200,000 settled rows and 1,024 open ones over
/// 512 more accounts: the unordered claim of 512 rows, the walk over the
/// accounts, the tidy and the lease of their 512 heads and the group settle
/// of 512 results, chained and not, each handle
/// at most [`PER_ROW`] rows per row, without a sequential scan of `outbox`
/// or a hash or merge join. (With `force_generic_plan` alone, the kept
/// plans scanned `outbox` whole and joined by hash.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatchers_plans_made_on_a_small_table_hold_on_a_large_one() {
    let (name, pool) = database("cached_plans").await;
    // The tables stay as analyzed while small: no autovacuum to make the
    // plans again (any vacuum or analyze of a table a statement reads would).
    for table in KEPT_TABLES {
        sqlx::query(&format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = false)"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    add(&pool, "small", 8, 4, "pending").await;
    sqlx::query("VACUUM ANALYZE outbox")
        .execute(&pool)
        .await
        .unwrap();
    let dispatch = idem_store::connect_dispatch(&idem_tests::pg::url(&name), 1)
        .await
        .unwrap();
    let mut conn = dispatch.acquire().await.unwrap();
    let costs = plan_on_a_small_table(&mut conn, &pool).await;

    // The table grows; nothing analyzes it.
    add(&pool, "history", 200_000, 1000, "succeeded").await;
    add(&pool, "open", 1024, 512, "pending").await;
    assert_the_kept_claims_read_by_key(&mut conn, &pool).await;
    // Still the plans made on the small table (a plan made again would be
    // costed for the large one).
    for (sql, cost) in kept_statements().iter().zip(&costs) {
        assert_eq!(
            explain::kept_cost(&mut conn, sql).await.unwrap(),
            *cost,
            "the plan kept for {}",
            &sql[..40]
        );
    }
    // 512 rows in flight (claimed elsewhere), settled under the cached plans.
    let mut other = pool.acquire().await.unwrap();
    let mut rows = claim::claim(&mut other, "large", LEASE, 512, true)
        .await
        .unwrap();
    rows.sort_by_key(|r| r.id);
    assert_eq!(rows.len(), 512);
    for chain in [false, true] {
        let (work, settled) = settle_work(&mut conn, Plan::Cached, &rows, chain).await;
        assert_eq!(settled, 512, "chain {chain}");
        assert!(
            work <= 512 * PER_ROW,
            "settle, chain {chain}: {work} rows handled for 512 results"
        );
    }
    drop((conn, other));
    dispatch.close().await;
    pool.close().await;
    idem_tests::pg::drop_database(&name).await.unwrap();
}

/// Invariant: a dispatcher given its own pool claims and records its
/// results there, under the dispatch session's settings: after a round of
/// the real dispatcher (per-account claim, provider calls, group settle),
/// the pool's one connection is set for generic plans without sequential
/// scans and holds generic plans of the walk, the lease and the settle —
/// and every row was charged and recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_claims_and_settles_on_its_own_pool() {
    let env = idem_tests::TestEnv::new(idem_simulator::Faults::default()).await;
    add(&env.pool, "own", 6, 3, "pending").await;
    let dispatch = idem_store::connect_dispatch(&env.database_url, 1)
        .await
        .unwrap();
    let mut config = crate::faults::config("own-pool");
    config.per_account_ordering = true;
    let dispatcher =
        idem_dispatch::Dispatcher::new(env.pool.clone(), crate::faults::client(&env, true), config)
            .with_dispatch_pool(dispatch.clone());
    let done = dispatcher.dispatch_once().await.unwrap();
    assert_eq!(done.len(), 3, "one head of each account");
    assert!(done.iter().all(|d| d.recorded), "{done:?}");
    let mut conn = dispatch.acquire().await.unwrap();
    let settings: (String, String, String, String) = sqlx::query_as(
        "SELECT current_setting('plan_cache_mode'), current_setting('enable_seqscan'),
                current_setting('enable_hashjoin'), current_setting('enable_mergejoin')",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        settings,
        (
            "force_generic_plan".into(),
            "off".into(),
            "off".into(),
            "off".into()
        )
    );
    let held: Vec<String> =
        sqlx::query_scalar("SELECT statement FROM pg_prepared_statements WHERE generic_plans > 0")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    for (what, sql) in [
        ("walk", claim::claim_sql(true)[0]),
        ("lease", claim::claim_sql(true)[1]),
        ("settle", settle::statement(false)),
    ] {
        assert!(
            held.iter().any(|s| s == sql),
            "the {what} ran on the dispatcher's own pool under a generic plan"
        );
    }
    drop(conn);
    drop(dispatcher);
    dispatch.close().await;
    env.cleanup().await;
}
