//! The backstop: a quorum work queue with a delivery limit, and the
//! dead-letter queue every replica drains through the same decision as any
//! delivery, on the real broker, database and binary.

use std::time::Duration;

use idem_inbox::raw::Connection as RawConnection;
use idem_inbox::raw::properties::RawProperties;
use idem_inbox::{QueueType, Topology};
use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::binary::{Proc, run, run_flags_without};
use idem_tests::rabbit::raw_publish;
use idem_tests::{AMQP_URL, TestEnv, spec, wait_for};
use idem_workload as workload;

const SETTLE: Duration = Duration::from_secs(60);
const LIMIT: u32 = 2;

fn properties(message_id: &[u8]) -> RawProperties {
    RawProperties {
        message_id: Some(message_id.to_vec()),
        content_type: Some(b"application/json".to_vec()),
        ..RawProperties::default()
    }
}

fn charge(account: &str) -> Vec<u8> {
    format!(r#"{{"account_id":"{account}","amount":100,"currency":"EUR"}}"#).into_bytes()
}

/// Deliver every message of `queue` and reject it back (requeue) until the
/// broker's delivery limit has dead-lettered them all: what a consumer that
/// keeps dying on them looks like to a quorum queue. Returns the deliveries.
async fn exhaust_delivery_limit(queue: &str) -> usize {
    let mut reader = RawConnection::connect(AMQP_URL).await.unwrap();
    let mut deliveries = 0;
    while let Some(d) = reader.basic_get(queue).await.unwrap() {
        deliveries += 1;
        reader.reject(d.delivery_tag, true).await.unwrap();
        assert!(deliveries < 100, "the delivery limit never dead-lettered");
    }
    reader.close().await.unwrap();
    deliveries
}

/// Invariant: with `IDEM_QUEUE_TYPE=quorum` and a delivery limit of 2, three
/// messages a consumer never settles (a valid charge, a body that is not
/// JSON, a `message_id` that is not UTF-8) are dead-lettered by the broker
/// after 3 deliveries each; a replica then drains `<queue>.dead`: the valid
/// charge is charged exactly once, the other two are quarantined (the raw one
/// with its header bytes and the broker's reason `delivery_limit`), and a
/// copy of an already charged message found there is absorbed as a
/// duplicate, not charged again. The dead-letter queue ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_queue_is_decided_like_any_delivery() {
    let env = TestEnv::new(Faults::default()).await;
    let queue = format!("{}.quorum", env.queue);
    let topology = Topology::for_queue(&queue).with_type(QueueType::Quorum {
        delivery_limit: LIMIT,
    });
    {
        let connection = idem_inbox::connect_amqp(AMQP_URL).await.unwrap();
        idem_inbox::declare(&connection, &topology).await.unwrap();
        let _ = connection.close(200, "declared".into()).await;
    }
    for (id, body) in [
        (&b"dl-valid"[..], charge("acc-dl")),
        (&b"dl-not-json"[..], b"{nope".to_vec()),
        (&b"dl-\xff\xfe"[..], charge("acc-raw")),
    ] {
        raw_publish::publish(AMQP_URL, &queue, &properties(id), &body)
            .await
            .unwrap();
    }
    let deliveries = exhaust_delivery_limit(&queue).await;
    assert_eq!(
        deliveries,
        3 * (LIMIT as usize + 1),
        "limit + 1 deliveries each"
    );

    let mut flags = run_flags_without(&env, &["--queue"]);
    flags.extend(
        [
            "--queue",
            &queue,
            "--queue-type",
            "quorum",
            "--delivery-limit",
            &LIMIT.to_string(),
            "--dead-letter-drain-secs",
            "1",
        ]
        .map(str::to_owned),
    );
    let mut replica = Proc::spawn("replica", &mut run(&flags, &[]));
    let valid = workload::generate(&spec("dl-live", 5));
    let publisher = idem_inbox::connect_amqp(AMQP_URL).await.unwrap();
    let channel = publisher.create_channel().await.unwrap();
    workload::publish(&channel, &queue, &valid, 0, |_| {})
        .await
        .unwrap();
    wait_for("6 charged, 2 quarantined", SETTLE, || async {
        let st = env.status().await;
        st.outbox_in(OutboxState::Succeeded) == 6 && st.quarantined == 2
    })
    .await;
    // A copy of a charged message lands in the dead-letter queue.
    let copy = &valid[0];
    let copy_props = RawProperties {
        message_id: copy.message_id.as_ref().map(|m| m.as_bytes().to_vec()),
        ..properties(b"")
    };
    raw_publish::publish(
        AMQP_URL,
        &topology.dead_letter_queue,
        &copy_props,
        &copy.body,
    )
    .await
    .unwrap();
    wait_for("the copy absorbed", SETTLE, || async {
        env.status().await.duplicates == 1
    })
    .await;
    wait_for("the dead-letter queue empty", SETTLE, || async {
        idem_tests::rabbit::queue_depth(AMQP_URL, &topology.dead_letter_queue)
            .await
            .unwrap()
            == 0
    })
    .await;
    assert!(replica.still_running(), "{}", replica.text());
    let (status, log) = replica.stop().await;
    assert!(status.success(), "{log}");

    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 6, "{charges:?}");
    assert!(charges.values().all(|n| *n == 1), "each once: {charges:?}");
    let rows: Vec<(String, Option<String>, bool)> = sqlx::query_as(
        "SELECT reason_code,
                coalesce(properties->'dead_letter'->>'reason',
                         properties->'headers'->'x-death'->0->>'reason'),
                raw_header IS NOT NULL
         FROM quarantine ORDER BY reason_code",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "not_json".to_owned(),
                Some("delivery_limit".to_owned()),
                false
            ),
            (
                "not_utf8".to_owned(),
                Some("delivery_limit".to_owned()),
                true
            ),
        ]
    );
    let _ = publisher.close(200, "done".into()).await;
    let _ = idem_workload::scratch::delete_queue(AMQP_URL, &queue).await;
    env.cleanup().await;
}
