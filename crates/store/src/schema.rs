//! The schema: the embedded migrator, applying it, and whether a database
//! has this release's migrations, read without changing it (for the
//! read-only commands, which never migrate: an operator's look must not
//! change the schema under running replicas).

use std::collections::HashSet;

use anyhow::Context;
use sqlx::PgPool;

/// The workspace's `migrations/`, embedded in every binary that links the store.
///
/// `ignore_missing`: a migration applied by a *newer* release is accepted, so
/// an older replica that restarts during a rolling upgrade (or after a
/// rollback) starts against the expanded schema — which the expand/contract
/// rules of docs/upgrades.md make safe — instead of crash-looping. A migration
/// whose file changed after it was applied (checksum) is still refused.
pub static MIGRATOR: sqlx::migrate::Migrator = {
    let mut migrator = sqlx::migrate!("../../migrations");
    migrator.ignore_missing = true;
    migrator
};

/// Apply pending migrations. Safe when several replicas start at once: the
/// migrator serialises them with a PostgreSQL advisory lock.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("applying the database schema (migrations) failed")
}

/// Why a database cannot be read as this release's schema. A schema *ahead*
/// (migrations of a newer release applied) is not among them: the expand /
/// contract rules of docs/upgrades.md make it readable, as the migrator
/// accepts it (`ignore_missing`).
#[derive(Debug, thiserror::Error)]
pub enum SchemaBehind {
    /// No migration was ever applied: a database `idem migrate` never ran on.
    #[error("it has no idem schema (no migration applied)")]
    Empty,
    /// Some of this release's migrations are not applied.
    #[error(
        "its schema is behind this release: {count} migration(s) not applied, the first {first}"
    )]
    Behind {
        /// The oldest of this release's migrations not applied.
        first: i64,
        /// How many are not applied.
        count: usize,
    },
    /// A migration failed part-way: the migrator refuses to go on until a
    /// person has looked.
    #[error(
        "migration {version} was left partly applied (success = false in _sqlx_migrations): \
         repair the schema by hand, delete that row, then run `idem migrate`"
    )]
    Dirty {
        /// The failed migration.
        version: i64,
    },
    /// The applied migrations could not be read.
    #[error("reading the applied migrations (_sqlx_migrations) failed")]
    Database(#[from] sqlx::Error),
}

/// Check that every migration of this release is applied, reading
/// `_sqlx_migrations` (the migrator's own record) and creating nothing.
pub async fn check_schema(pool: &PgPool) -> Result<(), SchemaBehind> {
    let mut conn = pool.acquire().await?;
    // `to_regclass` resolves the name as the migrator does (search_path),
    // and is NULL instead of an error when there is no such table.
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !recorded {
        return Err(SchemaBehind::Empty);
    }
    let rows: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
    judge(&rows)
}

/// The verdict on the applied migrations `(version, success)`, in version
/// order, against this release's.
fn judge(applied: &[(i64, bool)]) -> Result<(), SchemaBehind> {
    if let Some(&(version, _)) = applied.iter().find(|(_, success)| !success) {
        return Err(SchemaBehind::Dirty { version });
    }
    if applied.is_empty() {
        return Err(SchemaBehind::Empty);
    }
    let applied: HashSet<i64> = applied.iter().map(|(version, _)| *version).collect();
    let missing: Vec<i64> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .filter(|version| !applied.contains(version))
        .collect();
    match missing.iter().min() {
        Some(&first) => Err(SchemaBehind::Behind {
            first,
            count: missing.len(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use sqlx::{Connection, PgConnection};

    use super::*;

    fn server() -> &'static str {
        crate::test_server::server()
    }

    /// A database of its own for one test, dropped by [`Scratch::drop_now`]
    /// (a failed test leaves it behind, under a name of its own).
    struct Scratch {
        name: String,
    }

    impl Scratch {
        /// A name no database has; created only when `create`.
        async fn new(create: bool) -> Self {
            let name = format!("idem_store_t_{}", uuid::Uuid::new_v4().simple());
            if create {
                admin(&format!("CREATE DATABASE \"{name}\"")).await;
            }
            Self { name }
        }

        fn url(&self) -> String {
            format!("{}/{}", server(), self.name)
        }

        async fn exists(&self) -> bool {
            let mut conn = PgConnection::connect(&format!("{}/postgres", server()))
                .await
                .unwrap();
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&self.name)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }

        async fn drop_now(self) {
            crate::scratch::drop_database(&self.url()).await.unwrap();
        }
    }

    async fn admin(sql: &str) {
        let mut conn = PgConnection::connect(&format!("{}/postgres", server()))
            .await
            .unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }

    /// The newest migration of this release.
    fn latest() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap()
    }

    #[test]
    fn judge_tells_empty_behind_dirty_current_and_ahead_apart() {
        let ours: Vec<(i64, bool)> = MIGRATOR.iter().map(|m| (m.version, true)).collect();
        assert!(matches!(judge(&[]), Err(SchemaBehind::Empty)));
        assert!(judge(&ours).is_ok());
        let mut ahead = ours.clone();
        ahead.push((latest() + 1, true));
        assert!(judge(&ahead).is_ok(), "a newer release's migration is fine");
        let behind = &ours[..ours.len() - 2];
        let first = ours[ours.len() - 2].0;
        assert!(matches!(
            judge(behind),
            Err(SchemaBehind::Behind { first: f, count: 2 }) if f == first
        ));
        let mut dirty = ours.clone();
        dirty.last_mut().unwrap().1 = false;
        assert!(matches!(
            judge(&dirty),
            Err(SchemaBehind::Dirty { version }) if version == latest()
        ));
    }

    #[tokio::test]
    async fn an_unmigrated_database_is_empty_and_stays_so() {
        let db = Scratch::new(true).await;
        let pool = PgPool::connect(&db.url()).await.unwrap();
        let err = check_schema(&pool).await.unwrap_err();
        assert!(matches!(err, SchemaBehind::Empty), "{err}");
        let recorded: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(!recorded, "the check created the migrator's table");
        pool.close().await;
        db.drop_now().await;
    }

    #[tokio::test]
    async fn a_migrated_database_passes_ahead_too_and_fails_behind_or_dirty() {
        let db = Scratch::new(true).await;
        let pool = PgPool::connect(&db.url()).await.unwrap();
        crate::migrate(&pool).await.unwrap();
        check_schema(&pool).await.unwrap();
        let execute = |sql: &'static str| {
            let pool = pool.clone();
            async move { sqlx::query(sql).execute(&pool).await.unwrap() }
        };
        // A newer release's migration on top.
        execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (99991231000000, 'from the future', true, '\\x00', 0)",
        )
        .await;
        check_schema(&pool).await.unwrap();
        // This release's newest migration not applied (an older schema).
        let newest = latest();
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
            .bind(newest)
            .execute(&pool)
            .await
            .unwrap();
        let err = check_schema(&pool).await.unwrap_err();
        assert!(
            matches!(err, SchemaBehind::Behind { first, count: 1 } if first == newest),
            "{err}"
        );
        execute("UPDATE _sqlx_migrations SET success = false WHERE version = 99991231000000").await;
        let err = check_schema(&pool).await.unwrap_err();
        assert!(matches!(err, SchemaBehind::Dirty { .. }), "{err}");
        pool.close().await;
        db.drop_now().await;
    }

    #[tokio::test]
    async fn connect_existing_never_creates_a_database() {
        let db = Scratch::new(false).await;
        let url = db.url().replace("postgres@", "postgres:s3cret@");
        let err = crate::connect_existing(&url, 1).await.unwrap_err();
        let shown = format!("{err:#}");
        assert!(
            shown.contains("does not exist") && shown.contains("idem migrate"),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            !db.exists().await,
            "a read-only connect created the database"
        );
        db.drop_now().await;
    }

    #[tokio::test]
    async fn connect_existing_refuses_an_unmigrated_database_and_accepts_a_migrated_one() {
        let db = Scratch::new(true).await;
        let err = crate::connect_existing(&db.url(), 1).await.unwrap_err();
        let shown = format!("{err:#}");
        assert!(
            shown.contains("idem migrate") && shown.contains("no idem schema"),
            "{shown}"
        );
        assert!(
            !shown.contains('\n'),
            "one line, as the binary prints it: {shown}"
        );
        let pool = crate::connect(&db.url(), 1).await.unwrap();
        crate::migrate(&pool).await.unwrap();
        pool.close().await;
        let pool = crate::connect_existing(&db.url(), 1).await.unwrap();
        pool.close().await;
        db.drop_now().await;
    }
}
