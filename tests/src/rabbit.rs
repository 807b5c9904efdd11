//! RabbitMQ: the shared broker on 5672, where each test has its own queues,
//! and [`RabbitNode`], a private node a test may stop, restart and crash,
//! and [`RabbitCluster`], several of them joined into one cluster.

pub mod raw_publish;

use anyhow::{Context, bail};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Channel, Connection};

pub use idem_servers::rabbit::{RabbitCluster, RabbitNode};

/// The shared RabbitMQ broker: `IDEM_TEST_AMQP_URL` when the tests were
/// built, else the local service (`guest@127.0.0.1:5672`, default vhost).
/// Read at build time, like [`crate::PG_ADMIN_URL`].
pub const AMQP_URL: &str = match option_env!("IDEM_TEST_AMQP_URL") {
    Some(url) => url,
    None => "amqp://guest:guest@127.0.0.1:5672/%2f",
};

/// The shared broker's address (`host:port` of [`AMQP_URL`], resolved), for
/// the tests that put a proxy in front of it.
pub fn addr() -> std::net::SocketAddr {
    crate::resolve(AMQP_URL, 5672)
}

/// Messages ready in `queue` (not counting unacked ones), on `channel`.
pub async fn depth(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
    Ok(declared.message_count())
}

/// Consumers on `queue` (0 while it does not exist yet), asked on a channel
/// of its own: a passive declare of a missing queue closes its channel.
pub async fn consumers(connection: &Connection, queue: &str) -> u32 {
    let Ok(channel) = connection.create_channel().await else {
        return 0;
    };
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), options, Default::default())
        .await;
    let _ = channel.close(200, "done".into()).await;
    declared.map_or(0, |q| q.consumer_count())
}

/// [`depth`] on a fresh connection to `url`.
pub async fn queue_depth(url: &str, queue: &str) -> anyhow::Result<u32> {
    let connection = idem_inbox::connect_amqp(url).await?;
    let channel = connection.create_channel().await?;
    let declared = depth(&channel, queue)
        .await
        .with_context(|| format!("passive declare of {queue}"));
    let _ = connection.close(200, "done".into()).await;
    match declared {
        Ok(n) => Ok(n),
        Err(e) => bail!("{e:#}"),
    }
}

/// A connection to `url` and a channel on it with publisher confirms on.
pub async fn confirming_channel(url: &str) -> (Connection, Channel) {
    let connection = idem_inbox::connect_amqp(url).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

/// Publish `body` with `properties` to `queue` (default exchange) on a
/// confirming `channel`; panics unless the broker acks it.
pub async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    properties: BasicProperties,
    body: &[u8],
) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the broker acked the publish to {queue}");
}
