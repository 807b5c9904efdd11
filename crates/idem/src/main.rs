//! # idem
//!
//! The binary: parse the command line, set up logging and signals, run. The
//! binary decides where and until when; the libraries decide what (a replica
//! is `idem_daemon::run`, the tools are `idem_workload`'s).
//!
//! ## Layout
//! - `cli`: the subcommands and where each goes.
//! - `publish`: `idem publish`.
//! - `reconcile`: `idem reconcile`, the one-shot run.
//! - `outbox`, `quarantine`, `inbox`, `audit`: the operators' commands, one
//!   module per family (`idem outbox|quarantine|inbox|audit ...`).
//! - `console`: `idem console`, the operator console on its own listener.
//! - `operator`: what they all take; reading without migrating, or changing.
//! - `page`: what their lists take (`--after`, `--limit`) and print after a page.
//! - `render`: their tables, key/value fields and JSON.
//! - `status`: `idem status`.
//! - `stack`: re-execute with `RUST_MIN_STACK` set, so no header a frame can
//!   hold overflows lapin's parser (`idem_inbox::stack`).
//! - `reference` (tests only): docs/configuration.md's reference, generated
//!   from the CLI and checked against the page.

mod audit;
mod cli;
mod console;
mod inbox;
mod operator;
mod outbox;
mod page;
mod publish;
mod quarantine;
mod reconcile;
#[cfg(test)]
mod reference;
mod render;
mod stack;
mod status;

use cli::{Cli, Command, execute};
use idem_daemon::{secrets, telemetry};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    stack::ensure();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

async fn run() -> std::process::ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let telemetry = if matches!(cli.command, Command::Bench(_)) {
        telemetry::init_logging_with(cli.log_format, "warn,sqlx=error,lapin=error")
    } else {
        telemetry::init_logging(cli.log_format)
    };
    telemetry::install_crypto_provider();
    let shutdown = CancellationToken::new();
    tokio::spawn(forward_signals(shutdown.clone()));
    let code = match execute(cli, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    // Export the spans still buffered (blocks up to 5 s; nothing without OTLP).
    tokio::task::block_in_place(|| telemetry.shutdown());
    code
}

/// Like `Cli::parse()`, with secrets' `*_FILE` variables resolved
/// (`secrets::parse`) and the subcommands grouped in the help.
fn parse() -> anyhow::Result<Cli> {
    use clap::FromArgMatches;
    let cmd = secrets::command_from::<Cli>(|var| std::env::var_os(var))?;
    let mut cmd = cli::grouped_help(cmd);
    let matches = cmd.get_matches_mut();
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit()))
}

/// SIGTERM or SIGINT: graceful shutdown. A second signal exits at once.
async fn forward_signals(shutdown: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("error: cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown requested; finishing work in hand (signal again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    std::process::exit(130);
}
