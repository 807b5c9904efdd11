//! What the simulated provider has done: its charges and refunds (the ledger
//! the tests count), exact counters of what it was asked, and the most recent
//! requests as received (their trace context, for the tracing tests).

use std::collections::BTreeMap;

use idem_charge_api::Charge;
use serde::{Deserialize, Serialize};

/// Every charge and refund the simulator created, in creation order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Ledger {
    /// Created charges, oldest first. Every one has status `succeeded`
    /// (declines create no charge).
    pub charges: Vec<Charge>,
    /// Refunds, oldest first; at most one per charge.
    pub refunds: Vec<LedgerRefund>,
}

/// A refund as the ledger records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerRefund {
    /// Provider id, `re_...`.
    pub id: String,
    /// The refunded charge's id.
    pub charge: String,
    /// Refunded amount: always the whole charge.
    pub amount: i64,
    /// The refunded charge's `reference_id`.
    pub reference_id: String,
    /// Unix seconds at creation.
    pub created: i64,
}

impl Ledger {
    /// Number of succeeded charges per `reference_id`, refunded or not.
    pub fn gross_by_reference(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for charge in &self.charges {
            *counts.entry(charge.reference_id.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Number of succeeded charges per `reference_id` that are not refunded.
    ///
    /// A reference whose every charge was refunded is present with `0`, so
    /// "exactly one charge per reference" is `net.values().all(|&n| n == 1)`.
    pub fn net_by_reference(&self) -> BTreeMap<String, usize> {
        let mut counts = self.gross_by_reference();
        for refund in &self.refunds {
            if let Some(n) = counts.get_mut(&refund.reference_id) {
                *n = n.saturating_sub(1);
            }
        }
        counts
    }
}

/// Most `/v1` requests kept in [`SeenRequest`]s; older ones are forgotten.
pub const MAX_SEEN_REQUESTS: usize = 10_000;

/// One `/v1` request as the simulator received it, before any fault or check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeenRequest {
    /// HTTP method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// Query parameter `reference_id` (a lookup), if any.
    pub reference_id: Option<String>,
    /// Header `Idempotency-Key` (the reference id of a charge), if any.
    pub idempotency_key: Option<String>,
    /// Header `traceparent`, if any.
    pub traceparent: Option<String>,
    /// Unix milliseconds at receipt.
    pub at_ms: i64,
}

/// Exact counters of what the simulator was asked and did. Admin endpoints are
/// not counted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Stats {
    /// Every `/v1` request received, faulted or not.
    pub requests: u64,
    /// Charges created (the ledger's length).
    pub charges_created: u64,
    /// Charge requests answered with the stored answer of their key.
    pub replays: u64,
    /// `409 request_in_progress` answers (charges and refunds).
    pub in_progress_conflicts: u64,
    /// `422 idempotency_conflict` answers: a key reused with other parameters.
    pub param_conflicts: u64,
    /// Declines decided (`402`), not counting replays of a stored decline.
    pub declines: u64,
    /// Requests dropped before processing (connection reset).
    pub dropped_requests: u64,
    /// Requests processed whose answer was dropped (connection reset).
    pub dropped_responses: u64,
    /// `500`/`503` answers given by the dice.
    pub errors_5xx: u64,
    /// `429` answers given by the dice.
    pub rate_limited: u64,
    /// Requests refused by `refuse_status` (not processed).
    pub refused: u64,
    /// Lookups failed on purpose by `fail_lookups` (`503`, not processed).
    pub failed_lookups: u64,
    /// Lookups by `reference_id` served.
    pub lookups: u64,
    /// Listing pages (`GET /v1/charges` without `reference_id`) served.
    pub lists: u64,
    /// Refunds created.
    pub refunds: u64,
    /// The most charge requests ever being processed at once for one
    /// account: 1 proves per-account ordering held (one in flight at a time).
    pub max_account_concurrency: u64,
    /// The most charge requests ever being processed at once in all.
    pub max_concurrency: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(id: &str, reference: &str) -> Charge {
        Charge {
            id: id.to_owned(),
            reference_id: reference.to_owned(),
            account_id: "acc".to_owned(),
            amount: 100,
            currency: "EUR".to_owned(),
            status: "succeeded".to_owned(),
            created: 0,
        }
    }

    #[test]
    fn gross_and_net_count_refunds() {
        let ledger = Ledger {
            charges: vec![
                charge("ch_1", "a"),
                charge("ch_2", "a"),
                charge("ch_3", "b"),
            ],
            refunds: vec![LedgerRefund {
                id: "re_1".to_owned(),
                charge: "ch_2".to_owned(),
                amount: 100,
                reference_id: "a".to_owned(),
                created: 0,
            }],
        };
        let gross = ledger.gross_by_reference();
        assert_eq!(gross.get("a"), Some(&2));
        assert_eq!(gross.get("b"), Some(&1));
        let net = ledger.net_by_reference();
        assert_eq!(net.get("a"), Some(&1));
        assert_eq!(net.get("b"), Some(&1));
        assert_eq!(net.len(), 2);
    }
}
