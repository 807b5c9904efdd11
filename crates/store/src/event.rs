//! Result events: the outbox of what to publish when a charge settles.
//!
//! Events are written by the database itself, in the transaction that makes
//! an outbox row final (the `outbox_result_event` trigger, migration
//! `20261122000005_result_events.sql`), so no settle path can forget one. The
//! only event written from here is the inbox's: a duplicate request of a
//! settled charge gets its stored result again ([`on_duplicate`]; for a whole
//! batch of duplicates at once, [`crate::batch::on_duplicates`]).
//!
//! The publisher claims due events by locking them (`FOR UPDATE SKIP
//! LOCKED`) in a transaction it keeps open while it publishes them with
//! confirms, then deletes them ([`published`]) or backs them off ([`retry`])
//! and commits. The claim writes nothing: an `UPDATE` that pushed a lease
//! ahead cost every event a second row version and two index entries
//! (docs/performance.md, "Writes per message"). A publisher that dies
//! mid-way loses its connection, and with it the locks: its events are due
//! again at once, not after a lease. A result may be published twice, never
//! lost, and carries a deterministic message_id so consumers drop the second
//! copy.

use std::time::Duration;

use chrono::{DateTime, Utc};
use idem_message::ChargeRequest;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::outbox::OutboxState;

/// Why an event exists; decides where it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The outbox row became final: the exchange, and the request's `reply_to`.
    Settled,
    /// A duplicate request of a final row: the exchange, and the duplicate's
    /// own `reply_to`. The stored result, never a new charge.
    Replayed,
    /// A duplicate that arrived while the row was open and asked for a reply
    /// elsewhere: only its `reply_to`.
    Reply,
}

impl EventKind {
    /// The kind as stored (and as the `kind` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Settled => "settled",
            EventKind::Replayed => "replayed",
            EventKind::Reply => "reply",
        }
    }

    /// Whether this kind goes to the results exchange (every kind goes to its
    /// `reply_to`, if it has one).
    pub fn to_exchange(self) -> bool {
        !matches!(self, EventKind::Reply)
    }
}

impl TryFrom<String> for EventKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "settled" => Ok(EventKind::Settled),
            "replayed" => Ok(EventKind::Replayed),
            "reply" => Ok(EventKind::Reply),
            _ => Err(format!("unknown result event kind {s:?}")),
        }
    }
}

/// A claimed event: a snapshot of the outbox row when it became final, plus
/// where to send it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ResultEvent {
    /// Event row id (claim order).
    pub id: i64,
    /// Why it exists.
    #[sqlx(try_from = "String")]
    pub kind: EventKind,
    /// The outbox row it reports (which may be gone by now).
    pub outbox_id: i64,
    /// Dedup scope of the request.
    pub scope: String,
    /// The producer's key of the request.
    pub message_id: String,
    /// The charge's idempotency key.
    pub reference_id: Uuid,
    /// The account.
    pub account_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// `succeeded`, `declined` or `dead`.
    pub state: OutboxState,
    /// The provider's charge id, when succeeded.
    pub provider_charge_id: Option<String>,
    /// The stored charge (succeeded) or decline (declined).
    pub result: Option<serde_json::Value>,
    /// Why a dead row died.
    pub error: Option<String>,
    /// When the row became final.
    pub settled_at: DateTime<Utc>,
    /// W3C trace context of the request.
    pub traceparent: Option<String>,
    /// Queue for the direct reply, if any.
    pub reply_to: Option<String>,
    /// Echoed on both publishes.
    pub correlation_id: Option<String>,
    /// Failed publishes before this one.
    pub attempts: i32,
}

/// Claim up to `limit` due events, oldest first, by locking them in the
/// transaction `conn` is in: another publisher skips them until it ends.
/// Run it inside a transaction that also records the outcome
/// ([`published`], [`retry`]); outside one the locks end with the statement.
///
/// The same statement bounds how long the server lets that transaction sit
/// idle (`idle_in_transaction_session_timeout`, for this transaction only,
/// `idle_bound`): past it the server ends the session and with it the locks,
/// so a holder that froze or lost its network does not keep its events for
/// as long as TCP keepalive takes to notice. In the statement rather than a
/// `SET LOCAL` of its own: a step that finds nothing costs no extra round trip.
pub async fn claim(
    conn: &mut PgConnection,
    limit: i64,
    idle_bound: Duration,
) -> Result<Vec<ResultEvent>, sqlx::Error> {
    let mut events: Vec<ResultEvent> = sqlx::query_as(
        "SELECT e.id, e.kind, e.outbox_id, e.scope, e.message_id, e.reference_id, e.account_id,
                e.amount, e.currency, e.state, e.provider_charge_id, e.result, e.error,
                e.settled_at, e.traceparent, e.reply_to, e.correlation_id, e.attempts
         FROM (SELECT set_config('idle_in_transaction_session_timeout', $2, true)) bound,
              result_event e
         WHERE e.next_attempt_at <= now()
         ORDER BY e.next_attempt_at, e.id LIMIT $1
         FOR UPDATE OF e SKIP LOCKED",
    )
    .bind(limit)
    .bind(idle_bound.as_millis().to_string())
    .fetch_all(conn)
    .await?;
    // Publish in settle order (the ids'), as the events were written.
    events.sort_by_key(|e| e.id);
    Ok(events)
}

/// Forget events the broker confirmed. Returns how many were deleted (fewer
/// than `ids` only if someone else deleted them meanwhile, e.g. by hand).
pub async fn published(conn: &mut PgConnection, ids: &[i64]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM result_event WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Back off events whose publish failed (nack, lost channel, timeout):
/// `base * 2^(failures before this one)`, at most `max`, then they are due
/// again; the failure is counted. From the clock, not `now()`: in the
/// publisher's step that is the transaction's start, before the publishes
/// and up to the whole confirm wait, which would make a short backoff
/// already past.
pub async fn retry(
    conn: &mut PgConnection,
    ids: &[i64],
    base: Duration,
    max: Duration,
    error: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE result_event SET last_error = $4, attempts = attempts + 1,
             next_attempt_at = clock_timestamp() + make_interval(secs =>
                 least($2 * power(2, least(greatest(attempts, 0), 20)), $3))
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .bind(base.as_secs_f64())
    .bind(max.as_secs_f64())
    .bind(error)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Events not yet published, and the age in seconds of the oldest (0 when none).
pub async fn backlog(conn: &mut PgConnection) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at))::float8, 0)
         FROM result_event",
    )
    .fetch_one(conn)
    .await
}

/// What [`on_duplicate`] owed the duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateReply {
    /// The row is final: its stored result is published again (`replayed`).
    Replayed,
    /// The row is open: a reply to the duplicate's `reply_to` is owed when it
    /// settles.
    Waiting,
    /// Nothing more to send: the row is open and the reply it will send
    /// already covers this request (no `reply_to`, or the original's), or
    /// the row is gone (retention).
    Nothing,
}

/// A duplicate of `request` was recorded: if its outbox row is final, write a
/// `replayed` event with the stored result and the duplicate's own
/// `reply_to`/`correlation_id`; if the row is still open and the duplicate
/// asked for a reply the settle event will not send, owe it one
/// (`result_reply`). Run in the inbox transaction that recorded the duplicate.
///
/// The row is read `FOR SHARE`, which waits for a settle in progress and then
/// reads what it committed: either this statement sees the row final (and
/// replays), or the settle's trigger — which must wait for this transaction —
/// sees the owed reply. No interleaving loses the reply.
pub async fn on_duplicate(
    conn: &mut PgConnection,
    request: &ChargeRequest,
) -> Result<DuplicateReply, sqlx::Error> {
    // The set-based statement of the inbox batch, with one row: one
    // definition of what a duplicate is owed.
    let one = crate::batch::Duplicate {
        reference_id: request.reference_id(),
        reply_to: request.reply_to.as_deref(),
        correlation_id: request.correlation_id.as_deref(),
    };
    let (replayed, waiting) = crate::batch::on_duplicates(conn, &[one]).await?;
    Ok(if replayed > 0 {
        DuplicateReply::Replayed
    } else if waiting > 0 {
        DuplicateReply::Waiting
    } else {
        DuplicateReply::Nothing
    })
}

/// A result event not yet confirmed by the broker, as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct PendingEvent {
    /// Event id.
    pub id: i64,
    /// `settled`, `replayed` or `reply`.
    pub kind: String,
    /// The state it announces.
    pub state: OutboxState,
    /// Where its direct reply goes, if anywhere.
    pub reply_to: Option<String>,
    /// Failed publishes so far.
    pub attempts: i32,
    /// When it may next be published.
    pub next_attempt_at: DateTime<Utc>,
    /// Why the last publish failed.
    pub last_error: Option<String>,
    /// Written at.
    pub created_at: DateTime<Utc>,
}

/// The unconfirmed result events of outbox row `outbox_id` (confirmed ones
/// are deleted). The table holds only the publisher's backlog, so this
/// reads that backlog, not the history; at most `limit` events.
pub async fn pending_of(
    conn: &mut PgConnection,
    outbox_id: i64,
    limit: i64,
) -> Result<Vec<PendingEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, state, reply_to, attempts, next_attempt_at, last_error, created_at
         FROM result_event WHERE outbox_id = $1 ORDER BY id LIMIT $2",
    )
    .bind(outbox_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}
