//! Extra CA roots for an `https://` charge API (`IDEM_CHARGE_API_CA_FILE`).

use std::path::PathBuf;

use anyhow::{Context, ensure};

/// CA certificates read from a PEM file at start.
#[derive(Debug, Clone)]
pub struct CaBundle {
    /// Where they came from (for messages).
    pub path: PathBuf,
    /// The file's content: one or more PEM certificates.
    pub pem: Vec<u8>,
}

impl CaBundle {
    /// Read and check `path` (at least one certificate, all parseable);
    /// errors name `var` and the path.
    pub fn read(var: &str, path: &std::path::Path) -> anyhow::Result<Self> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let shown = path.display();
        let pem = std::fs::read(path).with_context(|| format!("cannot read {var}={shown}"))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{var}={shown} is not a PEM certificate file: {e}"))?;
        ensure!(
            !certs.is_empty(),
            "{var}={shown} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
        );
        Ok(Self {
            path: path.to_owned(),
            pem,
        })
    }
}

/// How idem behaves when the provider refuses it, and how long the
/// provider keeps an idempotency key (`idem run`).
#[derive(clap::Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Hours the provider keeps an idempotency key (Stripe: 24). A row whose
    /// outcome has been uncertain longer is never re-sent under its key
    /// blindly: a lookup, reconciliation or an operator resolves it.
    #[arg(long, env = "IDEM_PROVIDER_KEY_TTL_HOURS", default_value_t = 24)]
    pub provider_key_ttl_hours: u64,
    /// Consecutive 429 answers or refused connections that open the
    /// provider breaker (a 401, 403 or 404 opens it at once).
    #[arg(long, env = "IDEM_PROVIDER_BREAKER_SUSTAINED", default_value_t = 10)]
    pub provider_breaker_sustained: u32,
    /// Milliseconds before the first probe of an open breaker (doubles per
    /// failed probe, jittered).
    #[arg(long, env = "IDEM_PROVIDER_BREAKER_PROBE_MS", default_value_t = 1000)]
    pub provider_breaker_probe_ms: u64,
    /// Longest wait between two probes of an open breaker, in milliseconds.
    #[arg(
        long,
        env = "IDEM_PROVIDER_BREAKER_PROBE_MAX_MS",
        default_value_t = 30_000
    )]
    pub provider_breaker_probe_max_ms: u64,
}

/// The validated [`ProviderArgs`].
#[derive(Debug, Clone, Copy)]
pub struct ProviderSettings {
    /// The breaker's settings.
    pub breaker: idem_dispatch::BreakerConfig,
    /// The provider's key lifetime.
    pub key_ttl: std::time::Duration,
}

impl ProviderArgs {
    /// Check the settings against the lease (`uncertain_since` lags the call
    /// by up to about two leases); errors name the variable.
    pub fn validate(&self, lease: std::time::Duration) -> anyhow::Result<ProviderSettings> {
        use std::time::Duration;
        let hours = self.provider_key_ttl_hours;
        ensure!(
            (1..=8760).contains(&hours),
            "IDEM_PROVIDER_KEY_TTL_HOURS={hours} must be 1..=8760 (a year)"
        );
        let key_ttl = Duration::from_secs(hours * 3600);
        ensure!(
            key_ttl > lease.saturating_mul(4),
            "IDEM_PROVIDER_KEY_TTL_HOURS={hours} is too short for IDEM_LEASE_SECS={}: the key must \
             outlive at least 4 leases",
            lease.as_secs()
        );
        ensure!(
            self.provider_breaker_sustained >= 1,
            "IDEM_PROVIDER_BREAKER_SUSTAINED must be at least 1"
        );
        let (base, max) = (
            self.provider_breaker_probe_ms,
            self.provider_breaker_probe_max_ms,
        );
        ensure!(
            (10..=max).contains(&base),
            "IDEM_PROVIDER_BREAKER_PROBE_MS={base} must be at least 10 and at most \
             IDEM_PROVIDER_BREAKER_PROBE_MAX_MS={max}"
        );
        ensure!(
            max <= 3_600_000,
            "IDEM_PROVIDER_BREAKER_PROBE_MAX_MS={max} is over an hour; pick at most 3600000"
        );
        Ok(ProviderSettings {
            breaker: idem_dispatch::BreakerConfig {
                sustained: self.provider_breaker_sustained,
                probe_base: Duration::from_millis(base),
                probe_max: Duration::from_millis(max),
            },
            key_ttl,
        })
    }
}
