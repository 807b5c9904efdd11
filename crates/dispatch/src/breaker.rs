//! The provider-wide circuit breaker: when the provider refuses us (a refused
//! key, a missing endpoint, sustained throttling, connection refused), every
//! row would be refused alike, so the replica stops claiming instead of
//! spending the rows' attempts. After a backoff (doubling, jittered, capped)
//! one row at a time is let through as a probe; an answer that is not a
//! refusal closes the breaker. Each replica has its own breaker.
//!
//! [`Circuit`] is the pure state machine (time and jitter are arguments);
//! [`Breaker`] is the shared handle the dispatcher and `/readyz` use, which
//! adds the clock, the dice, the metrics and the log lines.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use idem_charge::Refusal;
use rand::Rng;
use tokio::time::Instant;

use crate::metrics;

/// Settings of the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive throttled or unreachable calls (no other answer between)
    /// that open the breaker; a refused key or endpoint opens it at once.
    pub sustained: u32,
    /// Wait before the first probe after opening.
    pub probe_base: Duration,
    /// Longest wait between probes (the doubling stops there).
    pub probe_max: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            sustained: 10,
            probe_base: Duration::from_secs(1),
            probe_max: Duration::from_secs(30),
        }
    }
}

/// What the provider refused, and on which call: the reason the breaker
/// gives (e.g. `401 from POST /v1/charges`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cause {
    /// The refusal.
    pub refusal: Refusal,
    /// The call refused, e.g. `POST /v1/charges`.
    pub call: &'static str,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} from {}", self.refusal, self.call)
    }
}

/// What the dispatcher may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Claim as usual.
    Claim,
    /// Claim one row, the probe; report its outcome (or
    /// [`Circuit::probe_unused`] when nothing was claimed).
    Probe,
    /// Claim nothing for this long (or until a call in flight ends).
    Wait(Duration),
}

/// A change of state worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Opened (from closed or after a failed probe); the next probe after
    /// the delay.
    Opened {
        /// Why.
        cause: Cause,
        /// Until the next probe.
        probe_in: Duration,
    },
    /// A probe was answered: claiming resumes.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Claiming; `streak` consecutive sustained-kind refusals so far.
    Closed { streak: u32 },
    /// Not claiming until `probe_at`; `opened`: consecutive openings without
    /// an answer between (the backoff's exponent).
    Open {
        cause: Cause,
        probe_at: Instant,
        opened: u32,
    },
    /// Waiting for a probe's outcome (`probing`) or ready to send one.
    HalfOpen {
        cause: Cause,
        opened: u32,
        probing: bool,
    },
}

/// The breaker's state machine. Pure: the caller passes the time and a
/// jitter factor in `[0.5, 1]`.
#[derive(Debug, Clone)]
pub struct Circuit {
    /// Settings.
    config: BreakerConfig,
    /// Where it stands.
    state: State,
}

impl Circuit {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed { streak: 0 },
        }
    }

    /// Why it is open, or `None` when closed.
    pub fn open_cause(&self) -> Option<Cause> {
        match self.state {
            State::Closed { .. } => None,
            State::Open { cause, .. } | State::HalfOpen { cause, .. } => Some(cause),
        }
    }

    /// May the dispatcher claim at `now`? An open breaker whose delay has
    /// passed turns half-open and lets exactly one probe through at a time.
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Claim,
            State::Open {
                cause,
                probe_at,
                opened,
            } => {
                if now >= probe_at {
                    self.state = State::HalfOpen {
                        cause,
                        opened,
                        probing: true,
                    };
                    Admit::Probe
                } else {
                    Admit::Wait(probe_at - now)
                }
            }
            State::HalfOpen { probing: true, .. } => Admit::Wait(self.config.probe_base),
            State::HalfOpen { cause, opened, .. } => {
                self.state = State::HalfOpen {
                    cause,
                    opened,
                    probing: true,
                };
                Admit::Probe
            }
        }
    }

    /// The probe let through found no row to claim: the next claim probes.
    pub fn probe_unused(&mut self) {
        if let State::HalfOpen { cause, opened, .. } = self.state {
            self.state = State::HalfOpen {
                cause,
                opened,
                probing: false,
            };
        }
    }

    /// A call was refused at `now`. Opens the breaker (or keeps it open,
    /// with a longer delay after a failed probe).
    pub fn refused(&mut self, cause: Cause, now: Instant, jitter: f64) -> Option<Transition> {
        let opened = match self.state {
            State::Closed { streak } => {
                let streak = streak + 1;
                if !cause.refusal.opens_at_once() && streak < self.config.sustained {
                    self.state = State::Closed { streak };
                    return None;
                }
                1
            }
            // Calls that were in flight when it opened: already counted.
            State::Open { .. } => return None,
            State::HalfOpen { opened, .. } => opened.saturating_add(1),
        };
        let probe_in = self.delay(opened, jitter);
        self.state = State::Open {
            cause,
            probe_at: now + probe_in,
            opened,
        };
        Some(Transition::Opened { cause, probe_in })
    }

    /// A call got an answer that is not a refusal (charged, declined, even a
    /// `5xx`: the provider takes our calls). Closes a half-open breaker; an
    /// open one waits for its probe (the answer may be to a call sent before
    /// it opened).
    pub fn answered(&mut self) -> Option<Transition> {
        match self.state {
            State::Closed { .. } => {
                self.state = State::Closed { streak: 0 };
                None
            }
            State::Open { .. } => None,
            State::HalfOpen { .. } => {
                self.state = State::Closed { streak: 0 };
                Some(Transition::Closed)
            }
        }
    }

    /// A call ended without telling either way (cut off, lookup failed by
    /// transport): a probe may be sent again; a streak is kept.
    pub fn inconclusive(&mut self) {
        self.probe_unused();
    }

    /// The wait before probe number `opened`: `probe_base * 2^(opened-1)`,
    /// capped at `probe_max`, times `jitter` (so replicas do not probe in step).
    fn delay(&self, opened: u32, jitter: f64) -> Duration {
        let exp = opened.saturating_sub(1).min(20);
        let full = self
            .config
            .probe_base
            .saturating_mul(1 << exp)
            .min(self.config.probe_max);
        full.mul_f64(jitter.clamp(0.5, 1.0))
    }
}

/// The replica's breaker, shared by the dispatch loop, its attempts and
/// `/readyz`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Breaker(Arc<Mutex<Circuit>>);

impl Breaker {
    /// A closed breaker with `config`.
    pub fn new(config: BreakerConfig) -> Self {
        ::metrics::gauge!(metrics::BREAKER_OPEN).set(0.0);
        Self(Arc::new(Mutex::new(Circuit::new(config))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why claiming is paused, for `/readyz` (e.g. `provider breaker open:
    /// 401 from POST /v1/charges`); `None` when closed.
    pub fn status(&self) -> Option<String> {
        self.lock()
            .open_cause()
            .map(|cause| format!("provider breaker open: {cause}"))
    }

    /// See [`Circuit::admit`].
    pub fn admit(&self) -> Admit {
        self.lock().admit(Instant::now())
    }

    /// See [`Circuit::probe_unused`].
    pub fn probe_unused(&self) {
        self.lock().probe_unused();
    }

    /// See [`Circuit::inconclusive`].
    pub fn inconclusive(&self) {
        self.lock().inconclusive();
    }

    /// A refused call: counted by status; opening is logged and shown.
    pub fn refused(&self, cause: Cause) {
        ::metrics::counter!(metrics::REFUSALS, "status" => cause.refusal.label()).increment(1);
        let jitter = rand::rng().random_range(0.5..=1.0);
        let change = self.lock().refused(cause, Instant::now(), jitter);
        report(change);
    }

    /// An answer that is not a refusal; closing is logged and shown.
    pub fn answered(&self) {
        let change = self.lock().answered();
        report(change);
    }
}

fn report(change: Option<Transition>) {
    match change {
        None => {}
        Some(Transition::Opened { cause, probe_in }) => {
            ::metrics::gauge!(metrics::BREAKER_OPEN).set(1.0);
            ::metrics::counter!(metrics::BREAKER_OPENED).increment(1);
            tracing::error!(%cause, ?probe_in, "provider breaker open: claiming paused (rows keep their attempts); probing one row at a time");
        }
        Some(Transition::Closed) => {
            ::metrics::gauge!(metrics::BREAKER_OPEN).set(0.0);
            tracing::info!("provider breaker closed: a probe was answered; claiming resumes");
        }
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
