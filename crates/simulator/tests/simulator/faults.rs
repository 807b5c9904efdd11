//! Faults over real HTTP: dropped requests and answers (real TCP resets),
//! 5xx, 429, latency, the admin endpoints, and an exact ledger under all of it.

use std::time::{Duration, Instant};

use idem_charge_api::{Charge, IDEMPOTENCY_KEY};
use idem_simulator::Faults;
use reqwest::StatusCode;

use crate::harness::*;

#[tokio::test]
async fn dropped_response_charges_but_resets_the_connection() {
    let s = start(Faults {
        drop_response: 1.0,
        ..Faults::default()
    })
    .await;
    let body = request("ref-dr", "acc_1", 300);
    let started = Instant::now();
    let err = s
        .charge_with(&s.http, Some("ref-dr"), &body)
        .await
        .unwrap_err();
    // A reset, not the 10 s client timeout: the connection was really closed.
    assert!(!err.is_timeout(), "{err:?}");
    assert!(!err.is_connect(), "the request was sent: {err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let ledger = s.admin_ledger().await;
    assert_eq!(ledger.charges.len(), 1);
    assert_eq!(ledger.charges[0].reference_id, "ref-dr");
    assert_eq!(s.sim.stats().dropped_responses, 1);

    // The answer was stored under the key: a retry replays it.
    s.sim.set_faults(Faults::default());
    let retry = s.charge(Some("ref-dr"), &body).await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert!(replayed(&retry));
    assert_eq!(retry.json::<Charge>().await.unwrap(), ledger.charges[0]);
}

#[tokio::test]
async fn dropped_request_leaves_no_trace() {
    let s = start(Faults {
        drop_request: 1.0,
        ..Faults::default()
    })
    .await;
    let body = request("ref-dq", "acc_1", 300);
    let err = s
        .charge_with(&s.http, Some("ref-dq"), &body)
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    assert!(s.admin_ledger().await.charges.is_empty());
    assert_eq!(s.sim.stats().dropped_requests, 1);
    s.sim.set_faults(Faults::default());
    let retry = s.charge(Some("ref-dq"), &body).await;
    assert_eq!(
        retry.status(),
        StatusCode::CREATED,
        "the key was never bound"
    );
}

#[tokio::test]
async fn a_short_client_timeout_sees_the_drop_quickly() {
    let s = start(Faults {
        drop_response: 1.0,
        latency_ms: 50,
        ..Faults::default()
    })
    .await;
    let impatient = client(Duration::from_millis(300));
    let started = Instant::now();
    let result = s
        .charge_with(&impatient, Some("k"), &request("k", "acc_1", 1))
        .await;
    assert!(result.is_err());
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(s.sim.ledger().charges.len(), 1);
}

#[tokio::test]
async fn a_reset_connection_does_not_disturb_others() {
    let s = start(Faults::default()).await;
    let steady = client(Duration::from_secs(5));
    let body = request("ref-s", "acc_1", 1);
    let ok = s.charge_with(&steady, None, &body).await.unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    s.sim.set_faults(Faults {
        drop_response: 1.0,
        ..Faults::default()
    });
    let victim = client(Duration::from_secs(5));
    assert!(s.charge_with(&victim, None, &body).await.is_err());
    s.sim.set_faults(Faults::default());
    // The steady client's kept-alive connection still works, and so does the
    // victim's client on a new connection.
    let ok = s.charge_with(&steady, None, &body).await.unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    let ok = s.charge_with(&victim, None, &body).await.unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(s.sim.ledger().charges.len(), 4);
}

#[tokio::test]
async fn work_finishes_even_when_the_client_gives_up() {
    let s = start(Faults {
        latency_ms: 400,
        ..Faults::default()
    })
    .await;
    let impatient = client(Duration::from_millis(100));
    let err = s
        .charge_with(&impatient, Some("ref-t"), &request("ref-t", "acc_1", 1))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        s.sim.ledger().charges.len(),
        1,
        "an uncertain outcome, not a lost one"
    );
}

#[tokio::test]
async fn server_errors_and_rate_limits_do_not_process() {
    let s = start(Faults {
        error_5xx: 1.0,
        ..Faults::default()
    })
    .await;
    let body = request("ref-5", "acc_1", 1);
    for _ in 0..5 {
        let status = s.charge(Some("ref-5"), &body).await.status();
        assert!(
            status == StatusCode::INTERNAL_SERVER_ERROR
                || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
    }
    assert!(s.sim.ledger().charges.is_empty());
    s.sim.set_faults(Faults {
        rate_limit: 1.0,
        ..Faults::default()
    });
    let limited = s.charge(Some("ref-5"), &body).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(s.sim.ledger().charges.is_empty());
    let stats = s.sim.stats();
    assert_eq!(
        (stats.errors_5xx, stats.rate_limited, stats.requests),
        (5, 1, 6)
    );
    s.sim.set_faults(Faults::default());
    assert_eq!(
        s.charge(Some("ref-5"), &body).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn faults_are_validated_on_put() {
    let s = start(Faults::default()).await;
    let put = |body: &'static str| {
        s.http
            .put(s.url("/_sim/faults"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for bad in [
        r#"{"drop_request": 1.5}"#,
        r#"{"error_5xx": -0.1}"#,
        r#"{"drop_request": 0.6, "drop_response": 0.6}"#,
        r#"{"latency_ms": "slow"}"#,
        "not json",
    ] {
        let response = put(bad).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_kind(response).await, "invalid_request");
    }
    assert_eq!(s.sim.faults(), Faults::default());

    let ok = put(r#"{"drop_response": 0.25, "lookup": false}"#)
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let expected = Faults {
        drop_response: 0.25,
        lookup: false,
        ..Faults::default()
    };
    assert_eq!(ok.json::<Faults>().await.unwrap(), expected);
    let got: Faults = s
        .http
        .get(s.url("/_sim/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, expected);
    assert_eq!(s.sim.faults(), expected);
    let health = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Admin calls are not counted.
    assert_eq!(s.sim.stats().requests, 0);
}

#[tokio::test]
async fn stop_is_prompt_with_idle_connections() {
    let s = start(Faults::default()).await;
    assert_eq!(
        s.charge(None, &request("r", "acc_1", 1)).await.status(),
        StatusCode::CREATED
    );
    let url = s.url("/v1/charges");
    let started = Instant::now();
    s.running.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    let after = client(Duration::from_secs(1))
        .post(url)
        .json(&request("r", "acc_1", 1))
        .send()
        .await;
    assert!(after.is_err(), "nothing listens after stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_is_exact_under_mixed_faults() {
    let s = start(Faults {
        drop_request: 0.2,
        drop_response: 0.2,
        error_5xx: 0.1,
        rate_limit: 0.1,
        latency_jitter_ms: 5,
        ..Faults::default()
    })
    .await;
    let keys: Vec<String> = (0..100).map(|i| format!("ref-{i}")).collect();
    // First pass under faults, all at once.
    let first = charge_all(&s, &keys).await;
    let answered_201 = first.iter().filter(|&&c| c == Some(201)).count();
    let stats = s.sim.stats();
    assert_eq!(stats.requests, 100);
    assert_eq!(
        stats.charges_created,
        u64::try_from(answered_201).unwrap() + stats.dropped_responses,
        "a charge exists exactly for each 201 and each dropped response"
    );
    // Then retry every key without faults: each ends with exactly one charge.
    s.sim.set_faults(Faults::default());
    let second = charge_all(&s, &keys).await;
    assert!(
        second.iter().all(|c| matches!(c, Some(200 | 201))),
        "{second:?}"
    );
    let net = s.sim.ledger().net_by_reference();
    assert_eq!(net.len(), 100);
    assert!(net.values().all(|&n| n == 1), "{net:?}");
    let stats = s.sim.stats();
    assert_eq!(stats.charges_created, 100);
    assert_eq!(stats.requests, 200);
}

/// Sends one charge per key concurrently; the status, or `None` for no answer.
async fn charge_all(s: &Sim, keys: &[String]) -> Vec<Option<u16>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, key) in keys.iter().enumerate() {
        let http = s.http.clone();
        let url = s.url("/v1/charges");
        let key = key.clone();
        tasks.spawn(async move {
            let status = http
                .post(url)
                .header(IDEMPOTENCY_KEY, &key)
                .json(&request(&key, "acc_1", 100))
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16());
            (i, status)
        });
    }
    let mut statuses = vec![None; keys.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, status) = done.unwrap();
        statuses[i] = status;
    }
    statuses
}
