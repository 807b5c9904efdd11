//! The `idem` command line: subcommands and their (thin) handlers.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{AmqpArgs, DatabaseArgs, RunArgs};
use crate::telemetry::LogFormat;
use crate::{admin, bench, daemon, demo, reconcile, status, workload};

/// idem: effectively-once charges from at-least-once messages.
#[derive(Parser, Debug)]
#[command(name = "idem", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// Log format (stderr): `auto` is text on a terminal, JSON lines otherwise.
    /// Filter with RUST_LOG.
    #[arg(long, env = "IDEM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: inbox consumer and outbox dispatcher (or one, with --role).
    Run(Box<RunArgs>),
    /// Apply the database schema and exit.
    Migrate(DatabaseArgs),
    /// Publish sample charge messages (with publisher confirms).
    Publish(PublishArgs),
    /// Show counts per state.
    Status(StatusArgs),
    /// Run the provider simulator (the charge API, with fault injection).
    ProviderSim(idem_simulator::SimArgs),
    /// End-to-end demo: simulator with faults, three replicas, 10,000 messages, a report.
    Demo(demo::DemoArgs),
    /// Benchmark: end-to-end msg/s, latency and CPU per message of the baseline
    /// and tuned configurations, the SQL ceiling, the claim against a backlog.
    Bench(Box<bench::BenchArgs>),
    /// Reconcile once: hold the provider's charges in a window against ours,
    /// refund extra charges, settle or re-queue uncertain rows, report.
    Reconcile(reconcile::ReconcileCommand),
    /// Outbox rows: list, show (with attempt history), retry dead, resolve by hand.
    Outbox(admin::OutboxCommand),
    /// Quarantined messages: list, show, replay through the normal path.
    Quarantine(admin::QuarantineCommand),
    /// Inbox keys: was a message seen, how often, and what became of it.
    Inbox(admin::InboxCommand),
}

/// `idem publish`.
#[derive(Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
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
}

/// `idem status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Run the parsed command line until done or `shutdown`.
pub async fn execute(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => daemon::run(args.validate()?, shutdown).await,
        Command::Migrate(db) => {
            let pool = idem_store::connect(&db.database_url, 2).await?;
            idem_store::migrate(&pool).await?;
            println!(
                "schema is up to date ({})",
                idem_store::redact_url(&db.database_url)
            );
            Ok(())
        }
        Command::Publish(args) => publish(args).await,
        Command::Status(args) => status::print(&args.database, args.json).await,
        Command::ProviderSim(args) => {
            idem_simulator::run(args, async move { shutdown.cancelled().await }).await
        }
        Command::Demo(args) => demo::run(args, shutdown).await,
        Command::Bench(args) => bench::run(*args, shutdown).await,
        Command::Reconcile(cmd) => reconcile::execute(cmd).await,
        Command::Outbox(cmd) => admin::outbox(cmd).await,
        Command::Quarantine(cmd) => admin::quarantine(cmd).await,
        Command::Inbox(cmd) => admin::inbox(cmd).await,
    }
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..1.0).contains(&args.duplicate_ratio),
        "--duplicate-ratio must be in [0, 1)"
    );
    let duplicates = (args.count as f64 * args.duplicate_ratio).round() as usize;
    let spec = workload::Spec {
        prefix: args
            .prefix
            .unwrap_or_else(|| format!("pub-{}", uuid::Uuid::new_v4().simple())),
        scope: args.scope,
        distinct: args.count - duplicates,
        duplicates,
        conflicts: 0,
        malformed: 0,
        seed: 7,
    };
    let messages = workload::generate(&spec);
    let connection = idem_inbox::connect_amqp(&args.amqp.broker.amqp_url).await?;
    let channel = connection.create_channel().await?;
    idem_inbox::declare(&channel, &idem_inbox::Topology::for_queue(&args.amqp.queue))
        .await
        .context("declaring the queue")?;
    let started = std::time::Instant::now();
    workload::publish(&channel, &args.amqp.queue, &messages, args.rate, |_| {}).await?;
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
