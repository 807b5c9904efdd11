//! The overview: what is stuck and whether the pipeline moves.

use askama::Template;
use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use idem_store::OutboxState;
use idem_store::overview::{self, COUNT_CAP, Flow};
use idem_store::status;

use crate::Console;
use crate::guard::{self, Csrf};
use crate::lag::LagView;
use crate::replicas::Replica;
use crate::trend;
use crate::view::{self, Chrome, Failure};

/// One state's card.
struct StateCard {
    state: &'static str,
    count: i64,
    /// The count is the catalog's estimate (settled history).
    estimated: bool,
    /// Inline SVG of the kept samples (numbers only).
    spark: String,
}

/// The last reconciliation, as the page shows it.
struct RunView {
    id: i64,
    finished: String,
    took_seconds: f64,
    window: String,
    /// (kind, count) of every finding kind the run met.
    by_kind: Vec<(String, u64)>,
    /// The report's counters, e.g. ("extra_charges", 0).
    counters: Vec<(&'static str, u64)>,
    /// The first findings, in words.
    first: Vec<String>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Page {
    chrome: Chrome,
    cards: Vec<StateCard>,
    expired_leases: i64,
    inbox_keys: i64,
    quarantined: i64,
    flow: Flow,
    cap: i64,
    trend_since: String,
    replicas: Vec<Replica>,
    /// Publish → recorded, from the replicas (`None`: none reports it).
    lag: Option<LagView>,
    run: Option<RunView>,
}

/// `GET /console/`.
pub(crate) async fn page(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
) -> Result<Response, Failure> {
    let mut conn = console.pool().acquire().await?;
    let sample = status::sample(&mut conn, std::time::Duration::from_secs(2)).await?;
    let flow = overview::flow(&mut conn).await?;
    let run = overview::last_reconcile_run(&mut conn).await?;
    drop(conn);
    let replicas = console.read_replicas().await;
    let lag = console.inner.lag.view(std::time::Instant::now());
    let cards = OutboxState::ALL
        .iter()
        .map(|&s| StateCard {
            state: s.as_str(),
            count: sample.outbox_in(s),
            estimated: status::is_estimated(s),
            spark: trend::sparkline(&console.inner.trend.series(s), 150, 28),
        })
        .collect();
    Ok(view::render(&Page {
        chrome: guard::chrome(&console, &csrf, "Overview"),
        cards,
        expired_leases: sample.expired_leases,
        inbox_keys: sample.inbox_keys,
        quarantined: sample.quarantined,
        flow,
        cap: COUNT_CAP,
        trend_since: console.inner.trend.since().map_or_else(
            || "no samples yet".to_owned(),
            |t| format!("since {}", view::when(t)),
        ),
        replicas,
        lag,
        run: run.map(run_view),
    }))
}

/// The counters of a report worth a glance, in the order they matter.
const COUNTERS: [&str; 7] = [
    "charges_listed",
    "extra_charges",
    "compensations_recorded",
    "refunds_manual",
    "refunds_failed",
    "rows_settled",
    "rows_requeued",
];

fn run_view(run: overview::ReconcileRun) -> RunView {
    let r = &run.report;
    let number = |k: &str| r.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let by_kind = r
        .get("findings_by_kind")
        .and_then(serde_json::Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let first = r
        .get("findings")
        .and_then(serde_json::Value::as_array)
        .map(|f| {
            f.iter()
                .take(5)
                .map(|x| {
                    let kind = x.get("kind").and_then(|v| v.as_str()).unwrap_or("?");
                    let detail = x.get("detail").and_then(|v| v.as_str()).unwrap_or("");
                    view::clip(&format!("{kind}: {detail}"), 300)
                })
                .collect()
        })
        .unwrap_or_default();
    let text = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
    RunView {
        id: run.id,
        finished: view::when(run.finished_at),
        took_seconds: (run.finished_at - run.started_at).as_seconds_f64(),
        window: format!("{} → {}", text("window_from"), text("window_to")),
        by_kind,
        counters: COUNTERS.iter().map(|&k| (k, number(k))).collect(),
        first,
    }
}
