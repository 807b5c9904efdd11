//! `idem console`: the operator console on its own listener (the same pages
//! `idem run --console` serves under `/console`), until Ctrl-C or SIGTERM.
//! It reads and changes the database a deployment's replicas use; it runs
//! no pipeline role. The schema must be this release's (`idem migrate`).

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use idem_daemon::config::{AmqpArgs, ConsoleArgs, DatabaseArgs};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Connections of the console's pool: pages and one bulk retry at a time.
const POOL: u32 = 4;

/// `idem console`.
#[derive(Args, Debug)]
pub struct ConsoleCommand {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The broker replays are published to, and the work queue.
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Where the console listens. Off loopback it needs IDEM_CONSOLE_TOKEN.
    #[arg(long, env = "IDEM_CONSOLE_ADDR", default_value = "127.0.0.1:9465")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub console: ConsoleArgs,
}

/// Serve the console until `shutdown`.
pub async fn run(cmd: ConsoleCommand, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = cmd.console.validate(
        "IDEM_CONSOLE_ADDR",
        cmd.listen,
        cmd.amqp.broker.amqp_url.expose(),
        &cmd.amqp.queue,
    )?;
    let pool = idem_store::connect_existing(&cmd.database.database_url, POOL).await?;
    let listener = TcpListener::bind(cmd.listen).await.with_context(|| {
        format!(
            "cannot listen on IDEM_CONSOLE_ADDR {}: is another process using it? pick another address",
            cmd.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let console = idem_console::Console::new(pool, settings)?;
    tracing::info!(%addr, "operator console listening");
    eprintln!("idem console: http://{addr}/console/");
    idem_console::serve(listener, console, shutdown).await
}
