//! The charge API's JSON bodies, as `docs/contracts.md` (section "Charge API")
//! fixes them. No body denies unknown fields: a provider may add fields to its
//! answers, and the client must still read them (pinned in `golden_tests`).

use serde::{Deserialize, Serialize};

/// `POST /v1/charges` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCharge {
    /// Our deterministic reference (UUIDv5 over scope and message_id).
    pub reference_id: String,
    /// The account to charge.
    pub account_id: String,
    /// Amount in minor units, always positive.
    pub amount: i64,
    /// ISO 4217 code, three upper-case letters.
    pub currency: String,
    /// Where the charge came from, for the provider's own records.
    pub metadata: ChargeMetadata,
}

/// `metadata` of a charge: lets a human at the provider find the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeMetadata {
    /// The message's scope (AMQP `app_id`, `default` when absent).
    pub source: String,
    /// The producer's message id.
    pub message_id: String,
}

/// A charge as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// Provider id, `ch_...`.
    pub id: String,
    /// The reference the charge was created under.
    pub reference_id: String,
    /// Charged account.
    pub account_id: String,
    /// Amount in minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// `succeeded` for every charge the provider created.
    pub status: String,
    /// Unix seconds at creation.
    pub created: i64,
}

/// A page of charges: `GET /v1/charges?...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeList {
    /// The charges on this page, oldest first.
    pub data: Vec<Charge>,
    /// Whether a further page exists (`starting_after` the last id).
    #[serde(default)]
    pub has_more: bool,
}

/// `POST /v1/charges/{id}/refunds` answer. The request has no body: the
/// charge is in the path, the refund's key in `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// Provider id, `re_...`.
    pub id: String,
    /// The refunded charge.
    pub charge: String,
    /// Refunded amount (the whole charge).
    pub amount: i64,
}

/// Error body: `{"error": {"type": "card_declined"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The `error` object of an error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable kind, e.g. `card_declined`, `idempotency_conflict`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Optional human text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ErrorBody {
    /// An error body of the given kind with a human message.
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                kind: kind.to_owned(),
                message: Some(message.into()),
            },
        }
    }
}
