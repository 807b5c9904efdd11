//! One attempt for one claimed row, and what to record about it.
//!
//! The rules (docs/contracts.md, "Capabilities and strategy"): an uncertain
//! outcome is never "not charged". A row whose earlier attempt was uncertain is
//! first looked up by reference where the provider offers lookup; if the charge
//! is there, that settles it. Otherwise the charge is (re)sent under the same
//! reference id — safe where the provider honours idempotency keys; where it
//! does not, a retry waits long enough for a late original to have landed (and
//! reconciliation has the last word).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use idem_charge::{
    Attempt, Call, CallKind, Capabilities, ChargeClient, ChargeMetadata, CreateCharge,
};
use idem_store::{Claimed, Settlement};
use rand::Rng;
use serde_json::json;

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

/// Make one attempt for `row` and decide what to record; every provider call
/// goes into `calls`.
#[tracing::instrument(skip_all, fields(outbox_id = row.id, reference_id = %row.reference_id, message_id = %row.message_id, attempt = row.attempts, trace_id = row.traceparent.as_deref().and_then(idem_message::trace::trace_id)))]
pub async fn attempt(
    client: &ChargeClient,
    policy: &Policy,
    row: &Claimed,
    calls: &CallLog,
) -> Settlement {
    let caps = client.capabilities();
    let reference = row.reference_id.to_string();
    // The message's trace continues: this span's parent is the stored
    // traceparent; the provider sees a child of it (see `crate::trace`).
    let traceparent = crate::trace::outgoing(&tracing::Span::current(), row.traceparent.as_deref());
    let traceparent = traceparent.as_deref();
    if row.uncertain_since.is_some() && caps.lookup {
        calls.opened(CallKind::Lookup);
        let (found, call) = client.lookup(&reference, traceparent).await;
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
                    return succeeded(first);
                }
                tracing::info!("uncertain attempt resolved by lookup: not charged; charging");
            }
            Err(e) => {
                return retry(policy, row, true, caps, format!("lookup failed: {e}"));
            }
        }
    }
    let request = CreateCharge {
        reference_id: reference,
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
    match outcome {
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
mod tests {
    use super::*;

    fn row(attempts: i32, uncertain: bool) -> Claimed {
        Claimed {
            id: 1,
            lease_token: uuid::Uuid::nil(),
            scope: "default".into(),
            message_id: "m".into(),
            reference_id: uuid::Uuid::nil(),
            account_id: "acc".into(),
            amount: 1,
            currency: "EUR".into(),
            attempts,
            uncertain_since: uncertain.then(chrono::Utc::now),
            traceparent: None,
        }
    }

    fn policy() -> Policy {
        Policy {
            max_attempts: 3,
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
            charge_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn past_the_limit_only_a_never_charged_row_dies() {
        let caps = Capabilities::default();
        let dead = retry(&policy(), &row(3, false), false, caps, "429".into());
        assert!(matches!(dead, Settlement::Dead { ref error } if error.contains("never charged")));
        // Possibly charged and resolvable: keeps resolving, never dead.
        let kept = retry(&policy(), &row(3, true), false, caps, "429".into());
        assert!(matches!(kept, Settlement::Retry { .. }), "{kept:?}");
        let kept = retry(&policy(), &row(3, false), true, caps, "timeout".into());
        assert!(
            matches!(
                kept,
                Settlement::Retry {
                    uncertain: true,
                    ..
                }
            ),
            "{kept:?}"
        );
        // Nobody can find out: surfaced to operators as dead, saying so.
        let blind = Capabilities {
            idempotency_keys: false,
            lookup: false,
            refunds: true,
        };
        let dead = retry(&policy(), &row(3, true), true, blind, "timeout".into());
        assert!(matches!(dead, Settlement::Dead { ref error } if error.contains("uncertain")));
    }

    #[test]
    fn without_keys_an_uncertain_retry_waits_out_the_original() {
        let no_keys = Capabilities {
            idempotency_keys: false,
            ..Capabilities::default()
        };
        match retry(&policy(), &row(1, false), true, no_keys, "timeout".into()) {
            Settlement::Retry { delay, .. } => assert!(delay >= Duration::from_secs(2)),
            other => panic!("{other:?}"),
        }
        match retry(
            &policy(),
            &row(1, false),
            true,
            Capabilities::default(),
            "timeout".into(),
        ) {
            Settlement::Retry { delay, .. } => assert!(delay <= Duration::from_millis(10)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..50 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(b.delay(30) <= Duration::from_secs(2));
        }
    }
}
