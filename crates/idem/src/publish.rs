//! `idem publish`: sample charge messages, with publisher confirms; or one
//! real request (`--key`, `--body`) through `idem-client`, the producers'
//! crate, optionally waiting for its result (`--wait`).

use anyhow::Context;
use clap::Args;
use idem_daemon::config::{AmqpArgs, QueueArgs};

/// `idem publish`.
#[derive(Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// The queue's type and limits, read as `idem run` reads them, so that
    /// a queue this command declares first is the one the replicas expect.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Messages to publish in all.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Share of the messages that re-publish an earlier message (0..1).
    #[arg(long, default_value_t = 0.2)]
    pub duplicate_ratio: f64,
    /// Messages per second (0: as fast as confirms allow).
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Message id prefix (default: a fresh one per run).
    #[arg(long)]
    pub prefix: Option<String>,
    /// `app_id` (scope) of the messages.
    #[arg(long)]
    pub scope: Option<String>,
    /// Publish one request with this key (its `message_id`) and `--body`,
    /// instead of sample messages; validated first by idem's own rules.
    #[arg(long, requires = "body", conflicts_with_all = ["count", "duplicate_ratio", "rate", "prefix"])]
    pub key: Option<String>,
    /// The JSON body of `--key`'s request, e.g.
    /// '{"account_id":"acc_1","amount":1250,"currency":"EUR"}'.
    #[arg(long, requires = "key")]
    pub body: Option<String>,
    /// With `--key`: wait this many seconds for the request's result (sent
    /// back over Direct Reply-To) and print it.
    #[arg(long, requires = "key")]
    pub wait: Option<u64>,
}

/// Publish the sample messages and report the rate, or the one request.
pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    if let (Some(key), Some(body)) = (&args.key, &args.body) {
        return one(&args, key, body).await;
    }
    anyhow::ensure!(
        (0.0..1.0).contains(&args.duplicate_ratio),
        "--duplicate-ratio must be in [0, 1)"
    );
    let duplicates = (args.count as f64 * args.duplicate_ratio).round() as usize;
    let spec = idem_workload::Spec {
        prefix: args
            .prefix
            .unwrap_or_else(|| format!("pub-{}", uuid::Uuid::new_v4().simple())),
        scope: args.scope,
        distinct: args.count - duplicates,
        duplicates,
        conflicts: 0,
        malformed: 0,
        accounts: idem_workload::DEFAULT_ACCOUNTS,
        seed: 7,
    };
    let messages = idem_workload::generate(&spec);
    let connection = idem_inbox::connect_amqp(&args.amqp.broker.amqp_url).await?;
    let channel = connection.create_channel().await?;
    idem_inbox::declare(
        &connection,
        &args.queue.validate()?.topology(&args.amqp.queue),
    )
    .await
    .context("declaring the queue")?;
    let started = std::time::Instant::now();
    idem_workload::publish(&channel, &args.amqp.queue, &messages, args.rate, |_| {}).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {} messages ({} distinct, {} duplicates) to {} in {secs:.2} s ({:.0} msg/s), all confirmed",
        messages.len(),
        spec.distinct,
        spec.duplicates,
        args.amqp.queue,
        messages.len() as f64 / secs.max(1e-9)
    );
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// `--key`: one request through `idem-client`.
async fn one(args: &PublishArgs, key: &str, body: &str) -> anyhow::Result<()> {
    let mut request = idem_client::Request::new(key, body.as_bytes());
    if let Some(scope) = &args.scope {
        request = request.in_scope(scope);
    }
    // Refuse before touching the broker what idem would quarantine.
    request
        .check()
        .context("idem would quarantine this request")?;
    let connection = idem_inbox::connect_amqp(&args.amqp.broker.amqp_url).await?;
    idem_inbox::declare(
        &connection,
        &args.queue.validate()?.topology(&args.amqp.queue),
    )
    .await
    .context("declaring the queue")?;
    let _ = connection.close(200, "declared".into()).await;
    let client = idem_client::Client::connect(&args.amqp.broker.amqp_url, &args.amqp.queue).await?;
    match args.wait {
        None => {
            let sent = client.publish(&request).await?;
            println!(
                "published {key} to {} (reference {}), confirmed",
                args.amqp.queue, sent.reference_id
            );
        }
        Some(secs) => {
            let outcome = client
                .call(&request, std::time::Duration::from_secs(secs))
                .await?;
            println!(
                "{key}: {:?} ({:?}), reference {}, charge {}, error {}",
                outcome.state,
                outcome.kind,
                outcome.reference_id,
                outcome.charge_id.as_deref().unwrap_or("-"),
                outcome.error.as_deref().unwrap_or("-"),
            );
        }
    }
    Ok(())
}
