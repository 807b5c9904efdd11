//! What a run wrote, per message: WAL bytes (`pg_current_wal_lsn()` before
//! and after; the whole server's, so nothing else should run meanwhile) and
//! rows inserted, updated (HOT or not) and deleted per table, from
//! `pg_stat_user_tables` of the run's database (read after its replicas
//! stopped, when their sessions have flushed their counters); and, where the
//! server allows it, the WAL split by table, heap and indexes, read back
//! with `pg_walinspect` from a temporary replication slot that keeps the
//! run's WAL on the server ([`WalHold`]).

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

use idem_store::bench::{TableWal, TableWrites};

/// The most WAL a run's split by table is read back from (2 GiB).
const MOST_WAL_SPLIT: i64 = 2 << 30;
/// WAL per message a run is assumed to write at most, to decide before it
/// whether to keep its WAL: the 10-minute run wrote 9,798 bytes (full-page
/// images after checkpoints), short runs about 4,000.
const WAL_PER_MESSAGE_BOUND: i64 = 12_000;

/// The session whose temporary replication slot keeps a run's WAL on the
/// server until it is read back; the slot goes with the session.
pub struct WalHold {
    conn: Option<PgConnection>,
}

impl WalHold {
    /// Open a session on `database_url` and reserve the WAL from now on, for
    /// a run of `messages`. Without the right to (or a free slot) the hold
    /// is empty and the report goes without the per-table WAL; so too for a
    /// run that may write more than [`MOST_WAL_SPLIT`] (at up to
    /// [`WAL_PER_MESSAGE_BOUND`] per message): the slot would keep all of it
    /// on the server's disk until the run ends.
    pub async fn start(database_url: &str, messages: usize) -> anyhow::Result<Self> {
        let expected = i64::try_from(messages)
            .unwrap_or(i64::MAX)
            .saturating_mul(WAL_PER_MESSAGE_BOUND);
        if expected > MOST_WAL_SPLIT {
            tracing::info!(
                messages,
                "a run this long keeps no WAL for the split by table"
            );
            return Ok(Self { conn: None });
        }
        let mut conn = PgConnection::connect(database_url).await?;
        let slot = format!("idem_bench_{}", uuid::Uuid::new_v4().simple());
        let held = idem_store::bench::hold_wal(&mut conn, &slot).await?;
        if !held {
            tracing::info!("no replication slot for the bench: WAL per table not reported");
        }
        Ok(Self {
            conn: held.then_some(conn),
        })
    }

    /// The WAL between the samples split by table, then the slot let go.
    /// Not over [`MOST_WAL_SPLIT`]: reading it back would take longer than
    /// the run (the 10-minute run wrote 12 GB, read back in about 8 minutes).
    async fn split(self, before: &Sample, after: &Sample) -> anyhow::Result<Option<Vec<TableWal>>> {
        let Some(mut conn) = self.conn else {
            return Ok(None);
        };
        let written = after.wal - before.wal;
        if written > MOST_WAL_SPLIT {
            tracing::info!(
                gib = written as f64 / (1u64 << 30) as f64,
                "the run's WAL is too large to read back: WAL per table not reported"
            );
            conn.close().await?;
            return Ok(None);
        }
        let split = idem_store::bench::wal_by_table(&mut conn, before.wal, after.wal).await?;
        conn.close().await?;
        Ok(split)
    }
}

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
    /// Whether the WAL per table below was measured (`pg_walinspect` and a
    /// replication slot on the server).
    pub wal_by_table: bool,
    /// WAL bytes per message on no table of the run's (commits, the
    /// server's own bookkeeping, other databases), when split by table.
    pub wal_elsewhere_bytes: Option<f64>,
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
    /// WAL bytes of records on the table's heap (and TOAST), per message.
    pub wal_heap_bytes: Option<f64>,
    /// WAL bytes of records on its indexes, per message.
    pub wal_index_bytes: Option<f64>,
}

/// Writes per message between `before` and `after`, with the WAL per table
/// if `hold` kept it.
pub async fn measure(
    hold: WalHold,
    before: &Sample,
    after: &Sample,
    messages: usize,
) -> anyhow::Result<Writes> {
    let split = hold.split(before, after).await?;
    Ok(Writes::between(before, after, messages, split.as_deref()))
}

impl Writes {
    /// From `before` to `after`, over `messages`; `wal` the WAL per table
    /// between them, if measured.
    pub fn between(
        before: &Sample,
        after: &Sample,
        messages: usize,
        wal: Option<&[TableWal]>,
    ) -> Self {
        let n = messages.max(1) as f64;
        let mut tables = Vec::new();
        for (name, a) in &after.tables {
            let b = before.tables.get(name);
            let delta = |f: fn(&TableWrites) -> i64| (f(a) - b.map_or(0, f)) as f64 / n;
            let table_wal = |f: fn(&TableWal) -> i64| {
                wal.map(|w| {
                    w.iter()
                        .find(|t| &t.table == name)
                        .map_or(0.0, |t| f(t) as f64 / n)
                })
            };
            let t = TablePerMessage {
                table: name.clone(),
                inserted: delta(|t| t.inserted),
                updated: delta(|t| t.updated),
                hot: delta(|t| t.hot_updated),
                deleted: delta(|t| t.deleted),
                wal_heap_bytes: table_wal(|t| t.heap_bytes),
                wal_index_bytes: table_wal(|t| t.index_bytes),
            };
            // The migrations' own table is the scratch database's set-up
            // (its counters may be flushed after the first sample), not the
            // pipeline.
            if name != "_sqlx_migrations" && t.inserted + t.updated + t.deleted > 0.0 {
                tables.push(t);
            }
        }
        let wal_bytes_per_msg = (after.wal - before.wal) as f64 / n;
        let on_tables: f64 = tables
            .iter()
            .filter_map(|t| Some(t.wal_heap_bytes? + t.wal_index_bytes?))
            .sum();
        Self {
            wal_bytes_per_msg,
            rows_per_msg: tables
                .iter()
                .map(|t| t.inserted + t.updated + t.deleted)
                .sum(),
            wal_by_table: wal.is_some(),
            wal_elsewhere_bytes: wal.map(|_| wal_bytes_per_msg - on_tables),
            tables,
        }
    }
}
