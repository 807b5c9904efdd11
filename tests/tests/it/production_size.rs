//! Background work at production size, behind a flag (`--ignored`): ten
//! million settled outbox rows (nine million of them 30 days of history) and
//! a million provider charges in the reconcile window. Prints what `docs/performance.md` reports: the
//! sampler's query time, one `idem reconcile` run's duration and peak RSS,
//! and a replica's peak RSS over its first seconds (sampler, retention).
//!
//! `IDEM_PRODUCTION_ROWS` and `IDEM_PRODUCTION_CHARGES` scale it down.

use std::time::{Duration, Instant};

use idem_simulator::Faults;
use idem_tests::TestEnv;
use idem_tests::binary::{idem_binary, run};
use idem_tests::hostile::Replica;
use tokio::task::JoinSet;

fn size(var: &str, default: i64) -> i64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak RSS (VmHWM) of `pid` in MiB, if it still runs.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Create `references.len()` charges at the simulator, one per reference,
/// 64 at a time, as idem's own client would (keyed).
async fn seed_charges(sim_url: &str, references: Vec<String>) {
    let client = reqwest::Client::new();
    let mut tasks = JoinSet::new();
    for (i, reference) in references.into_iter().enumerate() {
        if tasks.len() >= 64 {
            tasks.join_next().await.unwrap().unwrap();
        }
        let client = client.clone();
        let url = format!("{sim_url}/v1/charges");
        tasks.spawn(async move {
            let body = serde_json::json!({
                "reference_id": reference, "account_id": format!("acc_{}", i % 1000),
                "amount": 100, "currency": "EUR",
                "metadata": {"source": "prod", "message_id": format!("prod-{i}")}
            });
            let answer = client
                .post(url)
                .header("Idempotency-Key", &reference)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(answer.status().is_success(), "{}", answer.status());
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// Invariant (besides the figures): a reconcile run over a million listed
/// charges and ten million rows finishes, judges every listed reference, and
/// its memory stays a page and a chunk, not the window (checked: under
/// 256 MiB); the sampler answers within its 2 s statement timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "production size: minutes, gigabytes of disk; run with --ignored"]
async fn background_work_at_production_size() {
    let rows = size("IDEM_PRODUCTION_ROWS", 10_000_000);
    let charges = size("IDEM_PRODUCTION_CHARGES", 1_000_000).min(rows);
    let env = TestEnv::new(Faults::default()).await;
    let mut conn = env.pool.acquire().await.unwrap();

    let started = Instant::now();
    // History: the rows outside the window, settled over the last 30 days.
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                             state, attempts, provider_charge_id, settled_at, created_at, updated_at)
         SELECT 'history', 'h-' || g, md5('history-' || g)::uuid, 'acc_' || (g % 1000), 100, 'EUR',
                'succeeded', 1, 'ch_history_' || g, t, t, t
         FROM generate_series(1, $1::bigint) g,
              LATERAL (SELECT now() - interval '30 days' + (g * interval '1 second') * (25.0 * 86400 / $1)) AS w(t)",
    )
    .bind(rows - charges)
    .execute(&mut *conn)
    .await
    .unwrap();
    // The window: rows charged today, whose charges the provider lists. They
    // record no charge id: the run keeps the listed charge without writing
    // (a pure judging run, the common case's cost).
    idem_store::bench::load_backlog(&mut conn, "prod", charges, true)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET provider_charge_id = NULL WHERE scope = 'prod'")
        .execute(&mut *conn)
        .await
        .unwrap();
    idem_store::bench::vacuum_outbox(&mut conn).await.unwrap();
    let loaded = started.elapsed();
    let references: Vec<String> =
        sqlx::query_scalar("SELECT reference_id::text FROM outbox WHERE scope = 'prod'")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    let started = Instant::now();
    seed_charges(&env.sim_url, references).await;
    let seeded = started.elapsed();

    let mut sampler = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        idem_store::status::sample(&mut conn, Duration::from_secs(2))
            .await
            .unwrap();
        sampler.push(t.elapsed());
    }
    drop(conn);

    let mut reconcile = tokio::process::Command::new(idem_binary());
    reconcile
        .arg("reconcile")
        .args(env.run_flags())
        .arg("--json")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let started = Instant::now();
    let child = reconcile.spawn().unwrap();
    let pid = child.id().unwrap();
    let watcher = tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        while let Some(now) = peak_rss_mib(pid) {
            peak = peak.max(now);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    });
    let output = child.wait_with_output().await.unwrap();
    let reconcile_took = started.elapsed();
    let reconcile_peak = watcher.await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let mut replica = Replica::spawn("replica", &mut run(&env.run_flags(), &[]));
    tokio::time::sleep(Duration::from_secs(15)).await;
    let _ = replica.poll();
    let replica_peak = replica.peak_rss_kib() as f64 / 1024.0;
    replica.stop().await;

    println!(
        "production size: {rows} settled outbox rows, {charges} provider charges\n\
         load + vacuum: {loaded:.1?}; seeding the charges: {seeded:.1?}\n\
         sampler (5 runs): {sampler:?}\n\
         idem reconcile: {reconcile_took:.1?}, peak RSS {reconcile_peak:.0} MiB, listed {}, references {}, findings {}\n\
         replica (15 s: sampler, retention): peak RSS {replica_peak:.0} MiB",
        report["charges_listed"], report["references"], report["findings_by_kind"],
    );
    assert_eq!(report["references"], charges);
    assert!(
        reconcile_peak < 256.0,
        "reconcile held the window: {reconcile_peak} MiB"
    );
    assert!(
        sampler.iter().all(|t| *t < Duration::from_secs(2)),
        "{sampler:?}"
    );
    env.cleanup().await;
}
