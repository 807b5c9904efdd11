//! Unit tests of the provider's rules, without HTTP or latency.

use idem_charge_api::ChargeMetadata;

use super::*;

fn request(reference: &str, account: &str, amount: i64) -> CreateCharge {
    CreateCharge {
        reference_id: reference.to_owned(),
        account_id: account.to_owned(),
        amount,
        currency: "EUR".to_owned(),
        metadata: ChargeMetadata {
            source: "default".to_owned(),
            message_id: "m".to_owned(),
        },
    }
}

/// Runs both halves of a request at once.
fn run(state: &mut State, step: Step) -> Answer {
    match step {
        Step::Now(answer) => answer,
        Step::Later(ticket) => state.finish(ticket),
        Step::NoAnswer => panic!("no fate was rolled"),
    }
}

fn charge(state: &mut State, key: &str, reference: &str, amount: i64) -> Answer {
    let faults = Faults::default();
    let step = state.begin_charge(
        Some(key.to_owned()),
        request(reference, "acc_1", amount),
        &faults,
    );
    run(state, step)
}

#[test]
fn key_is_in_progress_until_finished_then_replays() {
    let mut state = State::new(Faults::default());
    let faults = Faults::default();
    let first = state.begin_charge(Some("k".into()), request("r", "acc_1", 5), &faults);
    let Step::Later(ticket) = first else {
        panic!("a fresh key must be processed");
    };
    let second = state.begin_charge(Some("k".into()), request("r", "acc_1", 5), &faults);
    assert!(matches!(second, Step::Now(Answer { status: 409, .. })));
    let created = state.finish(ticket);
    assert_eq!(created.status, 201);
    let replay = charge(&mut state, "k", "r", 5);
    assert_eq!(replay.status, 200);
    assert!(replay.replayed);
    assert_eq!(replay.body, created.body);
    assert_eq!(charge(&mut state, "k", "r", 6).status, 422);
    assert_eq!(state.ledger().charges.len(), 1);
    assert_eq!(state.stats.replays, 1);
    assert_eq!(state.stats.in_progress_conflicts, 1);
    assert_eq!(state.stats.param_conflicts, 1);
}

#[test]
fn concurrent_refunds_under_two_keys_refund_once() {
    let mut state = State::new(Faults::default());
    assert_eq!(charge(&mut state, "k", "r", 5).status, 201);
    let id = state.ledger().charges[0].id.clone();
    let a = state.begin_refund(Some("a".into()), id.clone());
    let b = state.begin_refund(Some("b".into()), id.clone());
    let (Step::Later(a), Step::Later(b)) = (a, b) else {
        panic!("both keys are fresh and the charge is not refunded yet");
    };
    assert_eq!(state.finish(a).status, 201);
    let second = state.finish(b);
    assert_eq!(second.status, 400);
    assert!(second.body.contains("charge_already_refunded"));
    assert_eq!(state.ledger().refunds.len(), 1);
    // The losing key is free again, not stuck in progress.
    let again = state.begin_refund(Some("b".into()), id);
    assert!(matches!(again, Step::Now(Answer { status: 400, .. })));
}

#[test]
fn listing_filters_by_time_and_pages() {
    let mut state = State::new(Faults::default());
    for i in 0..5 {
        assert_eq!(charge(&mut state, &format!("k{i}"), "r", 5).status, 201);
    }
    let created = state.ledger().charges[0].created;
    let none = state.list(
        &ListQuery {
            created_gte: Some(created + 3600),
            ..ListQuery::default()
        },
        true,
    );
    assert_eq!(none.status, 200);
    let list: ChargeList = serde_json::from_str(&none.body).unwrap_or_else(|e| panic!("{e}"));
    assert!(list.data.is_empty() && !list.has_more);
    let page = state.list(
        &ListQuery {
            limit: Some(0),
            starting_after: Some(state.ledger().charges[3].id.clone()),
            ..ListQuery::default()
        },
        true,
    );
    let list: ChargeList = serde_json::from_str(&page.body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(list.data.len(), 1, "limit 0 is clamped to 1");
    assert_eq!(list.data[0].id, state.ledger().charges[4].id);
    assert!(!list.has_more);
}

#[test]
fn validation_rules() {
    assert!(validate_charge(&request("r", "a", 1)).is_ok());
    assert!(validate_charge(&request("r", "a", 0)).is_err());
    assert!(validate_charge(&request("", "a", 1)).is_err());
    assert!(validate_charge(&request("r", "", 1)).is_err());
    let mut bad = request("r", "a", 1);
    bad.currency = "eur".to_owned();
    assert!(validate_charge(&bad).is_err());
    bad.currency = "EURO".to_owned();
    assert!(validate_charge(&bad).is_err());
}

/// The body the client sends (the golden fixture, not our own `request`) is
/// accepted, and answered with a charge of exactly the golden charge's fields.
#[test]
fn accepts_the_golden_create_charge_body() {
    use idem_charge_api::golden;

    let request: CreateCharge =
        serde_json::from_str(golden::CREATE_CHARGE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(request, golden::create_charge());
    assert_eq!(validate_charge(&request), Ok(()));

    let mut state = State::new(Faults::default());
    let key = Some(request.reference_id.clone());
    let step = state.begin_charge(key, request, &Faults::default());
    let created = run(&mut state, step);
    assert_eq!(created.status, 201);
    let body: serde_json::Value =
        serde_json::from_str(&created.body).unwrap_or_else(|e| panic!("{e}"));
    let golden: serde_json::Value =
        serde_json::from_str(golden::CHARGE).unwrap_or_else(|e| panic!("{e}"));
    let fields = |v: &serde_json::Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<std::collections::BTreeSet<_>>())
    };
    assert_eq!(fields(&body), fields(&golden));
    for same in ["reference_id", "account_id", "amount", "currency", "status"] {
        assert_eq!(body[same], golden[same], "{same}");
    }
}
