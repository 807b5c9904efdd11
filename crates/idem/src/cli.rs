//! The `idem` command line: subcommands and their (thin) handlers.

use clap::{Args, Parser, Subcommand};
use idem_daemon::RunArgs;
use idem_daemon::config::DatabaseArgs;
use idem_daemon::telemetry::LogFormat;
use idem_workload::{bench, demo};
use tokio_util::sync::CancellationToken;

use crate::publish::PublishArgs;
use crate::{console, inbox, outbox, publish, quarantine, reconcile, status};

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
    /// Outbox rows: list, show (with attempt history), retry dead (one, or by
    /// filter), resolve by hand.
    Outbox(outbox::OutboxCommand),
    /// Quarantined messages: list, show, replay through the normal path.
    Quarantine(quarantine::QuarantineCommand),
    /// Inbox keys: was a message seen, how often, and what became of it.
    Inbox(inbox::InboxCommand),
    /// The operator console in the browser: what is stuck, why, and audited
    /// retry, resolve, replay and bulk retry.
    Console(Box<console::ConsoleCommand>),
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
        Command::Run(args) => idem_daemon::run(args.validate()?, shutdown).await,
        Command::Migrate(db) => {
            let pool = idem_store::connect(&db.database_url, 2).await?;
            idem_store::migrate(&pool).await?;
            println!(
                "schema is up to date ({})",
                idem_store::redact_url(&db.database_url)
            );
            Ok(())
        }
        Command::Publish(args) => publish::run(args).await,
        Command::Status(args) => status::print(&args.database, args.json).await,
        Command::ProviderSim(args) => {
            idem_simulator::run(args, async move { shutdown.cancelled().await }).await
        }
        Command::Demo(args) => demo::run(args, shutdown).await,
        Command::Bench(args) => bench::run(*args, shutdown).await,
        Command::Reconcile(cmd) => reconcile::execute(cmd).await,
        Command::Outbox(cmd) => outbox::run(cmd).await,
        Command::Quarantine(cmd) => quarantine::run(cmd).await,
        Command::Inbox(cmd) => inbox::run(cmd).await,
        Command::Console(cmd) => console::run(*cmd, shutdown).await,
    }
}
