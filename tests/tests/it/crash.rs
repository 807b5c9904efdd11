//! A worker killed at each named step of the data path (`IDEM_CRASH_AT`, which
//! aborts the process there, as abruptly as SIGKILL) and restarted: nothing is
//! lost, nothing is charged twice. Counted at the provider simulator.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::{TestEnv, idem_binary, spec, wait_for};
use idem_workload as workload;
use tokio::process::{Child, Command};

const MESSAGES: usize = 30;

fn spawn(env: &TestEnv, crash_at: Option<&str>) -> Child {
    let mut cmd = Command::new(idem_binary());
    cmd.arg("run")
        .args(env.run_flags())
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    match crash_at {
        Some(point) => cmd.env(idem_crash::ENV, point),
        None => cmd.env_remove(idem_crash::ENV),
    };
    cmd.spawn().unwrap()
}

/// Invariant, for each crash point: the armed worker dies there; after a
/// restart every message is charged exactly once, every acked message has its
/// inbox row, the queue drains, and no row is left in flight.
async fn crash_and_recover(point: &str) -> (TestEnv, idem_store::status::Status) {
    let env = TestEnv::new(Faults {
        latency_ms: 20,
        ..Faults::default()
    })
    .await;
    let mut doomed = spawn(&env, Some(point));
    env.publish(&workload::generate(&spec("crash", MESSAGES)))
        .await;
    let status = tokio::time::timeout(Duration::from_secs(60), doomed.wait())
        .await
        .expect("the armed worker reached its crash point")
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(6),
        "{point}: died by abort (SIGABRT), not a clean exit: {status:?}"
    );

    let mut survivor = spawn(&env, None);
    wait_for(
        "every message charged after restart",
        Duration::from_secs(90),
        || async { env.status().await.outbox_in(OutboxState::Succeeded) == MESSAGES as i64 },
    )
    .await;
    // Charged is not drained: a redelivered batch may still be on its way to
    // the survivor, to be absorbed and acked.
    wait_for("queue drained", Duration::from_secs(30), || async {
        env.queue_depth().await == 0
    })
    .await;
    survivor.start_kill().unwrap();
    survivor.wait().await.unwrap();

    let by_ref = env.charges_by_reference();
    assert_eq!(by_ref.len(), MESSAGES, "{point}: no missing charge");
    assert!(
        by_ref.values().all(|&n| n == 1),
        "{point}: no double charge: {by_ref:?}"
    );
    let st = env.status().await;
    assert_eq!(
        st.inbox_keys, MESSAGES as i64,
        "{point}: every message recorded"
    );
    assert_eq!(st.open_rows(), 0, "{point}: nothing stuck in flight");
    assert_eq!(env.queue_depth().await, 0, "{point}: queue drained");
    (env, st)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_inbox_commit_before_ack() {
    let (env, st) = crash_and_recover("inbox.after_commit").await;
    // The committed-but-unacked batch came back and was absorbed.
    assert!(
        st.duplicates >= 1,
        "the broker redelivered the unacked batch: {st:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_claim_commit() {
    let (env, _) = crash_and_recover("dispatch.after_claim").await;
    // Rows were left in flight by the dead worker and had to be reclaimed.
    let reclaimed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE uncertain_since IS NOT NULL")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(reclaimed >= 1, "expired leases were reclaimed");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_provider_answer_before_record() {
    let (env, _) = crash_and_recover("dispatch.after_answer").await;
    // The charge the dead worker never recorded was found, not made again.
    let stats = env.sim.stats();
    assert!(
        stats.lookups + stats.replays >= 1,
        "resolved by lookup or keyed replay: {stats:?}"
    );
    env.cleanup().await;
}
