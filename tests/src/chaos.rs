//! The chaos suite: idem's guarantees while the world around it breaks.
//!
//! On one machine, without touching the shared services: its own PostgreSQL
//! cluster and RabbitMQ node, TCP proxies in front of both (connection cuts),
//! the provider simulator with faults, and several `idem run` processes. A
//! workload with every kind of duplicate, key conflicts, declines and malformed
//! messages runs while a scheduler injects faults in rotation; then the suite
//! waits for quiescence and checks every invariant, counted at the provider.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use idem::workload::{self, Kind, Outgoing};
use idem_message::reference_id;
use idem_simulator::{Faults, Simulator};
use idem_store::OutboxState;
use rand::Rng;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cluster::{PgCluster, RabbitNode};
use crate::init;
use crate::proxy::TcpProxy;

mod faults;
mod workers;

pub use faults::FaultKind;
use workers::Workers;

/// How hard and how long.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Name printed in the table.
    pub name: &'static str,
    /// Distinct valid messages.
    pub distinct: usize,
    /// Re-published copies (published again later).
    pub duplicates: usize,
    /// Keys published twice at the same moment on two channels.
    pub concurrent_pairs: usize,
    /// Same key, other payload (published after the originals were recorded).
    pub conflicts: usize,
    /// Malformed messages.
    pub malformed: usize,
    /// Messages for accounts the provider declines.
    pub declines: usize,
    /// `idem run` processes.
    pub workers: usize,
    /// Messages per second the producer publishes at.
    pub publish_rate: u32,
    /// Pause between two injected faults.
    pub fault_interval: Duration,
    /// Rounds of the full fault rotation (each kind once per round), at least.
    pub min_rounds: usize,
    /// Longest wait for quiescence after the faults stop.
    pub settle_timeout: Duration,
}

impl Profile {
    /// The CI profile: a couple of minutes, every fault kind at least once.
    pub fn short() -> Self {
        Self {
            name: "short",
            distinct: 1500,
            duplicates: 300,
            concurrent_pairs: 100,
            conflicts: 30,
            malformed: 30,
            declines: 30,
            workers: 3,
            publish_rate: 30,
            fault_interval: Duration::from_secs(3),
            min_rounds: 1,
            settle_timeout: Duration::from_secs(180),
        }
    }

    /// The soak profile: 100,000 messages, about half an hour of faults.
    pub fn soak() -> Self {
        Self {
            name: "soak",
            distinct: 80_000,
            duplicates: 15_000,
            concurrent_pairs: 2_000,
            conflicts: 1_000,
            malformed: 1_000,
            declines: 1_000,
            workers: 3,
            publish_rate: 55,
            fault_interval: Duration::from_secs(8),
            min_rounds: 10,
            settle_timeout: Duration::from_secs(900),
        }
    }
}

/// What a chaos run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Profile name.
    pub profile: &'static str,
    /// Deliveries published (including the producer's own retries).
    pub published: usize,
    /// Distinct valid keys (each must be charged once or declined).
    pub distinct: usize,
    /// Duplicates injected, by kind.
    pub duplicates: BTreeMap<&'static str, usize>,
    /// Key conflicts published.
    pub conflicts: usize,
    /// Malformed messages published.
    pub malformed: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Provider-side faults, from the simulator's counters.
    pub provider_faults: BTreeMap<&'static str, u64>,
    /// Lease-fence refusals the workers logged (stale holders refused).
    pub fence_refusals: usize,
    /// In-flight leases held by workers at the moment they were frozen.
    pub frozen_leases: i64,
    /// Attempts cut off at the lease budget (recorded as uncertain, fenced).
    pub overran: usize,
    /// Workers started again after a kill or an exit.
    pub worker_restarts: usize,
    /// Where the workers' logs are.
    pub logs: PathBuf,
    /// Charges at the provider.
    pub charges: usize,
    /// Deliveries the inbox absorbed as duplicates (injected ones plus the
    /// redeliveries the faults caused).
    pub absorbed: i64,
    /// Rows declined.
    pub declined: i64,
    /// References with more than one charge.
    pub double: usize,
    /// Valid keys without a charge (and not declined).
    pub missing: usize,
    /// Quarantine rows.
    pub quarantined: i64,
    /// Invariant violations, in words; empty means the run passed.
    pub violations: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Report {
    /// The one table the suite prints.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("profile".into(), self.profile.into()),
            ("messages published".into(), self.published.to_string()),
            ("distinct valid keys".into(), self.distinct.to_string()),
        ];
        for (k, v) in &self.duplicates {
            rows.push((format!("duplicates: {k}"), v.to_string()));
        }
        rows.push((
            "duplicates absorbed by the inbox".into(),
            self.absorbed.to_string(),
        ));
        rows.push(("key conflicts".into(), self.conflicts.to_string()));
        rows.push(("malformed".into(), self.malformed.to_string()));
        for (k, v) in &self.faults {
            rows.push((format!("fault: {k}"), v.to_string()));
        }
        for (k, v) in &self.provider_faults {
            rows.push((format!("fault: provider {k}"), v.to_string()));
        }
        rows.push(("worker restarts".into(), self.worker_restarts.to_string()));
        rows.push((
            "leases held by frozen workers".into(),
            self.frozen_leases.to_string(),
        ));
        rows.push((
            "attempts cut off at lease budget".into(),
            self.overran.to_string(),
        ));
        rows.push((
            "stale results fenced off".into(),
            self.fence_refusals.to_string(),
        ));
        rows.push(("charges at provider".into(), self.charges.to_string()));
        rows.push(("declined".into(), self.declined.to_string()));
        rows.push(("double charges".into(), self.double.to_string()));
        rows.push(("missing charges".into(), self.missing.to_string()));
        rows.push(("quarantined".into(), self.quarantined.to_string()));
        rows.push((
            "elapsed".into(),
            format!("{:.1} s", self.elapsed.as_secs_f64()),
        ));
        rows.push(("violations".into(), self.violations.len().to_string()));
        let mut out = String::from("\n| chaos | |\n| --- | ---: |\n");
        for (k, v) in rows {
            let _ = writeln!(out, "| {k} | {v} |");
        }
        for v in &self.violations {
            let _ = writeln!(out, "VIOLATION: {v}");
        }
        out
    }
}

/// Everything a run starts, torn down when dropped.
struct World {
    /// The run's own PostgreSQL cluster (restarted and crashed by faults).
    pg: Arc<PgCluster>,
    /// The run's own RabbitMQ node (restarted by faults).
    rabbit: Arc<RabbitNode>,
    /// Proxy the workers reach PostgreSQL through (connection cuts).
    pg_proxy: Arc<TcpProxy>,
    /// Proxy the workers reach RabbitMQ through (connection cuts).
    amqp_proxy: Arc<TcpProxy>,
    /// The provider, in process, over real HTTP.
    sim: Simulator,
    /// Its base URL.
    sim_url: String,
    /// The provider's faults between bursts.
    baseline: Faults,
    /// Stops the simulator.
    sim_stop: CancellationToken,
    /// Direct (unproxied) pool for the checker.
    pool: PgPool,
    /// Database URL through the proxy, for the workers.
    db_via_proxy: String,
    /// Broker URL through the proxy, for the workers.
    amqp_via_proxy: String,
    /// The queue.
    queue: String,
    /// Where the workers' logs go.
    logs: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        self.sim_stop.cancel();
    }
}

const SCOPE: &str = "chaos";
const CHARGE_TIMEOUT_MS: u64 = 1000;
const LEASE_SECS: u64 = 3;

/// Run a profile end to end; the report lists any violated invariant.
pub async fn run(profile: Profile) -> anyhow::Result<Report> {
    init();
    let started = Instant::now();
    let world = World::start().await?;
    tracing::info!(logs = %world.logs.display(), "chaos: world started");
    let plan = Plan::new(&profile);
    let mut workers = Workers::new(&world, profile.workers)?;
    workers.spawn_all()?;

    let publishing_done = CancellationToken::new();
    let scheduler = tokio::spawn(faults::schedule(
        faults::Targets::from(&world),
        workers.handle(),
        profile.fault_interval,
        profile.min_rounds,
        publishing_done.clone(),
    ));
    let progress = tokio::spawn(report_progress(
        world.pool.clone(),
        plan.expected.len(),
        started,
    ));
    let published = plan.publish(&world, &profile).await;
    publishing_done.cancel();
    // Faults keep coming until every kind has had its rounds.
    let injected = scheduler.await.context("fault scheduler")??;
    let (published, republished) = published?;
    world.sim.set_faults(Faults::default());
    workers.ensure_all_running()?;

    let mut duplicates = plan.duplicates.clone();
    duplicates.insert("producer re-publishes", republished);
    let mut report = Report {
        profile: profile.name,
        published,
        distinct: plan.expected.len(),
        duplicates,
        conflicts: profile.conflicts,
        malformed: profile.malformed,
        faults: injected.counts,
        frozen_leases: injected.frozen_leases,
        logs: world.logs.clone(),
        ..Report::default()
    };
    if let Err(e) = quiesce(&world, &plan, profile.settle_timeout).await {
        report.violations.push(format!("no quiescence: {e:#}"));
    }
    progress.abort();
    workers.stop_all().await;
    check(&world, &plan, &mut report).await?;
    report.fence_refusals = workers.count_in_logs("refused by the lease fence");
    report.overran = workers.count_in_logs("outlived its lease budget");
    if report.frozen_leases > 0 && report.fence_refusals == 0 {
        report.violations.push(format!(
            "frozen workers held {} leases, yet no stale result met the fence",
            report.frozen_leases
        ));
    }
    report.worker_restarts = workers.restarts();
    report.elapsed = started.elapsed();
    Ok(report)
}

impl World {
    async fn start() -> anyhow::Result<Self> {
        let pg = Arc::new(
            PgCluster::start()
                .await
                .context("starting the chaos PostgreSQL cluster")?,
        );
        let rabbit = Arc::new(
            RabbitNode::start()
                .await
                .context("starting the chaos RabbitMQ node")?,
        );
        let pg_proxy = Arc::new(TcpProxy::start(([127, 0, 0, 1], pg.port()).into()).await);
        let amqp_proxy = Arc::new(TcpProxy::start(([127, 0, 0, 1], rabbit.port()).into()).await);
        let db = "idem_chaos";
        let pool = idem_store::connect(&pg.url(db), 4).await?;
        idem_store::migrate(&pool).await?;
        let baseline = Faults {
            drop_request: 0.03,
            drop_response: 0.05,
            error_5xx: 0.03,
            latency_ms: 20,
            latency_jitter_ms: 80,
            ..Faults::default()
        };
        let sim = Simulator::new(baseline.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let sim_url = format!("http://{}", listener.local_addr()?);
        let sim_stop = CancellationToken::new();
        let (s, stop) = (sim.clone(), sim_stop.clone());
        tokio::spawn(async move {
            s.serve(listener, async move { stop.cancelled().await })
                .await
        });
        let logs =
            std::env::temp_dir().join(format!("idem-chaos-logs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&logs)?;
        Ok(Self {
            db_via_proxy: format!("postgres://postgres@{}/{db}", pg_proxy.addr()),
            amqp_via_proxy: format!("amqp://guest:guest@{}/%2f", amqp_proxy.addr()),
            pg,
            rabbit,
            pg_proxy,
            amqp_proxy,
            sim,
            sim_url,
            baseline,
            sim_stop,
            pool,
            queue: "idem.chaos".into(),
            logs,
        })
    }
}

/// The workload and what it must end as.
struct Plan {
    /// First wave: originals, re-publishes, concurrent pairs, malformed, declines.
    first: Vec<Outgoing>,
    /// Keys published twice at once (each pair = two identical messages).
    pairs: Vec<Outgoing>,
    /// Second wave, after the originals are recorded: key conflicts.
    conflicts: Vec<Outgoing>,
    /// reference id -> (amount, declined?) of every distinct valid key.
    expected: HashMap<String, (i64, bool)>,
    /// Malformed bodies, each must be in quarantine.
    malformed: Vec<Vec<u8>>,
    /// Duplicates injected by kind (the producer's own retries are added later).
    duplicates: BTreeMap<&'static str, usize>,
}

impl Plan {
    fn new(p: &Profile) -> Self {
        let spec = workload::Spec {
            prefix: "chaos".into(),
            scope: Some(SCOPE.into()),
            distinct: p.distinct,
            duplicates: p.duplicates,
            conflicts: 0,
            malformed: p.malformed,
            seed: 99,
        };
        let mut first = workload::generate(&spec);
        let mut expected = HashMap::new();
        for m in first.iter().filter(|m| m.kind == Kind::Original) {
            let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap_or_default();
            let id = m.message_id.as_deref().unwrap_or_default();
            expected.insert(
                reference_id(SCOPE, id).to_string(),
                (body["amount"].as_i64().unwrap_or(0), false),
            );
        }
        let declined = |i: usize| Outgoing {
            message_id: Some(format!("chaos-decline-{i:05}")),
            app_id: Some(SCOPE.into()),
            body: format!(
                r#"{{"account_id":"acc_decline_{i}","amount":{},"currency":"EUR"}}"#,
                100 + i
            )
            .into_bytes(),
            kind: Kind::Original,
        };
        for i in 0..p.declines {
            let m = declined(i);
            expected.insert(
                reference_id(SCOPE, m.message_id.as_deref().unwrap_or_default()).to_string(),
                (100 + i as i64, true),
            );
            first.push(m);
        }
        let pairs: Vec<Outgoing> = (0..p.concurrent_pairs)
            .map(|i| Outgoing {
                message_id: Some(format!("chaos-pair-{i:05}")),
                app_id: Some(SCOPE.into()),
                body: format!(
                    r#"{{"account_id":"acc_pair_{}","amount":{},"currency":"EUR"}}"#,
                    i % 50,
                    500 + i
                )
                .into_bytes(),
                kind: Kind::Original,
            })
            .collect();
        for (i, m) in pairs.iter().enumerate() {
            expected.insert(
                reference_id(SCOPE, m.message_id.as_deref().unwrap_or_default()).to_string(),
                (500 + i as i64, false),
            );
        }
        let mut rng = rand::rng();
        let originals: Vec<&Outgoing> = first
            .iter()
            .filter(|m| {
                m.kind == Kind::Original && !m.body.windows(11).any(|w| w == b"acc_decline")
            })
            .collect();
        let conflicts: Vec<Outgoing> = (0..p.conflicts)
            .map(|_| {
                let m = originals[rng.random_range(0..originals.len())];
                let mut body: serde_json::Value =
                    serde_json::from_slice(&m.body).unwrap_or_default();
                body["amount"] = serde_json::json!(1_000_000 + rng.random_range(0..1000));
                Outgoing {
                    body: body.to_string().into_bytes(),
                    kind: Kind::Conflict,
                    ..m.clone()
                }
            })
            .collect();
        let malformed = first
            .iter()
            .filter(|m| matches!(m.kind, Kind::Malformed(_)))
            .map(|m| m.body.clone())
            .collect();
        let duplicates = BTreeMap::from([
            ("re-published", p.duplicates),
            ("same key at once", p.concurrent_pairs),
        ]);
        Self {
            first,
            pairs,
            conflicts,
            expected,
            malformed,
            duplicates,
        }
    }

    /// Publish everything straight to the chaos node (not through the proxy),
    /// surviving its restarts; returns the deliveries published and how many
    /// of them were the producer's own re-publishes.
    async fn publish(&self, world: &World, p: &Profile) -> anyhow::Result<(usize, usize)> {
        let url = world.rabbit.amqp_url();
        let mut publisher = crate::publisher::Publisher::new(&url, &world.queue);
        let half = self.first.len() / 2;
        publisher
            .publish(&self.first[..half], p.publish_rate)
            .await?;
        publisher.publish_pairs(&self.pairs).await?;
        publisher
            .publish(&self.first[half..], p.publish_rate)
            .await?;
        // Conflicts only once their originals are recorded, so which payload
        // wins is never in doubt.
        wait_until(Duration::from_secs(300), || async {
            let keys: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM inbox")
                .fetch_one(&world.pool)
                .await;
            keys.is_ok_and(|k| k as usize >= self.expected.len())
        })
        .await
        .context("the originals were not all recorded")?;
        publisher.publish(&self.conflicts, p.publish_rate).await?;
        Ok((publisher.published(), publisher.republished()))
    }
}

async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Wait until every key is recorded and settled, every conflict and
/// malformed message is recorded, and no row is open.
async fn quiesce(world: &World, plan: &Plan, timeout: Duration) -> anyhow::Result<()> {
    let want_keys = plan.expected.len() as i64;
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(mut conn) = world.pool.acquire().await
            && let Ok(st) = idem_store::status::read(&mut conn).await
        {
            if st.inbox_keys == want_keys
                && st.open_rows() == 0
                && st.conflicts as usize >= plan.conflicts.len()
                && st.quarantined as usize >= plan.malformed.len()
            {
                return Ok(());
            }
            last = Some(st);
        }
        if Instant::now() > deadline {
            bail!("not quiet after {timeout:?}; last status: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every 30 s, one line on stderr: how far the run has got (long runs must
/// show they are alive).
async fn report_progress(pool: PgPool, keys: usize, started: Instant) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let Ok(mut conn) = pool.acquire().await else {
            continue;
        };
        if let Ok(st) = idem_store::status::read(&mut conn).await {
            eprintln!(
                "chaos [{:>5.0} s] inbox keys {}/{keys}, succeeded {}, declined {}, open {}, duplicates absorbed {}, quarantined {}",
                started.elapsed().as_secs_f64(),
                st.inbox_keys,
                st.outbox_in(OutboxState::Succeeded),
                st.outbox_in(OutboxState::Declined),
                st.open_rows(),
                st.duplicates,
                st.quarantined,
            );
        }
    }
}

/// Check every invariant; record violations in the report.
async fn check(world: &World, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let ledger = world.sim.ledger();
    let stats = world.sim.stats();
    report.provider_faults = BTreeMap::from([
        ("request drops", stats.dropped_requests),
        ("response drops", stats.dropped_responses),
        ("5xx", stats.errors_5xx),
    ]);
    report.charges = ledger.charges.len();
    let mut per_ref: HashMap<&str, Vec<&idem_charge::Charge>> = HashMap::new();
    for c in &ledger.charges {
        per_ref.entry(c.reference_id.as_str()).or_default().push(c);
    }
    report.double = per_ref.values().filter(|v| v.len() > 1).count();
    if report.double > 0 {
        report.violations.push(format!(
            "{} references charged more than once",
            report.double
        ));
    }
    for (reference, (amount, declined)) in &plan.expected {
        match (per_ref.get(reference.as_str()), declined) {
            (Some(charges), true) => report.violations.push(format!("declined reference {reference} was charged {} times", charges.len())),
            (None, false) => report.missing += 1,
            (Some(charges), false) if charges[0].amount != *amount => report.violations.push(format!(
                "reference {reference} charged {} instead of {amount} (a conflict's payload won?)",
                charges[0].amount
            )),
            _ => {}
        }
    }
    if report.missing > 0 {
        report
            .violations
            .push(format!("{} valid keys never charged", report.missing));
    }
    let strays = per_ref
        .keys()
        .filter(|r| !plan.expected.contains_key(**r))
        .count();
    if strays > 0 {
        report.violations.push(format!(
            "{strays} charges for references no valid message has"
        ));
    }

    let st = idem_store::status::read(&mut *world.pool.acquire().await?).await?;
    report.declined = st.outbox_in(OutboxState::Declined);
    report.absorbed = st.duplicates;
    report.quarantined = st.quarantined;
    let declines = plan.expected.values().filter(|(_, d)| *d).count() as i64;
    if report.declined != declines {
        report.violations.push(format!(
            "{} declined rows, expected {declines}",
            report.declined
        ));
    }
    if st.inbox_keys != plan.expected.len() as i64 {
        report.violations.push(format!(
            "{} inbox keys, expected {}",
            st.inbox_keys,
            plan.expected.len()
        ));
    }
    if st.open_rows() > 0 || st.outbox_in(OutboxState::Dead) > 0 {
        report
            .violations
            .push(format!("rows not settled: {:?}", st.outbox));
    }
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM account_slot")
        .fetch_one(&world.pool)
        .await?;
    if slots > 0 {
        report
            .violations
            .push(format!("{slots} account slots still held"));
    }
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM quarantine")
        .fetch_all(&world.pool)
        .await?;
    let missing_malformed = plan
        .malformed
        .iter()
        .filter(|b| !bodies.contains(b))
        .count();
    if missing_malformed > 0 {
        report.violations.push(format!(
            "{missing_malformed} malformed messages not in quarantine"
        ));
    }
    if (st.conflicts as usize) < plan.conflicts.len() {
        report.violations.push(format!(
            "{} conflicts recorded, {} published",
            st.conflicts,
            plan.conflicts.len()
        ));
    }
    let topology = idem_inbox::Topology::for_queue(&world.queue);
    for queue in [&topology.queue, &topology.dead_letter_queue] {
        let depth = crate::publisher::queue_depth(&world.rabbit.amqp_url(), queue).await?;
        if depth > 0 {
            report
                .violations
                .push(format!("{depth} messages left in {queue}"));
        }
    }
    Ok(())
}
