//! A PostgreSQL failover with the real binary: a primary and a synchronous
//! streaming standby of our own, a replica given both hosts in its URL
//! (`postgres://…@h1:p1,h2:p2/db`), the primary killed (SIGKILL) while
//! charges keep arriving, the standby promoted. idem follows the primary
//! that moved by itself.

use std::time::Duration;

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::binary::{Proc, run, run_flags_without};
use idem_tests::pg::PgCluster;
use idem_tests::{AMQP_URL, TestEnv, spec, wait_for};
use idem_workload as workload;

const SETTLE: Duration = Duration::from_secs(60);
const STANDBY: &str = "idem_standby";
const DATABASE: &str = "idem_failover";

/// Invariant: 200 valid charges published over ~10 s, with the primary
/// killed and the standby promoted a third of the way in, are each charged
/// exactly once at the provider (none missing, none twice), every one is
/// `succeeded` in the promoted database, nothing is dead-lettered or
/// quarantined, and the replica never exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_and_a_promoted_standby_lose_and_double_nothing() {
    let env = TestEnv::new(Faults::default()).await;
    let primary = PgCluster::start().await.unwrap();
    let standby = PgCluster::standby_of(&primary, STANDBY).await.unwrap();
    primary.require_synchronous(STANDBY).await.unwrap();
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{DATABASE}?sslmode=disable",
        primary.port(),
        standby.port()
    );
    let mut flags = run_flags_without(&env, &["--database-url"]);
    flags.extend(["--database-url".to_owned(), url]);
    let mut replica = Proc::spawn("replica", &mut run(&flags, &[]));

    let messages = workload::generate(&spec("failover", 200));
    for (i, chunk) in messages.chunks(10).enumerate() {
        if i == 7 {
            let deadline = std::time::Instant::now() + SETTLE;
            while env.charges_by_reference().len() < 30 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no charges before the crash; replica:\n{}",
                    replica.text()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            primary.kill_hard();
            standby.promote().await.unwrap();
        }
        env.publish(chunk).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    wait_for("200 charged at the provider", SETTLE, || async {
        env.charges_by_reference().len() >= 200
    })
    .await;
    let promoted = sqlx::PgPool::connect(&standby.url(DATABASE)).await.unwrap();
    wait_for("200 succeeded in the promoted database", SETTLE, || async {
        let mut conn = promoted.acquire().await.unwrap();
        let st = idem_store::status::read(&mut conn).await.unwrap();
        st.outbox_in(OutboxState::Succeeded) == 200
    })
    .await;
    let mut conn = promoted.acquire().await.unwrap();
    let st = idem_store::status::read(&mut conn).await.unwrap();
    drop(conn);
    promoted.close().await;
    assert!(
        replica.still_running(),
        "the replica exited:\n{}",
        replica.text()
    );
    let (status, log) = replica.stop().await;
    assert!(status.success(), "{log}");

    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 200, "{charges:?}");
    assert!(charges.values().all(|n| *n == 1), "each once: {charges:?}");
    assert_eq!(st.quarantined, 0, "a failover is not the message's fault");
    let dead = idem_tests::rabbit::queue_depth(AMQP_URL, &format!("{}.dead", env.queue))
        .await
        .unwrap();
    assert_eq!(dead, 0, "nothing dead-lettered");
    assert!(
        log.contains("PostgreSQL primary moved"),
        "the log says where it went: {log}"
    );
    drop(standby);
    env.cleanup().await;
}
