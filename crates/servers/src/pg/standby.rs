//! A streaming standby of a [`PgCluster`], for failover tests: a base backup
//! of the primary (`pg_basebackup -R`) started on a port of its own, made
//! synchronous on the primary so that nothing the primary acked is missing
//! from it, and promoted when the test says so.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use super::PgCluster;

/// How long a standby may take to stream, to become synchronous, to promote.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);

impl PgCluster {
    /// A standby of `primary`, streaming from it as `application_name`
    /// `name`, started and accepting (read-only) connections. It is not
    /// synchronous yet: [`PgCluster::require_synchronous`] makes it so.
    pub async fn standby_of(primary: &PgCluster, name: &str) -> anyhow::Result<Self> {
        let started = Instant::now();
        let standby = Self::unstarted()?;
        // `-d` so that the `primary_conninfo` that `-R` writes carries the
        // application name the primary's `synchronous_standby_names` waits for.
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres application_name={name}",
            primary.port()
        );
        let output = tokio::process::Command::from(standby.command("pg_basebackup"))
            .arg("-D")
            .arg(standby.data_dir())
            .args([
                "-d",
                &conninfo,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ])
            .output()
            .await
            .context("running pg_basebackup")?;
        if !output.status.success() {
            bail!(
                "pg_basebackup failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        standby.spawn()?;
        standby.wait_ready().await?;
        tracing::info!(
            port = standby.port(),
            primary = primary.port(),
            took = ?started.elapsed(),
            "PgCluster standby started"
        );
        Ok(standby)
    }

    /// On this primary: make commits wait for standby `name`
    /// (`synchronous_standby_names`, set with `ALTER SYSTEM` after the base
    /// backup was taken, so the standby does not inherit it and can commit
    /// alone once promoted), and return once it streams synchronously.
    pub async fn require_synchronous(&self, name: &str) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.url("postgres")).await?;
        sqlx::query(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '\"{name}\"'"
        ))
        .execute(&mut conn)
        .await?;
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut conn)
            .await?;
        let deadline = Instant::now() + REPLICATION_TIMEOUT;
        loop {
            let state: Option<String> = sqlx::query_scalar(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
            )
            .bind(name)
            .fetch_optional(&mut conn)
            .await?;
            if state.as_deref() == Some("sync") {
                break;
            }
            if Instant::now() > deadline {
                bail!("standby {name:?} not synchronous after {REPLICATION_TIMEOUT:?}: {state:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = conn.close().await;
        Ok(())
    }

    /// On this standby: promote it (`pg_promote`, as `pg_ctl promote` does)
    /// and return once it takes writes.
    pub async fn promote(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut conn = PgConnection::connect(&self.url("postgres")).await?;
        let done: bool = sqlx::query_scalar("SELECT pg_promote(true, $1)")
            .bind(REPLICATION_TIMEOUT.as_secs() as i32)
            .fetch_one(&mut conn)
            .await?;
        if !done {
            bail!("standby on port {} did not promote", self.port());
        }
        let _ = conn.close().await;
        tracing::info!(port = self.port(), took = ?started.elapsed(), "PgCluster promoted");
        Ok(())
    }
}
