//! Connecting to PostgreSQL: creating the database if missing, or (for the
//! read-only commands) only to an existing one with this release's schema.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::schema::{SchemaBehind, check_schema};

/// The URL with any password replaced by `***`, for messages and logs: the
/// one in the authority and a `password=` query parameter (libpq style).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        // No authority (`scheme:user:pw@host`): the "password" is in the path,
        // where it cannot be told apart; show nothing of it.
        Ok(url) if !url.has_host() && raw.contains('@') => "<unparseable URL>".to_owned(),
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            if url
                .query_pairs()
                .any(|(k, _)| k.eq_ignore_ascii_case("password"))
            {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k.eq_ignore_ascii_case("password") {
                            "***".to_owned()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

/// Connect a pool of at most `max_connections`, creating the database first
/// if it does not exist. Fails with a message that names the (redacted) URL
/// and what to check.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let shown = redact_url(url);
    let options = parse(url, &shown)?;
    create_database_if_missing(&options)
        .await
        .with_context(|| unreachable_hint(&shown))?;
    pool_options(max_connections)
        .connect_with(options)
        .await
        .with_context(|| unreachable_hint(&shown))
}

/// Connect a pool of at most `max_connections` to a database that exists
/// already and has this release's schema ([`check_schema`]), for the
/// read-only commands: they neither create a database (a mistyped name would
/// leave one behind) nor migrate one. Each refusal is one line naming the
/// (redacted) URL and what to run.
pub async fn connect_existing(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let shown = redact_url(url);
    let options = parse(url, &shown)?;
    let database = options.get_database().unwrap_or_default().to_owned();
    let pool = match pool_options(max_connections).connect_with(options).await {
        Ok(pool) => pool,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => bail!(
            "database {database:?} does not exist at {shown}: run `idem migrate` to create it \
             and apply the schema"
        ),
        Err(e) => return Err(anyhow::Error::new(e).context(unreachable_hint(&shown))),
    };
    match check_schema(&pool).await {
        Ok(()) => Ok(pool),
        Err(e @ SchemaBehind::Database(_)) => {
            Err(anyhow::Error::new(e).context(format!("checking the schema at {shown}")))
        }
        Err(e @ SchemaBehind::Dirty { .. }) => {
            Err(anyhow::Error::new(e).context(format!("the database at {shown}")))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "the database at {shown} needs `idem migrate` first"
        ))),
    }
}

fn parse(url: &str, shown: &str) -> anyhow::Result<PgConnectOptions> {
    PgConnectOptions::from_str(url).with_context(|| {
        format!("IDEM_DATABASE_URL {shown} is not a valid PostgreSQL URL (postgres://user[:password]@host:port/database)")
    })
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
}

fn unreachable_hint(shown: &str) -> String {
    format!(
        "cannot connect to PostgreSQL at {shown}: check that the server is running and reachable, \
         and that IDEM_DATABASE_URL (or --database-url) names the right host, port, user and database"
    )
}

async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    // The usual case: the database exists. Only when PostgreSQL says it does
    // not (3D000) is the `postgres` database asked to create it, so a role
    // without access there (a managed server, least privilege) still starts.
    match PgConnection::connect_with(options).await {
        Ok(conn) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(e.into()),
    }
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        if name.contains('"') {
            bail!("database name {name:?} contains a double quote; pick another name");
        }
        // Replicas starting together race here: "already exists" (42P04) is success.
        match sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("42P04") || e.code().as_deref() == Some("23505") => {
            }
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert!(!redact_url("amqp://guest:guest@h:5672/%2f").contains("guest@"));
        assert!(!redact_url("amqp:guest:s3cret@host").contains("s3cret"));
        let shown = redact_url("postgres://u@h/db?sslmode=require&password=s3cret");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
    }
}
