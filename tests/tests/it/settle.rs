//! The dispatcher's group commit: many results in one fenced statement have
//! exactly the effects the single-row settle has, the fence refuses a result
//! whose lease is gone without touching the others, and a settle queues
//! behind (never deadlocks with) the inbox recording duplicates of its rows.

use std::time::Duration;

use idem_inbox::{Admission, Decision, Incoming, record_batch};
use idem_simulator::Faults;
use idem_store::attempt::{self, NewAttempt};
use idem_store::settle::{Fenced, settle_many};
use idem_store::{OutboxState, Settlement, claim};
use idem_tests::{TestEnv, spec, wait_for};
use idem_workload as workload;
use lapin::BasicProperties;
use serde_json::json;
use sqlx::PgConnection;

/// Invariant: one `settle_many` of five leased rows — succeeded, declined, an
/// uncertain retry, a certain retry, dead — writes each as the single-row
/// settle would (state, charge, result, error, uncertainty, backoff, settled
/// time), frees their account slots, and a sixth result under a stale lease
/// token is refused while the row keeps its lease; every call goes into the
/// attempt history, the stale one's too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_statement_settles_each_kind_and_fences_the_stale() {
    let env = TestEnv::new(Faults::default()).await;
    let consumer = env.start_worker(&["--role", "consumer"]);
    env.publish(&workload::generate(&spec("settle", 6))).await;
    wait_for("rows recorded", Duration::from_secs(30), || async {
        env.status().await.outbox_in(OutboxState::Pending) == 6
    })
    .await;
    consumer.stop().await.unwrap();
    let mut conn = env.pool.acquire().await.unwrap();
    let mut rows = claim::claim(&mut conn, "test", Duration::from_secs(30), 6, true)
        .await
        .unwrap();
    rows.sort_by_key(|r| r.id);
    assert_eq!(rows.len(), 6);

    let retry = |uncertain| Settlement::Retry {
        uncertain,
        error: format!("retry uncertain={uncertain}"),
        delay: Duration::from_secs(60),
    };
    let settlements = [
        Settlement::Succeeded {
            charge_id: "ch_1".into(),
            result: json!({"id": "ch_1"}),
        },
        Settlement::Declined {
            result: json!({"error": {"type": "card_declined"}}),
        },
        retry(true),
        retry(false),
        Settlement::Dead {
            // A NUL from the provider's answer must not fail the group
            // statement (PostgreSQL text cannot hold it).
            error: "gave\0up".into(),
        },
        Settlement::Dead {
            error: "stale".into(),
        },
    ];
    let batch: Vec<Fenced<'_>> = rows
        .iter()
        .zip(&settlements)
        .enumerate()
        .map(|(i, (row, settlement))| Fenced {
            id: row.id,
            // The last one under a token that is not the lease's.
            token: if i == 5 {
                uuid::Uuid::new_v4()
            } else {
                row.lease_token
            },
            settlement,
            chain: false,
        })
        .collect();
    // One call per row for the attempt history: it is written for the stale
    // result too (the call happened), and a call for a row that does not
    // exist is skipped rather than failing the batch.
    let call = |outbox_id: i64, status: Option<i16>| NewAttempt {
        outbox_id,
        kind: "charge",
        started_at: chrono::Utc::now(),
        latency_ms: 12.5,
        http_status: status,
        error: status.is_none().then(|| "timed out".to_owned()),
        provider_id: status.map(|_| format!("ch_{outbox_id}")),
    };
    let mut calls: Vec<NewAttempt> = rows.iter().map(|r| call(r.id, Some(201))).collect();
    calls[2] = call(rows[2].id, None);
    calls.push(call(i64::MAX, Some(201)));
    let mut recorded = settle_many(&mut conn, &batch, "replica-a", &calls)
        .await
        .unwrap();
    recorded.sort_unstable();
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    assert_eq!(recorded, ids[..5], "all but the stale one recorded");

    type Row = (
        OutboxState,
        Option<String>,
        Option<serde_json::Value>,
        Option<String>,
        bool,
        bool,
        bool,
    );
    let read = |id: i64| {
        let pool = env.pool.clone();
        async move {
            let row: Row = sqlx::query_as(
                "SELECT state, provider_charge_id, result, last_error, uncertain_since IS NOT NULL,
                        settled_at IS NOT NULL, next_attempt_at > now() + interval '30 seconds'
                 FROM outbox WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
            row
        }
    };
    let (state, charge, result, error, ..) = read(ids[0]).await;
    assert_eq!(
        (state, charge.as_deref(), error),
        (OutboxState::Succeeded, Some("ch_1"), None)
    );
    assert_eq!(result.unwrap()["id"], "ch_1");
    let (state, _, result, _, _, settled, _) = read(ids[1]).await;
    assert_eq!((state, settled), (OutboxState::Declined, true));
    assert_eq!(result.unwrap()["error"]["type"], "card_declined");
    let (state, _, _, error, uncertain, settled, later) = read(ids[2]).await;
    assert_eq!(
        (state, uncertain, settled, later),
        (OutboxState::Unknown, true, false, true)
    );
    assert_eq!(error.as_deref(), Some("retry uncertain=true"));
    let (state, _, _, _, uncertain, settled, later) = read(ids[3]).await;
    assert_eq!(
        (state, uncertain, settled, later),
        (OutboxState::Pending, false, false, true)
    );
    let (state, _, _, error, _, settled, _) = read(ids[4]).await;
    assert_eq!(
        (state, error.as_deref(), settled),
        (OutboxState::Dead, Some("gave\u{FFFD}up"), true)
    );
    let (state, ..) = read(ids[5]).await;
    assert_eq!(
        state,
        OutboxState::InFlight,
        "the stale result did not touch the row"
    );
    let slots: Vec<i64> = sqlx::query_scalar("SELECT outbox_id FROM account_slot")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        slots,
        vec![ids[5]],
        "only the row still in flight holds its slot"
    );
    for (i, id) in ids.iter().enumerate() {
        let history = attempt::of_outbox(&mut conn, *id).await.unwrap();
        assert_eq!(history.len(), 1, "row {i}: one call recorded");
        let h = &history[0];
        assert_eq!(
            (h.kind.as_str(), h.replica.as_str()),
            ("charge", "replica-a")
        );
        assert!((h.latency_ms - 12.5).abs() < 1e-9);
        if i == 2 {
            assert_eq!(
                (h.http_status, h.error.as_deref()),
                (None, Some("timed out"))
            );
        } else {
            assert_eq!(h.http_status, Some(201));
            assert_eq!(h.provider_id, Some(format!("ch_{id}")));
        }
    }
    let orphans: i64 = sqlx::query_scalar("SELECT count(*) FROM attempt WHERE outbox_id = $1")
        .bind(i64::MAX)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(orphans, 0);
    drop(conn);
    env.cleanup().await;
}

/// Rows per round, and rounds.
const ROWS: usize = 8;
const ROUNDS: usize = 24;

/// Round `round`'s charges, one account each (so one claim takes them all);
/// `reply_to` set, so each copy is owed a result.
fn round_of(round: usize, reply_to: Option<&str>) -> Vec<(BasicProperties, Vec<u8>)> {
    (0..ROWS)
        .map(|i| {
            let props = BasicProperties::default().with_message_id(format!("r{round}-{i}").into());
            let props = match reply_to {
                Some(queue) => props.with_reply_to(queue.into()),
                None => props,
            };
            let body =
                format!(r#"{{"account_id":"acc_{round}_{i}","amount":100,"currency":"EUR"}}"#);
            (props, body.into_bytes())
        })
        .collect()
}

/// Record `msgs`, in that order, as the consumer does: one batch in one
/// transaction.
async fn record(
    conn: &mut PgConnection,
    msgs: &[(BasicProperties, Vec<u8>)],
) -> Result<Vec<Decision>, sqlx::Error> {
    let items: Vec<Incoming<'_>> = msgs
        .iter()
        .map(|(properties, body)| Incoming {
            properties,
            body,
            redelivered: false,
        })
        .collect();
    let mut tx = sqlx::Connection::begin(conn).await?;
    let decisions = record_batch(&mut tx, &items, &Admission::open(64 * 1024)).await?;
    tx.commit().await?;
    Ok(decisions)
}

/// Wait until both backends wait for a row lock (each has reached a row
/// another transaction holds); `false` after 5 s.
async fn both_waiting(pool: &sqlx::PgPool, pids: [i32; 2]) -> bool {
    for _ in 0..1000 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) AND wait_event_type = 'Lock'",
        )
        .bind(&pids[..])
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting == 2 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Invariant: a group settle and an inbox batch of duplicates of the same
/// rows, arriving in opposite orders, never deadlock (`40P01`): both lock the
/// rows in id order, so one queues behind the other. Each round a third
/// transaction holds the middle row until both statements are stuck on it or
/// on each other — the interleaving in which locking in arrival order
/// deadlocks every time — then lets go: every settle lands, and every
/// duplicate is owed exactly one result (replayed if the settle went first,
/// a reply on settling if the duplicates did).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_and_duplicates_of_its_rows_do_not_deadlock() {
    let env = TestEnv::new(Faults::default()).await;
    // History, so that both statements find their rows through indexes, in
    // the order of their input, as on a production table (over a few rows
    // the planner scans the table, in the order the rows were written).
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                             state, attempts, provider_charge_id, settled_at)
         SELECT 'history', 'h-' || g, md5('history-' || g)::uuid, 'acc_h', 100, 'EUR',
                'succeeded', 1, 'ch_h_' || g, now()
         FROM generate_series(1, 20000) g",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE outbox")
        .execute(&env.pool)
        .await
        .unwrap();
    let mut settler = env.pool.acquire().await.unwrap();
    let mut inbox = env.pool.acquire().await.unwrap();
    let mut blocker = env.pool.acquire().await.unwrap();
    let mut pids = [0; 2];
    for (pid, conn) in pids.iter_mut().zip([&mut settler, &mut inbox]) {
        *pid = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
    }
    let settlement = Settlement::Succeeded {
        charge_id: "ch".into(),
        result: json!({"id": "ch"}),
    };
    for round in 0..ROUNDS {
        let first = record(&mut inbox, &round_of(round, None)).await.unwrap();
        assert!(first.iter().all(|d| matches!(d, Decision::New { .. })));
        let mut rows = claim::claim(&mut settler, "test", Duration::from_secs(30), 64, false)
            .await
            .unwrap();
        assert_eq!(rows.len(), ROWS, "round {round}: all claimed");
        rows.sort_by_key(|r| r.id);
        let middle = rows[ROWS / 2].id;
        // Opposite orders, swapped every round: the settle ascending and the
        // duplicates descending, then the other way round.
        let mut copies = round_of(round, Some("replies.dup"));
        if round % 2 == 0 {
            copies.reverse();
        } else {
            rows.reverse();
        }
        let batch: Vec<Fenced<'_>> = rows
            .iter()
            .map(|r| Fenced {
                id: r.id,
                token: r.lease_token,
                settlement: &settlement,
                chain: false,
            })
            .collect();
        let mut hold = sqlx::Connection::begin(&mut *blocker).await.unwrap();
        sqlx::query("SELECT id FROM outbox WHERE id = $1 FOR UPDATE")
            .bind(middle)
            .execute(&mut *hold)
            .await
            .unwrap();
        let (settled, duplicates, waited) = tokio::join!(
            settle_many(&mut settler, &batch, "replica-a", &[]),
            record(&mut inbox, &copies),
            async {
                let waited = both_waiting(&env.pool, pids).await;
                hold.commit().await.unwrap();
                waited
            }
        );
        let deadlocked = |e: &sqlx::Error| {
            e.as_database_error()
                .is_some_and(|d| d.code().as_deref() == Some("40P01"))
        };
        let mut settled = match settled {
            Err(e) if deadlocked(&e) => panic!("round {round}: the settle deadlocked: {e}"),
            other => other.unwrap(),
        };
        let duplicates = match duplicates {
            Err(e) if deadlocked(&e) => panic!("round {round}: the duplicates deadlocked: {e}"),
            other => other.unwrap(),
        };
        assert!(waited, "round {round}: both statements reached a held row");
        settled.sort_unstable();
        let mut ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        assert_eq!(settled, ids, "round {round}: every settle landed");
        assert!(duplicates.iter().all(|d| *d == Decision::Duplicate));
        let owed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM result_event
             WHERE outbox_id = ANY($1) AND kind IN ('replayed', 'reply') AND reply_to = 'replies.dup'",
        )
        .bind(&ids)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(owed, ROWS as i64, "round {round}: one result per duplicate");
    }
    drop((settler, inbox, blocker));
    env.cleanup().await;
}

/// Invariant: with chaining, a result that ends its row leases its account's
/// next head (the oldest open row but the settled one) to the same replica in
/// the same statement — in flight under a new token, the account's slot
/// moved to it — so per-account order and "one in flight per account" hold
/// as for a claim; a retry chains nothing (its row stays the head); an
/// account whose next row is not due is not chained and its slot is freed;
/// a result the fence refuses chains nothing and leaves the slot alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_result_leases_its_accounts_next_row_in_the_same_statement() {
    let env = TestEnv::new(Faults::default()).await;
    // acc_a: three rows; acc_b: the second not due for an hour; acc_c and
    // acc_d: two rows each.
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                             next_attempt_at)
         SELECT 'chain', 'chain-' || g, md5('chain-' || g)::uuid, a, 100, 'EUR',
                CASE WHEN a = 'acc_b' AND n = 2 THEN now() + interval '1 hour' ELSE now() END
         FROM (VALUES (1, 'acc_a', 1), (2, 'acc_b', 1), (3, 'acc_c', 1), (4, 'acc_d', 1),
                      (5, 'acc_a', 2), (6, 'acc_b', 2), (7, 'acc_c', 2), (8, 'acc_d', 2),
                      (9, 'acc_a', 3)) v(g, a, n)
         ORDER BY g",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let mut conn = env.pool.acquire().await.unwrap();
    let mut heads = claim::claim(&mut conn, "r", Duration::from_secs(30), 10, true)
        .await
        .unwrap();
    heads.sort_by(|x, y| x.account_id.cmp(&y.account_id));
    let accounts: Vec<&str> = heads.iter().map(|h| h.account_id.as_str()).collect();
    assert_eq!(accounts, ["acc_a", "acc_b", "acc_c", "acc_d"]);
    let ids: Vec<i64> = heads.iter().map(|h| h.id).collect();
    let succeeded = Settlement::Succeeded {
        charge_id: "ch_a".into(),
        result: json!({"id": "ch_a"}),
    };
    let declined = Settlement::Declined {
        result: json!({"error": {"type": "card_declined"}}),
    };
    let retry = Settlement::Retry {
        uncertain: false,
        error: "503".into(),
        delay: Duration::ZERO,
    };
    // acc_a succeeds, acc_b is declined, acc_c retries, acc_d's result comes
    // under a token that is not its lease's.
    let stale = uuid::Uuid::new_v4();
    let results = [
        (heads[0].lease_token, &succeeded),
        (heads[1].lease_token, &declined),
        (heads[2].lease_token, &retry),
        (stale, &succeeded),
    ];
    let batch: Vec<Fenced<'_>> = heads
        .iter()
        .zip(results)
        .map(|(head, (token, settlement))| Fenced {
            id: head.id,
            token,
            settlement,
            chain: true,
        })
        .collect();
    let chain = idem_store::settle::Chain {
        lease: Duration::from_secs(30),
        lock: None,
    };
    let mut settled =
        idem_store::settle::settle_and_chain(&mut conn, &batch, "r", &[], Some(chain))
            .await
            .unwrap();
    settled.sort_by_key(|s| s.id);
    let recorded: Vec<i64> = settled.iter().map(|s| s.id).collect();
    assert_eq!(recorded, ids[..3], "the stale token is fenced off");
    let next = settled[0].next.clone().expect("acc_a's next row leased");
    assert!(settled[1].next.is_none(), "acc_b's next row is not due");
    assert!(settled[2].next.is_none(), "a retry keeps its row the head");

    let (state, owner, token): (OutboxState, Option<String>, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT state, lease_owner, lease_token FROM outbox WHERE id = $1")
            .bind(next.id)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(state, OutboxState::InFlight);
    assert_eq!(owner.as_deref(), Some("r"));
    assert_eq!(token, Some(next.lease_token));
    assert_ne!(next.lease_token, heads[0].lease_token, "a lease of its own");
    let oldest_open: i64 =
        sqlx::query_scalar("SELECT min(id) FROM outbox WHERE account_id = 'acc_a' AND id <> $1")
            .bind(heads[0].id)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(next.id, oldest_open, "acc_a's next row in outbox order");
    let slots: Vec<(String, i64)> =
        sqlx::query_as("SELECT account_id, outbox_id FROM account_slot ORDER BY account_id")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(
        slots,
        [
            ("acc_a".to_owned(), next.id),
            ("acc_d".to_owned(), heads[3].id),
        ],
        "acc_a's slot moved to its next row; acc_b's and acc_c's freed; acc_d's kept by its holder"
    );
    drop(conn);
    env.cleanup().await;
}
