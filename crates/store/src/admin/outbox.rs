//! Outbox rows as operators see them, and the two hand changes: retry a dead
//! row, resolve a row by hand. Each change locks its row and writes its audit
//! row in the same transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::audit::{self, Action};
use super::inbox::parse_key;
use crate::outbox::OutboxState;

/// An outbox row, every column an operator may need.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// Dedup scope.
    pub scope: String,
    /// Producer key.
    pub message_id: String,
    /// Idempotency key at the provider.
    pub reference_id: Uuid,
    /// Account charged.
    pub account_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// Free text from the message.
    pub description: Option<String>,
    /// Where the result is replied to.
    pub reply_to: Option<String>,
    /// Echoed in the reply.
    pub correlation_id: Option<String>,
    /// W3C trace context of the message.
    pub traceparent: Option<String>,
    /// Lifecycle state.
    pub state: OutboxState,
    /// Claims so far.
    pub attempts: i32,
    /// The replica holding the lease (in flight).
    pub lease_owner: Option<String>,
    /// When the lease runs out.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When the row is next due.
    pub next_attempt_at: DateTime<Utc>,
    /// Since when the outcome has been uncertain.
    pub uncertain_since: Option<DateTime<Utc>>,
    /// The provider's charge.
    pub provider_charge_id: Option<String>,
    /// The settled answer.
    pub result: Option<serde_json::Value>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Enqueued at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Settled at (final states).
    pub settled_at: Option<DateTime<Utc>>,
}

pub(super) const OUTBOX_COLUMNS: &str = "id, scope, message_id, reference_id, account_id, amount, currency, \
     description, reply_to, correlation_id, traceparent, state, attempts, lease_owner, \
     lease_expires_at, next_attempt_at, uncertain_since, provider_charge_id, result, last_error, \
     created_at, updated_at, settled_at";

/// How an operator names an outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxSelector {
    /// The row id.
    Id(i64),
    /// The reference id (the provider's idempotency key).
    Reference(Uuid),
    /// The message's key.
    Key {
        /// Dedup scope.
        scope: String,
        /// Producer key.
        message_id: String,
    },
}

impl std::str::FromStr for OutboxSelector {
    type Err = String;

    /// `123` (id), a UUID (reference id), or `scope:message_id` (the scope
    /// ends at the first `:`; the message id may hold more).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(id) = s.parse::<i64>() {
            return Ok(Self::Id(id));
        }
        if let Ok(reference) = Uuid::parse_str(s) {
            return Ok(Self::Reference(reference));
        }
        parse_key(s).map(|(scope, message_id)| Self::Key { scope, message_id })
    }
}

/// The outbox row named by `selector`, if any. A key is looked up by its
/// reference id (UUIDv5 over the key, UNIQUE in the outbox).
pub async fn find_outbox(
    conn: &mut PgConnection,
    selector: &OutboxSelector,
) -> Result<Option<OutboxRow>, sqlx::Error> {
    let reference = match selector {
        OutboxSelector::Id(id) => {
            let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = $1");
            return sqlx::query_as(&sql).bind(*id).fetch_optional(conn).await;
        }
        OutboxSelector::Reference(r) => *r,
        OutboxSelector::Key { scope, message_id } => idem_message::reference_id(scope, message_id),
    };
    let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE reference_id = $1");
    sqlx::query_as(&sql)
        .bind(reference)
        .fetch_optional(conn)
        .await
}

/// Up to `limit` rows, oldest first; only rows in `state` when given.
pub async fn list_outbox(
    conn: &mut PgConnection,
    state: Option<OutboxState>,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE ($1::outbox_state IS NULL OR state = $1)
         ORDER BY id LIMIT $2"
    ))
    .bind(state)
    .bind(limit)
    .fetch_all(conn)
    .await
}
/// Why an operator change was not made.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No such row.
    #[error("no outbox row {0}")]
    NotFound(i64),
    /// The row is not in a state the change applies to.
    #[error("outbox row {id} is {state}; {why}")]
    WrongState {
        /// The row.
        id: i64,
        /// Its state.
        state: &'static str,
        /// What to do instead.
        why: &'static str,
    },
    /// The row's last outcome is uncertain: the change could charge twice or
    /// leave a real charge unaccounted for.
    #[error(
        "outbox row {id}'s last attempt had an uncertain outcome (since {since}): the charge may \
         exist at the provider. Look up reference {reference} there first; if it was charged, \
         `idem outbox resolve {id} --as succeeded --charge-id <id>`; {instead}"
    )]
    Uncertain {
        /// The row.
        id: i64,
        /// Since when.
        since: DateTime<Utc>,
        /// Its reference id.
        reference: Uuid,
        /// What `--force` would do.
        instead: &'static str,
    },
    /// The database failed; nothing was changed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What an operator change needs to know of its row.
#[derive(sqlx::FromRow)]
struct Locked {
    state: OutboxState,
    last_error: Option<String>,
    uncertain_since: Option<DateTime<Utc>>,
    reference_id: Uuid,
}

/// The row, locked for the rest of `tx` (`FOR NO KEY UPDATE`: the key does
/// not change, so history and reply inserts are not blocked).
async fn lock_row(tx: &mut Transaction<'_, Postgres>, id: i64) -> Result<Locked, Refused> {
    sqlx::query_as(
        "SELECT state, last_error, uncertain_since, reference_id FROM outbox
         WHERE id = $1 FOR NO KEY UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Refused::NotFound(id))
}

/// Refuse a change to an uncertain row unless forced.
fn check_uncertain(
    id: i64,
    row: &Locked,
    action: &Action<'_>,
    instead: &'static str,
) -> Result<(), Refused> {
    match row.uncertain_since {
        Some(since) if !action.force => Err(Refused::Uncertain {
            id,
            since,
            reference: row.reference_id,
            instead,
        }),
        _ => Ok(()),
    }
}

/// `dead` → `pending`, due now, its attempt count reset (the next failure
/// does not kill it at once). A row whose last outcome was uncertain is
/// refused unless `action.force`: it went dead because the provider offers
/// neither keys nor lookup, so a retry re-sends the charge blind. Returns
/// the audit id.
pub async fn retry_dead(
    conn: &mut PgConnection,
    id: i64,
    action: &Action<'_>,
) -> Result<i64, Refused> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let row = lock_row(&mut tx, id).await?;
    if row.state != OutboxState::Dead {
        return Err(Refused::WrongState {
            id,
            state: row.state.as_str(),
            why: "only dead rows are retried (pending and unknown rows are retried by the dispatcher already)",
        });
    }
    check_uncertain(
        id,
        &row,
        action,
        "to send the charge again anyway (a second charge is then refunded by reconciliation), add --force",
    )?;
    sqlx::query(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now(),
                settled_at = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let details = serde_json::json!({
        "from": "dead", "to": "pending", "last_error": row.last_error,
        "uncertain_since": row.uncertain_since, "force": action.force,
    });
    let audit_id = audit::insert(
        &mut tx,
        action,
        "outbox.retry",
        &format!("outbox:{id}"),
        details,
    )
    .await?;
    tx.commit().await?;
    Ok(audit_id)
}

/// How an operator settles a row by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The charge was made (seen at the provider).
    Succeeded,
    /// The charge must not be made, or was refused.
    Declined,
}

/// Settle a `pending`, `unknown` or `dead` row by hand as `resolution`, with
/// the operator's reason (and the provider's charge id, when known) as its
/// result. Never an `in_flight` row: a replica holds its lease and is calling
/// the provider now. The final state fires the result event, as any settle.
/// Returns the audit id.
pub async fn resolve(
    conn: &mut PgConnection,
    id: i64,
    resolution: Resolution,
    charge_id: Option<&str>,
    action: &Action<'_>,
) -> Result<i64, Refused> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let row = lock_row(&mut tx, id).await?;
    let state = row.state;
    let why = match state {
        OutboxState::Pending | OutboxState::Unknown | OutboxState::Dead => None,
        OutboxState::InFlight => Some(
            "a replica holds its lease and is calling the provider: wait for its result \
             (or for the lease to expire) and look again",
        ),
        OutboxState::Succeeded | OutboxState::Declined => {
            Some("it is settled already; nothing to resolve")
        }
    };
    if let Some(why) = why {
        return Err(Refused::WrongState {
            id,
            state: state.as_str(),
            why,
        });
    }
    if resolution == Resolution::Declined {
        check_uncertain(
            id,
            &row,
            action,
            "to record it as declined anyway (a charge found later is reported as charged_but_declined), add --force",
        )?;
    }
    let (to, result) = match resolution {
        Resolution::Succeeded => (
            OutboxState::Succeeded,
            serde_json::json!({
                "status": "succeeded", "id": charge_id, "resolved_by": action.actor,
                "reason": action.reason,
            }),
        ),
        Resolution::Declined => (
            OutboxState::Declined,
            serde_json::json!({
                "status": "declined", "code": "resolved_by_operator",
                "resolved_by": action.actor, "reason": action.reason,
            }),
        ),
    };
    sqlx::query(
        "UPDATE outbox SET state = $2, result = $3,
                provider_charge_id = coalesce($4, provider_charge_id),
                settled_at = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(to)
    .bind(&result)
    .bind(charge_id)
    .execute(&mut *tx)
    .await?;
    let details = serde_json::json!({
        "from": state.as_str(), "to": to.as_str(), "charge_id": charge_id,
        "last_error": row.last_error, "uncertain_since": row.uncertain_since, "force": action.force,
    });
    let audit_id = audit::insert(
        &mut tx,
        action,
        "outbox.resolve",
        &format!("outbox:{id}"),
        details,
    )
    .await?;
    tx.commit().await?;
    Ok(audit_id)
}
