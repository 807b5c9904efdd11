//! Scratch worlds for the demo and the benchmark: a database dropped and
//! created afresh with the schema applied, and a queue deleted and declared
//! afresh. The statement that drops a database is the store's
//! (`idem_store::scratch`), shared with the tests.

use lapin::options::QueueDeleteOptions;
use sqlx::PgPool;

/// Drop the database of `url` if it exists, create it, apply the schema.
pub async fn fresh_database(url: &str) -> anyhow::Result<PgPool> {
    idem_store::scratch::drop_database(url).await?;
    let pool = idem_store::connect(url, 4).await?;
    idem_store::migrate(&pool).await?;
    Ok(pool)
}

/// Delete `queue` and its dead-letter queue if they exist, declare them anew.
pub async fn fresh_queue(amqp_url: &str, queue: &str) -> anyhow::Result<()> {
    let connection = idem_inbox::connect_amqp(amqp_url).await?;
    let channel = connection.create_channel().await?;
    let topology = idem_inbox::Topology::for_queue(queue);
    delete_queues(&channel, &topology).await?;
    idem_inbox::declare(&connection, &topology).await?;
    let _ = connection.close(200, "ready".into()).await;
    Ok(())
}

/// Delete `queue` and its dead-letter queue if they exist.
pub async fn delete_queue(amqp_url: &str, queue: &str) -> anyhow::Result<()> {
    let connection = idem_inbox::connect_amqp(amqp_url).await?;
    let channel = connection.create_channel().await?;
    delete_queues(&channel, &idem_inbox::Topology::for_queue(queue)).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

async fn delete_queues(
    channel: &lapin::Channel,
    topology: &idem_inbox::Topology,
) -> anyhow::Result<()> {
    for q in [&topology.queue, &topology.dead_letter_queue] {
        channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    Ok(())
}
