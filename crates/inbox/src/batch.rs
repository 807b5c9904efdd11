//! Recording a batch of deliveries in the caller's transaction.
//!
//! Every delivery is validated in Rust first. The common path then records the
//! whole batch with a handful of set-based statements (`crate::bulk`) behind
//! one savepoint. If the database refuses one of them for its data (a
//! constraint, an encoding problem), that savepoint is rolled back and the
//! batch is decided again message by message, each behind its own savepoint:
//! a message the database refuses then rolls back only its own writes and is
//! quarantined instead, so the rest of the batch still commits. Only an error
//! of the connection itself fails the batch, and then nothing is acked.

use idem_message::{ChargeRequest, Rejection};
use idem_store::event;
use idem_store::inbox::{self, Recorded};
use idem_store::quarantine::{self, Quarantined};
use sqlx::{Acquire, PgConnection};

use crate::admission::Admission;
use crate::decision::{Decision, Incoming};
use crate::{bulk, delivery, metrics, trace};

/// Decide every delivery of `batch` inside the caller's open transaction,
/// each admitted by `admission` (body limit, scope and `reply_to` rules). An
/// `Err` means the connection failed: roll back, ack nothing, let the broker
/// redeliver. After the commit, [`Admission::report_refused_replies`]
/// counts the replies the rules refused.
pub async fn record_batch(
    conn: &mut PgConnection,
    batch: &[Incoming<'_>],
    admission: &Admission,
) -> Result<Vec<Decision>, sqlx::Error> {
    let parsed = parse(batch, admission);
    let mut savepoint = conn.begin().await?;
    match bulk::record(&mut savepoint, batch, &parsed).await {
        Ok(Some(decisions)) => {
            savepoint.commit().await?;
            return Ok(decisions);
        }
        Ok(None) => savepoint.rollback().await?,
        Err(e) if is_refusal(&e) => {
            savepoint.rollback().await?;
            ::metrics::counter!(metrics::BATCH_FALLBACKS).increment(1);
            tracing::warn!(error = %e, batch = batch.len(), "the database refused the batch's set-based statements; deciding its messages one by one");
        }
        Err(e) => return Err(e),
    }
    record_each(conn, batch, parsed).await
}

/// Decide every delivery of `batch` one by one, each behind its own savepoint
/// (several round trips per message): the fallback of [`record_batch`], which
/// isolates a message the database refuses. Public so that its cost can be
/// compared with the set-based path; same contract as [`record_batch`].
pub async fn record_one_by_one(
    conn: &mut PgConnection,
    batch: &[Incoming<'_>],
    admission: &Admission,
) -> Result<Vec<Decision>, sqlx::Error> {
    let parsed = parse(batch, admission);
    record_each(conn, batch, parsed).await
}

/// One admission per delivery, shared by both paths: they differ only in
/// how they write, never in what they admit.
fn parse(batch: &[Incoming<'_>], admission: &Admission) -> Vec<Result<ChargeRequest, Rejection>> {
    batch.iter().map(|item| admission.admit(item)).collect()
}

async fn record_each(
    conn: &mut PgConnection,
    batch: &[Incoming<'_>],
    parsed: Vec<Result<ChargeRequest, Rejection>>,
) -> Result<Vec<Decision>, sqlx::Error> {
    // Arrival order, not key order: outbox ids are assigned in insertion
    // order and per-account ordering dispatches by them. Two replicas with
    // overlapping batches can deadlock on inbox rows; PostgreSQL aborts one
    // and the caller retries that whole batch.
    let mut decisions = Vec::with_capacity(batch.len());
    for (item, parsed) in batch.iter().zip(parsed) {
        decisions.push(record_one(conn, item, parsed).await?);
    }
    Ok(decisions)
}

async fn record_one(
    conn: &mut PgConnection,
    item: &Incoming<'_>,
    parsed: Result<ChargeRequest, Rejection>,
) -> Result<Decision, sqlx::Error> {
    let refused = match parsed {
        Err(rejection) => {
            let message_id = item.properties.message_id().as_ref().map(|s| s.as_str());
            let trace_id = trace::of_properties(item.properties);
            tracing::warn!(code = rejection.code(), reason = %rejection, ?message_id, trace_id, "quarantining bad message");
            return quarantine(conn, item, &rejection).await;
        }
        Ok(request) => {
            let mut savepoint = conn.begin().await?;
            match record_and_reply(&mut savepoint, &request, item.body).await {
                Ok(recorded) => {
                    savepoint.commit().await?;
                    return Ok(match recorded {
                        Recorded::New { outbox_id } => Decision::New { outbox_id },
                        Recorded::Duplicate { .. } => {
                            tracing::debug!(message_id = %request.message_id(), trace_id = trace::of_request(&request), "duplicate absorbed");
                            Decision::Duplicate
                        }
                        Recorded::Conflict => {
                            tracing::warn!(scope = %request.scope(), message_id = %request.message_id(), trace_id = trace::of_request(&request), "key conflict: same key, other payload; not charged");
                            Decision::Conflict
                        }
                    });
                }
                Err(e) if is_refusal(&e) => {
                    savepoint.rollback().await?;
                    e
                }
                Err(e) => return Err(e),
            }
        }
    };
    let rejection = Rejection::Schema(format!("the database refused the message: {refused}"));
    quarantine(conn, item, &rejection).await
}

/// Record `request`; for a duplicate, also owe it its result event — the
/// stored result again if the charge is settled (never a new charge), or a
/// reply when it settles — in the same savepoint, so the event stands or falls
/// with the decision.
async fn record_and_reply(
    conn: &mut PgConnection,
    request: &ChargeRequest,
    raw_body: &[u8],
) -> Result<Recorded, sqlx::Error> {
    let recorded = inbox::record(conn, request, raw_body).await?;
    if matches!(recorded, Recorded::Duplicate { existing: Some(_) }) {
        let reply = event::on_duplicate(conn, request).await?;
        tracing::debug!(message_id = %request.message_id(), ?reply, "result owed to a duplicate");
    }
    Ok(recorded)
}

async fn quarantine(
    conn: &mut PgConnection,
    item: &Incoming<'_>,
    rejection: &Rejection,
) -> Result<Decision, sqlx::Error> {
    let properties = delivery::properties_json(item.properties, item.redelivered);
    let reason = rejection.to_string();
    let row = Quarantined {
        reason_code: rejection.code(),
        reason: &reason,
        message_id: item
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().as_bytes()),
        properties: &properties,
        body: item.body,
    };
    let mut savepoint = conn.begin().await?;
    match quarantine::insert(&mut savepoint, &row).await {
        Ok(_) => {
            savepoint.commit().await?;
            Ok(Decision::Quarantined {
                code: rejection.code(),
            })
        }
        Err(e) if is_refusal(&e) => {
            savepoint.rollback().await?;
            tracing::error!(error = %e, "quarantine refused the message; rejecting it to the dead-letter queue");
            Ok(Decision::Unrecordable {
                error: e.to_string(),
            })
        }
        Err(e) => Err(e),
    }
}

/// The database refused this message's data for good (SQLSTATE class 22, data
/// exception, 23, integrity constraint, or 54, a limit such as nesting depth), as opposed to a transient failure
/// (deadlock, shutdown, broken connection), where the whole batch must be
/// retried rather than a valid message quarantined.
fn is_refusal(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}
