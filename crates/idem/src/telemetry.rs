//! Process-wide set-up: logging and the TLS crypto provider.

use tracing_subscriber::EnvFilter;

/// Log format of the process.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Install the tracing subscriber (stderr). `RUST_LOG` overrides the default
/// filter. Safe to call more than once (later calls do nothing).
pub fn init_logging(format: LogFormat) {
    init_logging_with(format, "info,sqlx=warn,lapin=warn,hyper=warn,reqwest=warn");
}

/// [`init_logging`] with another default filter (`idem bench` runs daemons in
/// process and wants only their warnings).
pub fn init_logging_with(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// One crypto backend for every TLS user (sqlx, lapin, reqwest all use rustls
/// with ring here); without this, the first TLS handshake panics. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
