//! What a request comes to: the answer to send, or the work left to do after
//! the latency.

use idem_charge_api::{CreateCharge, ErrorBody};
use serde::Serialize;

/// An HTTP answer: status, JSON body, and whether it replays a stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// JSON body.
    pub body: String,
    /// Whether to send `Idempotent-Replayed: true`.
    pub replayed: bool,
}

impl Answer {
    /// An answer with `value` serialised as its body.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Self {
                status,
                body,
                replayed: false,
            },
            Err(e) => Self::error(500, "api_error", format!("cannot encode answer: {e}")),
        }
    }

    /// This stored answer sent again for its key: `201` becomes `200`, any
    /// other status (e.g. a `402` decline) is kept; marked as replayed.
    pub fn replay(&self) -> Self {
        Self {
            status: if self.status == 201 { 200 } else { self.status },
            body: self.body.clone(),
            replayed: true,
        }
    }

    /// An error answer `{"error": {"type": kind, "message": message}}`.
    pub fn error(status: u16, kind: &str, message: impl Into<String>) -> Self {
        Self::json(status, &ErrorBody::new(kind, message))
    }
}

/// The result of the synchronous first half of a request.
#[derive(Debug)]
pub(crate) enum Step {
    /// Answer this after the latency; nothing more to do.
    Now(Answer),
    /// Reset the connection at once; nothing was processed.
    NoAnswer,
    /// Finish this work after the latency (the key is marked in progress).
    Later(Ticket),
}

/// Work reserved by a `begin_*` call and completed by [`State::finish`].
#[derive(Debug)]
pub(crate) enum Ticket {
    /// Create (or decline) a charge.
    Charge {
        /// The honoured idempotency key, if any.
        key: Option<String>,
        /// The validated request.
        request: CreateCharge,
        /// Whether the account is declined (decided from the faults in force
        /// when the request arrived).
        decline: bool,
    },
    /// Refund a charge.
    Refund {
        /// The refund's idempotency key, if any.
        key: Option<String>,
        /// The charge to refund.
        charge: String,
    },
}
