//! One attempt for one claimed row, and what to record about it.
//!
//! The rules (docs/contracts.md, "Capabilities and strategy"): an uncertain
//! outcome is never "not charged". A row whose earlier attempt was uncertain is
//! first looked up by reference where the provider offers lookup; if the charge
//! is there, that settles it. Otherwise the charge is (re)sent under the same
//! reference id — safe where the provider honours idempotency keys; where it
//! does not, a retry waits long enough for a late original to have landed (and
//! reconciliation has the last word).
//!
//! A lookup that fails (transport, `5xx`) falls back to the keyed retry
//! while the key can be trusted; otherwise (no keys, or the provider's key
//! lifetime passed) the row stays `unknown` without any call that could
//! charge, counted in `idem_dispatch_unresolved_total`, until a lookup
//! answers, reconciliation settles it or an operator does. A refusal (401,
//! 403, 404, 429, connection refused) is [`Step::Refused`]: not the row's
//! fault, its attempt is given back and the breaker decides what happens next.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use idem_charge::{
    Attempt, Call, CallKind, Capabilities, ChargeClient, ChargeMetadata, CreateCharge, Refusal,
};
use idem_store::{Claimed, Settlement};
use rand::Rng;
use serde_json::json;

use crate::breaker::Cause;

/// Exponential backoff with jitter, by attempt number.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay after attempt `attempt` (1-based): `base * 2^(attempt-1)`,
    /// capped, then jittered down by up to half so replicas do not retry in step.
    pub fn delay(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        let full = self.base.saturating_mul(1 << exp).min(self.max);
        let jitter = rand::rng().random_range(0.5..=1.0);
        full.mul_f64(jitter)
    }
}

/// What an attempt needs besides the row.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Claims after which a row that still failed becomes `dead`.
    pub max_attempts: i32,
    /// Retry delays.
    pub backoff: Backoff,
    /// The per-call timeout; without idempotency keys an uncertain row waits at
    /// least twice this before it may be charged again.
    pub charge_timeout: Duration,
    /// How long after an uncertain attempt the provider's idempotency key
    /// may still be trusted: its key lifetime less a margin for the time
    /// between the call and `uncertain_since` being set.
    pub key_trusted_for: Duration,
}

impl Policy {
    /// Whether the key of a row uncertain since `since` may have expired at
    /// the provider by `now`: then a resend under it could charge again.
    pub fn key_expired(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        let age = (now - since).to_std().unwrap_or(Duration::ZERO);
        age >= self.key_trusted_for
    }
}

/// The provider calls of one attempt, for the attempt history. Shared with the
/// dispatcher, so a call cut off by the lease budget (its future dropped) is
/// still recorded, as one that got no answer.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Calls>>);

#[derive(Debug, Default)]
struct Calls {
    /// Finished calls, in order.
    done: Vec<Call>,
    /// The call under way: its kind, wall-clock start and monotonic start.
    open: Option<(CallKind, chrono::DateTime<chrono::Utc>, std::time::Instant)>,
}

impl CallLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn opened(&self, kind: CallKind) {
        self.lock().open = Some((kind, chrono::Utc::now(), std::time::Instant::now()));
    }

    fn finished(&self, call: Call) {
        let mut calls = self.lock();
        calls.open = None;
        calls.done.push(call);
    }

    /// Every call made; a call still open (cut off) is closed with `error`.
    pub fn take(&self, cut_off: &str) -> Vec<Call> {
        let mut calls = self.lock();
        if let Some((kind, started_at, started)) = calls.open.take() {
            calls.done.push(Call {
                kind,
                started_at,
                latency: started.elapsed(),
                http_status: None,
                error: Some(cut_off.to_owned()),
                provider_id: None,
            });
        }
        std::mem::take(&mut calls.done)
    }
}

/// How one attempt ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Record this on the row.
    Settle(Settlement),
    /// The provider refused the call because of us (see
    /// [`idem_charge::Refusal`]): nothing was processed, the row goes back
    /// with its attempt given back, and the breaker hears of it.
    Refused {
        /// What was refused, on which call.
        cause: Cause,
        /// For the row's `last_error`.
        error: String,
        /// Before the row is due again (the breaker paces claims meanwhile).
        delay: Duration,
    },
}

/// Make one attempt for `row` and decide what to record; every provider call
/// goes into `calls`.
#[tracing::instrument(skip_all, fields(outbox_id = row.id, reference_id = %row.reference_id, message_id = %row.message_id, attempt = row.attempts, trace_id = row.traceparent.as_deref().and_then(idem_message::trace::trace_id)))]
pub async fn attempt(
    client: &ChargeClient,
    policy: &Policy,
    row: &Claimed,
    calls: &CallLog,
) -> Step {
    // The message's trace continues: this span's parent is the stored
    // traceparent; the provider sees a child of it (see `crate::trace`).
    let traceparent = crate::trace::outgoing(&tracing::Span::current(), row.traceparent.as_deref());
    let traceparent = traceparent.as_deref();
    if let Some(since) = row.uncertain_since
        && let Some(step) = resolve(client, policy, row, since, calls, traceparent).await
    {
        return step;
    }
    charge(client, policy, row, calls, traceparent).await
}

/// Resolve a row whose earlier attempt was uncertain (since `since`) before
/// anything is sent: `Some` ends the attempt (found by lookup, refused, or
/// left waiting); `None` means the charge may be (re)sent under its key.
async fn resolve(
    client: &ChargeClient,
    policy: &Policy,
    row: &Claimed,
    since: chrono::DateTime<chrono::Utc>,
    calls: &CallLog,
    traceparent: Option<&str>,
) -> Option<Step> {
    let caps = client.capabilities();
    let key_valid = caps.idempotency_keys && !policy.key_expired(since, chrono::Utc::now());
    if caps.lookup {
        calls.opened(CallKind::Lookup);
        let (found, call) = client
            .lookup(&row.reference_id.to_string(), traceparent)
            .await;
        calls.finished(call);
        match found {
            Ok(charges) => {
                if let Some(first) = charges.iter().find(|c| c.status == "succeeded") {
                    if charges.len() > 1 {
                        tracing::warn!(
                            found = charges.len(),
                            "several charges under one reference; reconciliation refunds the extra ones"
                        );
                    }
                    tracing::info!(charge_id = %first.id, "uncertain attempt resolved by lookup: charged");
                    return Some(Step::Settle(succeeded(first)));
                }
                tracing::info!("uncertain attempt resolved by lookup: not charged; charging");
            }
            Err(e) => {
                if let Some(refusal) = e.refusal() {
                    return Some(refused(policy, row, refusal, LOOKUP, e.to_string()));
                }
                if !key_valid {
                    let error = format!(
                        "lookup failed ({e}) and {}: not re-sent; waiting for a lookup, \
                         reconciliation or an operator",
                        no_key_reason(caps)
                    );
                    return Some(Step::Settle(unresolved(
                        policy,
                        row,
                        "lookup_failed",
                        error,
                    )));
                }
                // The key makes the retry safe: the provider replays the
                // original's answer if it ran. Waiting on the lookup
                // instead would block the account behind this row.
                ::metrics::counter!(crate::metrics::LOOKUP_FALLBACKS).increment(1);
                tracing::warn!(error = %e, "lookup failed; retrying under the same idempotency key");
            }
        }
    } else if caps.idempotency_keys && !key_valid {
        return Some(Step::Settle(unresolved(
            policy,
            row,
            "key_expired",
            format!(
                "outcome uncertain since {since} and the provider's key has expired \
                 (IDEM_PROVIDER_KEY_TTL_HOURS) with no lookup: not re-sent; waiting for \
                 reconciliation or an operator"
            ),
        )));
    }
    None
}

/// The lookup call, as the breaker names it.
const LOOKUP: &str = "GET /v1/charges";
/// The charge call, as the breaker names it.
const CHARGE: &str = "POST /v1/charges";

fn no_key_reason(caps: Capabilities) -> &'static str {
    if caps.idempotency_keys {
        "the provider's key for it has expired (IDEM_PROVIDER_KEY_TTL_HOURS)"
    } else {
        "the provider does not honour idempotency keys"
    }
}

/// Send the charge under the reference id and classify the answer.
async fn charge(
    client: &ChargeClient,
    policy: &Policy,
    row: &Claimed,
    calls: &CallLog,
    traceparent: Option<&str>,
) -> Step {
    let caps = client.capabilities();
    let request = CreateCharge {
        reference_id: row.reference_id.to_string(),
        account_id: row.account_id.clone(),
        amount: row.amount,
        currency: row.currency.clone(),
        metadata: ChargeMetadata {
            source: row.scope.clone(),
            message_id: row.message_id.clone(),
        },
    };
    calls.opened(CallKind::Charge);
    let (outcome, call) = client.create_charge(&request, traceparent).await;
    calls.finished(call);
    let settlement = match outcome {
        Attempt::Succeeded { charge, replayed } => {
            tracing::info!(charge_id = %charge.id, replayed, "charged");
            succeeded(&charge)
        }
        Attempt::Declined { code } => {
            tracing::info!(%code, "declined");
            Settlement::Declined {
                result: json!({"status": "declined", "code": code}),
            }
        }
        Attempt::Refused { refusal, reason } => {
            return refused(policy, row, refusal, CHARGE, reason);
        }
        Attempt::NotProcessed { reason } => retry(policy, row, false, caps, reason),
        Attempt::Uncertain { reason } => {
            tracing::warn!(%reason, "outcome uncertain");
            retry(policy, row, true, caps, reason)
        }
        Attempt::Rejected { reason } => {
            tracing::error!(%reason, "provider rejected the charge for good");
            let note = if row.uncertain_since.is_some() {
                " (an earlier attempt's outcome was uncertain: check the provider for this reference)"
            } else {
                ""
            };
            Settlement::Dead {
                error: format!("provider rejected the charge: {reason}{note}"),
            }
        }
    };
    Step::Settle(settlement)
}

/// A call the provider refused because of us: not this row's fault, so its
/// attempt is given back; it is due again after the usual backoff (the
/// breaker holds claims back meanwhile if the refusals go on).
fn refused(
    policy: &Policy,
    row: &Claimed,
    refusal: Refusal,
    call: &'static str,
    reason: String,
) -> Step {
    tracing::warn!(%reason, call, "provider refused the call (not about this charge); attempt given back");
    Step::Refused {
        cause: Cause { refusal, call },
        error: format!("provider refused {call}: {reason} (not counted as an attempt)"),
        delay: policy.backoff.delay(row.attempts),
    }
}

/// An uncertain row that no call may safely resolve now: it stays
/// `unknown` (never `dead`, never re-sent blindly) at the longest backoff,
/// and the metric and the log say so.
fn unresolved(policy: &Policy, row: &Claimed, reason: &'static str, error: String) -> Settlement {
    ::metrics::counter!(crate::metrics::UNRESOLVED, "reason" => reason).increment(1);
    tracing::warn!(reason, attempts = row.attempts, %error, "uncertain row left unknown: waiting for a lookup, reconciliation or an operator");
    Settlement::Retry {
        uncertain: true,
        error,
        delay: policy.backoff.max,
    }
}

fn succeeded(charge: &idem_charge::Charge) -> Settlement {
    Settlement::Succeeded {
        charge_id: charge.id.clone(),
        result: serde_json::to_value(charge).unwrap_or_else(|_| json!({"id": charge.id})),
    }
}

/// The settlement of an attempt that did not finish within its lease budget
/// (the provider, a lookup or this process was too slow — or the process was
/// frozen): the call may have charged, so the outcome is uncertain.
pub fn overran(
    client: &ChargeClient,
    policy: &Policy,
    row: &Claimed,
    budget: Duration,
) -> Settlement {
    let error = format!("attempt outlived its lease budget of {budget:?}");
    retry(policy, row, true, client.capabilities(), error)
}

/// Back off, or give up past the attempt limit.
///
/// A row that may have charged is never given up on while the provider offers a
/// safe way to find out (lookup, or a retry under an honoured key): it stays
/// `unknown` at the longest backoff, visible to operators, until resolved.
/// Only a row that certainly never charged, or one nobody can resolve, goes `dead`.
fn retry(
    policy: &Policy,
    row: &Claimed,
    uncertain: bool,
    caps: Capabilities,
    error: String,
) -> Settlement {
    let maybe_charged = uncertain || row.uncertain_since.is_some();
    let resolvable = caps.lookup || caps.idempotency_keys;
    if row.attempts >= policy.max_attempts {
        if !maybe_charged {
            return Settlement::Dead {
                error: format!(
                    "gave up after {} attempts (never charged): {error}",
                    row.attempts
                ),
            };
        }
        if !resolvable {
            return Settlement::Dead {
                error: format!(
                    "gave up after {} attempts (outcome uncertain: check the provider for this reference): {error}",
                    row.attempts
                ),
            };
        }
        tracing::error!(attempts = row.attempts, %error, "past the attempt limit but possibly charged: keeps resolving at the longest backoff");
    }
    let mut delay = policy.backoff.delay(row.attempts);
    if uncertain && !caps.idempotency_keys {
        // Without keys a resend could charge twice while the original is still
        // being processed: wait it out first.
        delay = delay.max(policy.charge_timeout.saturating_mul(2));
    }
    Settlement::Retry {
        uncertain,
        error,
        delay,
    }
}

#[cfg(test)]
#[path = "strategy_tests.rs"]
mod tests;
