//! The record of one provider call, as the attempt history stores it. It lives
//! with the wire contract, not with the client, so the store can record calls
//! without depending on an HTTP client.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which provider call a [`Call`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// `POST /v1/charges`.
    Charge,
    /// `GET /v1/charges?reference_id=R`.
    Lookup,
    /// `POST /v1/charges/{id}/refunds`.
    Refund,
}

impl CallKind {
    /// The name stored in the attempt history.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "charge",
            Self::Lookup => "lookup",
            Self::Refund => "refund",
        }
    }
}

/// One HTTP call to the provider as the attempt history records it: when, how
/// long, what came back (status, or the transport error), and the provider's id
/// of what it answered about (charge or refund), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which call.
    pub kind: CallKind,
    /// When the request was started (wall clock).
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// How long until the answer (or the failure).
    pub latency: Duration,
    /// The HTTP status, when one arrived.
    pub http_status: Option<u16>,
    /// The transport error or the failure's reason; `None` on success.
    pub error: Option<String>,
    /// The provider's id: the charge (charge, lookup) or refund made or found.
    pub provider_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The history's `kind` column and the serde name must not drift apart.
    #[test]
    fn kind_names_match_their_serde_names() {
        for kind in [CallKind::Charge, CallKind::Lookup, CallKind::Refund] {
            let json = serde_json::to_value(kind).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(json, serde_json::Value::from(kind.as_str()));
        }
    }
}
