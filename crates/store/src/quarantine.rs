//! Quarantine: bad input kept whole (raw bytes, properties, reason), written in
//! the same transaction that decided, so an acked message is never lost.

use sqlx::PgConnection;

/// A message that failed validation, as it arrived.
#[derive(Debug, Clone)]
pub struct Quarantined<'a> {
    /// Stable code, e.g. `not_json`.
    pub reason_code: &'a str,
    /// Human reason.
    pub reason: &'a str,
    /// The raw `message_id` property bytes, when present.
    pub message_id: Option<&'a [u8]>,
    /// AMQP properties and headers as JSON.
    pub properties: &'a serde_json::Value,
    /// The raw body.
    pub body: &'a [u8],
}

/// Store a quarantined message; returns its id.
pub async fn insert(conn: &mut PgConnection, q: &Quarantined<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO quarantine (reason_code, reason, message_id, properties, body)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(q.reason_code)
    .bind(sanitize(q.reason))
    .bind(q.message_id)
    .bind(q.properties)
    .bind(q.body)
    .fetch_one(conn)
    .await
}

/// PostgreSQL text cannot hold NUL; a reason may quote the input.
pub fn sanitize(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// [`sanitize`] for JSON (jsonb cannot hold `\u0000` either): every string
/// and key. What the provider answered is stored, so it must be storable
/// whatever it contains; a NUL would otherwise fail a whole group settle.
pub fn sanitize_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Value::String(sanitize(s)),
        Value::Array(items) => Value::Array(items.iter().map(sanitize_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (sanitize(k), sanitize_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_never_reaches_the_database() {
        let v = serde_json::json!({"id": "ch_\0", "a\0": [1, "x\0y"]});
        let clean = sanitize_json(&v).to_string();
        assert!(
            !clean.contains("\\u0000") && !clean.contains('\0'),
            "{clean}"
        );
        assert!(v.to_string().contains("\\u0000"), "the input has them");
        assert_eq!(
            sanitize_json(&serde_json::json!({"n": 1})),
            serde_json::json!({"n": 1})
        );
    }
}
