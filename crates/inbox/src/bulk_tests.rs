//! Unit tests of the in-batch judgement, without a database: what the
//! statements return is given, the verdicts and counters are checked.

#![allow(clippy::unwrap_used)]

use idem_message::Inbound;
use idem_store::OutboxState;

use super::*;

fn request(id: &str, amount: i64) -> Result<ChargeRequest, Rejection> {
    let body = format!(r#"{{"account_id":"acc_1","amount":{amount},"currency":"EUR"}}"#);
    Inbound {
        message_id: Some(id),
        body: body.as_bytes(),
        ..Inbound::default()
    }
    .parse(1024)
}

fn verdicts(judgement: &Judgement<'_>) -> Vec<(usize, Verdict)> {
    judgement.verdicts.iter().map(|&(i, _, v)| (i, v)).collect()
}

/// Copies of a key form one group whose candidate is the first in arrival
/// order; rejections belong to no group.
#[test]
fn copies_group_under_their_first_arrival() {
    let parsed = vec![
        request("b", 1),
        request("a", 1),
        Err(Rejection::MissingMessageId),
        request("b", 2),
        request("b", 1),
    ];
    let groups = group(&parsed);
    let shape: Vec<(usize, Vec<usize>)> = groups
        .iter()
        .map(|g| (g.first.0, g.later.iter().map(|c| c.0).collect()))
        .collect();
    assert_eq!(shape, [(0, vec![3, 4]), (1, vec![])]);
}

/// A new key: later copies are judged against the candidate and counted.
#[test]
fn later_copies_of_a_new_key_are_judged_against_the_first() {
    let parsed = vec![request("k", 1), request("k", 2), request("k", 1)];
    let groups = group(&parsed);
    let j = judge(&groups[0], Found::New(7));
    assert_eq!(
        verdicts(&j),
        [
            (0, Verdict::New(7)),
            (1, Verdict::Conflict),
            (2, Verdict::Duplicate)
        ]
    );
    assert_eq!((j.duplicates, j.conflicts, j.restored), (1, 1, None));
}

/// A recorded key whose candidate conflicts: a later copy with the recorded
/// payload is a duplicate, as one by one (the key keeps the first fingerprint);
/// the candidate itself was counted by the upsert, not again.
#[test]
fn a_conflicting_candidate_does_not_change_what_the_key_holds() {
    let parsed = vec![request("k", 2), request("k", 1)];
    let groups = group(&parsed);
    let stored = *request("k", 1).unwrap().fingerprint();
    let j = judge(&groups[0], Found::Seen(&stored));
    assert_eq!(
        verdicts(&j),
        [(0, Verdict::Conflict), (1, Verdict::Duplicate)]
    );
    assert_eq!((j.duplicates, j.conflicts), (1, 0));
    assert_eq!(j.holds, stored);
}

/// A recalled key is judged against the payload its outbox row charged, gets
/// that fingerprint back, and the candidate is counted (the upsert inserted it).
#[test]
fn a_recalled_key_is_judged_against_its_outbox_row() {
    let parsed = vec![request("k", 2), request("k", 1)];
    let groups = group(&parsed);
    let row = StoredRow {
        reference_id: groups[0].first.1.reference_id(),
        account_id: "acc_1".into(),
        amount: 1,
        currency: "EUR".into(),
        state: OutboxState::Succeeded,
    };
    let j = judge(&groups[0], Found::Recalled(Some(&row)));
    let original = *request("k", 1).unwrap().fingerprint();
    assert_eq!(
        verdicts(&j),
        [(0, Verdict::Conflict), (1, Verdict::Duplicate)]
    );
    assert_eq!((j.duplicates, j.conflicts), (1, 1));
    assert_eq!(j.restored, Some(original));
    // Its row removed meanwhile: absorbed, the key keeps the candidate's.
    let j = judge(&groups[0], Found::Recalled(None));
    assert_eq!(
        verdicts(&j),
        [(0, Verdict::Duplicate), (1, Verdict::Conflict)]
    );
    assert_eq!((j.duplicates, j.conflicts, j.restored), (0, 1, None));
}
