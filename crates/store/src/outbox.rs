//! The outbox: charges to make, claimed with a lease, settled by the lease holder.
//!
//! Claim and settle are separate short transactions; the provider call happens
//! between them, outside any transaction. Every write after the claim is fenced
//! by `lease_token`, so a replica whose lease expired (paused, partitioned) can
//! never overwrite what the replica that reclaimed the row recorded.

use std::time::Duration;

use idem_message::ChargeRequest;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

/// The states of an outbox row (the `outbox_state` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type, Serialize, Deserialize)]
#[sqlx(type_name = "outbox_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for its first (or next) attempt.
    Pending,
    /// Claimed by a replica that holds the lease.
    InFlight,
    /// An attempt's outcome is uncertain; to be resolved by lookup or keyed retry.
    Unknown,
    /// Charged, final.
    Succeeded,
    /// Declined by the provider, final.
    Declined,
    /// Gave up after the attempt limit or a permanent rejection; for operators.
    Dead,
}

impl OutboxState {
    /// Every state, in lifecycle order.
    pub const ALL: [OutboxState; 6] = [
        OutboxState::Pending,
        OutboxState::InFlight,
        OutboxState::Unknown,
        OutboxState::Succeeded,
        OutboxState::Declined,
        OutboxState::Dead,
    ];

    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::InFlight => "in_flight",
            OutboxState::Unknown => "unknown",
            OutboxState::Succeeded => "succeeded",
            OutboxState::Declined => "declined",
            OutboxState::Dead => "dead",
        }
    }
}

/// A row claimed by this replica, with what the dispatcher needs for the call.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Claimed {
    /// Outbox row id.
    pub id: i64,
    /// The fence: settle only with this token.
    pub lease_token: Uuid,
    /// Dedup scope, sent as `metadata.source`.
    pub scope: String,
    /// Producer key, sent as `metadata.message_id`.
    pub message_id: String,
    /// Idempotency key.
    pub reference_id: Uuid,
    /// Account to charge.
    pub account_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// This claim's attempt number (1 for the first).
    pub attempts: i32,
    /// Set when an earlier attempt's outcome is uncertain: resolve before charging.
    pub uncertain_since: Option<chrono::DateTime<chrono::Utc>>,
    /// W3C trace context of the originating message.
    pub traceparent: Option<String>,
}

/// How an attempt ends, as recorded on the row.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Charged; `result` is the provider's charge.
    Succeeded {
        /// Provider charge id.
        charge_id: String,
        /// The charge JSON, returned again to duplicates.
        result: serde_json::Value,
    },
    /// Declined by the provider; final.
    Declined {
        /// The decline, returned again to duplicates.
        result: serde_json::Value,
    },
    /// Try again after `delay`. `uncertain` marks that this attempt may have
    /// charged: the row goes to `unknown`, not `pending`.
    Retry {
        /// Whether the attempt's outcome is uncertain.
        uncertain: bool,
        /// What happened.
        error: String,
        /// Backoff before the next attempt.
        delay: Duration,
    },
    /// Give up: attempt limit or permanent rejection. Surfaced to operators.
    Dead {
        /// Why.
        error: String,
    },
}

/// Insert the outbox row for a new message (inside the inbox transaction).
///
/// `None` when the operation already has an outbox row (`reference_id` is
/// UNIQUE): its inbox key was removed by retention while the row was kept,
/// and the caller treats the message as seen, not new. `DO NOTHING` rather
/// than letting the constraint fail: a failed statement would abort the
/// caller's transaction, and the message must be decided, not quarantined.
pub async fn enqueue(
    conn: &mut PgConnection,
    request: &ChargeRequest,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                             description, reply_to, correlation_id, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (reference_id) DO NOTHING
         RETURNING id",
    )
    .bind(request.scope())
    .bind(request.message_id())
    .bind(request.reference_id())
    .bind(&request.body().account_id)
    .bind(request.body().amount)
    .bind(&request.body().currency)
    .bind(&request.body().description)
    .bind(&request.reply_to)
    .bind(&request.correlation_id)
    .bind(&request.traceparent)
    .fetch_optional(conn)
    .await
}

/// What the outbox row of `reference_id` recorded: the business fields (to
/// tell a duplicate from a conflict once the inbox key is gone), its state and
/// stored result.
pub async fn stored(
    conn: &mut PgConnection,
    reference_id: Uuid,
) -> Result<Option<Stored>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, amount, currency, state, result FROM outbox WHERE reference_id = $1",
    )
    .bind(reference_id)
    .fetch_optional(conn)
    .await
}

/// An outbox row's payload and outcome, as [`stored`] reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    /// Account charged (or to charge).
    pub account_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// Where the row is in its lifecycle.
    pub state: OutboxState,
    /// The settled answer, if any.
    pub result: Option<serde_json::Value>,
}

/// The state and stored result of the outbox row of a request, by its
/// reference id (UUIDv5 of its key, UNIQUE): not by `(scope, message_id)`,
/// so that `outbox_key` has one reader fewer; retention's inbox sweep
/// (`retention::delete_inbox_keys`) is the last, and the index can go once
/// it no longer is (docs/performance.md, "Writes per message").
pub async fn state_of(
    conn: &mut PgConnection,
    reference_id: Uuid,
) -> Result<Option<(OutboxState, Option<serde_json::Value>)>, sqlx::Error> {
    sqlx::query_as("SELECT state, result FROM outbox WHERE reference_id = $1")
        .bind(reference_id)
        .fetch_optional(conn)
        .await
}

/// `UPDATE outbox SET <assignments>` that releases the lease (and the
/// account's slot), fenced by it: `$1` is the row id, `$2` the holder's lease
/// token. Selects how many rows it updated (0 or 1).
macro_rules! fenced_update {
    ($assignments:literal) => {
        concat!(
            "WITH settled AS (
                 UPDATE outbox SET ",
            $assignments,
            ", lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = now()
                 WHERE id = $1 AND lease_token = $2 AND state = 'in_flight'
                 RETURNING id, account_id
             ), freed AS (
                 DELETE FROM account_slot sl USING settled s
                 WHERE sl.account_id = s.account_id AND sl.outbox_id = s.id
             )
             SELECT count(*) FROM settled"
        )
    };
}

/// Record how an attempt ended, only if `token` still holds the lease.
/// Returns `false` when the fence refused the write (the lease was lost).
pub async fn settle(
    conn: &mut PgConnection,
    id: i64,
    token: Uuid,
    settlement: &Settlement,
) -> Result<bool, sqlx::Error> {
    let query = match settlement {
        Settlement::Succeeded { charge_id, result } => sqlx::query_scalar(fenced_update!(
            "state = 'succeeded', provider_charge_id = $3, result = $4,
             last_error = NULL, settled_at = now()"
        ))
        .bind(id)
        .bind(token)
        .bind(charge_id)
        .bind(result),
        Settlement::Declined { result } => sqlx::query_scalar(fenced_update!(
            "state = 'declined', result = $3, settled_at = now()"
        ))
        .bind(id)
        .bind(token)
        .bind(result),
        Settlement::Retry {
            uncertain,
            error,
            delay,
        } => sqlx::query_scalar(fenced_update!(
            "uncertain_since = CASE WHEN $3 THEN coalesce(uncertain_since, now()) ELSE uncertain_since END,
             state = CASE WHEN $3 OR uncertain_since IS NOT NULL
                          THEN 'unknown'::outbox_state ELSE 'pending'::outbox_state END,
             last_error = $4, next_attempt_at = now() + make_interval(secs => $5)"
        ))
        .bind(id)
        .bind(token)
        .bind(uncertain)
        .bind(error)
        .bind(delay.as_secs_f64()),
        Settlement::Dead { error } => sqlx::query_scalar(fenced_update!(
            "state = 'dead', last_error = $3, settled_at = now()"
        ))
        .bind(id)
        .bind(token)
        .bind(error),
    };
    let updated: i64 = query.fetch_one(conn).await?;
    Ok(updated == 1)
}

/// Put a claimed row back after the provider refused the call because of us
/// (a refused key, a missing endpoint, throttling, connection refused), only
/// if `token` still holds the lease: nothing was processed, so the claim's
/// attempt is given back (a refusal never spends the row's attempt budget)
/// and the row keeps its state (`unknown` if an earlier attempt was
/// uncertain, else `pending`), due again after `delay`.
pub async fn release_refused(
    conn: &mut PgConnection,
    id: i64,
    token: Uuid,
    error: &str,
    delay: Duration,
) -> Result<bool, sqlx::Error> {
    let updated: i64 = sqlx::query_scalar(fenced_update!(
        "attempts = greatest(attempts - 1, 0),
         state = CASE WHEN uncertain_since IS NOT NULL
                      THEN 'unknown'::outbox_state ELSE 'pending'::outbox_state END,
         last_error = $3, next_attempt_at = now() + make_interval(secs => $4)"
    ))
    .bind(id)
    .bind(token)
    .bind(crate::quarantine::sanitize(error))
    .bind(delay.as_secs_f64())
    .fetch_one(conn)
    .await?;
    Ok(updated == 1)
}

/// Record a success that the fence refused (the lease had expired while the
/// call ran), as long as no replica holds or has settled the row since: the
/// charge exists, and forgetting it would only make the next holder find it
/// again — or, at a provider with neither keys nor lookup, charge again.
pub async fn record_late_success(
    conn: &mut PgConnection,
    id: i64,
    charge_id: &str,
    result: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE outbox SET state = 'succeeded', provider_charge_id = $2, result = $3,
             last_error = NULL, settled_at = now(), updated_at = now()
         WHERE id = $1 AND state IN ('pending', 'unknown')",
    )
    .bind(id)
    .bind(crate::quarantine::sanitize(charge_id))
    .bind(crate::quarantine::sanitize_json(result))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
