//! The list pages (`idem_store::admin::*_page`) on the real PostgreSQL: every
//! matching row exactly once across pages while rows arrive at the head; each
//! filter honoured, on each index it reads; a page over a large settled
//! history reads about the buffers of one over a small table; hostile
//! cursors refused.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use idem_store::OutboxState;
use idem_store::admin::{self, OutboxFilter, PageError, SCAN_BUDGET};
use idem_tests::pg;
use sqlx::{PgConnection, PgPool};

/// A fresh, migrated database.
async fn database(tag: &str) -> (String, PgPool) {
    let name = format!("idem_t_pages_{tag}_{}", uuid::Uuid::new_v4().simple());
    let pool = pg::scratch_database(&name, 4).await.unwrap();
    (name, pool)
}

/// Rows `from..=to` of tag `tag`, cycling through every state (`g % 6`),
/// seven accounts, two scopes, an error text on every fourth; older for a
/// smaller `g`, all of them at least a day old unless `head` (then every time
/// key is now: they arrive at the head of every list).
async fn load(pool: &PgPool, tag: &str, from: i64, to: i64, head: bool) {
    let age = if head { "0 s" } else { "1 day" };
    sqlx::query(&format!(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                             state, attempts, settled_at, last_error, created_at,
                             next_attempt_at, lease_token, lease_expires_at)
         SELECT CASE WHEN g % 3 = 0 THEN 'shop' ELSE 'default' END, $1 || g,
                md5($1 || g)::uuid, 'acc_' || (g % 7), 100, 'EUR',
                (ARRAY['pending', 'in_flight', 'unknown', 'succeeded', 'declined',
                       'dead'])[1 + g % 6]::outbox_state, 1,
                CASE WHEN g % 6 >= 3 THEN now() - interval '{age}' + g * interval '1 ms' END,
                CASE WHEN g % 4 = 0 THEN 'HTTP 429: 50%_Off ' || g END,
                now() - interval '{age}' + g * interval '1 ms',
                now() - interval '{age}' + (g % 13) * interval '1 s',
                CASE WHEN g % 6 = 1 THEN gen_random_uuid() END,
                CASE WHEN g % 6 = 1 THEN now() - interval '{age}' + (g % 5) * interval '1 s' END
         FROM generate_series($2::bigint, $3::bigint) g"
    ))
    .bind(tag)
    .bind(from)
    .bind(to)
    .execute(pool)
    .await
    .unwrap();
}

/// What a filter is checked against: (id, state, account, scope, error, created).
type Facts = (
    i64,
    OutboxState,
    String,
    String,
    Option<String>,
    DateTime<Utc>,
);

async fn facts(pool: &PgPool) -> Vec<Facts> {
    sqlx::query_as(
        "SELECT id, state, account_id, scope, last_error, created_at FROM outbox ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every page of `filter`, `limit` rows at a time; ids in list order. Runs
/// `between` after each page (rows arriving meanwhile).
async fn walk(
    conn: &mut PgConnection,
    filter: &OutboxFilter,
    limit: i64,
    mut between: impl AsyncFnMut(),
) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut after = None;
    for _ in 0..10_000 {
        let page = admin::outbox_page(conn, filter, after.as_deref(), limit)
            .await
            .unwrap();
        assert!(page.rows.len() as i64 <= limit);
        assert!(page.examined <= SCAN_BUDGET + 1, "{}", page.examined);
        ids.extend(page.rows.iter().map(|r| r.id));
        between().await;
        match page.next {
            Some(next) => after = Some(next),
            None => return ids,
        }
    }
    panic!("no last page");
}

fn filter(
    state: Option<OutboxState>,
    account: Option<&str>,
    scope: Option<&str>,
    error: Option<&str>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> OutboxFilter {
    let own = |s: Option<&str>| s.map(str::to_owned);
    OutboxFilter::new(state, own(account), own(scope), own(error), since, until).unwrap()
}

/// Invariant: for every filter, on every index it reads, the pages hold
/// every matching row exactly once (rows arriving at the head meanwhile
/// are not in them: they are newer than the first page), and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_hold_every_match_once_while_rows_arrive() {
    let (name, pool) = database("once").await;
    load(&pool, "r", 1, 3_000, false).await;
    let rows = facts(&pool).await;
    let mid = rows[1_500].5;
    let mut filters = vec![filter(None, None, None, None, None, None)];
    for state in OutboxState::ALL {
        filters.push(filter(Some(state), None, None, None, None, None));
        filters.push(filter(Some(state), Some("acc_3"), None, None, None, None));
        filters.push(filter(Some(state), None, None, None, Some(mid), None));
    }
    filters.extend([
        filter(None, Some("acc_2"), Some("shop"), None, None, None),
        filter(None, None, None, Some("50%_OFF"), None, Some(mid)),
        filter(
            Some(OutboxState::Dead),
            None,
            None,
            Some("%_off 1"),
            None,
            None,
        ),
        filter(None, None, None, Some("0%o"), None, None),
        filter(None, None, Some("nobody"), None, None, None),
    ]);
    let mut conn = pool.acquire().await.unwrap();
    let mut next_head = 10_000;
    for f in &filters {
        // Rows that arrived during the earlier walks are in this one.
        let now = facts(&pool).await;
        let expected: BTreeSet<i64> = now.iter().filter(|r| matches(f, r)).map(|r| r.0).collect();
        let pool = pool.clone();
        let got = walk(&mut conn, f, 97, async || {
            next_head += 3;
            load(&pool, "h", next_head, next_head + 2, true).await;
        })
        .await;
        let once: BTreeSet<i64> = got.iter().copied().collect();
        assert_eq!(once.len(), got.len(), "{f:?}: a row twice");
        let missing: Vec<_> = expected.difference(&once).collect();
        let extra: Vec<_> = once.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{f:?}: missing {missing:?}, not matching {extra:?}"
        );
    }
    drop(conn);
    pool.close().await;
    pg::drop_database(&name).await.unwrap();
}

/// The filter, spelled out on a row (as the test reads it).
fn matches(f: &OutboxFilter, r: &Facts) -> bool {
    let lower = |s: &str| s.to_lowercase();
    f.state().is_none_or(|s| s == r.1)
        && f.account().is_none_or(|a| a == r.2)
        && f.scope().is_none_or(|s| s == r.3)
        && f.error().is_none_or(|e| {
            r.4.as_deref()
                .is_some_and(|le| lower(le).contains(&lower(e)))
        })
        && f.since().is_none_or(|t| r.5 >= t)
        && f.until().is_none_or(|t| r.5 < t)
}

/// Shared buffers a page statement touched (the top node's `Buffers:`), and its plan.
async fn page_buffers(conn: &mut PgConnection, f: &OutboxFilter) -> (u64, String) {
    let plan = admin::explain_outbox_page(conn, f, None, 50).await.unwrap();
    let total = plan
        .iter()
        .find(|l| l.trim_start().starts_with("Buffers:"))
        .map_or(0, |l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('=').and_then(|(_, n)| n.parse::<u64>().ok()))
                .sum()
        });
    (total, plan.join("\n"))
}

/// Invariant: a page costs O(page + budget), not O(table). Over 200,000
/// settled rows newer than everything else (the worst case: every list's
/// rows are behind the history), a page of each filter with its own index
/// reads about the buffers it reads without that history, through that
/// index; a filter no index makes dense (a rare account, an error text)
/// reads at most its budget and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reads_the_page_not_the_history() {
    let dense = [
        (filter(None, None, None, None, None, None), "outbox_pkey"),
        (
            filter(Some(OutboxState::Dead), None, None, None, None, None),
            "outbox_dead",
        ),
        (
            filter(Some(OutboxState::Pending), None, None, None, None, None),
            "outbox_due",
        ),
        (
            filter(Some(OutboxState::InFlight), None, None, None, None, None),
            "outbox_lease",
        ),
        (
            filter(
                Some(OutboxState::Unknown),
                Some("acc_3"),
                None,
                None,
                None,
                None,
            ),
            "outbox_open_by_account",
        ),
    ];
    let until = Utc::now() - Duration::hours(1);
    let succeeded = filter(
        Some(OutboxState::Succeeded),
        None,
        None,
        None,
        None,
        Some(until),
    );
    let bounded = [
        filter(None, Some("acc_3"), None, None, None, None),
        filter(None, None, None, Some("50%_off"), None, None),
    ];
    let mut cost = Vec::new();
    for history in [0, 200_000] {
        let (name, pool) = database("cost").await;
        load(&pool, "r", 1, 2_000, false).await;
        sqlx::query(
            "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                                 state, attempts, settled_at)
             SELECT 'old', 'h' || g, md5('h' || g)::uuid, 'acc_hist', 100, 'EUR',
                    'succeeded', 1, now()
             FROM generate_series(1, $1::bigint) g",
        )
        .bind(history)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("VACUUM ANALYZE outbox")
            .execute(&pool)
            .await
            .unwrap();
        let mut conn = pool.acquire().await.unwrap();
        let mut run = Vec::new();
        for (f, index) in dense
            .iter()
            .chain([&(succeeded.clone(), "outbox_claims_charge")])
        {
            let (buffers, plan) = page_buffers(&mut conn, f).await;
            // A small table may be read whole: the plan is pinned with the history.
            if history > 0 {
                assert!(plan.contains(index), "{f:?} reads {index}:\n{plan}");
                assert!(!plan.contains("Seq Scan"), "{f:?}:\n{plan}");
            }
            run.push((buffers, plan));
        }
        for f in &bounded {
            let page = admin::outbox_page(&mut conn, f, None, 50).await.unwrap();
            let (buffers, plan) = page_buffers(&mut conn, f).await;
            assert!(page.examined <= SCAN_BUDGET + 1, "{f:?}: {}", page.examined);
            assert!(buffers < 1_000, "{f:?} read {buffers} buffers:\n{plan}");
            if history > 0 {
                assert!(page.rows.is_empty() && page.scan_limited, "{f:?}: {page:?}");
                assert!(page.next.is_some(), "a stopped walk says where to continue");
            }
        }
        cost.push(run);
        drop(conn);
        pool.close().await;
        pg::drop_database(&name).await.unwrap();
    }
    for (i, (small, big)) in cost[0].iter().zip(&cost[1]).enumerate() {
        eprintln!(
            "filter {i}: {} buffers without the history, {} with it",
            small.0, big.0
        );
        assert!(
            big.0 <= small.0 * 2 + 16,
            "filter {i}: {} buffers with the history, {} without:\n{}",
            big.0,
            small.0,
            big.1
        );
    }
}

/// Invariant: a cursor typed by hand (any bytes), or one of another list,
/// is refused by name before any row is read; a page's own cursor is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cursors_are_refused() {
    let (name, pool) = database("cursor").await;
    load(&pool, "r", 1, 200, false).await;
    let mut conn = pool.acquire().await.unwrap();
    let all = filter(None, None, None, None, None, None);
    let dead = filter(Some(OutboxState::Dead), None, None, None, None, None);
    let dead_next = admin::outbox_page(&mut conn, &dead, None, 5)
        .await
        .unwrap()
        .next
        .expect("more than 5 dead rows");
    let long = "9".repeat(10_000);
    let hostile = [
        "",
        "0",
        "outbox",
        "outbox.-.",
        "outbox.-.1.2",
        "outbox.-.1 OR 1=1",
        "outbox.x.1",
        "outbox.-.-",
        "' OR 1=1 --",
        "\u{0}\u{ffff}",
        "outbox.-.9223372036854775808",
        &long,
        &dead_next,
    ];
    for text in hostile {
        let refused = |r: Result<(), PageError>, list: &str| match r {
            Err(PageError::BadCursor(why)) => assert!(!why.is_empty()),
            other => panic!("{list} took cursor {text:?}: {other:?}"),
        };
        let r = admin::outbox_page(&mut conn, &all, Some(text), 5).await;
        refused(r.map(drop), "outbox");
        let r = admin::quarantine_page(&mut conn, Some(text), 5).await;
        refused(r.map(drop), "quarantine");
        let r = admin::conflict_page(&mut conn, Some(text), 5).await;
        refused(r.map(drop), "conflicts");
        let r = admin::audit_page(&mut conn, None, Some(text), 5).await;
        refused(r.map(drop), "audit");
    }
    let page = admin::outbox_page(&mut conn, &dead, Some(&dead_next), 5)
        .await
        .unwrap();
    assert_eq!(page.rows.len(), 5, "its own cursor continues the list");
    drop(conn);
    pool.close().await;
    pg::drop_database(&name).await.unwrap();
}
