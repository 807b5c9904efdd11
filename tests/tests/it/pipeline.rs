//! The data path end to end: real RabbitMQ, real PostgreSQL, the real provider
//! simulator over HTTP, the real `idem` daemon in-process. Every invariant is
//! counted at the provider, not inferred from our tables.

use std::time::Duration;

use futures_lite::StreamExt;
use idem_inbox::{Admission, Incoming, record_batch};
use idem_message::reference_id;
use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::{AMQP_URL, TestEnv, spec, wait_for};
use idem_workload::{self as workload, Kind};
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};

const SETTLE: Duration = Duration::from_secs(60);

/// Invariant: a replica's dispatcher is woken by its own inbox's commit, not
/// only by its idle poll. With a 60 s poll, a message published after the
/// dispatcher went idle is charged long before the poll would come round:
/// the claim followed the inbox commit that recorded it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_commit_wakes_an_idle_dispatcher() {
    let env = TestEnv::new(Faults::default()).await;
    let worker = env.start_worker(&["--idle-poll-ms", "60000"]);
    let messages = workload::generate(&spec("wake", 3));
    // The first is charged by the claim at start or by the wake; after it
    // the dispatcher is idle in its 60 s poll.
    env.publish(&messages[..1]).await;
    wait_for(
        "the first row succeeded",
        Duration::from_secs(30),
        || async { env.status().await.outbox_in(OutboxState::Succeeded) == 1 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = std::time::Instant::now();
    env.publish(&messages[1..]).await;
    wait_for("all 3 rows succeeded", Duration::from_secs(30), || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 3
    })
    .await;
    assert!(
        published.elapsed() < Duration::from_secs(30),
        "charged before the 60 s poll: {:?}",
        published.elapsed()
    );
    assert_eq!(env.sim.ledger().charges.len(), 3);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// Invariant: every distinct valid message is charged exactly once, with its
/// own amount, and its outbox row ends `succeeded` with the provider's charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_charges_each_message_once() {
    let env = TestEnv::new(Faults::default()).await;
    let messages = workload::generate(&spec("happy", 40));
    let worker = env.start_worker(&[]);
    env.publish(&messages).await;
    wait_for("40 rows succeeded", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 40
    })
    .await;

    let ledger = env.sim.ledger();
    assert_eq!(ledger.charges.len(), 40, "exactly one charge per message");
    for (i, m) in messages.iter().enumerate() {
        let id = m.message_id.as_deref().unwrap();
        let reference = reference_id("default", id).to_string();
        let charges: Vec<_> = ledger
            .charges
            .iter()
            .filter(|c| c.reference_id == reference)
            .collect();
        assert_eq!(charges.len(), 1, "{id}");
        let expected = workload::original_body(id.rsplit('-').next().unwrap().parse().unwrap());
        assert_eq!(
            charges[0].amount,
            expected["amount"].as_i64().unwrap(),
            "message {i} charged its own amount"
        );
        let stored: (String, serde_json::Value) = sqlx::query_as(
            "SELECT provider_charge_id, result FROM outbox WHERE reference_id = $1::uuid",
        )
        .bind(&reference)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert_eq!(stored.0, charges[0].id);
        assert_eq!(stored.1["id"], charges[0].id.as_str());
    }
    assert_eq!(env.queue_depth().await, 0, "everything acked");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// Invariant: re-published copies (same key, same payload) are absorbed —
/// acked, counted, never charged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republished_duplicates_are_absorbed() {
    let env = TestEnv::new(Faults::default()).await;
    let mut s = spec("republish", 30);
    s.duplicates = 45;
    let messages = workload::generate(&s);
    let worker = env.start_worker(&[]);
    env.publish(&messages).await;
    wait_for(
        "all 75 deliveries recorded and 30 charged",
        SETTLE,
        || async {
            let st = env.status().await;
            st.inbox_keys + st.duplicates == 75 && st.outbox_in(OutboxState::Succeeded) == 30
        },
    )
    .await;
    // Duplicates published later, after the charges settled, still are not charged.
    env.publish(&messages[..10]).await;
    wait_for("late copies absorbed", SETTLE, || async {
        env.status().await.duplicates == 55
    })
    .await;

    let by_ref = env.charges_by_reference();
    assert_eq!(by_ref.len(), 30);
    assert!(
        by_ref.values().all(|&n| n == 1),
        "no reference charged twice: {by_ref:?}"
    );
    assert_eq!(env.sim.stats().charges_created, 30);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// Invariant: a message redelivered by the broker after its transaction
/// committed (the consumer died before acking) is absorbed, never charged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_after_commit_is_absorbed() {
    let env = TestEnv::new(Faults::default()).await;
    let messages = workload::generate(&spec("redeliver", 20));
    env.publish(&messages).await;

    // A consumer that records every delivery and commits, then dies before
    // acking: exactly the window between commit and ack.
    {
        let connection = idem_inbox::connect_amqp(AMQP_URL).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .basic_qos(100, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                env.queue.as_str().into(),
                "crasher".into(),
                BasicConsumeOptions::default(),
                Default::default(),
            )
            .await
            .unwrap();
        let mut deliveries = Vec::new();
        while deliveries.len() < 20 {
            deliveries.push(consumer.next().await.unwrap().unwrap());
        }
        let items: Vec<Incoming<'_>> = deliveries
            .iter()
            .map(|d| Incoming {
                properties: &d.properties,
                body: &d.data,
                redelivered: d.redelivered,
            })
            .collect();
        let mut tx = env.pool.begin().await.unwrap();
        record_batch(&mut tx, &items, &Admission::open(65536))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        connection
            .close(320, "crash before ack".into())
            .await
            .unwrap();
    }

    let worker = env.start_worker(&[]);
    wait_for(
        "20 redeliveries absorbed and 20 charged",
        SETTLE,
        || async {
            let st = env.status().await;
            st.duplicates == 20 && st.outbox_in(OutboxState::Succeeded) == 20
        },
    )
    .await;
    assert_eq!(env.status().await.inbox_keys, 20);
    let by_ref = env.charges_by_reference();
    assert_eq!(by_ref.len(), 20);
    assert!(by_ref.values().all(|&n| n == 1), "{by_ref:?}");
    assert_eq!(env.queue_depth().await, 0);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// Invariant: the same key with another payload is a key conflict — recorded
/// with its body as evidence, acked, never charged; the original is charged once
/// with the original amount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_other_payload_is_a_conflict_never_charged() {
    let env = TestEnv::new(Faults::default()).await;
    let worker = env.start_worker(&[]);
    let props = || {
        BasicProperties::default()
            .with_message_id("order-1".into())
            .with_app_id("shop".into())
    };
    env.publish_raw(
        props(),
        br#"{"account_id":"acc_9","amount":500,"currency":"EUR"}"#,
    )
    .await;
    wait_for("original charged", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 1
    })
    .await;
    env.publish_raw(
        props(),
        br#"{"account_id":"acc_9","amount":900,"currency":"EUR"}"#,
    )
    .await;
    wait_for("conflict recorded", SETTLE, || async {
        env.status().await.conflicts == 1
    })
    .await;

    let ledger = env.sim.ledger();
    assert_eq!(ledger.charges.len(), 1);
    assert_eq!(ledger.charges[0].amount, 500);
    assert_eq!(
        ledger.charges[0].reference_id,
        reference_id("shop", "order-1").to_string()
    );
    let (scope, body): (String, Vec<u8>) = sqlx::query_as("SELECT scope, body FROM key_conflict")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(scope, "shop");
    assert!(String::from_utf8(body).unwrap().contains("900"));
    assert_eq!(env.queue_depth().await, 0, "the conflict was acked");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// Invariant: every kind of bad input is quarantined with its raw bytes and a
/// reason, acked, never charged — and the worker keeps going: valid messages
/// published around the bad ones are all charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_quarantined_and_the_worker_keeps_going() {
    let env = TestEnv::new(Faults::default()).await;
    let mut s = spec("bad", 10);
    s.malformed = 10;
    let messages = workload::generate(&s);
    let worker = env.start_worker(&[]);
    env.publish(&messages).await;
    // One more kind: a content type that is not JSON.
    env.publish_raw(
        BasicProperties::default()
            .with_message_id("ct-1".into())
            .with_content_type("text/plain".into()),
        b"account=1",
    )
    .await;
    wait_for("11 quarantined, 10 charged", SETTLE, || async {
        let st = env.status().await;
        st.quarantined == 11 && st.outbox_in(OutboxState::Succeeded) == 10
    })
    .await;

    let rows: Vec<(String, String, Vec<u8>, serde_json::Value)> =
        sqlx::query_as("SELECT reason_code, reason, body, properties FROM quarantine ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let mut codes: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    codes.sort();
    codes.dedup();
    assert_eq!(
        codes,
        [
            "content_type",
            "missing_message_id",
            "not_json",
            "schema",
            "too_large"
        ]
    );
    for m in messages
        .iter()
        .filter(|m| matches!(m.kind, Kind::Malformed(_)))
    {
        // Past the bound, a body is kept as its prefix (hostile_body checks its digest).
        let kept = &m.body[..m.body.len().min(idem_store::quarantine::MAX_KEPT_BODY)];
        assert!(
            rows.iter().any(|r| r.2 == kept),
            "raw body of {:?} kept byte for byte",
            m.kind
        );
    }
    assert!(rows.iter().all(|r| !r.1.is_empty()), "every row says why");
    let ct = rows.iter().find(|r| r.0 == "content_type").unwrap();
    assert_eq!(ct.3["message_id"], "ct-1");
    assert_eq!(
        env.sim.ledger().charges.len(),
        10,
        "bad input never charged"
    );
    assert_eq!(env.queue_depth().await, 0, "bad input acked, not stuck");
    worker.stop().await.unwrap();
    env.cleanup().await;
}
