//! The console's settings, shared by `idem run --console` (served under
//! `/console` on IDEM_HTTP_ADDR) and `idem console` (its own listener):
//! the token, read-only mode, and the replicas whose `/metrics` its
//! overview reads. Validated into [`idem_console::Settings`], which refuses
//! a console reachable off loopback without a token.

use std::net::SocketAddr;

use clap::{ArgAction, Args};

use crate::secrets::Secret;

/// The console's settings.
#[derive(Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// Token for the console: required when its listener is not loopback
    /// (pages then need `Authorization: Bearer <token>` or the sign-in
    /// form's cookie); at least 16 characters.
    #[arg(long, env = "IDEM_CONSOLE_TOKEN", hide_env_values = true)]
    pub console_token: Option<Secret>,
    /// Serve pages only: every change (retry, resolve, replay, bulk retry)
    /// is refused.
    #[arg(long, env = "IDEM_CONSOLE_READ_ONLY", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub console_read_only: bool,
    /// Replicas whose provider breaker and broker session the overview
    /// shows: their `/metrics` URLs, comma-separated (a console inside
    /// `idem run --console` adds its own).
    #[arg(long, env = "IDEM_CONSOLE_REPLICAS", value_delimiter = ',')]
    pub console_replicas: Vec<String>,
}

impl ConsoleArgs {
    /// The console's settings on `listen` (named `variable` in errors),
    /// replaying to `queue` on the broker at `amqp_url`.
    pub fn validate(
        &self,
        variable: &'static str,
        listen: SocketAddr,
        amqp_url: &str,
        queue: &str,
    ) -> anyhow::Result<idem_console::Settings> {
        let replay = idem_console::Replay {
            amqp_url: amqp_url.to_owned(),
            queue: queue.to_owned(),
        };
        Ok(idem_console::Settings::new(
            variable,
            listen,
            self.console_token.as_ref().map(|t| t.expose().to_owned()),
            self.console_read_only,
            &self.console_replicas,
            Some(replay),
        )?)
    }
}
