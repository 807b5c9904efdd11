//! Health, readiness and Prometheus metrics of the running daemon, over HTTP.
//!
//! The `metrics` registry is global to the process, so each of these tests
//! has the test process to itself ([`TestEnv::alone`]: no other suite's env
//! or in-process worker runs meanwhile): counters are compared as deltas
//! against a snapshot taken before the workload, which makes them exact.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::worker::Daemon;
use idem_tests::{TestEnv, spec, wait_for};
use idem_workload::{self as workload, Kind};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const SETTLE: Duration = Duration::from_secs(60);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Status and body of a GET.
async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Prometheus text exposition -> `series -> value` (`name{labels}` as rendered).
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The registry as this process sees it right now (no HTTP).
fn snapshot() -> BTreeMap<String, f64> {
    let handle = idem_daemon::metrics::install().unwrap();
    handle.run_upkeep();
    parse(&handle.render())
}

async fn scrape(client: &reqwest::Client, daemon: &Daemon) -> BTreeMap<String, f64> {
    let response = client.get(daemon.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    parse(&response.text().await.unwrap())
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>, series: &str) -> f64 {
    value(after, series) - value(before, series)
}

/// Invariant: `/metrics` counts exactly what this daemon decided and
/// dispatched — originals, duplicates, conflicts, quarantined messages by
/// reason, provider answers, latencies — and the sampled table gauges agree
/// with the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_workload() {
    let env = TestEnv::alone(Faults::default()).await;
    let mut s = spec("metrics", 10);
    s.duplicates = 6;
    s.conflicts = 2;
    s.malformed = 5;
    let messages = workload::generate(&s);
    let mut reasons: BTreeMap<&str, f64> = BTreeMap::new();
    for m in &messages {
        if let Kind::Malformed(kind) = m.kind {
            // The workload's "bad_currency" is a schema violation.
            let code = if kind == "bad_currency" {
                "schema"
            } else {
                kind
            };
            *reasons.entry(code).or_default() += 1.0;
        }
    }

    let before = snapshot();
    let daemon = Daemon::start(&env, &[]).await;
    let client = http();
    assert_eq!(
        get(&client, &daemon.url("/healthz")).await,
        (200, "ok\n".into())
    );
    wait_for("the daemon is ready", SETTLE, || async {
        get(&client, &daemon.url("/readyz")).await.0 == 200
    })
    .await;

    env.publish(&messages).await;
    wait_for(
        "10 charges settled, 23 deliveries decided",
        SETTLE,
        || async {
            let st = env.status().await;
            st.outbox_in(OutboxState::Succeeded) == 10
                && st.duplicates == 6
                && st.conflicts == 2
                && st.quarantined == 5
        },
    )
    .await;
    // Counters are bumped right after the commits the status just saw; give the
    // sampler (every 5 s) time to read the tables too.
    wait_for("metrics caught up", SETTLE, || async {
        let m = scrape(&client, &daemon).await;
        delta(
            &m,
            &before,
            "idem_provider_responses_total{class=\"succeeded\"}",
        ) == 10.0
            && value(&m, "idem_outbox_rows{state=\"succeeded\"}") == 10.0
            && value(&m, "idem_quarantine_rows") == 5.0
            // Estimates (the statistics collector's live rows on tables this
            // small), which reach the exact value once every writer's
            // statistics are flushed (within seconds).
            && value(&m, "idem_inbox_keys") == 10.0
    })
    .await;

    let after = scrape(&client, &daemon).await;
    let d = |series: &str| delta(&after, &before, series);
    assert_eq!(d("idem_inbox_messages_total{decision=\"new\"}"), 10.0);
    assert_eq!(d("idem_inbox_messages_total{decision=\"duplicate\"}"), 6.0);
    assert_eq!(d("idem_inbox_messages_total{decision=\"conflict\"}"), 2.0);
    assert_eq!(
        d("idem_inbox_messages_total{decision=\"quarantined\"}"),
        5.0
    );
    assert_eq!(
        d("idem_inbox_messages_total{decision=\"unrecordable\"}"),
        0.0
    );
    for (reason, n) in &reasons {
        assert_eq!(
            d(&format!(
                "idem_inbox_quarantined_total{{reason=\"{reason}\"}}"
            )),
            *n,
            "quarantined for {reason}"
        );
    }
    let batches = d("idem_inbox_batches_total");
    assert!(batches >= 1.0);
    assert_eq!(d("idem_inbox_batch_seconds_count"), batches);
    assert!(d("idem_inbox_batch_seconds_sum") > 0.0);
    assert_eq!(d("idem_inbox_reconnects_total"), 0.0);
    assert_eq!(value(&after, "idem_broker_connected"), 1.0);

    assert_eq!(d("idem_dispatch_claimed_rows_total"), 10.0);
    assert!(d("idem_dispatch_claim_seconds_count") >= 1.0);
    assert_eq!(
        d("idem_dispatch_attempt_seconds_count{class=\"succeeded\"}"),
        10.0
    );
    assert_eq!(
        d("idem_dispatch_attempt_seconds_bucket{class=\"succeeded\",le=\"+Inf\"}"),
        10.0
    );
    for class in ["declined", "not_processed", "uncertain", "rejected"] {
        assert_eq!(
            d(&format!(
                "idem_provider_responses_total{{class=\"{class}\"}}"
            )),
            0.0,
            "{class}"
        );
    }
    assert_eq!(d("idem_dispatch_fence_refusals_total"), 0.0);
    assert_eq!(d("idem_dispatch_abandoned_total"), 0.0);
    assert_eq!(d("idem_lease_reclaims_total"), 0.0);

    // Duplicates and conflicts reuse the originals' keys; quarantine keeps no key.
    assert_eq!(value(&after, "idem_inbox_keys"), 10.0);
    for state in OutboxState::ALL {
        let expected = if state == OutboxState::Succeeded {
            10.0
        } else {
            0.0
        };
        assert_eq!(
            value(
                &after,
                &format!("idem_outbox_rows{{state=\"{}\"}}", state.as_str())
            ),
            expected,
            "{state:?}"
        );
    }
    assert!(value(&after, "idem_status_sampled_timestamp_seconds") > 0.0);
    assert_eq!(env.charges_by_reference().len(), 10);

    daemon.stop().await;
    env.cleanup().await;
}

/// A TCP proxy to the local broker with a switch: `down` cuts every open
/// connection and refuses new ones until `up`.
struct BrokerProxy {
    addr: SocketAddr,
    state: Arc<Mutex<(bool, CancellationToken)>>,
    stop: CancellationToken,
}

impl BrokerProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new((false, CancellationToken::new())));
        let stop = CancellationToken::new();
        let (shared, stopped) = (Arc::clone(&state), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let cut = {
                    let guard = shared.lock().unwrap();
                    if guard.0 {
                        continue; // down: the client's socket is dropped (closed)
                    }
                    guard.1.clone()
                };
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(idem_tests::rabbit::addr()).await
                    else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    }
                    // Dropping both sockets closes them.
                });
            }
        });
        Self { addr, state, stop }
    }

    fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    fn down(&self) {
        let mut guard = self.state.lock().unwrap();
        guard.0 = true;
        guard.1.cancel();
    }

    fn up(&self) {
        let mut guard = self.state.lock().unwrap();
        *guard = (false, CancellationToken::new());
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.lock().unwrap().1.cancel();
    }
}

/// Invariant: `/readyz` follows the broker session — ready, then 503 (naming
/// the broker) within seconds of the connection being cut while `/healthz`
/// stays 200, then ready again once the broker is reachable; messages
/// published during and after the outage are each charged exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker_session() {
    let env = TestEnv::alone(Faults::default()).await;
    let proxy = BrokerProxy::start().await;
    let before = snapshot();
    let daemon = Daemon::start(&env, &["--amqp-url", &proxy.amqp_url()]).await;
    let client = http();

    wait_for("ready through the proxy", SETTLE, || async {
        get(&client, &daemon.url("/readyz")).await.0 == 200
    })
    .await;
    assert_eq!(get(&client, &daemon.url("/readyz")).await.1, "ready\n");
    env.publish(&workload::generate(&spec("ready-a", 1))).await;
    wait_for("the first message charged", SETTLE, || async {
        env.charges_by_reference().len() == 1
    })
    .await;

    proxy.down();
    wait_for(
        "unready after the broker is cut",
        Duration::from_secs(5),
        || async { get(&client, &daemon.url("/readyz")).await.0 == 503 },
    )
    .await;
    let (status, body) = get(&client, &daemon.url("/readyz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("broker"), "{body}");
    assert!(!body.contains("database"), "{body}");
    assert_eq!(get(&client, &daemon.url("/healthz")).await.0, 200);
    let m = scrape(&client, &daemon).await;
    assert_eq!(value(&m, "idem_broker_connected"), 0.0);
    assert_eq!(delta(&m, &before, "idem_inbox_reconnects_total"), 1.0);

    // Published straight to the broker while the consumer cannot reach it.
    env.publish(&workload::generate(&spec("ready-b", 1))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        get(&client, &daemon.url("/readyz")).await.0,
        503,
        "still down"
    );

    proxy.up();
    wait_for("ready again after the broker is back", SETTLE, || async {
        get(&client, &daemon.url("/readyz")).await.0 == 200
    })
    .await;
    env.publish(&workload::generate(&spec("ready-c", 1))).await;
    wait_for("all three messages charged", SETTLE, || async {
        env.charges_by_reference().len() == 3
    })
    .await;
    // Give a late duplicate charge the chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 3);
    assert!(charges.values().all(|&n| n == 1), "{charges:?}");
    let m = scrape(&client, &daemon).await;
    assert_eq!(value(&m, "idem_broker_connected"), 1.0);
    assert_eq!(
        delta(&m, &before, "idem_inbox_messages_total{decision=\"new\"}"),
        3.0
    );

    daemon.stop().await;
    env.cleanup().await;
}
