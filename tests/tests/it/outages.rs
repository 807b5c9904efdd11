//! Infrastructure that refuses for a while, with the real binary: a database
//! that turns read-only (as a demoted primary does mid-failover), and a
//! replica started while its database and broker are both away. Errors
//! about the server are never about the message: nothing is dead-lettered,
//! nothing is quarantined, every valid charge is made once.

use std::time::Duration;

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::binary::{Proc, run, run_flags_without};
use idem_tests::private::{free_addr, readyz};
use idem_tests::proxy::TcpProxy;
use idem_tests::{AMQP_URL, TestEnv, spec, wait_for};
use idem_workload as workload;

const SETTLE: Duration = Duration::from_secs(60);

/// Make `database` refuse writes (`default_transaction_read_only`) or take
/// them again, and drop its sessions so that pooled connections pick it up,
/// as after a failover that left the pool on a demoted primary.
async fn set_read_only(env: &TestEnv, on: bool) {
    let admin = sqlx::PgPool::connect(idem_tests::PG_ADMIN_URL)
        .await
        .unwrap();
    let value = if on { "on" } else { "off" };
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_read_only = {value}",
        env.name
    ))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&env.name)
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
}

/// Invariant: 50 valid charges published while the database refuses writes
/// for 10 s are held unacked (never dead-lettered, never quarantined), the
/// replica says why on `/readyz` ("read_only") while it lasts, and once the
/// database takes writes again every one of the 20 published before and the
/// 50 during the window is charged exactly once at the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_holds_the_batch_and_loses_nothing() {
    let env = TestEnv::new(Faults::default()).await;
    let addr = free_addr();
    let mut flags = run_flags_without(&env, &["--http-addr"]);
    flags.extend(["--http-addr".to_owned(), addr.clone()]);
    let replica = Proc::spawn("replica", &mut run(&flags, &[]));
    let before = workload::generate(&spec("ro-before", 20));
    env.publish(&before).await;
    wait_for("20 charged", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 20
    })
    .await;

    set_read_only(&env, true).await;
    let mut during = spec("ro-during", 50);
    during.seed = 7;
    let during = workload::generate(&during);
    env.publish(&during).await;
    wait_for(
        "/readyz: the inbox cannot record (read_only)",
        SETTLE,
        || async {
            let (status, body) = readyz(&addr).await;
            status == 503 && body.contains("inbox cannot record") && body.contains("read_only")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    set_read_only(&env, false).await;

    wait_for("70 charged", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 70
    })
    .await;
    wait_for("ready again", SETTLE, || async {
        readyz(&addr).await.0 == 200
    })
    .await;
    let (status, log) = replica.stop().await;
    assert!(status.success(), "{log}");
    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 70, "{charges:?}");
    assert!(charges.values().all(|n| *n == 1), "each once: {charges:?}");
    let st = env.status().await;
    assert_eq!(st.quarantined, 0, "a server error is not the message's");
    let dead = idem_tests::rabbit::queue_depth(AMQP_URL, &format!("{}.dead", env.queue))
        .await
        .unwrap();
    assert_eq!(dead, 0, "nothing dead-lettered");
    assert!(log.contains("read_only"), "the log says which: {log}");
    env.cleanup().await;
}

/// Invariant: a replica started while both its database and its broker
/// refuse connections stays up (alive, `/readyz` 503 saying what it waits
/// for), and once both answer it charges what was published meanwhile,
/// exactly once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_during_an_outage_waits_for_it() {
    let env = TestEnv::new(Faults::default()).await;
    let pg = TcpProxy::start(idem_tests::pg::addr()).await;
    let mq = TcpProxy::start(idem_tests::rabbit::addr()).await;
    pg.set_down(true);
    mq.set_down(true);
    let addr = free_addr();
    let database_url = idem_tests::via(&env.database_url, pg.addr());
    let amqp_url = idem_tests::via(AMQP_URL, mq.addr());
    let mut flags = run_flags_without(&env, &["--http-addr", "--database-url", "--amqp-url"]);
    flags.extend(
        [
            "--http-addr",
            &addr,
            "--database-url",
            &database_url,
            "--amqp-url",
            &amqp_url,
        ]
        .map(str::to_owned),
    );
    let mut replica = Proc::spawn("replica", &mut run(&flags, &[]));
    wait_for("not ready: waiting for the database", SETTLE, || async {
        let (status, body) = readyz(&addr).await;
        status == 503 && body.contains("waiting for it at start")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(replica.still_running(), "{}", replica.text());

    pg.set_down(false);
    wait_for("not ready: the broker", SETTLE, || async {
        let (status, body) = readyz(&addr).await;
        status == 503 && body.contains("broker session down")
    })
    .await;
    let messages = workload::generate(&spec("outage", 20));
    env.publish(&messages).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(replica.still_running(), "{}", replica.text());
    mq.set_down(false);
    wait_for("20 charged", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 20
    })
    .await;
    wait_for("ready", SETTLE, || async { readyz(&addr).await.0 == 200 }).await;
    let (status, log) = replica.stop().await;
    assert!(status.success(), "{log}");
    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 20);
    assert!(charges.values().all(|n| *n == 1), "{charges:?}");
    env.cleanup().await;
}

/// Invariant: results that come back from the provider while the database
/// refuses writes are written once it takes them again, within the lease:
/// every row is settled `succeeded` by its first attempt (no lookup, no
/// second call: the result was never thrown away), each charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_that_arrive_during_a_read_only_spell_are_kept() {
    let env = TestEnv::new(Faults {
        latency_ms: 700,
        ..Faults::default()
    })
    .await;
    let mut flags = run_flags_without(&env, &["--charge-timeout-ms"]);
    flags.extend(["--charge-timeout-ms".to_owned(), "1000".to_owned()]);
    let replica = Proc::spawn("replica", &mut run(&flags, &[]));
    env.publish(&workload::generate(&spec("ro-settle", 5)))
        .await;
    wait_for("5 calls in flight", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::InFlight) == 5
    })
    .await;
    set_read_only(&env, true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    set_read_only(&env, false).await;
    wait_for("5 succeeded", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 5
    })
    .await;
    let (status, log) = replica.stop().await;
    assert!(status.success(), "{log}");
    let kinds: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind::text, count(*) FROM attempt GROUP BY kind ORDER BY kind")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        kinds,
        [("charge".to_owned(), 5)],
        "one call per row: {kinds:?}"
    );
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempts FROM outbox")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(attempts.iter().all(|a| *a == 1), "{attempts:?}");
    assert!(
        log.contains("writing results failed; writing them again"),
        "the spell was met: {log}"
    );
    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 5);
    assert!(charges.values().all(|n| *n == 1), "{charges:?}");
    env.cleanup().await;
}
