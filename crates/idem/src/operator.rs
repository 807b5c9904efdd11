//! What every operator command takes (the database, `--json`), who is acting
//! and why for a change, and how each kind of command connects: one that only
//! reads never creates or migrates a database; one that changes rows applies
//! the schema first, as `idem run` does.

use anyhow::bail;
use clap::Args;
use idem_daemon::config::DatabaseArgs;
use idem_store::admin::Action;
use sqlx::PgPool;

/// What every admin command takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Who is acting and why: written to the audit table with the change.
#[derive(Args, Debug, Clone)]
pub struct Why {
    /// Who is acting (default: the OS user running the command).
    #[arg(long, env = "IDEM_ACTOR")]
    pub actor: Option<String>,
    /// Why: kept in the audit table with the change.
    #[arg(long)]
    pub reason: String,
}

impl Common {
    /// For a command that only reads: the database must exist with this
    /// release's schema; a missing or older one is refused, naming
    /// `idem migrate`, and left as it is.
    pub async fn read_only(&self) -> anyhow::Result<PgPool> {
        idem_store::connect_existing(&self.database.database_url, 2).await
    }

    /// For a command that changes rows: the database is created and migrated
    /// if need be.
    pub async fn for_change(&self) -> anyhow::Result<PgPool> {
        let pool = idem_store::connect(&self.database.database_url, 2).await?;
        idem_store::migrate(&pool).await?;
        Ok(pool)
    }
}

impl Why {
    /// Check that `--reason` says something, and name the acting user:
    /// `--actor`, else the OS user.
    pub fn actor(&self) -> anyhow::Result<String> {
        if self.reason.trim().is_empty() {
            bail!("--reason must say why (it is kept in the audit table)");
        }
        if let Some(a) = self
            .actor
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            return Ok(a.to_owned());
        }
        let uid = nix::unistd::getuid();
        if let Ok(Some(user)) = nix::unistd::User::from_uid(uid) {
            return Ok(user.name);
        }
        for var in ["USER", "LOGNAME"] {
            if let Ok(name) = std::env::var(var)
                && !name.is_empty()
            {
                return Ok(name);
            }
        }
        Ok(format!("uid:{uid}"))
    }

    /// The audit's who and why for `actor`.
    pub fn action<'a>(&'a self, actor: &'a str, force: bool) -> Action<'a> {
        Action {
            actor,
            reason: Some(&self.reason),
            force,
        }
    }
}
