//! Every branch of [`judge`], each against a verdict written out in full.

#![allow(clippy::unwrap_used)]

use chrono::TimeZone;
use uuid::Uuid;

use super::*;

const REFERENCE: &str = "5f0c8a1e-3b7d-5c2a-9e4f-0a1b2c3d4e5f";

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

fn now() -> DateTime<Utc> {
    at(0)
}

fn grace() -> TimeDelta {
    TimeDelta::seconds(300)
}

/// Row 7 in `state`, having recorded `charge`; created an hour ago, last
/// written ten minutes ago, never settled.
fn row(state: OutboxState, charge: Option<&str>) -> RowView {
    RowView {
        id: 7,
        reference_id: Uuid::parse_str(REFERENCE).unwrap(),
        state,
        provider_charge_id: charge.map(str::to_owned),
        uncertain_since: None,
        created_at: at(-3600),
        updated_at: at(-600),
        settled_at: None,
    }
}

fn charge(id: &str, created: i64) -> Charge {
    Charge {
        id: id.to_owned(),
        reference_id: REFERENCE.to_owned(),
        account_id: "acc_1".to_owned(),
        amount: 500,
        currency: "EUR".to_owned(),
        status: "succeeded".to_owned(),
        created,
    }
}

fn judged<'a>(row: Option<&'a RowView>, charges: &'a [Charge]) -> Verdict<'a> {
    judge(REFERENCE, row, charges, now(), grace())
}

fn finding(kind: FindingKind, ids: &[&str], detail: &str) -> Verdict<'static> {
    Verdict::Report(Finding {
        kind,
        reference_id: REFERENCE.to_owned(),
        outbox_id: Some(7),
        charge_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        detail: detail.to_owned(),
    })
}

#[test]
fn a_charge_without_our_row_is_foreign() {
    let charges = [charge("ch_a", 10), charge("ch_b", 20)];
    assert_eq!(
        judged(None, &charges),
        Verdict::Report(Finding {
            kind: FindingKind::ForeignCharge,
            reference_id: REFERENCE.to_owned(),
            outbox_id: None,
            charge_ids: vec!["ch_a".to_owned(), "ch_b".to_owned()],
            detail: "no outbox row has this reference: never asked for by us (or removed by \
                     retention)"
                .to_owned(),
        })
    );
    assert_eq!(judged(None, &[]), Verdict::Nothing);
}

#[test]
fn a_row_in_flight_is_left_to_its_lease_holder() {
    let charges = [charge("ch_a", 10)];
    let row = row(OutboxState::InFlight, None);
    assert_eq!(judged(Some(&row), &charges), Verdict::InFlight);
}

#[test]
fn every_charge_for_a_declined_row_is_refunded() {
    let charges = [charge("ch_a", 10), charge("ch_b", 20)];
    let row = row(OutboxState::Declined, None);
    assert_eq!(
        judged(Some(&row), &charges),
        Verdict::RefundDeclined {
            row: &row,
            charges: &charges
        }
    );
}

#[test]
fn a_recorded_charge_the_provider_lacks_is_a_mismatch() {
    let charges = [charge("ch_a", 10), charge("ch_b", 20)];
    for state in [OutboxState::Succeeded, OutboxState::Unknown] {
        let row = row(state, Some("ch_x"));
        assert_eq!(
            judged(Some(&row), &charges),
            finding(
                FindingKind::ChargeMismatch,
                &["ch_a", "ch_b"],
                "our row recorded charge ch_x, which the provider does not list here"
            )
        );
    }
}

#[test]
fn the_recorded_charge_is_kept_and_the_others_refunded() {
    let charges = [charge("ch_a", 10), charge("ch_b", 20)];
    let row = row(OutboxState::Succeeded, Some("ch_b"));
    assert_eq!(
        judged(Some(&row), &charges),
        Verdict::Keep(Keep {
            row: &row,
            charges: &charges,
            kept: &charges[1],
            rule: KeepRule::Recorded,
            settle: false,
            refund: vec![&charges[0]],
        })
    );
}

#[test]
fn a_succeeded_row_with_its_one_charge_needs_nothing_done() {
    let charges = [charge("ch_a", 10)];
    let row = row(OutboxState::Succeeded, Some("ch_a"));
    assert_eq!(
        judged(Some(&row), &charges),
        Verdict::Keep(Keep {
            row: &row,
            charges: &charges,
            kept: &charges[0],
            rule: KeepRule::Recorded,
            settle: false,
            refund: vec![],
        })
    );
}

#[test]
fn an_open_row_is_settled_with_the_first_created_charge() {
    // Created at 10 twice: the smaller id breaks the tie.
    let charges = [charge("ch_c", 20), charge("ch_b", 10), charge("ch_a", 10)];
    for state in [
        OutboxState::Pending,
        OutboxState::Unknown,
        OutboxState::Dead,
    ] {
        let row = row(state, None);
        assert_eq!(
            judged(Some(&row), &charges),
            Verdict::Keep(Keep {
                row: &row,
                charges: &charges,
                kept: &charges[2],
                rule: KeepRule::FirstCreated,
                settle: true,
                refund: vec![&charges[0], &charges[1]],
            }),
            "{state:?}"
        );
    }
}

#[test]
fn a_dead_row_that_recorded_its_charge_is_settled_with_it() {
    let charges = [charge("ch_a", 10), charge("ch_b", 20)];
    let row = row(OutboxState::Dead, Some("ch_b"));
    assert_eq!(
        judged(Some(&row), &charges),
        Verdict::Keep(Keep {
            row: &row,
            charges: &charges,
            kept: &charges[1],
            rule: KeepRule::Recorded,
            settle: true,
            refund: vec![&charges[0]],
        })
    );
}

#[test]
fn a_row_resolved_by_hand_without_a_charge_id_keeps_the_first_created() {
    let charges = [charge("ch_b", 20), charge("ch_a", 10)];
    let row = row(OutboxState::Succeeded, None);
    assert_eq!(
        judged(Some(&row), &charges),
        Verdict::Keep(Keep {
            row: &row,
            charges: &charges,
            kept: &charges[1],
            rule: KeepRule::FirstCreated,
            settle: false,
            refund: vec![&charges[0]],
        })
    );
}

#[test]
fn a_succeeded_row_unlisted_beyond_clock_skew_is_missing_at_the_provider() {
    let mut settled = row(OutboxState::Succeeded, Some("ch_a"));
    settled.settled_at = Some(at(-61));
    assert_eq!(
        judged(Some(&settled), &[]),
        finding(
            FindingKind::MissingAtProvider,
            &["ch_a"],
            "our row is succeeded, but the provider lists no charge for it"
        )
    );
    // Resolved by hand without a charge id: no charge to name.
    settled.provider_charge_id = None;
    assert_eq!(
        judged(Some(&settled), &[]),
        finding(
            FindingKind::MissingAtProvider,
            &[],
            "our row is succeeded, but the provider lists no charge for it"
        )
    );
    // Within the skew the provider may not list it yet.
    settled.settled_at = Some(at(-60));
    assert_eq!(judged(Some(&settled), &[]), Verdict::Nothing);
    settled.settled_at = None;
    assert_eq!(judged(Some(&settled), &[]), Verdict::Nothing);
}

#[test]
fn an_unknown_row_unlisted_is_requeued_once_quiet_for_the_grace() {
    let mut quiet = row(OutboxState::Unknown, None);
    quiet.updated_at = at(-301);
    assert_eq!(
        judged(Some(&quiet), &[]),
        Verdict::Requeue {
            row: &quiet,
            quiet_since: at(-300),
        }
    );
    // Written exactly `grace` ago: its last request may still be running.
    let mut recent = quiet.clone();
    recent.updated_at = at(-300);
    assert_eq!(judged(Some(&recent), &[]), Verdict::Nothing);
}

#[test]
fn other_unlisted_rows_need_nothing_done() {
    for state in [
        OutboxState::Pending,
        OutboxState::InFlight,
        OutboxState::Declined,
        OutboxState::Dead,
    ] {
        let mut row = row(state, None);
        row.updated_at = at(-3600);
        row.settled_at = Some(at(-3600));
        assert_eq!(judged(Some(&row), &[]), Verdict::Nothing, "{state:?}");
    }
}

#[test]
fn the_rules_are_recorded_in_these_words() {
    assert_eq!(
        KeepRule::Recorded.as_str(),
        "keep the charge our row recorded"
    );
    assert_eq!(KeepRule::FirstCreated.as_str(), "keep the first created");
}
