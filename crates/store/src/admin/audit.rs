//! The audit table: who changed what, when and why. Rows are written only
//! here, inside the transaction of the change they record.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};

/// An audit record.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    /// Row id.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What, e.g. `outbox.retry`.
    pub action: String,
    /// On what, e.g. `outbox:17`.
    pub target: String,
    /// Why.
    pub reason: Option<String>,
    /// Before/after.
    pub details: serde_json::Value,
}

impl AuditRow {
    /// `details` as JSON with an object's plain values before its nested
    /// ones: a clipped rendering then shows what a bulk action did
    /// (`retried`, `status`) rather than the start of its cursor and filter.
    pub fn details_plain_first(&self) -> String {
        let Some(map) = self.details.as_object() else {
            return self.details.to_string();
        };
        let nested = |v: &serde_json::Value| v.is_object() || v.is_array();
        let fields: Vec<String> = map
            .iter()
            .filter(|(_, v)| !nested(v))
            .chain(map.iter().filter(|(_, v)| nested(v)))
            .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

/// The audit records of `target`, oldest first.
pub async fn audit_of(conn: &mut PgConnection, target: &str) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor, action, target, reason, details FROM audit
         WHERE target = $1 ORDER BY id",
    )
    .bind(target)
    .fetch_all(conn)
    .await
}

/// Who does what, on what, and why: the audit row of an operator action.
#[derive(Debug, Clone)]
pub struct Action<'a> {
    /// Who.
    pub actor: &'a str,
    /// Why (required for changes to money-related state).
    pub reason: Option<&'a str>,
    /// Go ahead although the row's last outcome is uncertain (the charge
    /// may exist at the provider).
    pub force: bool,
}

/// Record `action` as `what` on `target`, in the change's transaction.
/// Returns the audit id.
pub(super) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    action: &Action<'_>,
    what: &str,
    target: &str,
    details: serde_json::Value,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO audit (actor, action, target, reason, details) VALUES ($1, $2, $3, $4, $5)
         RETURNING id",
    )
    .bind(action.actor)
    .bind(what)
    .bind(target)
    .bind(action.reason)
    .bind(details)
    .fetch_one(&mut **tx)
    .await
}

/// Merge `patch` into the details of audit row `id`, in the caller's
/// transaction: an action done in several transactions (a bulk retry's
/// batches) keeps its record in step with what each one committed.
pub(super) async fn update_details(
    conn: &mut PgConnection,
    id: i64,
    patch: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE audit SET details = details || $2 WHERE id = $1")
        .bind(id)
        .bind(patch)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::AuditRow;

    fn row(details: serde_json::Value) -> AuditRow {
        AuditRow {
            id: 1,
            at: chrono::Utc::now(),
            actor: "a".into(),
            action: "outbox.retry_bulk".into(),
            target: "outbox".into(),
            reason: None,
            details,
        }
    }

    #[test]
    fn plain_values_come_before_nested_ones_and_the_json_stays_equal() {
        let details = serde_json::json!({
            "batch": 500, "cursor": {"id": 3}, "filter": {"account": "a\"b"},
            "retried": 3, "status": "done", "tags": [1]
        });
        let shown = row(details.clone()).details_plain_first();
        assert!(
            shown.starts_with(r#"{"batch":500,"retried":3,"status":"done","cursor":"#),
            "{shown}"
        );
        let back: serde_json::Value = serde_json::from_str(&shown).expect("valid JSON");
        assert_eq!(back, details);
        assert_eq!(row(serde_json::json!("x")).details_plain_first(), r#""x""#);
    }
}
