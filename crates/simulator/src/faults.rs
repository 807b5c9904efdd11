//! What the simulator does wrong on purpose, and the dice that decide it per
//! request.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The simulated provider's faults and capabilities.
///
/// The four probabilities partition one roll of the dice per `/v1` request, so
/// at most one of them happens to a request and their sum must not exceed 1.
/// Missing fields take their [`Default`] when deserialised, so
/// `{"drop_response": 0.2}` is a complete `PUT /_sim/faults` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Probability that a request is never processed and the client gets no
    /// answer: the connection is reset.
    pub drop_request: f64,
    /// Probability that a request is processed (a charge is created and stored
    /// under its key) but the client gets no answer: the connection is reset.
    pub drop_response: f64,
    /// Probability of a `500` or `503` answer without processing.
    pub error_5xx: f64,
    /// Probability of a `429` answer without processing.
    pub rate_limit: f64,
    /// Delay added to every `/v1` answer (including error answers), in ms.
    pub latency_ms: u64,
    /// Uniform extra delay `0..=latency_jitter_ms` on top of `latency_ms`.
    pub latency_jitter_ms: u64,
    /// Whether the `Idempotency-Key` header is honoured. `false`: every `POST`
    /// creates a new charge, whatever its key.
    pub idempotency_keys: bool,
    /// Whether `GET /v1/charges?reference_id=R` is offered. `false`: it answers
    /// `404 not_supported` (listing without `reference_id` still works).
    pub lookup: bool,
    /// Whether refunds are offered. `false`: they answer `404 not_supported`.
    pub refunds: bool,
    /// Every `/v1` request is answered this status without processing, before
    /// any dice (e.g. `401` as during a key rotation, `403`, `404`, `429`);
    /// `0`: off. A test opens a window of refusals by setting it and closes
    /// it by setting it back.
    pub refuse_status: u16,
    /// Every lookup by `reference_id` answers `503` without processing
    /// (charges, listings and refunds are unaffected).
    pub fail_lookups: bool,
    /// Accounts whose id starts with this prefix are declined (`402
    /// card_declined`, stored under the key like any answer). Empty: no
    /// account is declined.
    pub decline_prefix: String,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            drop_request: 0.0,
            drop_response: 0.0,
            error_5xx: 0.0,
            rate_limit: 0.0,
            latency_ms: 0,
            latency_jitter_ms: 0,
            idempotency_keys: true,
            lookup: true,
            refunds: true,
            refuse_status: 0,
            fail_lookups: false,
            decline_prefix: "acc_decline".to_owned(),
        }
    }
}

/// What the dice decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Process and answer normally.
    Normal,
    /// Do not process; reset the connection.
    DropRequest,
    /// Process, then reset the connection instead of answering.
    DropResponse,
    /// Answer this 5xx status without processing.
    ServerError(u16),
    /// Answer `429` without processing.
    RateLimited,
    /// Answer this status without processing (`refuse_status`).
    Refused(u16),
}

impl Faults {
    /// Checks that every probability is within `[0, 1]` and that the four of
    /// them sum to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let probabilities = [
            ("drop_request", self.drop_request),
            ("drop_response", self.drop_response),
            ("error_5xx", self.error_5xx),
            ("rate_limit", self.rate_limit),
        ];
        for (name, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be a probability in [0, 1], got {p}"));
            }
        }
        if self.refuse_status != 0 && !(400..=599).contains(&self.refuse_status) {
            return Err(format!(
                "refuse_status must be 0 (off) or an error status 400..=599, got {}",
                self.refuse_status
            ));
        }
        let sum: f64 = probabilities.iter().map(|(_, p)| p).sum();
        if sum > 1.0 + 1e-9 {
            return Err(format!(
                "drop_request + drop_response + error_5xx + rate_limit must not exceed 1, got {sum}"
            ));
        }
        Ok(())
    }

    /// Whether this account is declined.
    pub(crate) fn declines(&self, account_id: &str) -> bool {
        !self.decline_prefix.is_empty() && account_id.starts_with(&self.decline_prefix)
    }

    /// Rolls the dice once for a request.
    pub(crate) fn roll(&self) -> Fate {
        if self.refuse_status != 0 {
            return Fate::Refused(self.refuse_status);
        }
        let mut rng = rand::rng();
        let r: f64 = rng.random();
        let mut bound = self.drop_request;
        if r < bound {
            return Fate::DropRequest;
        }
        bound += self.drop_response;
        if r < bound {
            return Fate::DropResponse;
        }
        bound += self.error_5xx;
        if r < bound {
            return Fate::ServerError(if rng.random_bool(0.5) { 500 } else { 503 });
        }
        bound += self.rate_limit;
        if r < bound {
            return Fate::RateLimited;
        }
        Fate::Normal
    }

    /// The delay for one answer: `latency_ms` plus uniform jitter.
    pub(crate) fn latency(&self) -> Duration {
        let jitter = if self.latency_jitter_ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=self.latency_jitter_ms)
        };
        Duration::from_millis(self.latency_ms.saturating_add(jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_a_perfect_provider() {
        let faults = Faults::default();
        assert_eq!(faults.validate(), Ok(()));
        assert!((0..1000).all(|_| faults.roll() == Fate::Normal));
        assert_eq!(faults.latency(), Duration::ZERO);
        assert!(faults.declines("acc_decline_1"));
        assert!(!faults.declines("acc_1"));
    }

    #[test]
    fn validate_rejects_bad_probabilities() {
        let bad = |f: Faults| f.validate().is_err();
        assert!(bad(Faults {
            drop_request: -0.1,
            ..Faults::default()
        }));
        assert!(bad(Faults {
            rate_limit: 1.5,
            ..Faults::default()
        }));
        assert!(bad(Faults {
            error_5xx: f64::NAN,
            ..Faults::default()
        }));
        assert!(bad(Faults {
            drop_request: 0.6,
            drop_response: 0.6,
            ..Faults::default()
        }));
        assert!(
            Faults {
                drop_request: 0.25,
                drop_response: 0.25,
                error_5xx: 0.25,
                rate_limit: 0.25,
                ..Faults::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn certain_faults_always_happen() {
        let always = |f: Faults, fate: fn(Fate) -> bool| (0..200).all(|_| fate(f.roll()));
        assert!(always(
            Faults {
                drop_request: 1.0,
                ..Faults::default()
            },
            |f| f == Fate::DropRequest
        ));
        assert!(always(
            Faults {
                drop_response: 1.0,
                ..Faults::default()
            },
            |f| f == Fate::DropResponse
        ));
        assert!(always(
            Faults {
                error_5xx: 1.0,
                ..Faults::default()
            },
            |f| matches!(f, Fate::ServerError(500 | 503))
        ));
        assert!(always(
            Faults {
                rate_limit: 1.0,
                ..Faults::default()
            },
            |f| f == Fate::RateLimited
        ));
    }

    #[test]
    fn a_refusal_window_refuses_every_request_until_closed() {
        let mut faults = Faults {
            refuse_status: 401,
            drop_response: 1.0,
            ..Faults::default()
        };
        assert_eq!(faults.validate(), Ok(()));
        // Before any dice: nothing is processed, not even a dropped response.
        assert!((0..200).all(|_| faults.roll() == Fate::Refused(401)));
        faults.refuse_status = 0;
        assert_eq!(faults.roll(), Fate::DropResponse);
        for bad in [200, 302, 600] {
            let f = Faults {
                refuse_status: bad,
                ..Faults::default()
            };
            assert!(f.validate().is_err(), "{bad}");
        }
        // An old body without the new fields still reads as no refusal.
        let old: Faults = serde_json::from_str(r#"{"drop_response": 0.5}"#)
            .unwrap_or_else(|e| panic!("an old faults body: {e}"));
        assert_eq!(old.refuse_status, 0);
        assert!(!old.fail_lookups);
    }

    #[test]
    fn latency_stays_within_jitter() {
        let faults = Faults {
            latency_ms: 10,
            latency_jitter_ms: 5,
            ..Faults::default()
        };
        for _ in 0..200 {
            let d = faults.latency();
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(15));
        }
    }

    #[test]
    fn empty_decline_prefix_declines_nobody() {
        let faults = Faults {
            decline_prefix: String::new(),
            ..Faults::default()
        };
        assert!(!faults.declines("acc_decline_1"));
    }
}
