//! `idem bench`'s own statements: a backlog loaded straight into the outbox
//! (one `INSERT ... SELECT generate_series`, not through the pipeline), when
//! each benchmark message was recorded, and the claim's plans.
//!
//! Only the benchmark calls these, always against a database it created for
//! the run and drops after.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::claim;

/// Insert `rows` outbox rows under `scope`, spread over 1,000 accounts:
/// `succeeded` (history: settled rows that the claim must not pay for) when
/// `settled`, else `pending` (work, due now, oldest first). Inserting fires no
/// result event (the trigger is on updates of the state).
pub async fn load_backlog(
    conn: &mut PgConnection,
    scope: &str,
    rows: i64,
    settled: bool,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                             state, attempts, provider_charge_id, settled_at)
         SELECT $1, $1 || '-' || g, md5($1 || '-' || g)::uuid, 'acc_' || (g % 1000),
                100 + g % 9900, 'EUR',
                CASE WHEN $3 THEN 'succeeded' ELSE 'pending' END::outbox_state,
                CASE WHEN $3 THEN 1 ELSE 0 END,
                CASE WHEN $3 THEN 'ch_backlog_' || g END,
                CASE WHEN $3 THEN now() END
         FROM generate_series(1, $2::bigint) g",
    )
    .bind(scope)
    .bind(rows)
    .bind(settled)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// `VACUUM ANALYZE` the outbox, as autovacuum would have done to a table
/// that grew to this size: fresh statistics and a visibility map, so the
/// planner sees the table as production would. Not inside a transaction.
pub async fn vacuum_outbox(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("VACUUM ANALYZE outbox")
        .execute(conn)
        .await
        .map(|_| ())
}

/// What autovacuum would do to a table now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upkeep {
    /// More dead rows than its vacuum threshold: `VACUUM (ANALYZE)`.
    Vacuum(String),
    /// More rows changed since its last analyze than its analyze threshold
    /// (inserts count, which the vacuum threshold ignores): `ANALYZE`.
    Analyze(String),
}

/// The tables autovacuum would vacuum or analyze now: dead rows over
/// `autovacuum_vacuum_threshold` + `autovacuum_vacuum_scale_factor` × live
/// rows, or rows changed since the last analyze over
/// `autovacuum_analyze_threshold` + `autovacuum_analyze_scale_factor` ×
/// `reltuples`; each setting the table's own (the migrations set them for the
/// churn tables) or else the server's. Without the analyze half a queue table
/// keeps the statistics of the moment it was last vacuumed, which may be a
/// moment it was empty.
pub async fn due_for_upkeep(conn: &mut PgConnection) -> Result<Vec<Upkeep>, sqlx::Error> {
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "WITH due AS (
             SELECT s.relname::text AS relname,
                    s.n_dead_tup > coalesce(o.vt, current_setting('autovacuum_vacuum_threshold')::float8)
                        + coalesce(o.vs, current_setting('autovacuum_vacuum_scale_factor')::float8)
                          * s.n_live_tup AS vacuum_due,
                    s.n_mod_since_analyze > coalesce(o.at, current_setting('autovacuum_analyze_threshold')::float8)
                        + coalesce(o.as_, current_setting('autovacuum_analyze_scale_factor')::float8)
                          * greatest(c.reltuples, 0) AS analyze_due
             FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
             -- The table's own settings, one pass over its options.
             CROSS JOIN LATERAL (
                 SELECT max(option_value::float8) FILTER (WHERE option_name = 'autovacuum_vacuum_threshold') AS vt,
                        max(option_value::float8) FILTER (WHERE option_name = 'autovacuum_vacuum_scale_factor') AS vs,
                        max(option_value::float8) FILTER (WHERE option_name = 'autovacuum_analyze_threshold') AS at,
                        max(option_value::float8) FILTER (WHERE option_name = 'autovacuum_analyze_scale_factor') AS as_
                 FROM pg_options_to_table(c.reloptions)) o
         )
         SELECT relname, vacuum_due FROM due WHERE vacuum_due OR analyze_due ORDER BY relname",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, vacuum)| {
            if vacuum {
                Upkeep::Vacuum(t)
            } else {
                Upkeep::Analyze(t)
            }
        })
        .collect())
}

/// Do `upkeep` to its table of this database.
pub async fn upkeep(conn: &mut PgConnection, upkeep: &Upkeep) -> Result<(), sqlx::Error> {
    let (command, table) = match upkeep {
        Upkeep::Vacuum(t) => ("VACUUM (ANALYZE)", t),
        Upkeep::Analyze(t) => ("ANALYZE", t),
    };
    let sql = format!("{command} \"{}\"", table.replace('"', "\"\""));
    sqlx::query(&sql).execute(conn).await.map(|_| ())
}

/// A server setting, as `SHOW` prints it.
pub async fn setting(conn: &mut PgConnection, name: &str) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT current_setting($1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

/// Rows of `scope` that have settled (any final state).
pub async fn count_settled(conn: &mut PgConnection, scope: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE scope = $1 AND settled_at IS NOT NULL")
        .bind(scope)
        .fetch_one(conn)
        .await
}

/// Each row of `scope`: its message id, when it was recorded (the inbox
/// transaction's `now()`, its start) and when it settled (if it has).
pub async fn row_times(
    conn: &mut PgConnection,
    scope: &str,
) -> Result<Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)>, sqlx::Error> {
    sqlx::query_as("SELECT message_id, created_at, settled_at FROM outbox WHERE scope = $1")
        .bind(scope)
        .fetch_all(conn)
        .await
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the claim's statements
/// ([`claim::claim_sql`]) with these parameters, one line per row of the
/// plans (each statement's plan after a `-- statement N` line). The claim
/// really runs, so the caller runs this in a transaction it rolls back.
pub async fn explain_claim(
    conn: &mut PgConnection,
    owner: &str,
    lease: Duration,
    limit: i64,
    per_account_ordering: bool,
) -> Result<Vec<String>, sqlx::Error> {
    let explain = |sql: &str| format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
    let token = Uuid::new_v4();
    let mut lines = Vec::new();
    if !per_account_ordering {
        let [sql] = claim::claim_sql(false) else {
            unreachable!("the unordered claim is one statement")
        };
        lines.push("-- statement 1: claim".to_owned());
        lines.extend(
            sqlx::query_scalar::<_, String>(&explain(sql))
                .bind(owner)
                .bind(lease.as_secs_f64())
                .bind(limit)
                .bind(token)
                .bind(None::<i64>)
                .fetch_all(&mut *conn)
                .await?,
        );
        return Ok(lines);
    }
    let [walk, lease_heads] = claim::claim_sql(true) else {
        unreachable!("the per-account claim is two statements")
    };
    let bound = claim::walk_bound(limit);
    lines.push("-- statement 1: walk the accounts".to_owned());
    lines.extend(
        sqlx::query_scalar::<_, String>(&explain(walk))
            .bind("")
            .bind(bound)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?,
    );
    let ids: Vec<i64> = claim::heads(conn, "", bound, limit)
        .await?
        .into_iter()
        .filter(|h| h.eligible)
        .filter_map(|h| h.id)
        .take(usize::try_from(limit).unwrap_or(0))
        .collect();
    lines.push("-- statement 2: lease the heads".to_owned());
    lines.extend(
        sqlx::query_scalar::<_, String>(&explain(lease_heads))
            .bind(owner)
            .bind(lease.as_secs_f64())
            .bind(ids)
            .bind(token)
            .bind(None::<i64>)
            .fetch_all(conn)
            .await?,
    );
    Ok(lines)
}

/// The server's current WAL insert position, in bytes from the start.
pub async fn wal_position(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        .fetch_one(conn)
        .await
}

/// Keep the server's WAL from `now` on until this session ends: a temporary
/// physical replication slot, reserved at once, so that a run's WAL can be
/// read back after it ([`wal_by_table`]) even when checkpoints would have
/// recycled it. `Ok(false)` when the server does not allow it (no replication
/// privilege, no free slot): the run then goes without the per-table split.
pub async fn hold_wal(conn: &mut PgConnection, slot: &str) -> Result<bool, sqlx::Error> {
    let made = sqlx::query("SELECT pg_create_physical_replication_slot($1, true, true)")
        .bind(slot)
        .execute(conn)
        .await;
    match made {
        Ok(_) => Ok(true),
        // 42501 insufficient privilege, 53400 configuration limit exceeded
        // (max_replication_slots), 55000 object not in prerequisite state
        // (wal_level minimal).
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("42501" | "53400" | "55000")) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// WAL one table and its indexes (and TOAST) wrote.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TableWal {
    /// The table (`-` for records of no relation of this database: commits,
    /// other databases).
    pub table: String,
    /// Bytes of records on the table's heap (and TOAST).
    pub heap_bytes: i64,
    /// Bytes of records on its indexes.
    pub index_bytes: i64,
}

/// The WAL between two positions ([`wal_position`]) split by the table of
/// this database each record is on (its first block's relation, an index
/// counted with its table), read with `pg_walinspect` (PostgreSQL 15+,
/// created here if missing: a superuser's right). `None` when the extension
/// is not available; the WAL must still be on the server ([`hold_wal`]).
pub async fn wal_by_table(
    conn: &mut PgConnection,
    from: i64,
    to: i64,
) -> Result<Option<Vec<TableWal>>, sqlx::Error> {
    let made = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .execute(&mut *conn)
        .await;
    match made {
        Ok(_) => {}
        // Not installed (58P01 undefined file, 0A000), or not ours to create.
        Err(sqlx::Error::Database(e))
            if matches!(
                e.code().as_deref(),
                Some("42501" | "58P01" | "0A000" | "22023")
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let lsn = |at: i64| format!("{:X}/{:X}", at >> 32, at & 0xFFFF_FFFF);
    sqlx::query_as(
        "WITH w AS (
             SELECT record_length,
                    substring(block_ref FROM 'rel \\d+/(\\d+)/\\d+')::oid AS db,
                    substring(block_ref FROM 'rel \\d+/\\d+/(\\d+)')::oid AS node
             FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)
         ), here AS (
             SELECT w.record_length, c.relkind,
                    coalesce(owner.relname, t.relname, c.relname)::text AS table
             FROM w
             LEFT JOIN pg_class c ON c.relfilenode = w.node
                  AND w.db = (SELECT oid FROM pg_database WHERE datname = current_database())
             LEFT JOIN pg_index i ON i.indexrelid = c.oid
             LEFT JOIN pg_class t ON t.oid = i.indrelid
             LEFT JOIN pg_class owner ON owner.reltoastrelid = coalesce(t.oid, c.oid)
         )
         SELECT coalesce(\"table\", '-') AS table,
                coalesce(sum(record_length) FILTER (WHERE relkind IS DISTINCT FROM 'i'), 0)::bigint AS heap_bytes,
                coalesce(sum(record_length) FILTER (WHERE relkind = 'i'), 0)::bigint AS index_bytes
         FROM here GROUP BY 1 ORDER BY 1",
    )
    .bind(lsn(from))
    .bind(lsn(to))
    .fetch_all(conn)
    .await
    .map(Some)
}

/// One table's write counters (`pg_stat_user_tables`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TableWrites {
    /// The table.
    pub table: String,
    /// Rows inserted.
    pub inserted: i64,
    /// Rows updated (HOT ones included).
    pub updated: i64,
    /// HOT updates.
    pub hot_updated: i64,
    /// Rows deleted.
    pub deleted: i64,
}

/// The write counters of every table of this database, as far as its
/// sessions have flushed them (a session flushes at most once a second while
/// busy, and when it ends).
pub async fn table_writes(conn: &mut PgConnection) -> Result<Vec<TableWrites>, sqlx::Error> {
    sqlx::query_as(
        "SELECT relname::text AS table, n_tup_ins AS inserted, n_tup_upd AS updated,
                n_tup_hot_upd AS hot_updated, n_tup_del AS deleted
         FROM pg_stat_user_tables ORDER BY relname",
    )
    .fetch_all(conn)
    .await
}

/// The rows in flight under `owner`.
pub async fn in_flight_of(conn: &mut PgConnection, owner: &str) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM outbox WHERE state = 'in_flight' AND lease_owner = $1")
        .bind(owner)
        .fetch_all(conn)
        .await
}

/// Which of the rows `ids` have not settled yet.
pub async fn unsettled_of(conn: &mut PgConnection, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM outbox WHERE id = ANY($1) AND settled_at IS NULL")
        .bind(ids)
        .fetch_all(conn)
        .await
}
