//! Faults on the provider side and in the workers: dropped responses, racing
//! dispatchers, a worker killed with SIGKILL. Each test states its invariant and
//! counts charges at the provider simulator.

use std::process::Stdio;
use std::time::Duration;

use idem_charge::{Capabilities, ChargeClient};
use idem_dispatch::{Backoff, DispatchConfig, Dispatcher};
use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::{TestEnv, idem_binary, spec, wait_for};
use idem_workload as workload;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SETTLE: Duration = Duration::from_secs(90);

/// Invariant: when the provider charges but the response is lost, the row goes
/// `unknown` (never "not charged"), and is resolved — by lookup and/or a keyed
/// retry — to exactly one charge per message, in both provider modes.
async fn dropped_responses_resolve_without_double_charge(keys: bool) {
    let faults = Faults {
        drop_response: 1.0,
        idempotency_keys: keys,
        ..Faults::default()
    };
    let env = TestEnv::new(faults).await;
    let keys_flag = keys.to_string();
    let worker = env.start_worker(&["--provider-idempotency-keys", &keys_flag]);
    let messages = workload::generate(&spec("dropped", 25));
    env.publish(&messages).await;

    // Every charge lands at the provider, every answer is lost.
    wait_for("25 charges made, rows unknown", SETTLE, || async {
        env.sim.ledger().charges.len() >= 25
            && env.status().await.outbox_in(OutboxState::Unknown) > 0
    })
    .await;
    assert_eq!(
        env.status().await.outbox_in(OutboxState::Succeeded),
        0,
        "nothing settled without an answer"
    );

    // The provider recovers; idem must resolve what it could not see.
    env.sim.set_faults(Faults {
        idempotency_keys: keys,
        ..Faults::default()
    });
    wait_for("25 rows succeeded", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 25
    })
    .await;

    let by_ref = env.charges_by_reference();
    assert_eq!(by_ref.len(), 25, "no missing charge");
    assert!(
        by_ref.values().all(|&n| n == 1),
        "no double charge: {by_ref:?}"
    );
    let stats = env.sim.stats();
    assert!(
        stats.dropped_responses >= 25,
        "the fault was injected: {stats:?}"
    );
    if !keys {
        assert!(
            stats.lookups >= 25,
            "lookup-only mode resolved by lookup: {stats:?}"
        );
    }
    // Each row's recorded charge is the provider's one charge for it.
    let ledger = env.sim.ledger();
    let rows: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT reference_id, provider_charge_id FROM outbox")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for (reference, charge_id) in rows {
        let charge = ledger
            .charges
            .iter()
            .find(|c| c.reference_id == reference.to_string())
            .unwrap();
        assert_eq!(charge.id, charge_id);
    }
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_responses_keyed_provider() {
    dropped_responses_resolve_without_double_charge(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_responses_lookup_only_provider() {
    dropped_responses_resolve_without_double_charge(false).await;
}

fn dispatcher(env: &TestEnv, pool: sqlx::PgPool, owner: &str, keys: bool) -> Dispatcher {
    Dispatcher::new(pool, client(env, keys), config(owner))
}

/// A client of the environment's simulator, with or without keys.
pub(crate) fn client(env: &TestEnv, keys: bool) -> ChargeClient {
    let caps = Capabilities {
        idempotency_keys: keys,
        lookup: true,
        refunds: true,
    };
    ChargeClient::new(&env.sim_url, Duration::from_secs(2), caps).unwrap()
}

/// The dispatch settings of these tests: no ordering, small batches, quick
/// retries.
pub(crate) fn config(owner: &str) -> DispatchConfig {
    DispatchConfig {
        owner: owner.into(),
        lease: Duration::from_secs(10),
        claim_batch: 8,
        per_account_ordering: false,
        chain_per_account: false,
        concurrency: 16,
        max_attempts: 10,
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        charge_timeout: Duration::from_secs(2),
        idle_poll: Duration::from_millis(5),
        shutdown_grace: Duration::from_secs(5),
        breaker: idem_dispatch::BreakerConfig::default(),
        key_ttl: Duration::from_secs(24 * 3600),
    }
}

/// Invariant: two dispatchers racing over one backlog never claim the same row
/// twice. The provider ignores idempotency keys here, so a double claim would
/// show up as a double charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_dispatchers_charge_each_row_once() {
    let env = TestEnv::new(Faults {
        idempotency_keys: false,
        latency_ms: 5,
        ..Faults::default()
    })
    .await;
    let consumer = env.start_worker(&["--role", "consumer"]);
    let messages = workload::generate(&spec("race", 200));
    env.publish(&messages).await;
    wait_for("200 outbox rows", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Pending) == 200
    })
    .await;
    consumer.stop().await.unwrap();

    let other_pool = idem_store::connect(&env.database_url, 4).await.unwrap();
    let a = dispatcher(&env, env.pool.clone(), "racer-a", false);
    let b = dispatcher(&env, other_pool, "racer-b", false);
    let drive = |d: Dispatcher| async move {
        let mut mine = 0;
        loop {
            let done = d.dispatch_once().await.unwrap();
            if done.is_empty() {
                return mine;
            }
            assert!(
                done.iter().all(|x| x.recorded),
                "no fence refusal without lease expiry"
            );
            mine += done.len();
        }
    };
    let (na, nb) = tokio::join!(drive(a), drive(b));
    assert_eq!(na + nb, 200, "every row dispatched once in all");
    assert!(na > 0 && nb > 0, "both dispatchers took part ({na}/{nb})");
    let by_ref = env.charges_by_reference();
    assert_eq!(by_ref.len(), 200);
    assert!(by_ref.values().all(|&n| n == 1), "no double charge");
    assert_eq!(env.status().await.outbox_in(OutboxState::Succeeded), 200);
    env.cleanup().await;
}

/// Invariant: a stale lease holder cannot overwrite the outcome recorded by
/// the replica that rescued its row (fencing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_lease_holder_is_fenced_off() {
    let env = TestEnv::new(Faults::default()).await;
    let consumer = env.start_worker(&["--role", "consumer"]);
    env.publish(&workload::generate(&spec("fence", 1))).await;
    wait_for("1 outbox row", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Pending) == 1
    })
    .await;
    consumer.stop().await.unwrap();

    let mut conn = env.pool.acquire().await.unwrap();
    let stale = idem_store::claim::claim(&mut conn, "stale", Duration::from_millis(1), 1, true)
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        idem_store::rescue::rescue_expired(&mut conn, 10, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    let fresh = dispatcher(&env, env.pool.clone(), "fresh", true)
        .dispatch_once()
        .await
        .unwrap();
    assert_eq!(fresh.len(), 1);
    assert!(fresh[0].recorded);

    let late = idem_store::Settlement::Dead {
        error: "stale writer".into(),
    };
    let accepted = idem_store::outbox::settle(&mut conn, stale[0].id, stale[0].lease_token, &late)
        .await
        .unwrap();
    assert!(!accepted, "the fence refused the stale write");
    assert_eq!(env.status().await.outbox_in(OutboxState::Succeeded), 1);
    assert_eq!(env.charges_by_reference().len(), 1);
    env.cleanup().await;
}

/// Invariant: an `idem run` process killed with SIGKILL while charges are in
/// flight loses nothing and double-charges nothing: after a restart, the
/// expired leases are reclaimed and every message ends with exactly one charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_then_restart() {
    // Slow provider so that calls are in flight when the kill lands: the
    // kill follows the check that saw them within milliseconds, but on a
    // loaded machine (CI with every suite in one process) that gap can
    // outlast a short call; 700 ms keeps it well inside one, and under the
    // 1 s charge timeout.
    let env = TestEnv::new(Faults {
        latency_ms: 700,
        ..Faults::default()
    })
    .await;
    let spawn = || {
        std::process::Command::new(idem_binary())
            .arg("run")
            .args(env.run_flags())
            .args(["--charge-timeout-ms", "1000", "--dispatch-concurrency", "8"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = spawn();
    env.publish(&workload::generate(&spec("sigkill", 60))).await;
    wait_for("charges in flight", SETTLE, || async {
        let st = env.status().await;
        st.outbox_in(OutboxState::InFlight) > 0 && st.outbox_in(OutboxState::Succeeded) > 0
    })
    .await;
    kill(
        Pid::from_raw(i32::try_from(first.id()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    first.wait().unwrap();
    let at_kill = env.status().await;
    assert!(
        at_kill.outbox_in(OutboxState::InFlight) > 0,
        "the kill left rows in flight: {at_kill:?}"
    );

    let mut second = spawn();
    wait_for("60 rows succeeded after restart", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 60
    })
    .await;
    kill(
        Pid::from_raw(i32::try_from(second.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let exit = second.wait().unwrap();
    assert!(exit.success(), "SIGTERM is a graceful exit 0: {exit:?}");

    let by_ref = env.charges_by_reference();
    assert_eq!(by_ref.len(), 60, "no missing charge");
    assert!(
        by_ref.values().all(|&n| n == 1),
        "no double charge: {by_ref:?}"
    );
    let st = env.status().await;
    assert_eq!(st.inbox_keys, 60, "no acked message lost");
    assert_eq!(st.open_rows(), 0);
    env.cleanup().await;
}
