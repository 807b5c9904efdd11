//! # idem-tests
//!
//! Harness of the end-to-end suites (`tests/it/`, one test binary): each test
//! gets its own PostgreSQL database, its own RabbitMQ queue and its own
//! provider simulator on a free port, and drives the real idem code
//! (in-process, or the built binary). Charges are always counted at the
//! simulator.
//!
//! ## Layout
//! - [`env`]: [`TestEnv`], the isolated world of one test, and what a test
//!   does with it (publish, wait, count).
//! - [`worker`]: in-process workers of a [`TestEnv`] ([`Worker`]).
//! - [`gate`]: what shares the one test process and what must have it alone.
//! - [`sim`]: the provider simulator in process, on a free port.
//! - [`binary`]: the built `idem` binary and its child processes.
//! - [`hostile`]: the frames hostile producers send, and `idem run`
//!   replicas watched for death, reconnect loops and peak RSS.
//! - [`private`]: a test's own cluster and node, the unprivileged role
//!   replicas connect as there, and `idem run` replicas on them.
//! - [`pg`]: scratch databases (and their one teardown), private clusters
//!   ([`pg::PgCluster`], from `idem_servers`).
//! - [`rabbit`]: queues on the shared broker, private nodes
//!   ([`rabbit::RabbitNode`]) and clusters of them ([`rabbit::RabbitCluster`]),
//!   from `idem_servers`.
//! - [`schema`]: the producer contract's JSON Schemas (`docs/schema/`),
//!   compiled once, for the suites that check bodies against them.
//! - [`ca`]: a private CA and certificates, made with `openssl`
//!   (`idem_servers::ca`).
//! - [`proxy`]: a TCP proxy that cuts connections ([`proxy::TcpProxy`]).
//! - [`chaos`]: the chaos suite.

#![allow(clippy::unwrap_used)]

pub mod binary;
pub mod chaos;
pub mod env;
pub mod gate;
pub mod hostile;
pub mod pg;
pub mod private;
pub mod proxy;
pub mod rabbit;
pub mod schema;
pub mod sim;
pub mod worker;

use std::future::Future;
use std::time::{Duration, Instant};

pub use binary::idem_binary;
pub use env::{Servers, TestEnv, spec};
pub use idem_servers::ca;
pub use pg::PG_ADMIN_URL;
pub use rabbit::AMQP_URL;
pub use worker::Worker;

/// The socket address of `url`'s host and port (`default_port` when it has
/// none); panics with the URL's variable named when it does not resolve.
pub fn resolve(url: &str, default_port: u16) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let parsed = url::Url::parse(url).expect("IDEM_TEST_DATABASE_URL / IDEM_TEST_AMQP_URL parse");
    let host = parsed.host_str().expect("a test server URL names its host");
    let port = parsed.port().unwrap_or(default_port);
    (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("the test server {host}:{port} does not resolve"))
}

/// `url` with its host and port replaced by `addr` (a proxy in front of the
/// server it names), everything else kept.
pub fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let mut parsed = url::Url::parse(url).expect("a test server URL parses");
    parsed
        .set_ip_host(addr.ip())
        .expect("a URL with a host takes another");
    parsed
        .set_port(Some(addr.port()))
        .expect("a URL with a host takes a port");
    parsed.to_string()
}

/// `host:port` of `url` as written (what a redacted URL shows).
pub fn authority(url: &str, default_port: u16) -> String {
    let parsed = url::Url::parse(url).expect("a test server URL parses");
    let host = parsed.host_str().unwrap_or_default().to_owned();
    format!("{host}:{}", parsed.port().unwrap_or(default_port))
}

/// Logging for tests (`RUST_LOG` to see it) and the crypto provider, both
/// process-wide: every suite calls it, the first call wins.
pub fn init() {
    idem_daemon::telemetry::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,sqlx=error".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Poll `check` every 50 ms until it returns true; panic with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
