//! Per-account heads (`account_head`, `idem_store::heads`) on the real
//! PostgreSQL. The invariant every test checks: **every open outbox row is
//! at or above its account's floor** — otherwise the per-account claim never
//! finds it (a charge stranded) or charges a newer row of the account first.
//! Against it: rows made open by any writer (inserts, a dead row retried),
//! rows inserted with an older id while a settle or a tidy runs (an insert
//! that commits late), a tidy judged on a walk that inserts have overtaken,
//! a row deleted and created again, an insert holding the account's row.

use std::time::Duration;

use idem_store::claim::{self, Head};
use idem_store::heads::{self, Behind};
use idem_tests::pg;
use sqlx::{Connection, PgConnection, PgPool};

use crate::skew::{database, settle_succeeded};

const LEASE: Duration = Duration::from_secs(30);

/// Insert a pending row of `account` (with `id`, or the next one); its id.
async fn insert(conn: &mut PgConnection, account: &str, id: Option<i64>) -> i64 {
    let key = uuid::Uuid::new_v4();
    let sql = if id.is_some() {
        "INSERT INTO outbox (id, scope, message_id, reference_id, account_id, amount, currency)
         OVERRIDING SYSTEM VALUE
         VALUES ($1, 'heads', $2::text, $2::uuid, $3, 100, 'EUR') RETURNING id"
    } else {
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency)
         VALUES ('heads', $2::text, $2::uuid, $3, 100, 'EUR') RETURNING id"
    };
    sqlx::query_scalar(sql)
        .bind(id.unwrap_or(0))
        .bind(key.to_string())
        .bind(account)
        .fetch_one(conn)
        .await
        .unwrap()
}

/// End a row the way paths other than the group settle do (an operator's
/// resolve, a late success): a plain update, the account's row untouched.
async fn finish(conn: &mut PgConnection, id: i64) {
    sqlx::query(
        "UPDATE outbox SET state = 'succeeded', settled_at = now(), lease_token = NULL,
                           lease_expires_at = NULL, lease_owner = NULL WHERE id = $1",
    )
    .bind(id)
    .execute(conn)
    .await
    .unwrap();
}

/// Open rows below their account's floor, or without an account row.
async fn stranded(conn: &mut PgConnection) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT o.account_id, o.id FROM outbox o
         WHERE o.state IN ('pending', 'in_flight', 'unknown')
           AND NOT EXISTS (SELECT 1 FROM account_head h
                           WHERE h.account_id = o.account_id AND h.floor <= o.id)
         ORDER BY o.id",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

/// An id the sequence handed out that no row has: what a transaction that
/// allocated it and has yet to commit holds.
async fn allocated(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('outbox', 'id'))")
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn floor(conn: &mut PgConnection, account: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT floor FROM account_head WHERE account_id = $1")
        .bind(account)
        .fetch_optional(conn)
        .await
        .unwrap()
}

async fn walk(conn: &mut PgConnection) -> Vec<Head> {
    claim::heads(conn, "", 100, 100).await.unwrap()
}

/// What a walk saw of `account`, as the claim would hand it to the tidy.
fn seen(walk: &[Head], account: &str) -> Behind {
    let head = walk
        .iter()
        .find(|h| h.account_id == account)
        .unwrap_or_else(|| panic!("{account} walked"));
    Behind {
        account_id: head.account_id.clone(),
        version: head.version,
        head: head.id,
    }
}

fn head_of(walk: &[Head], account: &str) -> Option<i64> {
    walk.iter().find(|h| h.account_id == account)?.id
}

async fn fresh() -> (String, PgPool, PgConnection) {
    let (name, pool) = database("heads").await;
    let conn = pool.acquire().await.unwrap().detach();
    (name, pool, conn)
}

async fn done(name: String, pool: PgPool, conn: PgConnection) {
    conn.close().await.unwrap();
    pool.close().await;
    pg::drop_database(&name).await.unwrap();
}

/// Invariant above, through the data path's own writers: inserts create and
/// lower floors, rows inserted settled have none, the group settle moves a
/// floor to the account's next row and deletes the row of an account it
/// leaves without work, and a dead row an operator retries (older than the
/// floor) lowers the floor again and is the account's head once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_writer_keeps_open_rows_at_or_above_their_floor() {
    let (name, pool, mut conn) = fresh().await;
    let a1 = insert(&mut conn, "acc_a", None).await;
    let a2 = insert(&mut conn, "acc_a", None).await;
    let b1 = insert(&mut conn, "acc_b", None).await;
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency, state, settled_at)
         VALUES ('heads', 'old', gen_random_uuid(), 'acc_h', 100, 'EUR', 'succeeded', now())",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(floor(&mut conn, "acc_a").await, Some(a1));
    assert_eq!(floor(&mut conn, "acc_b").await, Some(b1));
    assert_eq!(floor(&mut conn, "acc_h").await, None, "history has no head");

    let claimed = claim::claim(&mut conn, "t", LEASE, 10, true).await.unwrap();
    let mut ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    ids.sort();
    assert_eq!(ids, [a1, b1], "one head per account");
    let written = settle_succeeded(&mut conn, &claimed).await;
    assert_eq!(written.len(), 2);
    assert_eq!(
        floor(&mut conn, "acc_a").await,
        Some(a2),
        "moved on to the next row"
    );
    assert_eq!(
        floor(&mut conn, "acc_b").await,
        None,
        "no work left: row deleted"
    );
    assert!(stranded(&mut conn).await.is_empty());

    // An operator retries a1 after it went dead: older than the floor.
    sqlx::query("UPDATE outbox SET state = 'dead' WHERE id = $1")
        .bind(a1)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET state = 'pending', next_attempt_at = now() WHERE id = $1")
        .bind(a1)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(floor(&mut conn, "acc_a").await, Some(a1), "floor lowered");
    assert!(stranded(&mut conn).await.is_empty());
    assert_eq!(
        head_of(&walk(&mut conn).await, "acc_a"),
        Some(a1),
        "the retried row is its account's head again"
    );
    done(name, pool, conn).await;
}

/// Invariant above while an older row's insert is still running: the
/// account's head `a1` settles while a transaction holds an uncommitted row
/// `late` between `a1` and `a3` (an id the sequence handed out before `a3`'s,
/// committing after it). The settle must not raise the floor past `late`;
/// once `late` commits, the walk's head of the account is `late`, and the
/// claim takes it before `a3`. The tidy meanwhile never waits for the
/// transaction holding the account's row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_and_a_tidy_never_raise_a_floor_over_an_insert_in_progress() {
    let (name, pool, mut conn) = fresh().await;
    let a1 = insert(&mut conn, "acc_a", None).await;
    let gap = allocated(&mut conn).await;
    let a3 = insert(&mut conn, "acc_a", None).await;
    let claimed = claim::claim(&mut conn, "t", LEASE, 10, true).await.unwrap();
    let head = claimed.iter().find(|c| c.id == a1).expect("a1 claimed");

    // For the tidy: acc_b's first row finished by a path that leaves its
    // floor behind, so a walk sees the head b3 above the floor.
    let b1 = insert(&mut conn, "acc_b", None).await;
    let gap_b = allocated(&mut conn).await;
    let b3 = insert(&mut conn, "acc_b", None).await;
    finish(&mut conn, b1).await;

    let mut writer = pool.acquire().await.unwrap().detach();
    let mut tx = writer.begin().await.unwrap();
    let late = insert(&mut tx, "acc_a", Some(gap)).await;
    let late_b = insert(&mut tx, "acc_b", Some(gap_b)).await;
    assert!(a1 < late && late < a3 && b1 < late_b && late_b < b3);

    let stale = walk(&mut conn).await;
    assert_eq!(
        head_of(&stale, "acc_b"),
        Some(b3),
        "the writer's row unseen"
    );
    let tidied = tokio::time::timeout(
        Duration::from_secs(10),
        heads::tidy(&mut conn, &[seen(&stale, "acc_b")]),
    )
    .await
    .expect("a tidy never waits for the writer")
    .unwrap();
    assert_eq!(tidied, 0, "the writer holds the account's row");

    let settling = tokio::time::timeout(
        Duration::from_secs(10),
        settle_succeeded(&mut conn, std::slice::from_ref(head)),
    )
    .await
    .expect("a settle never waits for the writer");
    assert_eq!(settling, [a1]);
    tx.commit().await.unwrap();

    assert!(
        floor(&mut conn, "acc_a").await.unwrap() <= late,
        "the floor stays at or below the late row"
    );
    assert!(floor(&mut conn, "acc_b").await.unwrap() <= late_b);
    assert_eq!(head_of(&walk(&mut conn).await, "acc_b"), Some(late_b));
    assert!(stranded(&mut conn).await.is_empty());
    assert_eq!(head_of(&walk(&mut conn).await, "acc_a"), Some(late));
    let next = claim::claim(&mut conn, "t", LEASE, 10, true).await.unwrap();
    assert!(
        next.iter().any(|c| c.id == late) && next.iter().all(|c| c.id != a3),
        "the late row goes first: {next:?}"
    );
    writer.close().await.unwrap();
    done(name, pool, conn).await;
}

/// Invariant above when the walk a tidy is judged on is overtaken by a
/// committed insert. (1) The walk saw `a2` as head above the floor; an older
/// row then commits between the floor and `a2`: the tidy must not raise the
/// floor to `a2`. (2) The walk saw no open row; a new row then commits: the
/// tidy must not delete the account's row. (3) The account's row is deleted
/// and created again by a new insert: a tidy from a walk of the first row
/// must not take the second for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tidy_changes_nothing_an_insert_has_overtaken() {
    let (name, pool, mut conn) = fresh().await;
    // (1) A raise overtaken.
    let a1 = insert(&mut conn, "acc_a", None).await;
    let gap = allocated(&mut conn).await;
    let a2 = insert(&mut conn, "acc_a", None).await;
    finish(&mut conn, a1).await;
    let stale = walk(&mut conn).await;
    assert_eq!(head_of(&stale, "acc_a"), Some(a2));
    let late = insert(&mut conn, "acc_a", Some(gap)).await;
    heads::tidy(&mut conn, &[seen(&stale, "acc_a")])
        .await
        .unwrap();
    assert!(floor(&mut conn, "acc_a").await.unwrap() <= late);
    assert_eq!(head_of(&walk(&mut conn).await, "acc_a"), Some(late));

    // (2) A delete overtaken.
    let b1 = insert(&mut conn, "acc_b", None).await;
    finish(&mut conn, b1).await;
    let stale = walk(&mut conn).await;
    assert_eq!(head_of(&stale, "acc_b"), None, "no open row seen");
    let b2 = insert(&mut conn, "acc_b", None).await;
    heads::tidy(&mut conn, &[seen(&stale, "acc_b")])
        .await
        .unwrap();
    assert_eq!(floor(&mut conn, "acc_b").await, Some(b1), "row kept");
    assert_eq!(head_of(&walk(&mut conn).await, "acc_b"), Some(b2));

    // (3) A row deleted and created again: the stale walk saw the first
    // row as it was created.
    let c1 = insert(&mut conn, "acc_c", None).await;
    finish(&mut conn, c1).await;
    let first = walk(&mut conn).await;
    assert_eq!(
        heads::tidy(&mut conn, &[seen(&first, "acc_c")])
            .await
            .unwrap(),
        1,
        "a current walk's tidy deletes the row of an account without work"
    );
    assert_eq!(floor(&mut conn, "acc_c").await, None);
    let c2 = insert(&mut conn, "acc_c", None).await;
    heads::tidy(&mut conn, &[seen(&first, "acc_c")])
        .await
        .unwrap();
    assert_eq!(
        floor(&mut conn, "acc_c").await,
        Some(c2),
        "the new row kept"
    );
    assert!(stranded(&mut conn).await.is_empty());
    done(name, pool, conn).await;
}

/// Invariant above and its purpose under load: the walk moves lagging floors
/// up itself. Rows finished by paths that leave the account's row as it was
/// (five accounts, 40 rows each, finished one by one) leave floors behind
/// and accounts without work; after one claim's walk every floor is its
/// account's head and the accounts without work have no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_tidies_what_its_walk_found_behind() {
    let (name, pool, mut conn) = fresh().await;
    let mut rows = Vec::new();
    for i in 0..200 {
        rows.push(insert(&mut conn, &format!("acc_{}", i % 5), None).await);
    }
    // Accounts 0..4 lose their first 30 rows; account 4 all of its rows.
    for (i, id) in rows.iter().enumerate() {
        if i < 150 || i % 5 == 4 {
            finish(&mut conn, *id).await;
        }
    }
    claim::claim(&mut conn, "t", LEASE, 10, true).await.unwrap();
    let floors: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT h.account_id, h.floor,
                (SELECT min(id) FROM outbox o WHERE o.account_id = h.account_id
                   AND o.state IN ('pending', 'in_flight', 'unknown'))
         FROM account_head h ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(floors.len(), 4, "acc_4 has no work left: {floors:?}");
    for (account, floor, oldest) in floors {
        assert_eq!(Some(floor), oldest, "{account}'s floor is its head");
    }
    assert!(stranded(&mut conn).await.is_empty());
    done(name, pool, conn).await;
}
