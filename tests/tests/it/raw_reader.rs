//! idem's raw AMQP reader against the real broker, on a queue of its own:
//! it takes the messages lapin's parser refuses (a non-UTF-8 `message_id`,
//! a header table nested 12,000 deep) off the head of the queue, reports
//! each as bytes or as a bounded parse error, and acks them away; it bounds
//! the body it holds, and reports the broker's refusals with their reasons.

use std::time::Duration;

use idem_inbox::raw::properties::RawProperties;
use idem_inbox::raw::{
    ConnectOptions, Connection, ParseError, RawDelivery, RawError, RawField, RawTable,
};
use idem_tests::rabbit::{self, raw_publish};
use idem_tests::{AMQP_URL, gate, init};
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

/// A queue of the test's own, declared with lapin.
async fn fresh_queue() -> String {
    let queue = format!("idem_t_raw_{}", uuid::Uuid::new_v4().simple());
    let connection = idem_inbox::connect_amqp(AMQP_URL).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    queue
}

async fn delete_queue(queue: &str) {
    let connection = idem_inbox::connect_amqp(AMQP_URL).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}

/// Close `reader` cleanly (its acks accepted), check the acks emptied
/// `queue`, and delete it.
async fn close_emptied(reader: Connection, queue: &str) {
    reader.close().await.unwrap();
    assert_eq!(rabbit::queue_depth(AMQP_URL, queue).await.unwrap(), 0);
    delete_queue(queue).await;
}

async fn take(reader: &mut Connection, queue: &str) -> RawDelivery {
    let delivery = reader
        .basic_get(queue)
        .await
        .unwrap()
        .expect("a message at the head");
    reader.ack(delivery.delivery_tag).await.unwrap();
    delivery
}

fn normal_properties() -> RawProperties {
    RawProperties {
        content_type: Some(b"application/json".to_vec()),
        message_id: Some(b"order-1".to_vec()),
        app_id: Some(b"shop".to_vec()),
        headers: Some(RawTable(vec![(
            b"x-tenant".to_vec(),
            RawField::LongString(b"t1".to_vec()),
        )])),
        delivery_mode: Some(2),
        ..RawProperties::default()
    }
}

/// Invariant: whatever bytes a producer puts in the content header, the raw
/// reader returns the delivery — short strings exactly as sent, a table
/// nested past the bound as the depth error with the header's raw bytes —
/// without aborting this process, and its acks empty the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_reader_takes_what_lapin_refuses_and_acks_it_away() {
    let _shared = gate::shared().await;
    init();
    let queue = fresh_queue().await;
    let hostile = RawProperties {
        message_id: Some(b"\xff\xfe".to_vec()),
        ..RawProperties::default()
    };
    raw_publish::publish(AMQP_URL, &queue, &hostile, b"non-utf8")
        .await
        .unwrap();
    let depth = raw_publish::publish_nested(AMQP_URL, &queue, 12_000, b"deep")
        .await
        .unwrap();
    assert_eq!(
        depth, 12_000,
        "a 12,000-deep header fits RabbitMQ's default frame_max"
    );
    raw_publish::publish(AMQP_URL, &queue, &normal_properties(), b"{\"ok\":1}")
        .await
        .unwrap();

    let mut reader = Connection::connect(AMQP_URL).await.unwrap();
    assert_eq!(reader.frame_max(), 128 * 1024);
    let a = take(&mut reader, &queue).await;
    assert_eq!(
        a.properties.unwrap().message_id.as_deref(),
        Some(&b"\xff\xfe"[..])
    );
    assert_eq!((a.body.as_slice(), a.body_size), (&b"non-utf8"[..], 8));

    let b = take(&mut reader, &queue).await;
    assert_eq!(b.properties, Err(ParseError::TooDeep { limit: 64 }));
    assert_eq!(
        b.header.len(),
        14 + 7 * 12_000 - 3,
        "the raw header is kept whole"
    );
    assert_eq!(b.body, b"deep");

    let c = take(&mut reader, &queue).await;
    assert_eq!(c.properties, Ok(normal_properties()));
    assert_eq!(
        (
            c.body.as_slice(),
            c.exchange.as_slice(),
            c.routing_key.as_slice()
        ),
        (&b"{\"ok\":1}"[..], &b""[..], queue.as_bytes())
    );
    assert!(!c.body_truncated());

    assert!(reader.basic_get(&queue).await.unwrap().is_none());
    close_emptied(reader, &queue).await;
}

/// Invariant (the bug the raw reader exists for): lapin cannot take a
/// message whose `message_id` is not UTF-8 — its I/O loop logs "parse error
/// `Nom(MapRes)`", closes the connection, and `basic_get` never returns (seen
/// with lapin 4.12) — and the message goes back to the head of the queue,
/// where the raw reader then takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_cannot_take_a_non_utf8_message_id() {
    let _shared = gate::shared().await;
    init();
    let queue = fresh_queue().await;
    let hostile = RawProperties {
        message_id: Some(b"\xff\xfe".to_vec()),
        ..RawProperties::default()
    };
    raw_publish::publish(AMQP_URL, &queue, &hostile, b"x")
        .await
        .unwrap();

    let connection = idem_inbox::connect_amqp(AMQP_URL).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(3),
        channel.basic_get(queue.as_str().into(), BasicGetOptions::default()),
    )
    .await;
    assert!(
        !matches!(got, Ok(Ok(Some(_)))),
        "lapin returned the delivery: the upstream bug is fixed (docs/upstream/lapin-utf8-short-strings.md)"
    );
    drop(channel);
    drop(connection);

    let mut reader = Connection::connect(AMQP_URL).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // The broker requeues the message once lapin's connection is gone.
            if let Some(d) = reader.basic_get(&queue).await.unwrap() {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the message is back at the head");
    assert!(delivery.redelivered);
    assert_eq!(
        delivery.properties.unwrap().message_id.as_deref(),
        Some(&b"\xff\xfe"[..])
    );
    reader.ack(delivery.delivery_tag).await.unwrap();
    close_emptied(reader, &queue).await;
}

/// Invariant: a body larger than the reader's bound is kept as a prefix of
/// that bound, with its whole size and the digest of the whole, and all its
/// frames are drained (the next message on the same connection reads
/// cleanly); a body spanning several frames is reassembled in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_bound_is_a_prefix_and_is_drained() {
    let _shared = gate::shared().await;
    init();
    let queue = fresh_queue().await;
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    for body in [&big[..], b"after", &big[..]] {
        raw_publish::publish(AMQP_URL, &queue, &normal_properties(), body)
            .await
            .unwrap();
    }

    let bounded = ConnectOptions {
        body_limit: 1000,
        ..ConnectOptions::default()
    };
    let mut reader = Connection::connect_with(AMQP_URL, bounded).await.unwrap();
    let prefix = take(&mut reader, &queue).await;
    assert!(prefix.body_truncated());
    assert_eq!(prefix.body.as_slice(), &big[..1000]);
    assert_eq!(prefix.body_size, big.len() as u64);
    assert_eq!(take(&mut reader, &queue).await.body, b"after");
    reader.close().await.unwrap();

    let mut reader = Connection::connect(AMQP_URL).await.unwrap();
    let whole = take(&mut reader, &queue).await;
    assert!(!whole.body_truncated());
    assert!(
        whole.body == big,
        "three frames of body, reassembled in order"
    );
    assert_eq!(
        whole.body_sha256, prefix.body_sha256,
        "the prefix's digest is the whole body's"
    );
    assert!(reader.basic_get(&queue).await.unwrap().is_none());
    reader.close().await.unwrap();
    delete_queue(&queue).await;
}

/// Invariant: the broker's refusals come back as errors carrying its reply
/// code and text, never as a hang: a wrong password (403), a queue that
/// does not exist (404, the channel closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refusals_are_errors_with_the_reply_text() {
    let _shared = gate::shared().await;
    init();
    let wrong = AMQP_URL.replace("guest:guest", "guest:not-the-password");
    match Connection::connect(&wrong).await {
        Err(RawError::ConnectionClosed { code: 403, text }) => {
            assert!(text.contains("ACCESS_REFUSED"), "{text}");
            assert!(!text.contains("not-the-password"), "{text}");
        }
        Err(other) => panic!("expected a 403 close, got {other}"),
        Ok(_) => panic!("a wrong password was accepted"),
    }
    let mut reader = Connection::connect(AMQP_URL).await.unwrap();
    let missing = format!("idem_t_raw_missing_{}", uuid::Uuid::new_v4().simple());
    match reader.basic_get(&missing).await {
        Err(RawError::ChannelClosed { code: 404, text }) => {
            assert!(text.contains("NOT_FOUND"), "{text}")
        }
        other => panic!("expected a 404 channel close, got {other:?}"),
    }
}
