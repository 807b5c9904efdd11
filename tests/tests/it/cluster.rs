//! idem on a three-node RabbitMQ cluster: the work queue is a quorum queue
//! (the default type), two replicas are given every node's URL, and a
//! producer publishes with confirms the whole time while the node leading the
//! queue is stopped and brought back, then the node leading it next is killed
//! (SIGKILL) and brought back.
//!
//! Invariant, counted at the provider: every key the producer got a confirm
//! for is charged exactly once, none is missing, nothing else is charged; and
//! every one of them has a result event on a quorum queue bound to the
//! results exchange (no result event lost for a confirmed publish).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use idem_events::ResultBody;
use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::chaos::Publisher;
use idem_tests::rabbit::RabbitCluster;
use idem_tests::{PG_ADMIN_URL, Servers, TestEnv, spec, wait_for};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

/// Distinct charges published.
const DISTINCT: usize = 900;
/// Publishing rate: the run spans both node losses (about 30 s).
const RATE: u32 = 30;
/// How long everything may take to settle once publishing ended.
const SETTLE: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_confirmed_charge_once_and_its_result_through_losing_two_nodes() {
    let cluster = RabbitCluster::start(3)
        .await
        .expect("a three-node cluster forms");
    let servers = Servers {
        pg_admin_url: PG_ADMIN_URL.to_owned(),
        amqp_url: cluster.amqp_urls(),
    };
    let env = TestEnv::alone_on(Faults::default(), &servers).await;
    assert_eq!(
        queue_type(&cluster, &env.queue).await,
        "quorum",
        "the work queue is a quorum queue by default"
    );
    let exchange = format!("{}.results", env.queue);
    let results = format!("{}.results.all", env.queue);
    bind_results(&servers.amqp_url, &exchange, &results).await;
    let flags = |id: &'static str| ["--results-exchange", &exchange, "--replica-id", id];
    let workers = [
        env.start_worker(&flags("cluster-a")),
        env.start_worker(&flags("cluster-b")),
    ];

    let messages = idem_workload::generate(&spec("cl", DISTINCT));
    let keys: BTreeSet<String> = messages
        .iter()
        .filter_map(|m| m.message_id.clone())
        .collect();
    let (url, queue) = (servers.amqp_url.clone(), env.queue.clone());
    let producer = tokio::spawn(async move {
        let mut publisher = Publisher::new(&url, &queue);
        publisher.publish(&messages, RATE).await?;
        anyhow::Ok((publisher.published(), publisher.republished()))
    });

    tokio::time::sleep(Duration::from_secs(6)).await;
    let first = cluster.leader_of(&env.queue).await.expect("a leader");
    let stopped = Instant::now();
    cluster.nodes[first].stop().await.expect("the leader stops");
    tracing::info!(node = first, "cluster test: stopped the queue's leader");
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.nodes[first]
        .start_again()
        .await
        .expect("it comes back");
    cluster.await_running(3).await.expect("three nodes again");
    tracing::info!(node = first, took = ?stopped.elapsed(), "cluster test: leader back");

    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.leader_of(&env.queue).await.expect("a leader");
    let second = if leader == first {
        (first + 1) % 3
    } else {
        leader
    };
    cluster.nodes[second].kill_hard();
    tracing::info!(
        node = second,
        was_leader = leader == second,
        "cluster test: killed a node"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.nodes[second]
        .start_again()
        .await
        .expect("it comes back");
    cluster.await_running(3).await.expect("three nodes again");

    let (published, republished) = producer
        .await
        .expect("the producer task")
        .expect("every window confirmed in the end");
    tracing::info!(published, republished, "cluster test: producer done");
    assert!(published >= DISTINCT);

    wait_for("every key charged", SETTLE, || async {
        env.charges_by_reference().len() >= DISTINCT
    })
    .await;
    wait_for("every row settled", SETTLE, || async {
        env.status().await.outbox.get("succeeded") == Some(&(DISTINCT as i64))
    })
    .await;
    let charged = env.charges_by_reference();
    let expected: BTreeSet<String> = keys
        .iter()
        .map(|key| idem_message::reference_id("default", key).to_string())
        .collect();
    let twice: BTreeMap<&String, &usize> = charged.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "charged more than once: {twice:?}");
    let found: BTreeSet<String> = charged.keys().cloned().collect();
    assert_eq!(
        found, expected,
        "every confirmed key charged, and nothing else"
    );

    let events = take_results(&servers.amqp_url, &results, &keys).await;
    let missing: Vec<&String> = keys.iter().filter(|k| !events.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} result event(s) lost: {missing:?}",
        missing.len()
    );
    for (key, body) in &events {
        assert_eq!(body.state, OutboxState::Succeeded, "{key}");
    }

    for worker in workers {
        worker.stop().await.expect("a clean shutdown");
    }
    env.cleanup().await;
}

/// The type `rabbitmqctl list_queues` gives `queue`.
async fn queue_type(cluster: &RabbitCluster, queue: &str) -> String {
    let listing = cluster.nodes[0]
        .ctl(&[
            "list_queues",
            "name",
            "type",
            "--quiet",
            "--no-table-headers",
        ])
        .await
        .expect("list_queues");
    listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| name.trim() == queue)
        .map(|(_, kind)| kind.trim().to_owned())
        .unwrap_or_else(|| panic!("{queue} not listed: {listing}"))
}

/// The results exchange, and a quorum queue bound to every result on it,
/// before any replica runs (so no event is unroutable).
async fn bind_results(urls: &str, exchange: &str, queue: &str) {
    let connection = idem_inbox::connect_amqp(urls).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    idem_events::declare_exchange(&channel, exchange)
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "charge.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "bound".into()).await;
}

/// Read result events off `queue` until one per key in `keys` has arrived
/// (by the request's key), or `SETTLE` passed; reconnects through whichever
/// node answers.
async fn take_results(
    urls: &str,
    queue: &str,
    keys: &BTreeSet<String>,
) -> BTreeMap<String, ResultBody> {
    let deadline = Instant::now() + SETTLE;
    let mut events = BTreeMap::new();
    while events.len() < keys.len() && Instant::now() < deadline {
        let Ok(connection) = idem_inbox::connect_amqp(urls).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let Ok(channel) = connection.create_channel().await else {
            continue;
        };
        while events.len() < keys.len() && Instant::now() < deadline {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await;
            match got {
                Ok(Some(message)) => {
                    let body: ResultBody = serde_json::from_slice(&message.delivery.data)
                        .expect("a result event body");
                    events.insert(body.message_id.clone(), body);
                    let _ = message.delivery.ack(BasicAckOptions::default()).await;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => break,
            }
        }
        let _ = connection.close(200, "read".into()).await;
    }
    events
}
