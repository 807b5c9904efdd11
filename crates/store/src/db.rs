//! Connecting to PostgreSQL: creating the database if missing, or (for the
//! read-only commands) only to an existing one with this release's schema;
//! following a primary that moves (`targets`: several hosts, tried in order,
//! standbys refused; connections to a demoted primary recycled).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::schema::{SchemaBehind, check_schema};
use crate::targets::{self, Targets, describe, in_recovery, writable};

/// How often the follower asks the server in use whether it is still a
/// primary (one tiny query on its own connection; several hosts only).
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The URL with any password replaced by `***`, for messages and logs: the
/// one in the authority and a `password=` query parameter (libpq style). A
/// host list (`h1:p1,h2:p2`) is kept as given.
pub fn redact_url(raw: &str) -> String {
    // A broker list (`IDEM_AMQP_URL` naming a cluster's nodes): each URL
    // has its own password.
    let endpoints = idem_periodic::endpoints::split(raw);
    if endpoints.len() > 1 {
        return endpoints
            .into_iter()
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",");
    }
    match targets::split_hosts(raw) {
        Some((template, list)) => match redact_one_host(&template) {
            shown if shown.starts_with('<') => shown,
            shown => targets::restore_hosts(&shown, &list),
        },
        None => redact_one_host(raw),
    }
}

fn redact_one_host(raw: &str) -> String {
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
    let targets = parse(url, &shown)?;
    let options = choose(&targets).await;
    create_database_if_missing(&options)
        .await
        .with_context(|| unreachable_hint(&shown))?;
    open_pool(targets, options, max_connections, None)
        .await
        .with_context(|| unreachable_hint(&shown))
}

/// The settings of the dispatcher's own connections ([`connect_dispatch`]).
///
/// **Why.** A replica's hottest statements — the claim's walk, its lease and
/// tidy, the group settle — are prepared once per connection, and
/// PostgreSQL keeps planning a prepared statement anew on every run while a
/// plan made for the values bound looks cheaper than one made without them.
/// With few results per statement (few accounts in flight) it always does:
/// the settle, a dozen CTEs, was planned for nearly every run, and its
/// planning cost more than its execution (docs/performance.md, "Planning:
/// the settle and the lease are planned on every call"). So these
/// connections plan each statement once (`force_generic_plan`).
///
/// **What makes that safe.** A generic plan is kept until the tables it
/// reads are analyzed or vacuumed, so one made while `outbox` was small must
/// still be right once it is large. Every statement run here is written to
/// reach its rows by key, one probe per row of its batch; the three
/// `enable_*` settings take from the planner the plans that are only cheaper
/// on a small table — a sequential scan, a hash or merge join over a whole
/// table — so the plan made on an empty table is the one made on a full one
/// (the `plans` suite plans them on a small table and runs them on a large
/// one). Nothing else runs on these connections.
pub const DISPATCH_SESSION: &str = "SET plan_cache_mode = force_generic_plan; \
     SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off";

/// A pool of at most `max_connections` to a database that exists, each
/// connection set up with [`DISPATCH_SESSION`]: for the dispatcher's claim
/// and result recorder, and nothing else. Lazy: no connection is opened
/// before the first is asked for.
pub async fn connect_dispatch(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let shown = redact_url(url);
    let targets = parse(url, &shown)?;
    let options = choose(&targets).await;
    open_pool(targets, options, max_connections, Some(DISPATCH_SESSION))
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
    let targets = parse(url, &shown)?;
    let options = choose(&targets).await;
    let database = options.get_database().unwrap_or_default().to_owned();
    let pool = match open_pool(targets, options, max_connections, None).await {
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

fn parse(url: &str, shown: &str) -> anyhow::Result<Targets> {
    Targets::parse(url).with_context(|| {
        format!(
            "IDEM_DATABASE_URL {shown} is not a valid PostgreSQL URL \
             (postgres://user[:password]@host[:port][,host[:port]...]/database)"
        )
    })
}

/// The server to start with: with several hosts, the first primary in the
/// order given (or the first host when none answers as one yet: the pool
/// then waits for it like for a server that is down); with one, that one.
async fn choose(targets: &Targets) -> PgConnectOptions {
    if targets.len() > 1
        && let Some((_, conn)) = targets.find(true).await
    {
        let _ = conn.close().await;
    }
    targets.current()
}

/// A pool on `options` that keeps connections to a writable primary only,
/// and (several hosts) a task that moves it when the primary moves; each new
/// connection runs `session` first. (Settings go in a statement rather than
/// in the connect options' `-c` list, which the follower replaces with the
/// next host's.)
async fn open_pool(
    targets: Targets,
    options: PgConnectOptions,
    max_connections: u32,
    session: Option<&'static str>,
) -> Result<PgPool, sqlx::Error> {
    let read_write = targets.read_write();
    let mut pool_options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // A new connection to a standby is refused (the pool retries
                // until its acquire timeout, by then the follower has moved it).
                if read_write && in_recovery(conn).await? {
                    return Err(sqlx::Error::Protocol(
                        "the server is a standby (in recovery); idem needs the primary".into(),
                    ));
                }
                if let Some(session) = session {
                    // Without arguments: the simple protocol, several statements.
                    sqlx::Executor::execute(&mut *conn, session).await?;
                }
                Ok(())
            })
        });
    if read_write {
        pool_options = pool_options
            // A pooled connection whose server turned read-only (SQLSTATE
            // 25006: a demoted or fenced primary, a pooler or DNS name now on
            // a standby) is closed instead of handed out again, so the next
            // one is opened afresh, where the primary is now. This one query
            // replaces the default liveness ping (`test_before_acquire`),
            // which is a round trip of its own: recycling costs no extra
            // round trip per acquire, and catches what a ping cannot. Closing
            // on the failing statement instead would need every caller
            // outside this crate to report its errors back.
            .test_before_acquire(false)
            .before_acquire(|conn, _| Box::pin(async move { writable(conn).await }));
    }
    let pool = if session.is_some() {
        // The dispatcher's pool: opened once the database was reached, its
        // connections are made when first used, and one that fails then is
        // an error of that claim or write, which back off and try again.
        pool_options.connect_lazy_with(options)
    } else {
        pool_options.connect_with(options).await?
    };
    let targets = Arc::new(targets);
    if targets.len() > 1 && read_write {
        tokio::spawn(follow_primary(pool.clone(), targets));
    }
    Ok(pool)
}

/// Keep `pool` on the primary: watch the server in use on a connection of
/// its own, and when it stops answering or is in recovery, try the other
/// hosts in turn (the next one first) until one is a primary, then point the
/// pool's new connections there. Ends when the pool is closed.
async fn follow_primary(pool: PgPool, targets: Arc<Targets>) {
    let mut watch: Option<PgConnection> = None;
    while !pool.is_closed() {
        let healthy = match watch.as_mut() {
            Some(conn) => matches!(in_recovery(conn).await, Ok(false)),
            None => false,
        };
        if healthy {
            tokio::time::sleep(FOLLOW_EVERY).await;
            continue;
        }
        if let Some(conn) = watch.take() {
            conn.close_hard().await.ok();
        }
        let before = targets.current_index();
        match targets.find(false).await {
            Some((index, conn)) => {
                let options = targets.current();
                if index != before {
                    tracing::warn!(
                        host = %describe(&options),
                        "PostgreSQL primary moved: new connections go to this host"
                    );
                }
                pool.set_connect_options(options);
                watch = Some(conn);
            }
            None => {
                tracing::warn!("no PostgreSQL host is a primary yet; trying again");
                tokio::time::sleep(FOLLOW_EVERY / 2).await;
            }
        }
    }
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Invariant: with a host list whose first host is down, the pool lands
    /// on the one that answers; a pooled connection that turned read-only
    /// (what SQLSTATE 25006 comes from) is not handed out again, while a
    /// healthy one is reused.
    #[tokio::test]
    async fn a_host_list_connects_and_read_only_connections_are_recycled() {
        let name = format!("idem_store_t_{}", uuid::Uuid::new_v4().simple());
        // The first host refuses (port 1), the second is the test server.
        let server = crate::test_server::server().replacen('@', "@127.0.0.1:1,", 1);
        let url = format!("{server}/{name}");
        let pool = connect(&url, 1).await.unwrap();
        let pid = |pool: PgPool| async move {
            let mut conn = pool.acquire().await.unwrap();
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            (pid, conn)
        };
        let (first, conn) = pid(pool.clone()).await;
        drop(conn);
        let (again, mut conn) = pid(pool.clone()).await;
        assert_eq!(first, again, "a healthy connection is reused");
        sqlx::query("SET default_transaction_read_only = on")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        let (fresh, mut conn) = pid(pool.clone()).await;
        assert_ne!(fresh, first, "the read-only connection was closed");
        assert!(writable(&mut conn).await.unwrap());
        drop(conn);
        pool.close().await;
        crate::scratch::drop_database(&format!("{}/{name}", crate::test_server::server()))
            .await
            .unwrap();
    }

    #[test]
    fn redaction_hides_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("postgres://u:secret@h1:5432,h2:5433/db?target_session_attrs=any"),
            "postgres://u:***@h1:5432,h2:5433/db?target_session_attrs=any"
        );
        let shown = redact_url("postgres://u@h1,h2/db?password=s3cret");
        assert!(
            !shown.contains("s3cret") && shown.contains("h1,h2"),
            "{shown}"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert!(!redact_url("amqp://guest:guest@h:5672/%2f").contains("guest@"));
        assert!(!redact_url("amqp:guest:s3cret@host").contains("s3cret"));
        let shown = redact_url("postgres://u@h/db?sslmode=require&password=s3cret");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
        // A broker list: every node's password, a raw comma in one included.
        assert_eq!(
            redact_url("amqp://u:p1@a:5672/%2f,amqps://u:p,2@b:5671/%2f"),
            "amqp://u:***@a:5672/%2f,amqps://u:***@b:5671/%2f"
        );
    }
}
