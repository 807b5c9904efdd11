//! Recording a whole inbox batch set-based: one statement per kind of row,
//! each over arrays (`unnest … WITH ORDINALITY`), instead of a handful of
//! round trips per message.
//!
//! The caller (`idem_inbox::batch`) validates every delivery in Rust first,
//! keeps one candidate per key (the first copy in arrival order), judges the
//! later copies itself, and runs these statements in its open transaction,
//! behind one savepoint: a statement the database refuses rolls the batch's
//! writes back and the caller falls back to deciding message by message. The
//! semantics are those of [`crate::inbox::record`] and
//! [`crate::event::on_duplicate`], applied to many rows at once.
//!
//! Row order is explicit everywhere (`ORDER BY ord`): identity values, and so
//! outbox ids, are assigned in the order the rows are inserted, and the caller
//! chooses that order on purpose (arrival order for the outbox, key order for
//! the inbox locks).

use idem_message::ChargeRequest;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::outbox::OutboxState;
use crate::quarantine::{Kept, Quarantined};

/// One key to record, as [`upsert_keys`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    /// Dedup scope.
    pub scope: &'a str,
    /// The producer's key.
    pub message_id: &'a str,
    /// The candidate copy's fingerprint.
    pub fingerprint: &'a [u8],
}

/// What [`upsert_keys`] decided for one key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Upserted {
    /// Dedup scope.
    pub scope: String,
    /// The producer's key.
    pub message_id: String,
    /// Whether this statement created the key (the candidate is new, unless
    /// its outbox row already exists: see `recall` in the caller).
    pub inserted: bool,
    /// The fingerprint the key holds: the candidate's when inserted, the
    /// first recorded copy's otherwise.
    pub fingerprint: Vec<u8>,
}

/// Insert every key, or count the candidate as a duplicate or conflict of the
/// key already recorded; returns one row per key, in no particular order.
///
/// `keys` must be distinct: PostgreSQL refuses an `ON CONFLICT DO UPDATE` that
/// touches one row twice (SQLSTATE 21000), which would fail the whole batch.
/// Rows are locked in the order of `keys`; callers pass them sorted by key so
/// that two replicas with overlapping batches take the locks in one order and
/// cannot deadlock on inbox rows. `xmax = 0` tells a fresh row from an updated
/// one, as in [`crate::inbox::record`]; a concurrent insert of the same key
/// waits for the row lock and then takes the `DO UPDATE` branch.
pub async fn upsert_keys(
    conn: &mut PgConnection,
    keys: &[Key<'_>],
) -> Result<Vec<Upserted>, sqlx::Error> {
    let scopes: Vec<&str> = keys.iter().map(|k| k.scope).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.message_id).collect();
    let fingerprints: Vec<&[u8]> = keys.iter().map(|k| k.fingerprint).collect();
    sqlx::query_as(
        "INSERT INTO inbox AS i (scope, message_id, fingerprint)
         SELECT k.scope, k.message_id, k.fingerprint
         FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY
              AS k(scope, message_id, fingerprint, ord)
         ORDER BY k.ord
         ON CONFLICT (scope, message_id) DO UPDATE SET
             duplicates   = i.duplicates + (i.fingerprint =  EXCLUDED.fingerprint)::int,
             conflicts    = i.conflicts  + (i.fingerprint <> EXCLUDED.fingerprint)::int,
             last_seen_at = now()
         RETURNING i.scope, i.message_id, (i.xmax = 0) AS inserted, i.fingerprint",
    )
    .bind(scopes)
    .bind(ids)
    .bind(fingerprints)
    .fetch_all(conn)
    .await
}

/// Insert the outbox rows of new keys; returns `(reference_id, outbox id)` of
/// each row written.
///
/// Rows are inserted in the order of `requests`, which must be arrival order:
/// ids follow insertion order and per-account ordering dispatches by id. A
/// reference that already has a row (its inbox key was removed by retention
/// while the row was kept) is skipped, not refused, exactly as
/// [`crate::outbox::enqueue`] does; the caller recalls those.
pub async fn enqueue(
    conn: &mut PgConnection,
    requests: &[&ChargeRequest],
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    let column = |f: fn(&ChargeRequest) -> Option<&str>| -> Vec<Option<&str>> {
        requests.iter().map(|r| f(r)).collect()
    };
    sqlx::query_as(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                             description, reply_to, correlation_id, traceparent)
         SELECT r.scope, r.message_id, r.reference_id, r.account_id, r.amount, r.currency,
                r.description, r.reply_to, r.correlation_id, r.traceparent
         FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::int8[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[]) WITH ORDINALITY
              AS r(scope, message_id, reference_id, account_id, amount, currency,
                   description, reply_to, correlation_id, traceparent, ord)
         ORDER BY r.ord
         ON CONFLICT (reference_id) DO NOTHING
         RETURNING reference_id, id",
    )
    .bind(column(|r| Some(r.scope())))
    .bind(column(|r| Some(r.message_id())))
    .bind(
        requests
            .iter()
            .map(|r| r.reference_id())
            .collect::<Vec<_>>(),
    )
    .bind(column(|r| Some(r.body().account_id.as_str())))
    .bind(requests.iter().map(|r| r.body().amount).collect::<Vec<_>>())
    .bind(column(|r| Some(r.body().currency.as_str())))
    .bind(column(|r| r.body().description.as_deref()))
    .bind(column(|r| r.reply_to.as_deref()))
    .bind(column(|r| r.correlation_id.as_deref()))
    .bind(column(|r| r.traceparent.as_deref()))
    .fetch_all(conn)
    .await
}

/// An existing outbox row's payload and state, as [`stored`] reads it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredRow {
    /// The row's idempotency key.
    pub reference_id: Uuid,
    /// Account charged (or to charge).
    pub account_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// Where the row is in its lifecycle.
    pub state: OutboxState,
}

/// The outbox rows of `references` that exist: for keys the inbox had
/// forgotten but whose outbox row [`enqueue`] ran into, so the caller judges
/// the message against the payload that row was created with. Rare (only
/// after retention removed a key), hence read separately.
pub async fn stored(
    conn: &mut PgConnection,
    references: &[Uuid],
) -> Result<Vec<StoredRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT reference_id, account_id, amount, currency, state
         FROM outbox WHERE reference_id = ANY($1)",
    )
    .bind(references)
    .fetch_all(conn)
    .await
}

/// A correction to one inbox key after [`upsert_keys`], as [`recount`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct Recount<'a> {
    /// Dedup scope.
    pub scope: &'a str,
    /// The producer's key.
    pub message_id: &'a str,
    /// A fingerprint to store instead (a recalled key gets the fingerprint of
    /// what its outbox row charged), or `None` to keep it.
    pub fingerprint: Option<&'a [u8]>,
    /// Duplicates to add.
    pub duplicates: i32,
    /// Conflicts to add.
    pub conflicts: i32,
}

/// Count what [`upsert_keys`] could not: the later copies of a key within the
/// batch (one upsert cannot touch a row twice), and the judgement of a
/// recalled key, whose fingerprint it also restores. One row per key; `UPDATE
/// … FROM` would apply only one of several rows for the same key.
pub async fn recount(conn: &mut PgConnection, rows: &[Recount<'_>]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE inbox i SET fingerprint = coalesce(u.fingerprint, i.fingerprint),
             duplicates   = i.duplicates + u.duplicates,
             conflicts    = i.conflicts  + u.conflicts,
             last_seen_at = now()
         FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int4[], $5::int4[])
              AS u(scope, message_id, fingerprint, duplicates, conflicts)
         WHERE i.scope = u.scope AND i.message_id = u.message_id",
    )
    .bind(rows.iter().map(|r| r.scope).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.fingerprint).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.duplicates).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.conflicts).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// One key conflict, as [`conflicts`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct Conflict<'a> {
    /// Dedup scope.
    pub scope: &'a str,
    /// The producer's key.
    pub message_id: &'a str,
    /// The fingerprint the key holds.
    pub stored_fingerprint: &'a [u8],
    /// The fingerprint of the copy that disagreed.
    pub received_fingerprint: &'a [u8],
    /// That copy's raw body.
    pub body: &'a [u8],
}

/// Record key conflicts (same key, other payload: never charged), in the
/// order given.
pub async fn conflicts(conn: &mut PgConnection, rows: &[Conflict<'_>]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO key_conflict (scope, message_id, stored_fingerprint, received_fingerprint, body)
         SELECT c.scope, c.message_id, c.stored, c.received, c.body
         FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::bytea[]) WITH ORDINALITY
              AS c(scope, message_id, stored, received, body, ord)
         ORDER BY c.ord",
    )
    .bind(rows.iter().map(|r| r.scope).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.stored_fingerprint).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.received_fingerprint).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Quarantine bad input, in the order given, each row bounded as
/// [`crate::quarantine::insert`] stores it ([`Quarantined::kept`]). Returns
/// how many rows were stored.
pub async fn quarantine(
    conn: &mut PgConnection,
    rows: &[Quarantined<'_>],
) -> Result<u64, sqlx::Error> {
    let kept: Vec<Kept<'_>> = rows.iter().map(Quarantined::kept).collect();
    let done = sqlx::query(
        "INSERT INTO quarantine (reason_code, reason, message_id, properties, body,
                                 body_size, body_sha256, body_truncated, properties_truncated)
         SELECT q.reason_code, q.reason, q.message_id, q.properties, q.body,
                q.body_size, q.body_sha256, q.body_truncated, q.properties_truncated
         FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[], $5::bytea[],
                     $6::int8[], $7::bytea[], $8::bool[], $9::bool[]) WITH ORDINALITY
              AS q(reason_code, reason, message_id, properties, body,
                   body_size, body_sha256, body_truncated, properties_truncated, ord)
         ORDER BY q.ord",
    )
    .bind(rows.iter().map(|r| r.reason_code).collect::<Vec<_>>())
    .bind(kept.iter().map(|k| k.reason.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
    .bind(kept.iter().map(|k| &*k.properties).collect::<Vec<_>>())
    .bind(kept.iter().map(|k| k.body).collect::<Vec<_>>())
    .bind(kept.iter().map(|k| k.body_size).collect::<Vec<_>>())
    .bind(kept.iter().map(|k| &k.body_sha256[..]).collect::<Vec<_>>())
    .bind(kept.iter().map(|k| k.body_truncated).collect::<Vec<_>>())
    .bind(
        kept.iter()
            .map(|k| k.properties_truncated)
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// One recorded duplicate, as [`on_duplicates`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct Duplicate<'a> {
    /// The operation it duplicates.
    pub reference_id: Uuid,
    /// The duplicate's own `reply_to`.
    pub reply_to: Option<&'a str>,
    /// The duplicate's own `correlation_id`.
    pub correlation_id: Option<&'a str>,
}

/// [`crate::event::on_duplicate`] for many duplicates at once, in the order
/// given: a `replayed` event per duplicate of a final row, a `result_reply`
/// per distinct reply owed by a duplicate of an open row. Returns how many of
/// each were written.
///
/// The rows are read `FOR SHARE`, with the same reasoning as the single
/// version: a settle in progress is waited for, so either this statement sees
/// the row final, or the settle's trigger (which waits for this transaction)
/// sees the owed reply. Two duplicates in one batch asking for the same reply
/// are owed one (`ON CONFLICT DO NOTHING`, which, unlike `DO UPDATE`, accepts
/// the same row twice in one statement); each gets its own replayed event, as
/// two single calls would.
pub async fn on_duplicates(
    conn: &mut PgConnection,
    rows: &[Duplicate<'_>],
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "WITH dup AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY
                 AS d(reference_id, reply_to, correlation_id, ord)
         ), target AS (
             -- In id order, as settles lock them (`settle::settle_many`):
             -- a batch of duplicates and a group of settles over the same
             -- rows queue instead of deadlocking.
             SELECT * FROM outbox WHERE reference_id IN (SELECT reference_id FROM dup)
             ORDER BY id FOR SHARE
         ), replay AS (
             INSERT INTO result_event (kind, outbox_id, scope, message_id, reference_id,
                                       account_id, amount, currency, state, provider_charge_id,
                                       result, error, settled_at, traceparent, reply_to,
                                       correlation_id)
             SELECT 'replayed', t.id, t.scope, t.message_id, t.reference_id, t.account_id,
                    t.amount, t.currency, t.state, t.provider_charge_id, t.result,
                    CASE WHEN t.state = 'dead' THEN t.last_error END,
                    coalesce(t.settled_at, now()), t.traceparent, d.reply_to, d.correlation_id
             FROM dup d JOIN target t ON t.reference_id = d.reference_id
             WHERE t.state IN ('succeeded', 'declined', 'dead')
             ORDER BY d.ord
             RETURNING id
         ), owed AS (
             INSERT INTO result_reply (outbox_id, reply_to, correlation_id)
             SELECT t.id, d.reply_to, d.correlation_id
             FROM dup d JOIN target t ON t.reference_id = d.reference_id
             WHERE t.state NOT IN ('succeeded', 'declined', 'dead')
               AND d.reply_to IS NOT NULL
               AND (d.reply_to IS DISTINCT FROM t.reply_to
                    OR d.correlation_id IS DISTINCT FROM t.correlation_id)
             ORDER BY d.ord
             ON CONFLICT DO NOTHING
             RETURNING outbox_id
         )
         SELECT (SELECT count(*) FROM replay), (SELECT count(*) FROM owed)",
    )
    .bind(rows.iter().map(|r| r.reference_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.reply_to).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.correlation_id).collect::<Vec<_>>())
    .fetch_one(conn)
    .await
}
