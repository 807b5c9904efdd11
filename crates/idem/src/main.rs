//! `idem`: parse the command line, set up logging and signals, run.

use clap::Parser;
use idem::cli::{Cli, Command, execute};
use idem::telemetry;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Bench(_)) {
        telemetry::init_logging_with(cli.log_format, "warn,sqlx=error,lapin=error");
    } else {
        telemetry::init_logging(cli.log_format);
    }
    telemetry::install_crypto_provider();
    let shutdown = CancellationToken::new();
    tokio::spawn(forward_signals(shutdown.clone()));
    match execute(cli, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
