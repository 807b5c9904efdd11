//! The operator's contract: every setting a flag with an `IDEM_*` variable, with
//! defaults that work against local services, validated once at start-up into a
//! [`Config`] whose errors say what to fix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::{ArgAction, Args, ValueEnum};
use idem_charge::{Capabilities, ChargeClient};
use idem_dispatch::{Backoff, DispatchConfig};
use idem_inbox::InboxConfig;

mod console;
mod provider;
mod queue;
mod reconcile;
mod replica;
mod results;
mod retention;
mod tenants;

use idem_retention::RetentionConfig;

use crate::secrets::{Secret, SecretUrl};
pub use console::ConsoleArgs;
pub use provider::{CaBundle, ProviderArgs, ProviderSettings};
pub use queue::{QueueArgs, QueueKind, QueueSettings};
pub use reconcile::{ReconcileArgs, ReconcileSettings};
pub use replica::default_replica_id;
pub use results::ResultsArgs;
pub use retention::RetentionArgs;
pub use tenants::{ScopeMode, TenantArgs};

/// Where the database lives.
#[derive(Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL URL; `run`, `migrate` and the changing commands create the
    /// database if missing and apply the schema (read-only commands never do). TLS: add
    /// `?sslmode=require` (or `verify-full` with `sslrootcert=<PEM file>`). Failover: list
    /// several hosts (`postgres://user@h1:5432,h2:5432/idem`); idem uses the first that is a
    /// primary and follows it when it moves (`target_session_attrs=any` accepts a standby).
    #[arg(
        long,
        env = "IDEM_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/idem",
        hide_env_values = true
    )]
    pub database_url: SecretUrl,
    /// Most connections in this process's pool to PostgreSQL (a dispatcher
    /// keeps three more, out of the pool: one for its liveness lock, two
    /// for its claims and result writes).
    #[arg(long, env = "IDEM_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
}

/// The broker's URL: one definition for every command that talks to
/// RabbitMQ (`run`, `publish`, `quarantine replay`, `demo`, `bench`).
#[derive(Args, Debug, Clone)]
pub struct BrokerUrl {
    /// RabbitMQ URL (default: the local broker as guest); `amqps://` for TLS.
    /// A cluster: its nodes' URLs comma-separated
    /// (`amqp://u:p@rabbit-0:5672/%2f,amqp://u:p@rabbit-1:5672/%2f`); every
    /// session starts at a random node and fails over to the next.
    #[arg(
        long,
        env = "IDEM_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: SecretUrl,
}

/// Where the broker lives, and the work queue.
#[derive(Args, Debug, Clone)]
pub struct AmqpArgs {
    #[command(flatten)]
    pub broker: BrokerUrl,
    /// The work queue (declared durable, with `<queue>.dlx` / `<queue>.dead`).
    #[arg(long, env = "IDEM_QUEUE", default_value = "idem.charges")]
    pub queue: String,
}

/// Which parts of the pipeline a replica runs.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Inbox consumer and outbox dispatcher.
    All,
    /// Only the inbox consumer (AMQP -> PostgreSQL).
    Consumer,
    /// Only the outbox dispatcher (PostgreSQL -> charge API).
    Dispatcher,
}

/// Everything `idem run` takes.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Which roles this replica runs.
    #[arg(long, env = "IDEM_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,
    /// This replica's name in leases and logs (default: host name and pid).
    #[arg(long, env = "IDEM_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Base URL of the charge API.
    #[arg(
        long,
        env = "IDEM_CHARGE_API_URL",
        default_value = "http://127.0.0.1:8099"
    )]
    pub charge_api_url: String,
    /// Bearer token sent to the charge API as `Authorization: Bearer <key>`
    /// (unset: no `Authorization` header). Prefer the variable or its file
    /// to the flag, which other users can see in the process list.
    #[arg(long, env = "IDEM_CHARGE_API_KEY", hide_env_values = true)]
    pub charge_api_key: Option<Secret>,
    /// PEM file of CA certificates to trust for an `https://` charge API, on
    /// top of the system's roots (e.g. a private CA).
    #[arg(long, env = "IDEM_CHARGE_API_CA_FILE")]
    pub charge_api_ca_file: Option<PathBuf>,
    /// Health and metrics listener (use port 0 for any free port). Serves
    /// plain HTTP without authentication: keep it on loopback or a private
    /// network.
    #[arg(long, env = "IDEM_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: SocketAddr,
    /// The provider honours `Idempotency-Key`.
    #[arg(long, env = "IDEM_PROVIDER_IDEMPOTENCY_KEYS", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub provider_idempotency_keys: bool,
    /// The provider answers lookups by reference id.
    #[arg(long, env = "IDEM_PROVIDER_LOOKUP", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub provider_lookup: bool,
    /// The provider can refund.
    #[arg(long, env = "IDEM_PROVIDER_REFUNDS", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub provider_refunds: bool,
    /// Seconds a claim holds a row before another replica may reclaim it.
    #[arg(long, env = "IDEM_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,
    /// Milliseconds one provider call may take; after that its outcome is unknown.
    #[arg(long, env = "IDEM_CHARGE_TIMEOUT_MS", default_value_t = 5000)]
    pub charge_timeout_ms: u64,
    /// Most unacked deliveries the broker pushes ahead to this consumer
    /// (fewer while bodies are large: IDEM_PREFETCH_BYTES).
    #[arg(long, env = "IDEM_PREFETCH", default_value_t = 200)]
    pub prefetch: u16,
    /// Most body bytes the broker may push ahead to this consumer: the
    /// prefetch count is kept at or under this divided by the largest body
    /// seen recently (RabbitMQ has no byte prefetch). At least
    /// IDEM_INBOX_BATCH_SIZE × IDEM_MAX_BODY_BYTES; IDEM_PREFETCH × 128 MiB
    /// turns the limit off.
    #[arg(long, env = "IDEM_PREFETCH_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub prefetch_bytes: u64,
    /// Most deliveries recorded in one transaction.
    #[arg(long, env = "IDEM_INBOX_BATCH_SIZE", default_value_t = 50)]
    pub inbox_batch_size: usize,
    /// Milliseconds a batch waits to fill after its first delivery.
    #[arg(long, env = "IDEM_INBOX_BATCH_LINGER_MS", default_value_t = 5)]
    pub inbox_batch_linger_ms: u64,
    /// Largest accepted message body; larger ones are quarantined.
    #[arg(long, env = "IDEM_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Most provider calls in flight in this replica.
    #[arg(long, env = "IDEM_DISPATCH_CONCURRENCY", default_value_t = 32)]
    pub dispatch_concurrency: usize,
    /// At most one charge per account_id in flight across all replicas, in
    /// arrival order (costs head-of-line blocking per account).
    #[arg(long, env = "IDEM_PER_ACCOUNT_ORDERING", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub per_account_ordering: bool,
    /// With per-account ordering: the settle that ends an account's charge
    /// leases the account's next one to this replica in the same statement
    /// (no claim between two charges of an account). On by default since
    /// its statements are planned once: 5% more charges/s under heavy skew,
    /// 3% more spread, the tuned uniform rate within its noise
    /// (docs/performance.md, "Chaining").
    #[arg(long, env = "IDEM_CHAIN_PER_ACCOUNT", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub chain_per_account: bool,
    /// Most outbox rows claimed per round trip.
    #[arg(long, env = "IDEM_CLAIM_BATCH", default_value_t = 32)]
    pub claim_batch: i64,
    /// Attempts after which a failing row becomes `dead`.
    #[arg(long, env = "IDEM_MAX_ATTEMPTS", default_value_t = 12)]
    pub max_attempts: i32,
    /// First retry delay in milliseconds (doubles per attempt, with jitter).
    #[arg(long, env = "IDEM_RETRY_BASE_MS", default_value_t = 200)]
    pub retry_base_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, env = "IDEM_RETRY_MAX_MS", default_value_t = 60_000)]
    pub retry_max_ms: u64,
    /// Milliseconds between claims when nothing is due. The replica's own
    /// inbox wakes its dispatcher sooner, the moment it commits new rows;
    /// the poll finds what that does not cover (rows another replica
    /// recorded, retries coming due).
    #[arg(long, env = "IDEM_IDLE_POLL_MS", default_value_t = 50)]
    pub idle_poll_ms: u64,
    /// Seconds shutdown waits for calls in flight.
    #[arg(long, env = "IDEM_SHUTDOWN_GRACE_SECS", default_value_t = 15)]
    pub shutdown_grace_secs: u64,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub reconcile: ReconcileArgs,
    #[command(flatten)]
    pub results: ResultsArgs,
    #[command(flatten)]
    pub tenants: TenantArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub provider: ProviderArgs,
    /// Also serve the operator console under `/console` on IDEM_HTTP_ADDR
    /// (off loopback only with IDEM_CONSOLE_TOKEN).
    #[arg(long, env = "IDEM_CONSOLE", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub console: bool,
    #[command(flatten)]
    pub console_args: ConsoleArgs,
    /// Validate the configuration, check the database (schema current), the
    /// broker (credentials, work queue) and the charge API without changing
    /// anything, print one line per check, and exit (0 only if all pass).
    #[arg(long)]
    pub check: bool,
}

/// A validated configuration for [`crate::run`]. Its `Debug` prints
/// no credential (URLs with `***` for the password, the key `<redacted>`).
#[derive(Clone)]
pub struct Config {
    /// PostgreSQL URL.
    pub database_url: SecretUrl,
    /// Pool size.
    pub db_max_connections: u32,
    /// Roles to run.
    pub role: Role,
    /// Health/metrics listener.
    pub http_addr: SocketAddr,
    /// Charge API base URL.
    pub charge_api_url: String,
    /// Bearer token for the charge API.
    pub charge_api_key: Option<Secret>,
    /// Extra CA certificates (PEM) for an `https://` charge API.
    pub charge_api_ca: Option<CaBundle>,
    /// What the provider offers.
    pub capabilities: Capabilities,
    /// Inbox consumer settings.
    pub inbox: InboxConfig,
    /// Dispatcher settings.
    pub dispatch: DispatchConfig,
    /// Retention windows and batching.
    pub retention: RetentionConfig,
    /// The reconciler and its periodic job.
    pub reconcile: ReconcileSettings,
    /// The result publisher (dispatcher roles).
    pub results: idem_events::PublisherConfig,
    /// How often a consuming replica drains the dead-letter queue.
    pub dead_letter_drain: Duration,
    /// The operator console on the HTTP listener (`--console`), if served.
    pub console: Option<idem_console::Settings>,
}

impl Config {
    /// The charge API client of this configuration: base URL, timeout,
    /// capabilities, API key and extra CA roots. Every client idem builds
    /// for the provider comes from here, so none lacks the credentials.
    pub fn charge_client(&self) -> anyhow::Result<ChargeClient> {
        let roots = self.charge_api_ca.as_ref().map(|ca| ca.pem.as_slice());
        let client = ChargeClient::new_with_roots(
            &self.charge_api_url,
            self.dispatch.charge_timeout,
            self.capabilities,
            roots,
        )
        .context("building the charge API client (IDEM_CHARGE_API_URL, IDEM_CHARGE_API_CA_FILE)")?;
        Ok(client.with_api_key(
            self.charge_api_key
                .as_ref()
                .map(|key| key.expose().to_owned()),
        ))
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The inbox and publisher settings hold the broker URL as a plain
        // string: show copies with the password replaced.
        let inbox = InboxConfig {
            amqp_url: idem_store::redact_url(&self.inbox.amqp_url),
            ..self.inbox.clone()
        };
        let results = idem_events::PublisherConfig {
            amqp_url: idem_store::redact_url(&self.results.amqp_url),
            ..self.results.clone()
        };
        f.debug_struct("Config")
            .field("database_url", &self.database_url)
            .field("db_max_connections", &self.db_max_connections)
            .field("role", &self.role)
            .field("http_addr", &self.http_addr)
            .field("charge_api_url", &self.charge_api_url)
            .field("charge_api_key", &self.charge_api_key)
            .field(
                "charge_api_ca",
                &self.charge_api_ca.as_ref().map(|ca| &ca.path),
            )
            .field("capabilities", &self.capabilities)
            .field("inbox", &inbox)
            .field("dispatch", &self.dispatch)
            .field("retention", &self.retention)
            .field("reconcile", &self.reconcile)
            .field("results", &results)
            .field("console", &self.console)
            .finish()
    }
}

impl RunArgs {
    /// Check every setting; the error names the variable and what to change.
    pub fn validate(&self) -> anyhow::Result<Config> {
        let a = self;
        // Upper bounds first: they keep the arithmetic below from overflowing.
        ensure!(
            a.charge_timeout_ms <= 600_000,
            "IDEM_CHARGE_TIMEOUT_MS={} is over 10 minutes; pick at most 600000",
            a.charge_timeout_ms
        );
        ensure!(
            a.lease_secs <= 86_400,
            "IDEM_LEASE_SECS={} is over a day; pick at most 86400",
            a.lease_secs
        );
        ensure!(
            a.shutdown_grace_secs <= 3_600,
            "IDEM_SHUTDOWN_GRACE_SECS={} is over an hour; pick at most 3600",
            a.shutdown_grace_secs
        );
        ensure!(
            a.retry_max_ms <= 86_400_000,
            "IDEM_RETRY_MAX_MS={} is over a day",
            a.retry_max_ms
        );
        ensure!(
            a.idle_poll_ms <= 60_000,
            "IDEM_IDLE_POLL_MS={} is over a minute",
            a.idle_poll_ms
        );
        ensure!(
            a.charge_timeout_ms >= 10,
            "IDEM_CHARGE_TIMEOUT_MS={} is too short: give the provider at least 10 ms",
            a.charge_timeout_ms
        );
        ensure!(
            a.lease_secs * 1000 >= 3 * a.charge_timeout_ms,
            "IDEM_LEASE_SECS={} must be at least 3 x IDEM_CHARGE_TIMEOUT_MS ({} ms): a lease shorter than \
             a lookup plus a charge lets another replica reclaim a row whose call is still in flight",
            a.lease_secs,
            a.charge_timeout_ms
        );
        ensure!(
            a.inbox_batch_size >= 1,
            "IDEM_INBOX_BATCH_SIZE must be at least 1"
        );
        ensure!(
            usize::from(a.prefetch) >= a.inbox_batch_size,
            "IDEM_PREFETCH={} must be at least IDEM_INBOX_BATCH_SIZE={}: a batch can never fill otherwise",
            a.prefetch,
            a.inbox_batch_size
        );
        let full_batch = (a.inbox_batch_size as u64).saturating_mul(a.max_body_bytes as u64);
        ensure!(
            a.prefetch_bytes >= full_batch,
            "IDEM_PREFETCH_BYTES={} is under IDEM_INBOX_BATCH_SIZE × IDEM_MAX_BODY_BYTES ({full_batch}): \
             a batch of the largest accepted messages could never fill; pick at least {full_batch}",
            a.prefetch_bytes
        );
        ensure!(
            a.dispatch_concurrency >= 1,
            "IDEM_DISPATCH_CONCURRENCY must be at least 1"
        );
        ensure!(a.claim_batch >= 1, "IDEM_CLAIM_BATCH must be at least 1");
        ensure!(a.max_attempts >= 1, "IDEM_MAX_ATTEMPTS must be at least 1");
        ensure!(
            a.database.db_max_connections >= 3,
            "IDEM_DB_MAX_CONNECTIONS must be at least 3 (the consumer, the dispatcher and the \
             result publisher each need one; the publisher holds its own while it publishes)"
        );
        ensure!(
            a.max_body_bytes >= 64,
            "IDEM_MAX_BODY_BYTES={} is too small for any charge message",
            a.max_body_bytes
        );
        ensure!(
            a.retry_base_ms <= a.retry_max_ms,
            "IDEM_RETRY_BASE_MS must not exceed IDEM_RETRY_MAX_MS"
        );
        ensure!(
            !a.amqp.queue.is_empty() && a.amqp.queue.len() <= 200,
            "IDEM_QUEUE must be 1..=200 characters"
        );
        check_url(
            "IDEM_DATABASE_URL",
            &idem_store::targets::one_host_form(&a.database.database_url),
            &["postgres", "postgresql"],
        )?;
        check_amqp_urls(&a.amqp.broker.amqp_url)?;
        check_url("IDEM_CHARGE_API_URL", &a.charge_api_url, &["http", "https"])?;
        // The client's transport errors quote the URL: credentials there
        // would be printed. The key has its own setting.
        ensure!(
            url::Url::parse(&a.charge_api_url)
                .is_ok_and(|u| u.username().is_empty() && u.password().is_none()),
            "IDEM_CHARGE_API_URL must not carry credentials (user:password@): give the provider's \
             key as IDEM_CHARGE_API_KEY (or IDEM_CHARGE_API_KEY_FILE)"
        );
        let charge_api_ca = a
            .charge_api_ca_file
            .as_deref()
            .map(|path| CaBundle::read("IDEM_CHARGE_API_CA_FILE", path))
            .transpose()?;
        let retention = a.retention.validate(
            Duration::from_secs(a.lease_secs),
            Duration::from_millis(a.retry_max_ms),
        )?;
        let owner = a.replica_id.clone().unwrap_or_else(default_replica_id);
        let charge_timeout = Duration::from_millis(a.charge_timeout_ms);
        let reconcile = a.reconcile.validate(charge_timeout)?;
        ensure!(
            retention.outbox >= reconcile.lookback,
            "IDEM_OUTBOX_RETENTION_HOURS={} is shorter than IDEM_RECONCILE_LOOKBACK_HOURS={}: reconciliation \
             would meet charges whose outbox row retention already deleted, and could no longer tell \
             an extra charge of ours from a foreign one",
            a.retention.outbox_retention_hours,
            a.reconcile.reconcile_lookback_hours
        );
        let results = a.results.validate(
            &a.amqp.broker.amqp_url,
            Duration::from_millis(a.idle_poll_ms),
        )?;
        let admission = a.tenants.validate(a.max_body_bytes, &a.amqp.queue)?;
        let queue = a.queue.validate()?;
        let provider = a.provider.validate(Duration::from_secs(a.lease_secs))?;
        let console = a
            .console
            .then(|| {
                a.console_args.validate(
                    "IDEM_HTTP_ADDR",
                    a.http_addr,
                    a.amqp.broker.amqp_url.expose(),
                    &a.amqp.queue,
                )
            })
            .transpose()?;
        Ok(Config {
            database_url: a.database.database_url.clone(),
            db_max_connections: a.database.db_max_connections,
            role: a.role,
            http_addr: a.http_addr,
            charge_api_url: a.charge_api_url.clone(),
            charge_api_key: a.charge_api_key.clone(),
            charge_api_ca,
            capabilities: Capabilities {
                idempotency_keys: a.provider_idempotency_keys,
                lookup: a.provider_lookup,
                refunds: a.provider_refunds,
            },
            inbox: InboxConfig {
                amqp_url: a.amqp.broker.amqp_url.expose().to_owned(),
                queue: a.amqp.queue.clone(),
                prefetch: a.prefetch,
                prefetch_bytes: a.prefetch_bytes,
                batch_size: a.inbox_batch_size,
                batch_linger: Duration::from_millis(a.inbox_batch_linger_ms),
                admission,
                queue_type: queue.queue_type,
                keep_existing_classic: queue.keep_existing_classic,
                consumer_tag: format!("idem-{owner}"),
            },
            dispatch: DispatchConfig {
                owner,
                lease: Duration::from_secs(a.lease_secs),
                claim_batch: a.claim_batch,
                per_account_ordering: a.per_account_ordering,
                chain_per_account: a.chain_per_account,
                concurrency: a.dispatch_concurrency,
                max_attempts: a.max_attempts,
                backoff: Backoff {
                    base: Duration::from_millis(a.retry_base_ms),
                    max: Duration::from_millis(a.retry_max_ms),
                },
                charge_timeout,
                idle_poll: Duration::from_millis(a.idle_poll_ms),
                shutdown_grace: Duration::from_secs(a.shutdown_grace_secs),
                breaker: provider.breaker,
                key_ttl: provider.key_ttl,
            },
            retention,
            reconcile,
            results,
            dead_letter_drain: queue.drain_every,
            console,
        })
    }
}

/// `IDEM_AMQP_URL`: one URL, or the nodes of a cluster comma-separated
/// (`idem_periodic::endpoints`), each a valid `amqp(s)://` URL.
fn check_amqp_urls(list: &str) -> anyhow::Result<()> {
    let endpoints = idem_periodic::endpoints::split(list);
    ensure!(
        !endpoints.is_empty(),
        "IDEM_AMQP_URL is empty: give the broker as amqp://user:password@host:5672/vhost (several \
         nodes of one cluster: comma-separated)"
    );
    for (i, endpoint) in endpoints.iter().enumerate() {
        let var = if endpoints.len() == 1 {
            "IDEM_AMQP_URL".to_owned()
        } else {
            format!("IDEM_AMQP_URL (endpoint {} of {})", i + 1, endpoints.len())
        };
        // A list written with a separator `split` does not know, or a
        // stray comma, would be one URL whose path holds the rest (and its
        // passwords, printed by the broker's vhost refusal).
        ensure!(
            !idem_periodic::endpoints::holds_another(endpoint),
            "{var} holds another URL after its own: separate a cluster's nodes with commas \
             (amqp://user:password@node-1:5672/%2f,amqp://user:password@node-2:5672/%2f)"
        );
        ensure!(
            !endpoint.ends_with(',') && !endpoint.chars().any(char::is_whitespace),
            "{var} ends in a comma or holds whitespace: write the URLs comma-separated, each \
             percent-encoded (a space in a password is %20)"
        );
        check_url(&var, endpoint, &["amqp", "amqps"])?;
    }
    Ok(())
}

fn check_url(var: &str, raw: &str, schemes: &[&str]) -> anyhow::Result<()> {
    match url::Url::parse(raw) {
        // Messages redact the password of the user-info part only; one in
        // the query (`?password=`, which the PostgreSQL driver reads) would
        // be printed with every connection error.
        Ok(u)
            if u.query_pairs()
                .any(|(k, _)| k.eq_ignore_ascii_case("password")) =>
        {
            bail!(
                "{var} has a password in its query (?password=...): put it in the URL's user part \
             (scheme://user:password@host/...), which idem never prints"
            )
        }
        // `scheme:user:pw@host` parses, with no host and the whole rest as
        // its path: nothing in it would be redacted. Say what to fix, never
        // the value.
        Ok(u) if !u.has_host() => bail!(
            "{var} has no host: write it as {}://[user[:password]@]host[:port]/...",
            schemes[0]
        ),
        Ok(u) if schemes.contains(&u.scheme()) => Ok(()),
        Ok(u) => bail!(
            "{var} has scheme {:?}; expected one of {schemes:?} (got {})",
            u.scheme(),
            idem_store::redact_url(raw)
        ),
        Err(e) => bail!(
            "{var} is not a valid URL ({e}); expected e.g. {}://host:port/...",
            schemes[0]
        ),
    }
}

#[cfg(test)]
mod tests;
