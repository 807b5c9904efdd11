//! The provider's in-memory state and its rules: idempotency keys, declines,
//! lookups, listing and refunds. Everything here is synchronous and runs under
//! the simulator's mutex; waiting (latency) and faults live in `api`.

use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use idem_charge_api::{Charge, ChargeList, CreateCharge, Refund};

use crate::answer::{Answer, Step, Ticket};
use crate::faults::Faults;
use crate::ledger::{Ledger, LedgerRefund, MAX_SEEN_REQUESTS, SeenRequest, Stats};

/// Default page size of the charge listing.
const DEFAULT_LIMIT: usize = 100;
/// Largest page size of the charge listing.
const MAX_LIMIT: usize = 1000;

/// What is known about one idempotency key.
#[derive(Debug)]
enum KeyState<P> {
    /// A request under this key is being processed.
    InProgress(P),
    /// Processed: the parameters it was used with and the answer given.
    Done(P, Answer),
}

/// The parameters a charge key is bound to (metadata is not compared).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChargeParams {
    reference_id: String,
    account_id: String,
    amount: i64,
    currency: String,
}

impl From<&CreateCharge> for ChargeParams {
    fn from(r: &CreateCharge) -> Self {
        Self {
            reference_id: r.reference_id.clone(),
            account_id: r.account_id.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
        }
    }
}

/// Filters of `GET /v1/charges`.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(crate) struct ListQuery {
    /// Lookup by reference: all charges under it, no paging.
    pub reference_id: Option<String>,
    /// Only charges created at or after this unix second.
    pub created_gte: Option<i64>,
    /// Only charges created before this unix second.
    pub created_lt: Option<i64>,
    /// Page size, default 100, clamped to `1..=1000`.
    pub limit: Option<u64>,
    /// Start after the charge with this id (in creation order).
    pub starting_after: Option<String>,
}

/// The simulated provider.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Faults in force for new requests.
    pub faults: Faults,
    /// Exact counters.
    pub stats: Stats,
    /// Every charge, in creation order.
    charges: Vec<Charge>,
    /// Charge id → index in `charges`.
    charge_index: HashMap<String, usize>,
    /// Charge idempotency keys.
    charge_keys: HashMap<String, KeyState<ChargeParams>>,
    /// Every refund, in creation order.
    refunds: Vec<LedgerRefund>,
    /// Charge id → its refund's index in `refunds`.
    refund_of: HashMap<String, usize>,
    /// Charge requests being processed right now, per account.
    charges_in_flight: HashMap<String, u64>,
    /// Charge requests being processed right now, in all.
    charges_in_flight_total: u64,
    /// Refund idempotency keys, bound to the refunded charge's id.
    refund_keys: HashMap<String, KeyState<String>>,
    /// The most recent `/v1` requests, oldest first, at most
    /// [`MAX_SEEN_REQUESTS`].
    seen: VecDeque<SeenRequest>,
}

/// Unix seconds now.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Checks a charge request's fields (`docs/contracts.md`, section "Charge
/// API"): a human reason if invalid.
pub(crate) fn validate_charge(r: &CreateCharge) -> Result<(), String> {
    if r.amount <= 0 {
        return Err(format!("amount must be positive, got {}", r.amount));
    }
    if r.currency.len() != 3 || !r.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "currency must be 3 upper-case letters, got {:?}",
            r.currency
        ));
    }
    if r.account_id.is_empty() {
        return Err("account_id must not be empty".to_owned());
    }
    if r.reference_id.is_empty() {
        return Err("reference_id must not be empty".to_owned());
    }
    Ok(())
}

impl State {
    /// A provider with these faults and nothing recorded.
    pub fn new(faults: Faults) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// A copy of the ledger.
    pub fn ledger(&self) -> Ledger {
        Ledger {
            charges: self.charges.clone(),
            refunds: self.refunds.clone(),
        }
    }

    /// Remembers a received `/v1` request, forgetting the oldest past the bound.
    pub fn saw(&mut self, request: SeenRequest) {
        if self.seen.len() >= MAX_SEEN_REQUESTS {
            self.seen.pop_front();
        }
        self.seen.push_back(request);
    }

    /// The remembered `/v1` requests, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.iter().cloned().collect()
    }

    /// First half of `POST /v1/charges`: resolve the key, or reserve it.
    /// `key` must already be `None` when the faults ignore keys.
    pub fn begin_charge(
        &mut self,
        key: Option<String>,
        request: CreateCharge,
        faults: &Faults,
    ) -> Step {
        let params = ChargeParams::from(&request);
        if let Some(key) = &key {
            match self.charge_keys.get(key) {
                Some(KeyState::InProgress(_)) => {
                    self.stats.in_progress_conflicts += 1;
                    return Step::Now(in_progress(key));
                }
                Some(KeyState::Done(stored, answer)) => {
                    if *stored != params {
                        self.stats.param_conflicts += 1;
                        return Step::Now(key_conflict(key));
                    }
                    self.stats.replays += 1;
                    return Step::Now(answer.replay());
                }
                None => {
                    self.charge_keys
                        .insert(key.clone(), KeyState::InProgress(params));
                }
            }
        }
        let decline = faults.declines(&request.account_id);
        let in_flight = self
            .charges_in_flight
            .entry(request.account_id.clone())
            .or_default();
        *in_flight += 1;
        self.stats.max_account_concurrency = self.stats.max_account_concurrency.max(*in_flight);
        self.charges_in_flight_total += 1;
        self.stats.max_concurrency = self.stats.max_concurrency.max(self.charges_in_flight_total);
        Step::Later(Ticket::Charge {
            key,
            request,
            decline,
        })
    }

    /// First half of `POST /v1/charges/{id}/refunds`.
    pub fn begin_refund(&mut self, key: Option<String>, charge: String) -> Step {
        if let Some(key) = &key {
            match self.refund_keys.get(key) {
                Some(KeyState::InProgress(_)) => {
                    self.stats.in_progress_conflicts += 1;
                    return Step::Now(in_progress(key));
                }
                Some(KeyState::Done(stored, answer)) => {
                    if *stored != charge {
                        self.stats.param_conflicts += 1;
                        return Step::Now(key_conflict(key));
                    }
                    return Step::Now(answer.replay());
                }
                None => {}
            }
        }
        if let Some(answer) = self.refund_refusal(&charge) {
            return Step::Now(answer);
        }
        if let Some(key) = &key {
            self.refund_keys
                .insert(key.clone(), KeyState::InProgress(charge.clone()));
        }
        Step::Later(Ticket::Refund { key, charge })
    }

    /// Why this charge cannot be refunded, if it cannot.
    fn refund_refusal(&self, charge: &str) -> Option<Answer> {
        if !self.charge_index.contains_key(charge) {
            return Some(Answer::error(
                404,
                "resource_missing",
                format!("no such charge: {charge}"),
            ));
        }
        if self.refund_of.contains_key(charge) {
            return Some(Answer::error(
                400,
                "charge_already_refunded",
                format!("charge {charge} is already refunded"),
            ));
        }
        None
    }

    /// Second half of a request begun with [`Step::Later`]: does the work and
    /// records the answer under the key.
    pub fn finish(&mut self, ticket: Ticket) -> Answer {
        match ticket {
            Ticket::Charge {
                key,
                request,
                decline,
            } => {
                if let Some(n) = self.charges_in_flight.get_mut(&request.account_id) {
                    *n = n.saturating_sub(1);
                }
                self.charges_in_flight_total = self.charges_in_flight_total.saturating_sub(1);
                let answer = if decline {
                    self.stats.declines += 1;
                    Answer::error(402, "card_declined", "the account declined the charge")
                } else {
                    Answer::json(201, &self.create_charge(&request))
                };
                if let Some(key) = key {
                    let params = ChargeParams::from(&request);
                    self.charge_keys
                        .insert(key, KeyState::Done(params, answer.clone()));
                }
                answer
            }
            Ticket::Refund { key, charge } => {
                // Another key may have refunded the charge meanwhile.
                if let Some(answer) = self.refund_refusal(&charge) {
                    if let Some(key) = key {
                        self.refund_keys.remove(&key);
                    }
                    return answer;
                }
                let refund = self.create_refund(&charge);
                let answer = Answer::json(201, &refund);
                if let Some(key) = key {
                    self.refund_keys
                        .insert(key, KeyState::Done(charge, answer.clone()));
                }
                answer
            }
        }
    }

    /// Records a new succeeded charge.
    fn create_charge(&mut self, request: &CreateCharge) -> Charge {
        let charge = Charge {
            id: format!("ch_{:010}", self.charges.len() + 1),
            reference_id: request.reference_id.clone(),
            account_id: request.account_id.clone(),
            amount: request.amount,
            currency: request.currency.clone(),
            status: "succeeded".to_owned(),
            created: now(),
        };
        self.charge_index
            .insert(charge.id.clone(), self.charges.len());
        self.charges.push(charge.clone());
        self.stats.charges_created += 1;
        charge
    }

    /// Records a full refund of an existing, unrefunded charge.
    fn create_refund(&mut self, charge_id: &str) -> Refund {
        let (amount, reference_id) = self
            .charge_index
            .get(charge_id)
            .and_then(|&i| self.charges.get(i))
            .map(|c| (c.amount, c.reference_id.clone()))
            .unwrap_or_default();
        let refund = LedgerRefund {
            id: format!("re_{:010}", self.refunds.len() + 1),
            charge: charge_id.to_owned(),
            amount,
            reference_id,
            created: now(),
        };
        self.refund_of
            .insert(charge_id.to_owned(), self.refunds.len());
        self.refunds.push(refund.clone());
        self.stats.refunds += 1;
        Refund {
            id: refund.id,
            charge: refund.charge,
            amount: refund.amount,
        }
    }

    /// `GET /v1/charges`: a lookup by reference or a page of the listing.
    pub fn list(&mut self, query: &ListQuery, lookup_offered: bool) -> Answer {
        let in_range = |c: &Charge| {
            query.created_gte.is_none_or(|t| c.created >= t)
                && query.created_lt.is_none_or(|t| c.created < t)
        };
        if let Some(reference) = &query.reference_id {
            if !lookup_offered {
                return Answer::error(404, "not_supported", "lookup by reference is not offered");
            }
            self.stats.lookups += 1;
            let data = self
                .charges
                .iter()
                .filter(|c| c.reference_id == *reference && in_range(c))
                .cloned()
                .collect();
            return Answer::json(
                200,
                &ChargeList {
                    data,
                    has_more: false,
                },
            );
        }
        let start = match &query.starting_after {
            None => 0,
            Some(id) => match self.charge_index.get(id) {
                Some(&i) => i + 1,
                None => {
                    return Answer::error(
                        400,
                        "invalid_request",
                        format!("starting_after: no such charge: {id}"),
                    );
                }
            },
        };
        let limit = query.limit.map_or(DEFAULT_LIMIT, |l| {
            usize::try_from(l).unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT)
        });
        self.stats.lists += 1;
        let mut data: Vec<Charge> = self
            .charges
            .iter()
            .skip(start)
            .filter(|c| in_range(c))
            .take(limit + 1)
            .cloned()
            .collect();
        let has_more = data.len() > limit;
        data.truncate(limit);
        Answer::json(200, &ChargeList { data, has_more })
    }
}

/// `409`: a request under this key is being processed.
fn in_progress(key: &str) -> Answer {
    Answer::error(
        409,
        "request_in_progress",
        format!("a request with idempotency key {key:?} is in progress"),
    )
}

/// `422`: the key was used with other parameters.
fn key_conflict(key: &str) -> Answer {
    Answer::error(
        422,
        "idempotency_conflict",
        format!("idempotency key {key:?} was used with other parameters"),
    )
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

#[cfg(test)]
mod seen_tests {
    use super::*;

    #[test]
    fn seen_requests_are_bounded_oldest_first() {
        let mut state = State::default();
        for i in 0..MAX_SEEN_REQUESTS + 3 {
            state.saw(SeenRequest {
                method: "POST".into(),
                path: "/v1/charges".into(),
                reference_id: None,
                idempotency_key: Some(i.to_string()),
                traceparent: None,
                at_ms: 0,
            });
        }
        let seen = state.seen();
        assert_eq!(seen.len(), MAX_SEEN_REQUESTS);
        assert_eq!(seen[0].idempotency_key.as_deref(), Some("3"));
        let last = (MAX_SEEN_REQUESTS + 2).to_string();
        assert_eq!(
            seen[seen.len() - 1].idempotency_key.as_deref(),
            Some(&*last)
        );
    }
}
