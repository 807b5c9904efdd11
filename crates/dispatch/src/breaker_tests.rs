//! The breaker's state machine, driven with explicit time and jitter.

use std::time::Duration;

use idem_charge::Refusal;
use tokio::time::Instant;

use super::{Admit, BreakerConfig, Cause, Circuit, Transition};

fn config() -> BreakerConfig {
    BreakerConfig {
        sustained: 3,
        probe_base: Duration::from_secs(1),
        probe_max: Duration::from_secs(8),
    }
}

fn cause(refusal: Refusal) -> Cause {
    Cause {
        refusal,
        call: "POST /v1/charges",
    }
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn a_refused_key_opens_at_once_and_says_why() {
    let t0 = Instant::now();
    let mut c = Circuit::new(config());
    assert_eq!(c.admit(t0), Admit::Claim);
    let opened = c.refused(cause(Refusal::Unauthorized), t0, 1.0);
    assert_eq!(
        opened,
        Some(Transition::Opened {
            cause: cause(Refusal::Unauthorized),
            probe_in: SEC
        })
    );
    assert_eq!(
        c.open_cause().map(|c| c.to_string()).as_deref(),
        Some("401 from POST /v1/charges")
    );
    assert_eq!(c.admit(t0), Admit::Wait(SEC));
    // Calls in flight when it opened are refused too: no second opening.
    assert_eq!(c.refused(cause(Refusal::Unauthorized), t0, 1.0), None);
}

#[test]
fn throttling_opens_only_when_sustained() {
    let t0 = Instant::now();
    let mut c = Circuit::new(config());
    assert_eq!(c.refused(cause(Refusal::Throttled), t0, 1.0), None);
    assert_eq!(c.refused(cause(Refusal::Throttled), t0, 1.0), None);
    // An answer between resets the streak.
    assert_eq!(c.answered(), None);
    assert_eq!(c.refused(cause(Refusal::Throttled), t0, 1.0), None);
    assert_eq!(c.refused(cause(Refusal::Unreachable), t0, 1.0), None);
    assert!(matches!(
        c.refused(cause(Refusal::Throttled), t0, 1.0),
        Some(Transition::Opened { .. })
    ));
    assert_eq!(c.admit(t0), Admit::Wait(SEC));
}

#[test]
fn half_open_lets_one_probe_through_and_an_answer_closes() {
    let t0 = Instant::now();
    let mut c = Circuit::new(config());
    c.refused(cause(Refusal::NotFound), t0, 1.0);
    assert_eq!(c.admit(t0 + SEC), Admit::Probe);
    // One probe at a time.
    assert!(matches!(c.admit(t0 + SEC), Admit::Wait(_)));
    assert!(matches!(c.admit(t0 + 5 * SEC), Admit::Wait(_)));
    assert_eq!(c.answered(), Some(Transition::Closed));
    assert_eq!(c.open_cause(), None);
    assert_eq!(c.admit(t0 + 5 * SEC), Admit::Claim);
}

#[test]
fn failed_probes_back_off_doubling_jittered_and_capped() {
    let t0 = Instant::now();
    let mut c = Circuit::new(config());
    c.refused(cause(Refusal::Forbidden), t0, 1.0);
    let mut now = t0 + SEC;
    let mut waits = Vec::new();
    for _ in 0..6 {
        assert_eq!(c.admit(now), Admit::Probe);
        match c.refused(cause(Refusal::Forbidden), now, 1.0) {
            Some(Transition::Opened { probe_in, .. }) => {
                waits.push(probe_in.as_secs());
                now += probe_in;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(waits, [2, 4, 8, 8, 8, 8]);
    // Jitter shortens by up to half, never lengthens.
    assert_eq!(c.admit(now), Admit::Probe);
    match c.refused(cause(Refusal::Forbidden), now, 0.5) {
        Some(Transition::Opened { probe_in, .. }) => assert_eq!(probe_in, 4 * SEC),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_probe_without_a_row_or_an_answer_is_sent_again() {
    let t0 = Instant::now();
    let mut c = Circuit::new(config());
    c.refused(cause(Refusal::Unauthorized), t0, 1.0);
    assert_eq!(c.admit(t0 + SEC), Admit::Probe);
    c.probe_unused();
    assert_eq!(c.admit(t0 + SEC), Admit::Probe);
    c.inconclusive();
    assert_eq!(c.admit(t0 + SEC), Admit::Probe);
    // Still open until an answer.
    assert!(c.open_cause().is_some());
}

#[test]
fn an_answer_while_open_waits_for_the_probe() {
    let t0 = Instant::now();
    let mut c = Circuit::new(config());
    c.refused(cause(Refusal::Unauthorized), t0, 1.0);
    // A call sent before the breaker opened may still come back answered.
    assert_eq!(c.answered(), None);
    assert!(c.open_cause().is_some());
}
