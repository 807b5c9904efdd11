//! Command-line configuration of `idem provider-sim`, and [`run`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::builder::BoolishValueParser;
use tokio::net::TcpListener;

use crate::{ApiKey, Faults, Simulator};

/// Flags of `idem provider-sim`; each has an `IDEM_SIM_*` environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, env = "IDEM_SIM_ADDR", default_value = "127.0.0.1:8099")]
    pub addr: SocketAddr,
    /// Probability that a request is never processed and its connection reset.
    #[arg(long, env = "IDEM_SIM_DROP_REQUEST", default_value_t = 0.0)]
    pub drop_request: f64,
    /// Probability that a request is processed but its answer is lost (reset).
    #[arg(long, env = "IDEM_SIM_DROP_RESPONSE", default_value_t = 0.0)]
    pub drop_response: f64,
    /// Probability of a 500/503 answer without processing.
    #[arg(long = "error-5xx", env = "IDEM_SIM_ERROR_5XX", default_value_t = 0.0)]
    pub error_5xx: f64,
    /// Probability of a 429 answer without processing.
    #[arg(long, env = "IDEM_SIM_RATE_LIMIT", default_value_t = 0.0)]
    pub rate_limit: f64,
    /// Latency added to every /v1 answer, in milliseconds.
    #[arg(long, env = "IDEM_SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Uniform extra latency 0..=N milliseconds.
    #[arg(long, env = "IDEM_SIM_LATENCY_JITTER_MS", default_value_t = 0)]
    pub latency_jitter_ms: u64,
    /// Ignore the Idempotency-Key header: every POST creates a charge.
    #[arg(long, env = "IDEM_SIM_NO_IDEMPOTENCY_KEYS", value_parser = BoolishValueParser::new())]
    pub no_idempotency_keys: bool,
    /// Do not offer lookup by reference (answers 404 not_supported).
    #[arg(long, env = "IDEM_SIM_NO_LOOKUP", value_parser = BoolishValueParser::new())]
    pub no_lookup: bool,
    /// Do not offer refunds (answers 404 not_supported).
    #[arg(long, env = "IDEM_SIM_NO_REFUNDS", value_parser = BoolishValueParser::new())]
    pub no_refunds: bool,
    /// Accounts starting with this prefix are declined (402); empty: none.
    #[arg(long, env = "IDEM_SIM_DECLINE_PREFIX", default_value = "acc_decline")]
    pub decline_prefix: String,
    /// Require `Authorization: Bearer <key>` on /v1 requests (others get 401,
    /// unprocessed); /_sim and /healthz stay open. Unset: no check.
    #[arg(long, env = "IDEM_SIM_API_KEY", hide_env_values = true)]
    pub api_key: Option<ApiKey>,
    /// Serve https with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, env = "IDEM_SIM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "IDEM_SIM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl SimArgs {
    /// The faults these flags describe (not yet validated).
    pub fn faults(&self) -> Faults {
        Faults {
            drop_request: self.drop_request,
            drop_response: self.drop_response,
            error_5xx: self.error_5xx,
            rate_limit: self.rate_limit,
            latency_ms: self.latency_ms,
            latency_jitter_ms: self.latency_jitter_ms,
            idempotency_keys: !self.no_idempotency_keys,
            lookup: !self.no_lookup,
            refunds: !self.no_refunds,
            // Windows a test opens and closes at run time (PUT /_sim/faults).
            refuse_status: 0,
            fail_lookups: false,
            decline_prefix: self.decline_prefix.clone(),
        }
    }
}

/// Runs the simulator from `args` until `shutdown` resolves: validates the
/// faults, binds, logs the address, serves.
pub async fn run(
    args: SimArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let faults = args.faults();
    faults
        .validate()
        .map_err(|reason| anyhow::anyhow!("invalid faults: {reason}"))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    let api_key = args.api_key.is_some();
    tracing::info!(%addr, %url, api_key, ?faults, "provider simulator listening");
    let sim = Simulator::new(faults).with_api_key(args.api_key);
    match tls {
        Some(config) => sim.serve_tls(listener, config, shutdown).await,
        None => sim.serve(listener, shutdown).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn defaults_are_a_perfect_provider() {
        let cli = Cli::try_parse_from(["sim"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.sim.faults(), Faults::default());
        assert_eq!(cli.sim.addr.to_string(), "127.0.0.1:8099");
    }

    #[test]
    fn flags_map_to_faults() {
        let cli = Cli::try_parse_from([
            "sim",
            "--drop-response",
            "0.1",
            "--error-5xx",
            "0.2",
            "--latency-ms",
            "7",
            "--no-idempotency-keys",
            "--no-lookup",
            "--decline-prefix",
            "bad_",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let faults = cli.sim.faults();
        assert_eq!(faults.drop_response, 0.1);
        assert_eq!(faults.error_5xx, 0.2);
        assert_eq!(faults.latency_ms, 7);
        assert!(!faults.idempotency_keys && !faults.lookup && faults.refunds);
        assert_eq!(faults.decline_prefix, "bad_");
    }
}
