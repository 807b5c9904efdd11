//! A dead replica's rows come back in seconds, not after the lease; a paused
//! one's do not. Real binaries, SIGKILL and SIGSTOP, a provider slow enough
//! that the rows are in flight when the signal lands; the simulator honours
//! idempotency keys, as a real provider does.

use std::time::{Duration, Instant};

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::binary::{Proc, run, run_flags_without};
use idem_tests::{TestEnv, spec, wait_for};
use idem_workload as workload;
use nix::sys::signal::Signal;

const ROWS: usize = 10;
const SETTLE: Duration = Duration::from_secs(60);

/// `idem run` for `env` as replica `id` with `role`, a lease of
/// `lease_secs` and calls allowed a quarter of it (the lease must cover a
/// lookup and a charge).
fn replica(env: &TestEnv, id: &str, role: &str, lease_secs: u64) -> Proc {
    let mut flags = run_flags_without(env, &["--lease-secs", "--charge-timeout-ms"]);
    let timeout_ms = (lease_secs * 1000 / 4).to_string();
    flags.extend(
        [
            "--lease-secs",
            &lease_secs.to_string(),
            "--charge-timeout-ms",
            &timeout_ms,
            "--replica-id",
            id,
            "--role",
            role,
        ]
        .map(str::to_owned),
    );
    Proc::spawn(id, &mut run(&flags, &[("RUST_LOG", "info")]))
}

/// Rows in flight under `owner`.
async fn in_flight_of(env: &TestEnv, owner: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state = 'in_flight' AND lease_owner = $1")
        .bind(owner)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Publish [`ROWS`] charges (each on its own account) and wait until replica
/// `a` holds every one of them in flight.
async fn all_in_flight_at(env: &TestEnv, a: &Proc, prefix: &str) {
    env.publish(&workload::generate(&spec(prefix, ROWS))).await;
    let deadline = Instant::now() + SETTLE;
    while in_flight_of(env, "a").await < ROWS as i64 {
        assert!(
            Instant::now() < deadline,
            "rows never in flight at a:\n{}",
            a.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Invariant: with a 30 s lease, the rows a SIGKILLed replica held in flight
/// are rescued by the survivor because the dead replica's liveness lock is
/// gone ("holder … is gone"), and every one is charged within 8 s of the
/// kill (a rescue within ~2.3 s, then a lookup and a charge of 1 s each) —
/// not after the lease — exactly once at the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_rows_are_charged_in_seconds_not_a_lease() {
    let env = TestEnv::new(Faults {
        latency_ms: 1_000,
        ..Faults::default()
    })
    .await;
    let a = replica(&env, "a", "all", 30);
    all_in_flight_at(&env, &a, "kill").await;
    // Frozen first, so that its rows are still in flight when the survivor
    // is up and the kill lands.
    a.signal(Signal::SIGSTOP);
    let b = replica(&env, "b", "dispatcher", 30);
    b.wait_for_line(SETTLE, |l| l.contains("dispatcher running").then_some(()))
        .await;
    a.signal(Signal::SIGKILL);
    let killed = Instant::now();
    wait_for("every row charged after the kill", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == ROWS as i64
    })
    .await;
    let recovered = killed.elapsed();
    let (status, log) = b.stop().await;
    assert!(status.success(), "{log}");
    assert!(
        recovered < Duration::from_secs(8),
        "charged {recovered:?} after the kill (lease 30 s):\n{log}"
    );
    assert!(
        log.contains("reclaimed rows whose holder is gone"),
        "rescued as gone, not expired:\n{log}"
    );
    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), ROWS, "{charges:?}");
    assert!(charges.values().all(|n| *n == 1), "each once: {charges:?}");
    println!("rows of the killed replica charged {recovered:?} after SIGKILL (lease 30 s)");
    env.cleanup().await;
}

/// Invariant: a replica paused with SIGSTOP keeps its session, so its
/// liveness lock holds: the survivor leaves its rows alone while the 10 s
/// lease runs (still in flight under it 4 s after the pause), rescues them
/// only once the lease expired, and after SIGCONT the paused replica's late
/// results are refused by the fence — every charge exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_keeps_its_rows_until_its_lease_expires() {
    let env = TestEnv::new(Faults {
        latency_ms: 1_000,
        ..Faults::default()
    })
    .await;
    let a = replica(&env, "a", "all", 10);
    all_in_flight_at(&env, &a, "pause").await;
    a.signal(Signal::SIGSTOP);
    let paused = Instant::now();
    let b = replica(&env, "b", "dispatcher", 10);
    b.wait_for_line(SETTLE, |l| l.contains("dispatcher running").then_some(()))
        .await;
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(paused.elapsed())).await;
    let still = in_flight_of(&env, "a").await;
    assert_eq!(
        still,
        ROWS as i64,
        "a paused holder's rows were taken early:\n{}",
        b.text()
    );
    wait_for("every row charged by the survivor", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == ROWS as i64
    })
    .await;
    a.signal(Signal::SIGCONT);
    let (status, log) = b.stop().await;
    assert!(status.success(), "{log}");
    assert!(
        log.contains("reclaimed rows whose lease expired"),
        "rescued after the lease:\n{log}"
    );
    assert!(
        !log.contains("reclaimed rows whose holder is gone"),
        "a paused holder is not gone:\n{log}"
    );
    let (status, log_a) = a.stop().await;
    assert!(status.success(), "{log_a}");
    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), ROWS, "{charges:?}");
    assert!(charges.values().all(|n| *n == 1), "each once: {charges:?}");
    env.cleanup().await;
}

/// Invariant: a row counts as orphaned only while its liveness key is held
/// by no session *and* was stored with the row's current lease: while the
/// holder's session lives it is not; the moment that session closes it is;
/// once its lease is changed by a statement that does not know the key (an
/// older release's claim during a rolling upgrade) it is not any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_current_lease_under_a_released_lock_is_orphaned() {
    use idem_store::claim::{self, Holder};
    use idem_store::rescue::orphaned;
    use sqlx::Connection;

    let env = TestEnv::new(Faults::default()).await;
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency)
         VALUES ('live', 'live-1', md5('live-1')::uuid, 'acc_live', 100, 'EUR')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let key = 0x5eed_1234_5678_9abc_i64;
    let mut holder = sqlx::PgConnection::connect(&env.database_url)
        .await
        .unwrap();
    assert!(
        idem_store::rescue::hold_liveness(&mut holder, key)
            .await
            .unwrap()
    );
    let mut conn = env.pool.acquire().await.unwrap();
    let lease = Holder {
        owner: "live",
        lease: Duration::from_secs(30),
        lock: Some(key),
    };
    let rows = claim::claim_as(&mut conn, &lease, 1, None).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        orphaned(&mut conn, 10).await.unwrap().is_empty(),
        "its holder's session lives"
    );
    holder.close().await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = orphaned(&mut conn, 10).await.unwrap();
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen,
        [(rows[0].id, rows[0].lease_token)],
        "the session ended"
    );
    // An older release takes the row again: a new lease, the key untouched.
    sqlx::query("UPDATE outbox SET lease_token = gen_random_uuid() WHERE id = $1")
        .bind(rows[0].id)
        .execute(&mut *conn)
        .await
        .unwrap();
    assert!(
        orphaned(&mut conn, 10).await.unwrap().is_empty(),
        "a stale key does not make a lease it was not stored with orphaned"
    );
    drop(conn);
    env.cleanup().await;
}

/// Invariant: between the rescuer's search and its rescue a found row may
/// change hands, and the rescue judges each row again under its lock: of a
/// batch holding a row still orphaned, one claimed again under a new lease,
/// one settled, one whose liveness key a live session holds now, and an id
/// with no row, only the first is rescued (`unknown`, its lease and slot
/// gone); the others keep exactly what they had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescue_takes_only_what_is_still_orphaned_under_its_lock() {
    use idem_store::OutboxState;
    use idem_store::claim::{self, Holder};
    use idem_store::rescue::{hold_liveness, rescue_orphaned};
    use sqlx::Connection;

    let env = TestEnv::new(Faults::default()).await;
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency)
         SELECT 'gone', 'gone-' || g, md5('gone-' || g)::uuid, 'acc_gone_' || g, 100, 'EUR'
         FROM generate_series(1, 4) g",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let (dead_key, live_key) = (0x0dea_d000_0000_0001_i64, 0x0a11_fe00_0000_0002_i64);
    let mut conn = env.pool.acquire().await.unwrap();
    let lease = Holder {
        owner: "gone",
        lease: Duration::from_secs(30),
        lock: Some(dead_key),
    };
    // Per account, so each row holds its account's slot.
    let mut cursor = claim::AccountCursor::default();
    let mut rows = claim::claim_as(&mut conn, &lease, 4, Some(&mut cursor))
        .await
        .unwrap();
    rows.sort_by_key(|r| r.id);
    assert_eq!(rows.len(), 4);
    let [orphan, reclaimed, settled, revived] = [0, 1, 2, 3].map(|i| rows[i].id);
    let new_token = uuid::Uuid::new_v4();
    sqlx::query("UPDATE outbox SET lease_token = $2, lease_lock_token = $2 WHERE id = $1")
        .bind(reclaimed)
        .bind(new_token)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "WITH s AS (UPDATE outbox SET state = 'succeeded', settled_at = now(), lease_token = NULL,
                                      lease_expires_at = NULL, lease_owner = NULL
                    WHERE id = $1 RETURNING id)
         DELETE FROM account_slot WHERE outbox_id IN (SELECT id FROM s)",
    )
    .bind(settled)
    .execute(&mut *conn)
    .await
    .unwrap();
    let mut holder = sqlx::PgConnection::connect(&env.database_url)
        .await
        .unwrap();
    assert!(hold_liveness(&mut holder, live_key).await.unwrap());
    sqlx::query("UPDATE outbox SET lease_lock = $2 WHERE id = $1")
        .bind(revived)
        .bind(live_key)
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut batch: Vec<(i64, uuid::Uuid)> = rows.iter().map(|r| (r.id, r.lease_token)).collect();
    batch.push((i64::MAX, uuid::Uuid::new_v4()));

    let rescued = rescue_orphaned(&mut conn, &batch, Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!(rescued, [orphan]);
    let states: Vec<(i64, OutboxState, Option<uuid::Uuid>, i64)> = sqlx::query_as(
        "SELECT o.id, o.state, o.lease_token,
                (SELECT count(*) FROM account_slot s WHERE s.outbox_id = o.id)
         FROM outbox o ORDER BY o.id",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        states,
        [
            (orphan, OutboxState::Unknown, None, 0),
            (reclaimed, OutboxState::InFlight, Some(new_token), 1),
            (settled, OutboxState::Succeeded, None, 0),
            (revived, OutboxState::InFlight, Some(rows[3].lease_token), 1),
        ]
    );
    holder.close().await.unwrap();
    drop(conn);
    env.cleanup().await;
}

/// Invariant: the rescuer's search for rows of gone holders, which every
/// replica runs every 750 ms, reads the rows in flight and not the history:
/// over 200,000 settled rows (analyzed) and 5 in flight its plan enters
/// `outbox` through a partial index of open rows (`outbox_lease`, or
/// `outbox_open_by_account`: settled history is in neither) and scans no
/// part of it sequentially.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_for_orphans_reads_the_rows_in_flight_not_the_history() {
    let env = TestEnv::new(Faults::default()).await;
    let mut conn = env.pool.acquire().await.unwrap();
    idem_store::bench::load_backlog(&mut conn, "history", 200_000, true)
        .await
        .unwrap();
    idem_store::bench::load_backlog(&mut conn, "open", 5, false)
        .await
        .unwrap();
    let claimed = idem_store::claim::claim(&mut conn, "r", Duration::from_secs(30), 5, false)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
    idem_store::bench::vacuum_outbox(&mut conn).await.unwrap();
    let plan = idem_store::rescue::explain_orphaned(&mut conn)
        .await
        .unwrap()
        .join("\n");
    assert!(!plan.contains("Seq Scan on outbox"), "{plan}");
    assert!(
        ["outbox_lease", "outbox_open_by_account"]
            .iter()
            .any(|index| plan.contains(&format!("using {index} on outbox"))),
        "{plan}"
    );
    drop(conn);
    env.cleanup().await;
}
