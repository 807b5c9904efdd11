//! least-sql: the least SQL the guarantees need, as a ceiling no design of
//! idem's tables can beat on this server — an inbox key with the payload's
//! fingerprint, an outbox row with a unique reference, a leased claim and a
//! fenced settle, 50 messages per transaction, in tables of their own (schema
//! `least` of a scratch database) with only the indexes those statements
//! need. No broker, no HTTP, no attempt history, no result events, no
//! per-account ordering: everything idem does beyond this is what the
//! end-to-end run is compared against it for.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sqlx::PgPool;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::args::BenchArgs;
use super::cpu::{PerMessage, Watch};
use super::scratch::Scratch;

/// Messages per transaction (and per claim and settle).
const BATCH: usize = 50;
/// Loops at once, each on its own connection.
const LOOPS: usize = 4;

/// What the least SQL reached.
#[derive(Debug, Clone, Serialize)]
pub struct LeastReport {
    /// Messages recorded, claimed and settled.
    pub messages: usize,
    /// Per transaction.
    pub batch: usize,
    /// Loops at once.
    pub loops: usize,
    /// Wall time, s.
    pub elapsed_s: f64,
    /// Messages per second.
    pub msg_per_s: f64,
    /// WAL bytes per message.
    pub wal_bytes_per_msg: f64,
    /// CPU per message.
    pub cpu: PerMessage,
}

const SCHEMA: &str = "
CREATE SCHEMA least;
CREATE TABLE least.inbox (
    scope text NOT NULL, message_id text NOT NULL, fingerprint bytea NOT NULL,
    PRIMARY KEY (scope, message_id));
CREATE TABLE least.outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reference_id uuid NOT NULL UNIQUE,
    account_id text NOT NULL, amount bigint NOT NULL,
    state smallint NOT NULL DEFAULT 0,
    lease_token uuid, lease_expires_at timestamptz, charge_id text);
CREATE INDEX least_due ON least.outbox (id) WHERE state = 0;";

/// Run it in a scratch database of its own.
pub async fn run(args: &BenchArgs, watch: &Watch) -> anyhow::Result<LeastReport> {
    let scratch = Scratch::create(&args.database_url, &args.broker.amqp_url, false).await?;
    let outcome = measure(args, watch, &scratch).await;
    scratch.drop_all().await;
    outcome
}

async fn measure(
    args: &BenchArgs,
    watch: &Watch,
    scratch: &Scratch,
) -> anyhow::Result<LeastReport> {
    sqlx::raw_sql(SCHEMA).execute(&scratch.pool).await?;
    let messages = args.messages;
    let mut conn = scratch.pool.acquire().await?;
    let wal_before = idem_store::bench::wal_position(&mut conn).await?;
    drop(conn);
    let before = watch.sample(&scratch.database(), scratch.upkeep_pid());
    let started = Instant::now();
    let pool = Arc::new(scratch.pool.clone());
    let mut loops = JoinSet::new();
    for n in 0..LOOPS {
        let pool = Arc::clone(&pool);
        loops.spawn(async move { one_loop(&pool, n, messages).await });
    }
    while let Some(done) = loops.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    let after = watch.sample(&scratch.database(), scratch.upkeep_pid());
    let mut conn = scratch.pool.acquire().await?;
    let wal_after = idem_store::bench::wal_position(&mut conn).await?;
    let settled: i64 = sqlx::query_scalar("SELECT count(*) FROM least.outbox WHERE state = 2")
        .fetch_one(&mut *conn)
        .await?;
    anyhow::ensure!(
        settled as usize == messages,
        "least-sql settled {settled} of {messages}"
    );
    Ok(LeastReport {
        messages,
        batch: BATCH,
        loops: LOOPS,
        elapsed_s: elapsed.as_secs_f64(),
        msg_per_s: messages as f64 / elapsed.as_secs_f64().max(1e-9),
        wal_bytes_per_msg: (wal_after - wal_before) as f64 / messages.max(1) as f64,
        cpu: PerMessage::between(&before, &after, messages),
    })
}

/// Loop `n` of [`LOOPS`]: every `LOOPS`-th batch of the messages — record
/// it (inbox keys and outbox rows in one transaction), claim a batch with a
/// lease, settle it fenced by the lease.
async fn one_loop(pool: &PgPool, n: usize, messages: usize) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let starts = (0..messages).step_by(BATCH).skip(n).step_by(LOOPS);
    for start in starts {
        let end = (start + BATCH).min(messages);
        let ids: Vec<String> = (start..end).map(|i| format!("least-{i}")).collect();
        let fingerprints: Vec<Vec<u8>> = ids.iter().map(|id| id.as_bytes().to_vec()).collect();
        let references: Vec<Uuid> = ids
            .iter()
            .map(|id| idem_message::reference_id("least", id))
            .collect();
        let accounts: Vec<String> = (start..end).map(|i| format!("acc_{}", i % 1000)).collect();
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query(
            "INSERT INTO least.inbox (scope, message_id, fingerprint)
             SELECT 'least', * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&fingerprints)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO least.outbox (reference_id, account_id, amount)
             SELECT r, a, 100 FROM unnest($1::uuid[], $2::text[]) AS u(r, a)
             ON CONFLICT (reference_id) DO NOTHING",
        )
        .bind(&references)
        .bind(&accounts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        claim_and_settle(&mut conn).await?;
    }
    // What other loops left (a claim can take rows another loop recorded).
    while claim_and_settle(&mut conn).await? > 0 {}
    Ok(())
}

/// Claim up to a batch of due rows with a lease, then settle them fenced by
/// it; how many.
async fn claim_and_settle(conn: &mut sqlx::PgConnection) -> anyhow::Result<usize> {
    let token = Uuid::new_v4();
    let claimed: Vec<i64> = sqlx::query_scalar(
        "UPDATE least.outbox o SET state = 1, lease_token = $1,
             lease_expires_at = now() + interval '30 seconds'
         FROM (SELECT id FROM least.outbox WHERE state = 0 ORDER BY id LIMIT $2
               FOR UPDATE SKIP LOCKED) due
         WHERE o.id = due.id RETURNING o.id",
    )
    .bind(token)
    .bind(BATCH as i64)
    .fetch_all(&mut *conn)
    .await?;
    if !claimed.is_empty() {
        sqlx::query(
            "UPDATE least.outbox SET state = 2, charge_id = 'ch_' || id,
                 lease_token = NULL, lease_expires_at = NULL
             WHERE id = ANY($1) AND lease_token = $2 AND state = 1",
        )
        .bind(&claimed)
        .bind(token)
        .execute(&mut *conn)
        .await?;
    }
    Ok(claimed.len())
}
