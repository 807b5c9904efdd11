//! What a run wrote, per message: WAL bytes (`pg_current_wal_lsn()` before
//! and after; the whole server's, so nothing else should run meanwhile) and
//! rows inserted, updated (HOT or not) and deleted per table, from
//! `pg_stat_user_tables` of the run's database (read after its replicas
//! stopped, when their sessions have flushed their counters).

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgPool;

use idem_store::bench::TableWrites;

/// A sample of the counters.
#[derive(Debug, Clone)]
pub struct Sample {
    wal: i64,
    tables: BTreeMap<String, TableWrites>,
}

/// Take a sample on `pool` (the run's database).
pub async fn sample(pool: &PgPool) -> anyhow::Result<Sample> {
    let mut conn = pool.acquire().await?;
    Ok(Sample {
        wal: idem_store::bench::wal_position(&mut conn).await?,
        tables: idem_store::bench::table_writes(&mut conn)
            .await?
            .into_iter()
            .map(|t| (t.table.clone(), t))
            .collect(),
    })
}

/// Writes per message between two samples.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Writes {
    /// WAL bytes per message.
    pub wal_bytes_per_msg: f64,
    /// Row writes per message, all tables.
    pub rows_per_msg: f64,
    /// Per table that was written (rows per message).
    pub tables: Vec<TablePerMessage>,
}

/// One table's row writes per message.
#[derive(Debug, Clone, Serialize)]
pub struct TablePerMessage {
    /// The table.
    pub table: String,
    /// Rows inserted.
    pub inserted: f64,
    /// Rows updated, HOT ones included.
    pub updated: f64,
    /// Of those, HOT updates (no index entry written).
    pub hot: f64,
    /// Rows deleted.
    pub deleted: f64,
}

impl Writes {
    /// From `before` to `after`, over `messages`.
    pub fn between(before: &Sample, after: &Sample, messages: usize) -> Self {
        let n = messages.max(1) as f64;
        let mut tables = Vec::new();
        for (name, a) in &after.tables {
            let b = before.tables.get(name);
            let delta = |f: fn(&TableWrites) -> i64| (f(a) - b.map_or(0, f)) as f64 / n;
            let t = TablePerMessage {
                table: name.clone(),
                inserted: delta(|t| t.inserted),
                updated: delta(|t| t.updated),
                hot: delta(|t| t.hot_updated),
                deleted: delta(|t| t.deleted),
            };
            // The migrations' own table is the scratch database's set-up
            // (its counters may be flushed after the first sample), not the
            // pipeline.
            if name != "_sqlx_migrations" && t.inserted + t.updated + t.deleted > 0.0 {
                tables.push(t);
            }
        }
        Self {
            wal_bytes_per_msg: (after.wal - before.wal) as f64 / n,
            rows_per_msg: tables
                .iter()
                .map(|t| t.inserted + t.updated + t.deleted)
                .sum(),
            tables,
        }
    }
}
