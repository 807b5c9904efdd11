//! The work queue's type on a real broker: quorum by default; a queue that
//! already exists as classic (a deployment from before quorum was the
//! default) kept and consumed as it is when `IDEM_QUEUE_TYPE` is unset;
//! refused at start, naming docs/upgrades.md, when quorum is asked for.

use std::time::Duration;

use idem_inbox::{QueueType, Topology};
use idem_simulator::Faults;
use idem_tests::{TestEnv, spec, wait_for};

const SETTLE: Duration = Duration::from_secs(60);

/// Whether `topology` declares without error: an equivalent declaration of
/// an existing queue succeeds, one of another type is refused.
async fn declares(env: &TestEnv, topology: &Topology) -> anyhow::Result<()> {
    let connection = idem_inbox::connect_amqp(&env.amqp_url).await?;
    let declared = idem_inbox::declare(&connection, topology).await;
    let _ = connection.close(200, "checked".into()).await;
    declared.map(|_| ())
}

/// The queue and its `.dead` as releases before quorum was the default
/// declared them: no `x-queue-type` at all.
async fn declare_as_older_releases_did(env: &TestEnv) {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};
    let connection = idem_inbox::connect_amqp(&env.amqp_url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let dead = format!("{}.dead", env.queue);
    channel
        .queue_declare(dead.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    let dlx = format!("{}.dlx", env.queue);
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(env.queue.as_str().into()),
    );
    channel
        .queue_declare(env.queue.as_str().into(), durable, args)
        .await
        .unwrap();
    let _ = connection.close(200, "declared".into()).await;
}

fn strictly(env: &TestEnv, queue_type: QueueType) -> Topology {
    Topology::for_queue(&env.queue).with_type(queue_type)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_queue_is_quorum_and_an_existing_classic_one_is_kept() {
    // Fresh: the default declares quorum, with the default delivery limit.
    let env = TestEnv::new(Faults::default()).await;
    let worker = env.start_worker(&[]);
    env.publish(&idem_workload::generate(&spec("qt-fresh", 3)))
        .await;
    wait_for("3 charges", SETTLE, || async {
        env.charges_by_reference().len() == 3
    })
    .await;
    worker.stop().await.unwrap();
    declares(&env, &strictly(&env, QueueType::default()))
        .await
        .expect("the default made a quorum queue with limit 5");
    let refused = declares(&env, &strictly(&env, QueueType::Classic)).await;
    assert!(refused.is_err(), "a quorum queue is not classic");
    env.cleanup().await;

    // Existing classic (queue and .dead): kept, consumed, still classic.
    let env = TestEnv::new(Faults::default()).await;
    idem_workload::scratch::delete_queue(&env.amqp_url, &env.queue)
        .await
        .unwrap();
    declare_as_older_releases_did(&env).await;
    let worker = env.start_worker(&[]);
    env.publish(&idem_workload::generate(&spec("qt-classic", 4)))
        .await;
    wait_for("4 charges", SETTLE, || async {
        env.charges_by_reference().len() == 4
    })
    .await;
    worker.stop().await.unwrap();
    assert!(env.charges_by_reference().values().all(|n| *n == 1));
    declares(&env, &strictly(&env, QueueType::Classic))
        .await
        .expect("the queue is still the classic one");
    let quorum = declares(&env, &strictly(&env, QueueType::default())).await;
    assert!(quorum.is_err(), "and not a quorum queue");

    // Quorum asked for explicitly: the replica refuses to start.
    let config = env
        .run_args(&["--queue-type", "quorum"])
        .validate()
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = idem_daemon::run(config, shutdown.clone());
    let ended = tokio::time::timeout(Duration::from_secs(30), run).await;
    shutdown.cancel();
    let error = ended
        .expect("the replica stops by itself")
        .expect_err("it refuses the classic queue");
    let shown = format!("{error:#}");
    assert!(
        shown.contains("x-queue-type") && shown.contains("docs/upgrades.md"),
        "{shown}"
    );
    env.cleanup().await;
}
