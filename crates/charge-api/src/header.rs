//! The header names of the charge API (`docs/contracts.md`, section "Charge API").

/// Header that carries the idempotency key (our `reference_id` on a charge,
/// the refund's own key on a refund).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Header set on a `200` that replays the stored answer for a known key.
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";
/// Header carrying W3C trace context to the provider.
pub const TRACEPARENT: &str = "traceparent";
