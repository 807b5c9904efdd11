//! The `idem` command line: subcommands and their (thin) handlers, and the
//! top-level help that lists them in two groups: operator commands apart from
//! tools.

use clap::{Args, Parser, Subcommand};
use idem_daemon::RunArgs;
use idem_daemon::config::DatabaseArgs;
use idem_daemon::telemetry::LogFormat;
use idem_workload::{bench, demo};
use tokio_util::sync::CancellationToken;

use crate::publish::PublishArgs;
use crate::{audit, console, inbox, outbox, publish, quarantine, reconcile, status};

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
    /// Inbox keys: was a message seen, how often, and what became of it;
    /// key conflicts.
    Inbox(inbox::InboxCommand),
    /// The operator console in the browser: what is stuck, why, and audited
    /// retry, resolve, replay and bulk retry.
    Console(Box<console::ConsoleCommand>),
    /// The audit table: every operator change, who made it and why.
    Audit(audit::AuditCommand),
    /// Print a shell completion script (e.g. `idem completions bash >
    /// /etc/bash_completion.d/idem`).
    Completions(CompletionsArgs),
}

/// `idem completions`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
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
        Command::Run(args) if args.check => {
            let checks = idem_daemon::check::check(&args.validate()?).await;
            checks.iter().for_each(|c| println!("{c}"));
            let failed = checks.iter().filter(|c| c.outcome.is_err()).count();
            anyhow::ensure!(failed == 0, "{failed} check(s) failed; nothing was changed");
            Ok(())
        }
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
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "idem", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// The top-level help's groups, in order: the commands an operator runs a
/// deployment with (`console` when built in), then the tools around it.
/// A subcommand in neither is listed under "Other commands" (a test
/// keeps that group empty).
const GROUPS: [(&str, &[&str]); 2] = [
    (
        "Operator commands",
        &[
            "run",
            "migrate",
            "status",
            "outbox",
            "quarantine",
            "inbox",
            "reconcile",
            "audit",
            "console",
        ],
    ),
    (
        "Tools",
        &[
            "demo",
            "bench",
            "provider-sim",
            "publish",
            "completions",
            "help",
        ],
    ),
];

/// `cmd` (the top-level command) with its subcommands listed in [`GROUPS`]
/// in its help. clap 4 has one heading for all subcommands, so the list is
/// written into the help template from the subcommands themselves (names
/// and first lines of help); parsing and completions are unchanged.
pub fn grouped_help(mut cmd: clap::Command) -> clap::Command {
    cmd.build();
    let visible: Vec<(String, String)> = cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| {
            let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
            (c.get_name().to_owned(), about)
        })
        .collect();
    let width = visible.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let line = |(name, about): &(String, String)| format!("  {name:<width$}  {about}\n");
    let mut listed = String::new();
    for (heading, names) in GROUPS {
        listed.push_str(&format!("{heading}:\n"));
        for name in names {
            visible
                .iter()
                .filter(|(n, _)| n == name)
                .for_each(|c| listed.push_str(&line(c)));
        }
        listed.push('\n');
    }
    let grouped: Vec<&str> = GROUPS
        .iter()
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    let other: String = visible
        .iter()
        .filter(|(n, _)| !grouped.contains(&n.as_str()))
        .map(line)
        .collect();
    if !other.is_empty() {
        listed.push_str(&format!("Other commands:\n{other}\n"));
    }
    cmd.help_template(format!(
        "{{before-help}}{{about-with-newline}}\n{{usage-heading}} {{usage}}\n\n{listed}\
         Options:\n{{options}}{{after-help}}"
    ))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The subcommand names listed under each heading of `idem --help`.
    fn sections() -> Vec<(String, Vec<String>)> {
        let help = grouped_help(Cli::command()).render_help().to_string();
        let mut sections: Vec<(String, Vec<String>)> = Vec::new();
        for line in help.lines() {
            if let Some(heading) = line.strip_suffix(':').filter(|l| !l.starts_with(' ')) {
                sections.push((heading.to_owned(), Vec::new()));
            } else if let (Some(name), Some((_, names))) =
                (line.strip_prefix("  "), sections.last_mut())
            {
                names.extend(name.split_whitespace().next().map(str::to_owned));
            }
        }
        sections
    }

    #[test]
    fn help_lists_operator_commands_apart_from_tools() {
        let sections = sections();
        let names = |heading: &str| {
            sections
                .iter()
                .find(|(h, _)| h == heading)
                .map(|(_, n)| n.clone())
                .unwrap_or_default()
        };
        let operator = names("Operator commands");
        for name in [
            "run",
            "migrate",
            "status",
            "outbox",
            "quarantine",
            "inbox",
            "reconcile",
            "audit",
        ] {
            assert!(operator.iter().any(|n| n == name), "{name} in {sections:?}");
        }
        let tools = names("Tools");
        for name in [
            "demo",
            "bench",
            "provider-sim",
            "publish",
            "completions",
            "help",
        ] {
            assert!(tools.iter().any(|n| n == name), "{name} in {sections:?}");
        }
        assert!(names("Other commands").is_empty(), "{sections:?}");
        assert!(
            names("Options").iter().any(|n| n == "--log-format"),
            "{sections:?}"
        );
        let listed = operator.len() + tools.len();
        let visible = Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .count();
        assert_eq!(listed, visible + 1, "every subcommand once, and help");
    }

    #[test]
    fn bash_completions_name_the_subcommands_and_their_flags() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "idem",
            &mut out,
        );
        let script = String::from_utf8_lossy(&out);
        for word in [
            "outbox",
            "quarantine",
            "audit",
            "--after",
            "--limit",
            "--check",
        ] {
            assert!(
                script.contains(word),
                "{word} missing from the bash completions"
            );
        }
    }
}
