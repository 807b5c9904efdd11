//! A provider that refuses us or cannot answer a lookup, against the real
//! simulator: refused credentials and sustained throttling open the breaker (claiming paused, rows
//! keep their attempts, `/readyz` says why) and half-open probes close it; a
//! failing lookup falls back to the keyed retry; an uncertain row older than
//! the provider's key lifetime is never re-sent under its key. Each test
//! states its invariant and counts at the provider.

use std::collections::BTreeMap;
use std::time::Duration;

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::worker::Daemon;
use idem_tests::{TestEnv, spec, wait_for};
use idem_workload as workload;

const SETTLE: Duration = Duration::from_secs(60);

/// `GET path` on the daemon: status and body.
async fn get(daemon: &Daemon, path: &str) -> (u16, String) {
    let response = reqwest::get(daemon.url(path)).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The scrape as `series -> value`.
async fn metrics(daemon: &Daemon) -> BTreeMap<String, f64> {
    let (_, text) = get(daemon, "/metrics").await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The most attempts any row not claimed right now has spent.
async fn max_attempts(env: &TestEnv) -> i32 {
    sqlx::query_scalar("SELECT coalesce(max(attempts), 0) FROM outbox WHERE state <> 'in_flight'")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Invariants: 200 charges published into a window of `401` answers (a key
/// rotation) are all charged exactly once at the provider once it accepts us
/// again; none is `dead` although the attempt limit is 3 (a refused call
/// spends no attempt: every row was charged at its first counted attempt);
/// the breaker opened (`/readyz` 503 naming `401 from POST /v1/charges`,
/// `idem_dispatch_breaker_opened_total`) and closed again (ready, gauge 0);
/// paused claiming made far fewer refused calls than one per row and retry
/// (the issue saw 1,160).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_of_refused_credentials_delays_charges_and_kills_none() {
    // Alone: the metrics registry is the process's.
    let env = TestEnv::alone(Faults {
        refuse_status: 401,
        ..Faults::default()
    })
    .await;
    let daemon = Daemon::start(
        &env,
        &[
            "--max-attempts",
            "3",
            "--provider-breaker-probe-ms",
            "200",
            "--provider-breaker-probe-max-ms",
            "1500",
        ],
    )
    .await;
    let before = metrics(&daemon).await;
    env.publish(&workload::generate(&spec("refused", 200)))
        .await;

    wait_for("the breaker open, /readyz saying why", SETTLE, || async {
        let (status, body) = get(&daemon, "/readyz").await;
        status == 503 && body.contains("provider breaker open: 401 from POST /v1/charges")
    })
    .await;
    wait_for("200 outbox rows", SETTLE, || async {
        let status = env.status().await;
        status.outbox_in(OutboxState::Pending) + status.outbox_in(OutboxState::InFlight) == 200
    })
    .await;
    // The window lasts a while; the breaker probes at most every 1.5 s.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        max_attempts(&env).await,
        0,
        "no refused call spent an attempt"
    );
    assert!(env.sim.ledger().charges.is_empty(), "nothing charged yet");
    env.sim.set_faults(Faults::default());

    wait_for("200 rows succeeded", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 200
    })
    .await;
    let by_ref = env.charges_by_reference();
    assert_eq!(by_ref.len(), 200, "every charge made");
    assert!(by_ref.values().all(|&n| n == 1), "none twice: {by_ref:?}");
    assert_eq!(env.status().await.outbox_in(OutboxState::Dead), 0);
    assert_eq!(
        max_attempts(&env).await,
        1,
        "each charged at its first attempt"
    );
    let refused = env.sim.stats().refused;
    assert!(
        (1..100).contains(&refused),
        "claiming paused: {refused} refused calls"
    );
    wait_for("ready again", SETTLE, || async {
        get(&daemon, "/readyz").await.0 == 200
    })
    .await;
    let after = metrics(&daemon).await;
    let delta = |series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };
    assert!(
        delta("idem_dispatch_breaker_opened_total") >= 1.0,
        "{after:?}"
    );
    assert_eq!(after.get("idem_dispatch_breaker_open"), Some(&0.0));
    let counted = delta("idem_provider_refusals_total{status=\"401\"}");
    assert!(
        counted >= 1.0 && counted <= refused as f64,
        "refusals counted by status: {counted} of {refused}"
    );
    daemon.stop().await;
    env.cleanup().await;
}

/// Invariants: sustained throttling (every call answered `429`) opens the
/// breaker too (`/readyz` names `429 from POST /v1/charges`), and with an
/// attempt limit of 2 no row dies of it: once the quota is back, every
/// charge is made exactly once, none `dead`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_throttling_opens_the_breaker_and_kills_none() {
    let env = TestEnv::new(Faults {
        rate_limit: 1.0,
        ..Faults::default()
    })
    .await;
    let daemon = Daemon::start(
        &env,
        &[
            "--max-attempts",
            "2",
            "--provider-breaker-sustained",
            "5",
            "--provider-breaker-probe-ms",
            "100",
            "--provider-breaker-probe-max-ms",
            "1000",
        ],
    )
    .await;
    env.publish(&workload::generate(&spec("throttled", 30)))
        .await;
    wait_for("the breaker open on 429", SETTLE, || async {
        let (status, body) = get(&daemon, "/readyz").await;
        status == 503 && body.contains("provider breaker open: 429 from POST /v1/charges")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        max_attempts(&env).await,
        0,
        "no throttled call spent an attempt"
    );
    env.sim.set_faults(Faults::default());
    wait_for("30 rows succeeded", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 30
    })
    .await;
    let by_ref = env.charges_by_reference();
    assert_eq!(by_ref.len(), 30, "every charge made");
    assert!(by_ref.values().all(|&n| n == 1), "none twice: {by_ref:?}");
    assert_eq!(env.status().await.outbox_in(OutboxState::Dead), 0);
    daemon.stop().await;
    env.cleanup().await;
}

/// Invariant: when the provider honours idempotency keys, an uncertain
/// attempt (response lost after charging) whose lookup keeps failing (`503`)
/// is resolved by the retry under the same key — the provider replays the
/// original — so each message is charged exactly once and the account's next
/// charge is not blocked behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_lookup_falls_back_to_the_keyed_retry() {
    let env = TestEnv::new(Faults {
        drop_response: 1.0,
        ..Faults::default()
    })
    .await;
    let worker = env.start_worker(&[]);
    let messages = workload::generate(&spec("lookup-fails", 10));
    env.publish(&messages).await;
    wait_for("charges made, answers lost", SETTLE, || async {
        !env.sim.ledger().charges.is_empty()
            && env.status().await.outbox_in(OutboxState::Unknown) > 0
    })
    .await;
    env.sim.set_faults(Faults {
        fail_lookups: true,
        ..Faults::default()
    });
    wait_for("10 rows succeeded", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 10
    })
    .await;
    let by_ref = env.charges_by_reference();
    assert_eq!(by_ref.len(), 10, "every charge made");
    assert!(by_ref.values().all(|&n| n == 1), "none twice: {by_ref:?}");
    let stats = env.sim.stats();
    assert!(stats.failed_lookups >= 1, "lookups failed: {stats:?}");
    assert!(stats.replays >= 1, "resolved by the keyed retry: {stats:?}");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// Invariant: an uncertain row whose first uncertain attempt is older than
/// the provider's key lifetime (`IDEM_PROVIDER_KEY_TTL_HOURS`, 24) is never
/// re-sent under its key: while lookups fail it stays `unknown`, saying it
/// waits, and the provider sees no further charge request; once a lookup
/// answers, it is resolved to the one charge that exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncertain_row_past_the_key_lifetime_is_never_resent() {
    let env = TestEnv::new(Faults {
        drop_response: 1.0,
        ..Faults::default()
    })
    .await;
    let worker = env.start_worker(&[]);
    env.publish(&workload::generate(&spec("key-ttl", 1))).await;
    wait_for("charged, answer lost, row unknown", SETTLE, || async {
        env.sim.ledger().charges.len() == 1
            && env.status().await.outbox_in(OutboxState::Unknown) == 1
    })
    .await;
    worker.stop().await.unwrap();
    env.sim.set_faults(Faults {
        fail_lookups: true,
        ..Faults::default()
    });
    // The uncertain attempt, as if made a day and an hour ago.
    sqlx::query(
        "UPDATE outbox SET uncertain_since = now() - interval '25 hours', next_attempt_at = now()",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let sent = |s: &idem_simulator::Stats| s.charges_created + s.replays + s.dropped_responses;
    let posts_before = sent(&env.sim.stats());

    let worker = env.start_worker(&[]);
    wait_for("lookups tried and failed", SETTLE, || async {
        env.sim.stats().failed_lookups >= 3
    })
    .await;
    // Read between two claims (a claimed row is `in_flight` for a moment).
    wait_for("the row unknown, saying it waits", SETTLE, || async {
        let (state, error): (String, Option<String>) =
            sqlx::query_as("SELECT state::text, last_error FROM outbox")
                .fetch_one(&env.pool)
                .await
                .unwrap();
        state == "unknown" && error.is_some_and(|e| e.contains("not re-sent"))
    })
    .await;
    assert_eq!(
        sent(&env.sim.stats()),
        posts_before,
        "no charge request re-sent"
    );

    env.sim.set_faults(Faults::default());
    // The row waits at the longest backoff (300 ms in tests).
    wait_for("resolved by lookup", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 1
    })
    .await;
    assert_eq!(
        sent(&env.sim.stats()),
        posts_before,
        "resolved without a resend"
    );
    assert_eq!(env.sim.ledger().charges.len(), 1);
    worker.stop().await.unwrap();
    env.cleanup().await;
}
