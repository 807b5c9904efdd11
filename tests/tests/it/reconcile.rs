//! Reconciliation against the provider simulator's books: extra charges are
//! refunded exactly once (however often and however concurrently the
//! reconciler runs), uncertain rows are settled or re-queued, mismatches are
//! reported untouched, and providers without idempotency keys end with one net
//! charge per reference. Counted at the simulator's ledger.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use idem_reconcile::{FindingKind, ReconcileConfig, Reconciler, Report, Window};
use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::{TestEnv, idem_binary, spec, wait_for};
use idem_workload as workload;
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(90);

/// Create a charge straight at the simulator under `reference`, with an
/// idempotency key of its own: an extra charge our dispatcher never made.
async fn seed_charge(env: &TestEnv, reference: &str, amount: i64) -> String {
    let body = serde_json::json!({
        "reference_id": reference, "account_id": "acc_seeded", "amount": amount,
        "currency": "EUR", "metadata": {"source": "test", "message_id": "seeded"}
    });
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/v1/charges", env.sim_url))
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["id"].as_str().unwrap().to_owned()
}

/// `idem reconcile --json` as a process, with this env's flags.
async fn reconcile_cli(env: &TestEnv) -> Value {
    let output = tokio::process::Command::new(idem_binary())
        .arg("reconcile")
        .args(env.run_flags())
        .arg("--json")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "idem reconcile failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn reconciler(env: &TestEnv, grace: Duration) -> Reconciler {
    let config = env.run_args(&[]).validate().unwrap();
    let client =
        idem_charge::ChargeClient::new(&env.sim_url, Duration::from_secs(2), config.capabilities)
            .unwrap();
    Reconciler::new(
        env.pool.clone(),
        client,
        ReconcileConfig {
            grace,
            page_size: 7, // small pages: paging is exercised
            replica: "reconcile-test".into(),
        },
    )
}

fn last_day() -> Window {
    Window {
        from: chrono::Utc::now() - chrono::Duration::hours(24),
        to: None,
    }
}

/// Charge `n` messages through a worker; returns their references.
async fn charge_messages(env: &TestEnv, prefix: &str, n: usize) -> Vec<String> {
    let worker = env.start_worker(&[]);
    env.publish(&workload::generate(&spec(prefix, n))).await;
    wait_for("messages charged", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == n as i64
    })
    .await;
    worker.stop().await.unwrap();
    env.charges_by_reference().into_keys().collect()
}

/// Invariant: an extra charge seeded at the provider under one of our
/// references is refunded exactly once — by the first `idem reconcile`, not
/// again by a second run, nor by two processes running at once — the charge
/// our row recorded is the one kept, and the compensation row holds the
/// evidence. Every reference ends with one net charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_extra_charge_is_refunded_once_however_often_reconciled() {
    let env = TestEnv::new(Faults::default()).await;
    let references = charge_messages(&env, "seeded", 5).await;
    let target = &references[2];
    let recorded: String =
        sqlx::query_scalar("SELECT provider_charge_id FROM outbox WHERE reference_id = $1::uuid")
            .bind(target)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let extra = seed_charge(&env, target, 4242).await;

    let first = reconcile_cli(&env).await;
    println!(
        "first run:\n{}",
        serde_json::to_string_pretty(&first).unwrap()
    );
    assert_eq!(first["extra_charges"], 1, "{first}");
    assert_eq!(first["refunds_confirmed"], 1, "{first}");
    let second = reconcile_cli(&env).await;
    assert_eq!(
        second["refunds_confirmed"], 0,
        "a second run refunds nothing: {second}"
    );
    assert_eq!(second["compensations_recorded"], 0, "{second}");
    let (a, b) = tokio::join!(reconcile_cli(&env), reconcile_cli(&env));
    assert_eq!(
        a["refunds_confirmed"].as_u64().unwrap() + b["refunds_confirmed"].as_u64().unwrap(),
        0
    );

    let ledger = env.sim.ledger();
    assert_eq!(
        ledger.refunds.len(),
        1,
        "one refund in all: {:?}",
        ledger.refunds
    );
    assert_eq!(
        ledger.refunds[0].charge, extra,
        "the seeded charge was refunded"
    );
    assert!(
        env.sim
            .ledger()
            .net_by_reference()
            .values()
            .all(|&n| n == 1)
    );
    let (charge_id, kept, state, evidence): (String, String, String, Value) =
        sqlx::query_as("SELECT charge_id, kept_charge_id, state, evidence FROM compensation")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (charge_id.as_str(), kept.as_str(), state.as_str()),
        (extra.as_str(), recorded.as_str(), "refunded")
    );
    assert_eq!(
        evidence["charges"].as_array().unwrap().len(),
        2,
        "{evidence}"
    );
    env.cleanup().await;
}

/// Invariant: a charge under a reference we never asked for, and a row we
/// marked succeeded whose charge the provider does not have, are reported —
/// and neither is touched (no refund, the row unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_missing_charges_are_reported_untouched() {
    let env = TestEnv::new(Faults::default()).await;
    charge_messages(&env, "report", 3).await;
    let foreign = uuid::Uuid::new_v4().to_string();
    seed_charge(&env, &foreign, 999).await;
    let missing: i64 = sqlx::query_scalar(
        "UPDATE outbox SET provider_charge_id = 'ch_nowhere', reference_id = gen_random_uuid(),
             settled_at = now() - interval '5 minutes'
         WHERE id = (SELECT min(id) FROM outbox) RETURNING id",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();

    let report: Report = reconciler(&env, Duration::from_secs(5))
        .run_once(last_day())
        .await
        .unwrap();
    print!("{}", report.table());
    assert_eq!(
        report.count(FindingKind::ForeignCharge),
        2,
        "the seeded charge and the orphaned one: {report:?}"
    );
    assert_eq!(
        report.count(FindingKind::MissingAtProvider),
        1,
        "{report:?}"
    );
    let flagged = report
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::MissingAtProvider)
        .unwrap();
    assert_eq!(flagged.outbox_id, Some(missing));
    assert!(env.sim.ledger().refunds.is_empty(), "nothing refunded");
    assert_eq!(
        env.status().await.outbox_in(OutboxState::Succeeded),
        3,
        "rows untouched"
    );
    env.cleanup().await;
}

/// Invariant: an `unknown` row whose charge the provider has is settled as
/// succeeded with that charge; an `unknown` row without one, quiet for longer
/// than the grace period, is re-queued as `pending` (and a young one is left
/// alone); none of them gets a second charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_rows_are_settled_when_found_and_requeued_when_not() {
    let env = TestEnv::new(Faults::default()).await;
    let consumer = env.start_worker(&["--role", "consumer"]);
    env.publish(&workload::generate(&spec("unknown", 3))).await;
    wait_for("rows recorded", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Pending) == 3
    })
    .await;
    consumer.stop().await.unwrap();
    let rows: Vec<(i64, uuid::Uuid)> =
        sqlx::query_as("SELECT id, reference_id FROM outbox ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    sqlx::query(
        "UPDATE outbox SET state = 'unknown', uncertain_since = now() - interval '10 minutes',
             updated_at = CASE WHEN id = $1 THEN now() ELSE now() - interval '10 minutes' END",
    )
    .bind(rows[2].0)
    .execute(&env.pool)
    .await
    .unwrap();
    let found = seed_charge(&env, &rows[0].1.to_string(), 100).await;

    let report = reconciler(&env, Duration::from_secs(60))
        .run_once(last_day())
        .await
        .unwrap();
    assert_eq!(
        (report.rows_settled, report.rows_requeued),
        (1, 1),
        "{report:?}"
    );
    let states: BTreeMap<i64, (OutboxState, Option<String>)> =
        sqlx::query_as("SELECT id, state, provider_charge_id FROM outbox")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, state, charge)| (id, (state, charge)))
            .collect();
    assert_eq!(states[&rows[0].0], (OutboxState::Succeeded, Some(found)));
    assert_eq!(
        states[&rows[1].0].0,
        OutboxState::Pending,
        "quiet and not found: re-queued"
    );
    assert_eq!(
        states[&rows[2].0].0,
        OutboxState::Unknown,
        "touched within the grace: left alone"
    );
    assert_eq!(
        env.sim.ledger().charges.len(),
        1,
        "the reconciler never charges"
    );
    env.cleanup().await;
}

/// Run a workload against a provider that ignores idempotency keys (and
/// offers lookup or not) with response drops, slow answers and a worker
/// killed mid-run; then reconcile. Returns (gross charges, distinct keys).
async fn keyless_provider_nets_one_charge_each(lookup: bool) -> (usize, usize) {
    const N: usize = 40;
    let env = TestEnv::new(Faults {
        idempotency_keys: false,
        lookup,
        drop_response: 0.3,
        latency_ms: 50,
        latency_jitter_ms: 1200, // some answers outlive twice the 400 ms timeout
        ..Faults::default()
    })
    .await;
    let flags = [
        "--provider-idempotency-keys",
        "false",
        "--provider-lookup",
        &lookup.to_string(),
    ];
    let spawn = || {
        tokio::process::Command::new(idem_binary())
            .arg("run")
            .args(env.run_flags())
            .args(flags)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let (mut doomed, mut survivor) = (spawn(), spawn());
    env.publish(&workload::generate(&spec("keyless", N))).await;
    wait_for("some charges made", SETTLE, || async {
        env.sim.ledger().charges.len() >= N / 4
    })
    .await;
    doomed.kill().await.unwrap();
    let mut restarted = spawn();
    wait_for("every row final", Duration::from_secs(180), || async {
        let st = env.status().await;
        st.inbox_keys == N as i64 && st.open_rows() == 0
    })
    .await;
    for child in [&mut survivor, &mut restarted] {
        child.kill().await.unwrap();
    }
    // A killed worker's request may still be inside the provider (answers
    // take up to 1.25 s here): wait until the ledger is quiet, so the
    // reconciler's listing sees every charge there will be.
    let mut last = usize::MAX;
    while env.sim.ledger().charges.len() != last {
        last = env.sim.ledger().charges.len();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let gross = env.sim.ledger().charges.len();
    // The reconciler's own calls are not the subject here: a provider that
    // still ignores keys (and offers lookup or not), but answers.
    env.sim.set_faults(Faults {
        idempotency_keys: false,
        lookup,
        ..Faults::default()
    });

    let report = reconciler(&env, Duration::from_secs(5))
        .run_once(last_day())
        .await
        .unwrap();
    print!(
        "lookup={lookup}: gross charges {gross} for {N} keys\n{}",
        report.table()
    );
    let net = env.sim.ledger().net_by_reference();
    assert_eq!(net.len(), N, "every key charged: {net:?}");
    assert!(
        net.values().all(|&n| n == 1),
        "one net charge per reference: {net:?}"
    );
    assert_eq!(
        report.refunds_confirmed,
        gross - N,
        "every extra charge refunded: {report:?}"
    );
    assert_eq!(
        env.status().await.outbox_in(OutboxState::Succeeded),
        N as i64
    );
    env.cleanup().await;
    (gross, N)
}

/// Invariant: with a provider that ignores idempotency keys but offers
/// lookup, whatever duplicates response drops, slow answers and a killed
/// worker cause, after reconciliation every reference has exactly one net
/// (non-refunded) charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_only_provider_ends_with_one_net_charge_per_reference() {
    keyless_provider_nets_one_charge_each(true).await;
}

/// Invariant: the same with a provider that offers neither idempotency keys
/// nor lookup (uncertain attempts are re-sent blind, so duplicates are
/// expected, and each is refunded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_without_keys_or_lookup_ends_with_one_net_charge_per_reference() {
    let (gross, distinct) = keyless_provider_nets_one_charge_each(false).await;
    assert!(
        gross > distinct,
        "blind re-sends produced duplicates to compensate ({gross} for {distinct})"
    );
}

/// Invariant: a row that ended `declined` while the provider holds a charge
/// under its reference (an earlier attempt did charge: a provider without
/// keys, or a row resolved as declined by hand) has that charge refunded by
/// the first reconciliation, once; the row stays declined, the finding is
/// reported, and the other references keep their one charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_under_a_declined_row_is_refunded() {
    let env = TestEnv::new(Faults::default()).await;
    let references = charge_messages(&env, "declined-charged", 3).await;
    let target = &references[1];
    let charged: String =
        sqlx::query_scalar("SELECT provider_charge_id FROM outbox WHERE reference_id = $1::uuid")
            .bind(target)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    // As a row whose last attempt was declined after an earlier one charged.
    sqlx::query(
        "UPDATE outbox SET state = 'declined', provider_charge_id = NULL
         WHERE reference_id = $1::uuid",
    )
    .bind(target)
    .execute(&env.pool)
    .await
    .unwrap();

    let first = reconcile_cli(&env).await;
    assert_eq!(first["refunds_confirmed"], 1, "{first}");
    let second = reconcile_cli(&env).await;
    assert_eq!(second["refunds_confirmed"], 0, "once: {second}");
    let ledger = env.sim.ledger();
    assert_eq!(ledger.refunds.len(), 1, "{:?}", ledger.refunds);
    assert_eq!(ledger.refunds[0].charge, charged);
    let net = ledger.net_by_reference();
    for reference in &references {
        let expected = if reference == target { 0 } else { 1 };
        assert_eq!(
            net.get(reference).copied().unwrap_or(0),
            expected,
            "{reference}"
        );
    }
    let state: String =
        sqlx::query_scalar("SELECT state::text FROM outbox WHERE reference_id = $1::uuid")
            .bind(target)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        state, "declined",
        "the row keeps what its producer was told"
    );
    let findings = first["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["kind"] == "charged_but_declined"),
        "{first}"
    );
    env.cleanup().await;
}

/// `rows` succeeded rows of history, one every `spacing_secs` from 30 days
/// ago, over 100 accounts.
async fn history(conn: &mut sqlx::PgConnection, rows: i64, spacing_secs: i64) {
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                             state, attempts, provider_charge_id, settled_at, created_at, updated_at)
         SELECT 'history', 'h-' || g, md5('history-' || g)::uuid, 'acc_' || (g % 100), 100, 'EUR',
                'succeeded', 1, 'ch_h_' || g, t, t, t
         FROM generate_series(1, $1::bigint) g,
              LATERAL (SELECT now() - interval '30 days' + g * make_interval(secs => $2)) AS w(t)",
    )
    .bind(rows)
    .bind(spacing_secs as f64)
    .execute(conn)
    .await
    .unwrap();
}

/// Every node of an `EXPLAIN (FORMAT JSON)` plan, depth first.
fn nodes<'a>(plan: &'a Value, out: &mut Vec<&'a serde_json::Map<String, Value>>) {
    match plan {
        Value::Object(node) => {
            out.push(node);
            node.values().for_each(|v| nodes(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| nodes(v, out)),
        _ => {}
    }
}

/// Every `Seq Scan`'s relation in an `EXPLAIN (FORMAT JSON)` plan.
fn seq_scans(plan: &Value, out: &mut Vec<String>) {
    let mut all = Vec::new();
    nodes(plan, &mut all);
    out.extend(
        all.into_iter()
            .filter(|n| n.get("Node Type").and_then(|t| t.as_str()) == Some("Seq Scan"))
            .map(|n| {
                n.get("Relation Name")
                    .and_then(|r| r.as_str())
                    .unwrap_or("?")
                    .to_owned()
            }),
    );
}

/// Invariant: reconciliation's walk of our rows in its window costs the
/// window, not the history: over 50k settled rows of the last 30 days and
/// 200 of today (analyzed), the plan of a chunk for a one-day window reads
/// `outbox_claims_charge` and scans no table sequentially.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_walk_reads_the_window_not_the_history() {
    let env = TestEnv::new(Faults::default()).await;
    let mut conn = env.pool.acquire().await.unwrap();
    history(&mut conn, 50_000, 40).await;
    idem_store::bench::load_backlog(&mut conn, "today", 200, true)
        .await
        .unwrap();
    idem_store::bench::vacuum_outbox(&mut conn).await.unwrap();
    idem_store::reconcile::begin_listing(&mut conn)
        .await
        .unwrap();
    let since = chrono::Utc::now() - chrono::Duration::hours(24);
    let plan = idem_store::reconcile::explain_unlisted_rows(&mut conn, since)
        .await
        .unwrap();
    let mut scanned = Vec::new();
    seq_scans(&plan, &mut scanned);
    assert!(
        !scanned.iter().any(|r| r == "outbox"),
        "sequential scan of outbox:\n{plan:#}"
    );
    assert!(
        plan.to_string().contains("outbox_claims_charge"),
        "the window's index:\n{plan:#}"
    );
    idem_store::reconcile::end_listing(&mut conn).await.unwrap();
    drop(conn);
    env.cleanup().await;
}

/// Every index an `EXPLAIN (FORMAT JSON)` plan reads.
fn indexes(plan: &Value, out: &mut Vec<String>) {
    let mut all = Vec::new();
    nodes(plan, &mut all);
    out.extend(
        all.into_iter()
            .filter_map(|n| n.get("Index Name").and_then(|i| i.as_str()))
            .map(str::to_owned),
    );
}

/// Invariant: judging the listing chunk by chunk costs the chunk, not the
/// listing nor the history: with 60k listed charges (a temp table, which
/// autovacuum never analyzes) and 200k rows of history (analyzed), the
/// plans of one chunk once the listing is finished — `listed_after`'s next
/// references and their charges, then our rows for them — read
/// `reconcile_listed`'s key and outbox's `reference_id` index, and scan no
/// table sequentially. (Over 50k rows of history one scan of outbox costs
/// less than 500 probes of its index, and the planner rightly scans.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_walk_reads_a_chunk_not_the_listing() {
    let env = TestEnv::new(Faults::default()).await;
    let mut conn = env.pool.acquire().await.unwrap();
    history(&mut conn, 200_000, 10).await;
    idem_store::bench::vacuum_outbox(&mut conn).await.unwrap();
    idem_store::reconcile::begin_listing(&mut conn)
        .await
        .unwrap();
    // Our 50k references, a tenth of them charged twice, and 5k the
    // provider holds that we do not: as the listing pages would add them.
    sqlx::query(
        "INSERT INTO reconcile_listed (reference_id, charge_id, charge)
         SELECT md5(kind || '-' || g)::uuid::text, 'ch_' || kind || '_' || g || '_' || n,
                jsonb_build_object('id', 'ch_' || g, 'created', 1700000000 + g, 'status', 'succeeded')
         FROM (SELECT 'history', g, 1 FROM generate_series(1, 50000) g
               UNION ALL SELECT 'history', g, 2 FROM generate_series(1, 50000, 10) g
               UNION ALL SELECT 'foreign', g, 1 FROM generate_series(1, 5000) g) AS l(kind, g, n)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    idem_store::reconcile::finish_listing(&mut conn)
        .await
        .unwrap();
    // A chunk from the middle of the walk, as the reconciler asks for it.
    let after = uuid::Uuid::from_u128(u128::MAX / 2).to_string();
    let chunk = idem_store::reconcile::listed_after(&mut conn, &after, 500)
        .await
        .unwrap();
    assert_eq!(chunk.len(), 500);
    let references: Vec<uuid::Uuid> = chunk
        .iter()
        .map(|(r, _)| uuid::Uuid::parse_str(r).unwrap())
        .collect();
    let plans = idem_store::reconcile::explain_listed_chunk(&mut conn, &after, 500, &references)
        .await
        .unwrap();
    let expected = [
        "reconcile_listed_pkey",
        "reconcile_listed_pkey",
        "outbox_reference_id_key",
    ];
    for (plan, index) in plans.iter().zip(expected) {
        let mut scanned = Vec::new();
        seq_scans(plan, &mut scanned);
        assert!(
            scanned.is_empty(),
            "sequential scan of {scanned:?}:\n{plan:#}"
        );
        let mut read = Vec::new();
        indexes(plan, &mut read);
        assert!(read.iter().any(|i| i == index), "reads {index}:\n{plan:#}");
    }
    idem_store::reconcile::end_listing(&mut conn).await.unwrap();
    drop(conn);
    env.cleanup().await;
}
