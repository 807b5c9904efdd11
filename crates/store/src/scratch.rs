//! Throw-away databases (the demo's, the benchmark's, the tests'): the one
//! statement that removes one. Never called by the daemon.

use std::str::FromStr;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool};

use crate::db::redact_url;

/// Drop the database that `url` names, if it exists, ending its sessions
/// first (`WITH (FORCE)`: a pool a crashed run left open must not keep it).
/// Connects to the server's `postgres` database to do it.
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let shown = redact_url(url);
    let options =
        PgConnectOptions::from_str(url).with_context(|| format!("bad database URL {shown}"))?;
    let name = options
        .get_database()
        .with_context(|| format!("{shown} names no database"))?
        .to_owned();
    let admin = PgPool::connect_with(options.database("postgres"))
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {shown}"))?;
    // An identifier cannot be a bind parameter: quote it, doubling quotes.
    let quoted = name.replace('"', "\"\"");
    let dropped = sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)"
    ))
    .execute(&admin)
    .await
    .with_context(|| format!("dropping database {name}"));
    admin.close().await;
    dropped.map(drop)
}
