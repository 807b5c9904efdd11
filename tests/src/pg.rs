//! PostgreSQL: scratch databases on the shared server on 5432 (one per
//! test, dropped at its end), and [`PgCluster`], a private cluster a test may
//! stop, restart and crash.

use sqlx::PgPool;

pub use idem_servers::pg::PgCluster;

/// The shared PostgreSQL server, as a superuser URL of its `postgres`
/// database: `IDEM_TEST_DATABASE_URL` when the tests were built, else the
/// local service (`postgres@127.0.0.1:5432`, trust authentication). Read at
/// build time: `IDEM_TEST_DATABASE_URL=… cargo test` rebuilds what uses it.
pub const PG_ADMIN_URL: &str = match option_env!("IDEM_TEST_DATABASE_URL") {
    Some(url) => url,
    None => "postgres://postgres@127.0.0.1:5432/postgres",
};

/// The shared server's address (`host:port` of [`PG_ADMIN_URL`], resolved),
/// for the tests that put a proxy in front of it.
pub fn addr() -> std::net::SocketAddr {
    crate::resolve(PG_ADMIN_URL, 5432)
}

/// URL of database `name` on the shared server.
pub fn url(name: &str) -> String {
    url_on(PG_ADMIN_URL, name)
}

/// URL of database `name` on the server of `admin_url` (same user, host and
/// port; the database part replaced).
pub fn url_on(admin_url: &str, name: &str) -> String {
    let (server, _) = admin_url
        .rsplit_once('/')
        .expect("an admin URL ends in /<database>");
    format!("{server}/{name}")
}

/// Create database `name` on the shared server and apply the schema; a pool
/// of at most `max_connections` on it.
pub async fn scratch_database(name: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    scratch_database_at(&url(name), max_connections).await
}

/// [`scratch_database`] for the database that `url` names, on any server.
pub async fn scratch_database_at(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = idem_store::connect(url, max_connections).await?;
    idem_store::migrate(&pool).await?;
    Ok(pool)
}

/// Drop database `name` of the shared server, also while clients are still
/// connected (a worker a failed test left running must not keep it alive):
/// the teardown of every scratch database of the suites, with the store's
/// one statement for it (`idem_store::scratch`, shared with the demo and the
/// benchmark).
pub async fn drop_database(name: &str) -> anyhow::Result<()> {
    idem_store::scratch::drop_database(&url(name)).await
}
