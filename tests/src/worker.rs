//! Workers in process: `idem run`'s arguments for a [`TestEnv`] with fast
//! test timings, and the daemon started on the test's runtime.

use clap::Parser;
use idem_daemon::RunArgs;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::TestEnv;

#[derive(Parser)]
#[command(args_override_self = true)]
struct RunCli {
    #[command(flatten)]
    run: RunArgs,
}

/// A worker running in-process (`idem_daemon::run`).
pub struct Worker {
    /// Cancel to shut down gracefully.
    pub shutdown: CancellationToken,
    /// The daemon's result.
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    /// Graceful stop; returns the daemon's result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await?
    }
}

impl TestEnv {
    /// `idem run` arguments for this env with fast test timings, plus `extra`
    /// flags (later flags win).
    pub fn run_args(&self, extra: &[&str]) -> RunArgs {
        let mut argv: Vec<String> = vec!["idem".into()];
        argv.extend(
            self.run_flags()
                .into_iter()
                .chain(extra.iter().map(|s| s.to_string())),
        );
        RunCli::try_parse_from(argv).unwrap().run
    }

    /// The flags of [`TestEnv::run_args`], for a child process.
    pub fn run_flags(&self) -> Vec<String> {
        [
            "--database-url",
            &self.database_url,
            "--amqp-url",
            &self.amqp_url,
            "--queue",
            &self.queue,
            "--charge-api-url",
            &self.sim_url,
            "--http-addr",
            "127.0.0.1:0",
            "--lease-secs",
            "3",
            "--charge-timeout-ms",
            "400",
            "--retry-base-ms",
            "20",
            "--retry-max-ms",
            "300",
            "--idle-poll-ms",
            "10",
            "--db-max-connections",
            "6",
            "--shutdown-grace-secs",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Start an in-process worker with `extra` flags. It holds the env's
    /// place in the test process for as long as it runs: its metrics are the
    /// process's.
    pub fn start_worker(&self, extra: &[&str]) -> Worker {
        let config = self.run_args(extra).validate().unwrap();
        let shutdown = CancellationToken::new();
        let ticket = self.ticket.clone();
        let run = idem_daemon::run(config, shutdown.clone());
        let handle = tokio::spawn(async move {
            let _ticket = ticket;
            run.await
        });
        Worker { shutdown, handle }
    }
}

/// An in-process daemon started with `idem_daemon::run_with`, and the
/// address its health listener bound (the env asks for port 0).
pub struct Daemon {
    /// The health and metrics listener.
    pub http: std::net::SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    /// Start the daemon of `env` with `extra` flags; returns once it listens.
    pub async fn start(env: &TestEnv, extra: &[&str]) -> Self {
        let config = env.run_args(extra).validate().unwrap();
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(idem_daemon::run_with(
            config,
            shutdown.clone(),
            move |addr| {
                let _ = tx.send(addr);
            },
        ));
        let http = tokio::time::timeout(std::time::Duration::from_secs(30), rx)
            .await
            .expect("the daemon listens within 30 s")
            .expect("the daemon started");
        Self {
            http,
            shutdown,
            handle,
        }
    }

    /// `http://<listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Graceful stop; panics if the daemon failed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}
