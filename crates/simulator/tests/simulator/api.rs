//! The charge API over real HTTP: keys, declines, lookup, listing, refunds.

use idem_charge_api::{Charge, ChargeList, CreateCharge, IDEMPOTENCY_KEY, Refund};
use idem_simulator::Faults;
use reqwest::StatusCode;

use crate::harness::*;

#[tokio::test]
async fn create_then_replay_returns_the_same_charge() {
    let s = start(Faults::default()).await;
    let body = request("ref-1", "acc_1", 1250);
    let first = s.charge(Some("ref-1"), &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(!replayed(&first));
    let created: Charge = first.json().await.unwrap();
    assert!(created.id.starts_with("ch_"));
    assert_eq!(created.status, "succeeded");
    assert_eq!((created.amount, created.currency.as_str()), (1250, "EUR"));
    assert!(created.created > 1_600_000_000);

    let second = s.charge(Some("ref-1"), &body).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert!(replayed(&second));
    assert_eq!(second.json::<Charge>().await.unwrap(), created);

    let ledger = s.admin_ledger().await;
    assert_eq!(ledger.charges, vec![created]);
    assert_eq!(s.sim.ledger(), ledger);
    let stats = s.admin_stats().await;
    assert_eq!(
        (stats.requests, stats.charges_created, stats.replays),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn same_key_other_parameters_is_a_conflict() {
    let s = start(Faults::default()).await;
    let created = s.charge(Some("k"), &request("ref", "acc_1", 100)).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let other = s.charge(Some("k"), &request("ref", "acc_1", 101)).await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_kind(other).await, "idempotency_conflict");
    // Metadata is not part of the key's parameters.
    let mut same = request("ref", "acc_1", 100);
    same.metadata.message_id = "another".to_owned();
    assert_eq!(s.charge(Some("k"), &same).await.status(), StatusCode::OK);
    assert_eq!(s.sim.ledger().charges.len(), 1);
    assert_eq!(s.sim.stats().param_conflicts, 1);
}

#[tokio::test]
async fn concurrent_requests_under_one_key_charge_once() {
    let s = start(Faults {
        latency_ms: 300,
        ..Faults::default()
    })
    .await;
    let body = request("ref-c", "acc_1", 500);
    let (a, b) = tokio::join!(
        s.charge(Some("ref-c"), &body),
        s.charge(Some("ref-c"), &body)
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409]);
    let conflict = if a.status() == StatusCode::CONFLICT {
        a
    } else {
        b
    };
    assert_eq!(error_kind(conflict).await, "request_in_progress");
    assert_eq!(s.sim.ledger().charges.len(), 1);
    assert_eq!(s.sim.stats().in_progress_conflicts, 1);
    // Once finished, the key replays.
    assert_eq!(
        s.charge(Some("ref-c"), &body).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_idempotency_keys_every_post_charges() {
    let s = start(Faults {
        idempotency_keys: false,
        ..Faults::default()
    })
    .await;
    let body = request("ref-d", "acc_1", 500);
    let a = s.charge(Some("ref-d"), &body).await;
    let b = s.charge(Some("ref-d"), &body).await;
    assert_eq!(
        (a.status(), b.status()),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert!(!replayed(&b));
    let (a, b): (Charge, Charge) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_ne!(a.id, b.id);
    let ledger = s.sim.ledger();
    assert_eq!(ledger.gross_by_reference().get("ref-d"), Some(&2));
    // Without a header, keys honoured or not, every POST creates a charge.
    let s = start(Faults::default()).await;
    assert_eq!(s.charge(None, &body).await.status(), StatusCode::CREATED);
    assert_eq!(s.charge(None, &body).await.status(), StatusCode::CREATED);
    assert_eq!(s.sim.ledger().charges.len(), 2);
}

#[tokio::test]
async fn declines_are_final_and_replayed() {
    let s = start(Faults::default()).await;
    let body = request("ref-x", "acc_decline_7", 900);
    let first = s.charge(Some("ref-x"), &body).await;
    assert_eq!(first.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(error_kind(first).await, "card_declined");
    let again = s.charge(Some("ref-x"), &body).await;
    assert_eq!(again.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(replayed(&again));
    assert_eq!(error_kind(again).await, "card_declined");
    assert!(s.sim.ledger().charges.is_empty());
    let stats = s.sim.stats();
    assert_eq!((stats.declines, stats.replays), (1, 1));
}

#[tokio::test]
async fn invalid_bodies_are_rejected_without_a_trace() {
    let s = start(Faults::default()).await;
    for body in [
        request("r", "acc_1", 0),
        request("r", "acc_1", -5),
        request("", "acc_1", 5),
        request("r", "", 5),
        CreateCharge {
            currency: "eur".to_owned(),
            ..request("r", "acc_1", 5)
        },
    ] {
        let response = s.charge(Some("k"), &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(error_kind(response).await, "invalid_request");
    }
    let garbage = s
        .http
        .post(s.url("/v1/charges"))
        .header(IDEMPOTENCY_KEY, "k")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    // The key was never bound: a valid request under it is new.
    let ok = s.charge(Some("k"), &request("r", "acc_1", 5)).await;
    assert_eq!(ok.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn lookup_by_reference() {
    let s = start(Faults {
        idempotency_keys: false,
        ..Faults::default()
    })
    .await;
    for reference in ["a", "b", "a"] {
        let created = s
            .charge(Some(reference), &request(reference, "acc_1", 5))
            .await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let found = s.list(&[("reference_id", "a")]).await;
    assert_eq!(found.status(), StatusCode::OK);
    let found: ChargeList = found.json().await.unwrap();
    assert_eq!(found.data.len(), 2);
    assert!(found.data.iter().all(|c| c.reference_id == "a"));
    assert!(found.data[0].id < found.data[1].id, "oldest first");
    assert!(!found.has_more);
    let none: ChargeList = s
        .list(&[("reference_id", "zzz")])
        .await
        .json()
        .await
        .unwrap();
    assert!(none.data.is_empty());
    assert_eq!(s.sim.stats().lookups, 2);

    s.sim.set_faults(Faults {
        lookup: false,
        ..Faults::default()
    });
    let off = s.list(&[("reference_id", "a")]).await;
    assert_eq!(off.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_kind(off).await, "not_supported");
    // Listing stays available for reconciliation.
    assert_eq!(s.list(&[]).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn listing_pages_in_creation_order() {
    let s = start(Faults::default()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let key = format!("ref-{i}");
        let charge: Charge = s
            .charge(Some(&key), &request(&key, "acc_1", 10 + i))
            .await
            .json()
            .await
            .unwrap();
        ids.push(charge.id);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = vec![("limit", "2".to_owned())];
        if let Some(id) = &after {
            query.push(("starting_after", id.clone()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page: ChargeList = s.list(&query).await.json().await.unwrap();
        pages += 1;
        assert!(page.data.len() <= 2);
        seen.extend(page.data.iter().map(|c| c.id.clone()));
        if !page.has_more {
            break;
        }
        after = page.data.last().map(|c| c.id.clone());
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    let all: ChargeList = s.list(&[]).await.json().await.unwrap();
    assert_eq!(all.data.len(), 5);
    assert!(!all.has_more);
    let created = all.data[0].created;
    let future = (created + 3600).to_string();
    let empty: ChargeList = s
        .list(&[("created_gte", future.as_str())])
        .await
        .json()
        .await
        .unwrap();
    assert!(empty.data.is_empty());
    let before = created.to_string();
    let empty: ChargeList = s
        .list(&[("created_lt", before.as_str())])
        .await
        .json()
        .await
        .unwrap();
    assert!(empty.data.is_empty());
    let unknown = s.list(&[("starting_after", "ch_nope")]).await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let bad = s.list(&[("limit", "many")]).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_kind(bad).await, "invalid_request");
}

#[tokio::test]
async fn refunds_are_idempotent_and_once_per_charge() {
    let s = start(Faults::default()).await;
    let charge: Charge = s
        .charge(Some("ref-r"), &request("ref-r", "acc_1", 700))
        .await
        .json()
        .await
        .unwrap();
    let first = s.refund(&charge.id, "refund-1").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let refund: Refund = first.json().await.unwrap();
    assert!(refund.id.starts_with("re_"));
    assert_eq!(
        (refund.charge.as_str(), refund.amount),
        (charge.id.as_str(), 700)
    );

    let again = s.refund(&charge.id, "refund-1").await;
    assert_eq!(again.status(), StatusCode::OK);
    assert!(replayed(&again));
    assert_eq!(again.json::<Refund>().await.unwrap(), refund);

    let other = s.refund(&charge.id, "refund-2").await;
    assert_eq!(other.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_kind(other).await, "charge_already_refunded");
    assert_eq!(
        s.refund("ch_unknown", "refund-3").await.status(),
        StatusCode::NOT_FOUND
    );

    let ledger = s.sim.ledger();
    assert_eq!(ledger.refunds.len(), 1);
    assert_eq!(ledger.refunds[0].reference_id, "ref-r");
    assert_eq!(ledger.gross_by_reference().get("ref-r"), Some(&1));
    assert_eq!(ledger.net_by_reference().get("ref-r"), Some(&0));
    assert_eq!(s.sim.stats().refunds, 1);

    s.sim.set_faults(Faults {
        refunds: false,
        ..Faults::default()
    });
    let off = s.refund(&charge.id, "refund-4").await;
    assert_eq!(off.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_kind(off).await, "not_supported");
}
