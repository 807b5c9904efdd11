//! The strategy's pure decisions: retry or give up, refusals, key lifetime.

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
        key_trusted_for: Duration::from_secs(3600),
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
fn a_key_is_trusted_only_within_its_lifetime() {
    let now = chrono::Utc::now();
    let p = policy();
    assert!(!p.key_expired(now - chrono::Duration::minutes(59), now));
    assert!(p.key_expired(now - chrono::Duration::minutes(60), now));
    // A clock step backwards is not an expiry.
    assert!(!p.key_expired(now + chrono::Duration::minutes(5), now));
}

#[test]
fn a_refusal_gives_the_attempt_back_and_names_the_call() {
    match refused(
        &policy(),
        &row(7, false),
        Refusal::Unauthorized,
        CHARGE,
        "401 authentication_error".into(),
    ) {
        Step::Refused { cause, error, .. } => {
            assert_eq!(cause.to_string(), "401 from POST /v1/charges");
            assert!(error.contains("not counted"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // An unresolvable uncertain row waits at the longest backoff, unknown.
    let waiting = unresolved(&policy(), &row(99, true), "key_expired", "x".into());
    assert_eq!(
        waiting,
        Settlement::Retry {
            uncertain: true,
            error: "x".into(),
            delay: Duration::from_millis(100)
        }
    );
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
