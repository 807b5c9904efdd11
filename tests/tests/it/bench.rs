//! `idem bench` end to end, small: every part runs against the local
//! PostgreSQL and RabbitMQ, the report has its structure, and every message
//! was charged exactly once (counted at the simulator). Speed is measured by
//! the bench, never asserted here.

use std::process::Command;

use idem_tests::{gate, idem_binary};
use serde_json::Value;
use sqlx::Connection;

const MESSAGES: u64 = 500;

#[test]
fn a_small_bench_reports_every_part_and_charges_each_message_once() {
    let _shared = gate::shared_blocking();
    let out = Command::new(idem_binary())
        .args([
            "bench",
            "--json",
            "--messages",
            &MESSAGES.to_string(),
            "--only",
            "baseline,tuned,latency,ceiling,claim-rate,skew,recovery,least-sql",
            "--recovery-messages",
            "80",
            "--recovery-rate",
            "40",
            "--recovery-kill-every-secs",
            "1",
            "--skew-messages",
            "120",
            "--skew-accounts",
            "2",
            "--spread-accounts",
            "60",
            "--skew-latency-ms",
            "5",
            "--claim-backlog-small",
            "100",
            "--claim-backlog-large",
            "2000",
            "--claim-rows",
            "200",
            "--timeout-secs",
            "120",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "idem bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    let configs = report["configurations"].as_array().unwrap();
    let names: Vec<&str> = configs
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["baseline", "tuned", "latency"]);
    for c in configs {
        let name = &c["name"];
        assert_eq!(c["messages"], MESSAGES, "{name}");
        assert_eq!(c["charged"], MESSAGES, "{name}: charged at the provider");
        assert_eq!(c["double_charges"], 0, "{name}");
        assert_eq!(c["missing_charges"], 0, "{name}");
        assert!(c["end_to_end_msg_per_s"].as_f64().unwrap() > 0.0, "{name}");
        for p in ["p50", "p90", "p99", "max"] {
            assert!(c["latency_ms"][p].as_f64().unwrap() > 0.0, "{name} {p}");
        }
        assert!(c["latency_ms"]["p50"].as_f64() <= c["latency_ms"]["max"].as_f64());
        // Recorded comes before settled, for every message and so for each
        // quantile.
        for p in ["p50", "p99", "max"] {
            let (recorded, settled) = (c["recorded_ms"][p].as_f64(), c["latency_ms"][p].as_f64());
            assert!(recorded.unwrap() > 0.0 && recorded <= settled, "{name} {p}");
        }
        for k in ["idem_us", "pipeline_us", "simulator_us", "publisher_us"] {
            assert!(c["cpu"][k].as_f64().is_some(), "{name} cpu {k}");
        }
        assert_writes_and_trace(c);
    }
    assert_eq!(configs[0]["settings"]["inbox_batch_size"], 1);
    assert_eq!(configs[0]["settings"]["claim_batch"], 1);
    assert!(
        configs[2]["rate_cap"].as_u64().unwrap() > 0,
        "latency runs below the tuned rate"
    );

    let ceiling = &report["ceiling"];
    assert_eq!(ceiling["messages"], MESSAGES);
    assert!(ceiling["msg_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["ratios"]["tuned_over_baseline"].as_f64().is_some());
    assert!(
        report["ratios"]["end_to_end_over_ceiling"]
            .as_f64()
            .is_some()
    );

    let claim = &report["claim_rate"];
    let measurements = claim["measurements"].as_array().unwrap();
    assert_eq!(measurements.len(), 4, "two shapes at two sizes");
    for m in measurements {
        assert!(m["rows"].as_u64().unwrap() >= 200);
        assert!(m["rows_per_s"].as_f64().unwrap() > 0.0);
    }
    let explained: Vec<&Value> = measurements
        .iter()
        .filter(|m| m["backlog"] == 2000)
        .collect();
    for m in explained {
        let plan = m["explain"].as_array().unwrap();
        // At this toy size the planner may rightly prefer a bitmap or
        // sequential scan; the index scan at 1,000,000 rows is shown in
        // docs/performance.md. Here: the plan of the claim was captured.
        let text: Vec<&str> = plan.iter().map(|l| l.as_str().unwrap()).collect();
        assert!(text[0].starts_with("-- statement 1"), "{text:?}");
        assert!(
            text.iter().any(|l| l.starts_with("Update on outbox")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|l| l.starts_with("Execution Time")),
            "{text:?}"
        );
    }
    assert_eq!(claim["ratios"].as_array().unwrap().len(), 2);

    let least = &report["least_sql"];
    assert_eq!(least["messages"], MESSAGES);
    assert!(least["msg_per_s"].as_f64().unwrap() > 0.0);
    assert!(least["wal_bytes_per_msg"].as_f64().unwrap() > 0.0);
    assert!(
        report["ratios"]["end_to_end_over_least_sql"]
            .as_f64()
            .is_some()
    );

    let skew = &report["skew"];
    for run in ["skewed", "spread"] {
        assert_eq!(skew[run]["messages"], 120, "{run}");
        assert_eq!(skew[run]["charged"], 120, "{run}: charged at the provider");
        assert_eq!(skew[run]["double_charges"], 0, "{run}");
        assert_writes_and_trace(&skew[run]);
    }
    // 2 accounts at 5 ms a call allow 400 charges/s.
    assert_eq!(skew["allowed_msg_per_s"].as_f64(), Some(400.0));
    assert!(skew["skewed_over_allowed"].as_f64().unwrap() > 0.0);

    let recovery = &report["recovery"];
    for run in ["steady", "killed"] {
        let r = &recovery[run];
        assert_eq!(r["charged_once"], 80, "{run}: {r}");
        assert_eq!(r["double_charges"], 0, "{run}");
        assert_eq!(r["missing_charges"], 0, "{run}");
    }
    assert!(recovery["steady"]["kills"].as_array().unwrap().is_empty());
    assert!(
        !recovery["killed"]["kills"].as_array().unwrap().is_empty(),
        "a replica was killed: {recovery}"
    );
    assert!(recovery["killed_over_steady"].as_f64().unwrap() > 0.0);
}

/// A configuration's writes: WAL per message, and one outbox row inserted
/// per message (each message is one charge); its per-second trace.
fn assert_writes_and_trace(c: &Value) {
    let name = &c["name"];
    let writes = &c["writes"];
    assert!(
        writes["wal_bytes_per_msg"].as_f64().unwrap() > 0.0,
        "{name}"
    );
    let outbox = writes["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "outbox")
        .unwrap_or_else(|| panic!("{name}: no outbox writes in {writes}"));
    let inserted = outbox["inserted"].as_f64().unwrap();
    assert!(
        (inserted - 1.0).abs() < 1e-9,
        "{name}: {inserted} outbox rows per message"
    );
    // Where the server lets the bench read its WAL back, the split adds up:
    // the outbox wrote heap and index records, and no table more than the
    // whole run.
    if writes["wal_by_table"].as_bool().unwrap() {
        let heap = outbox["wal_heap_bytes"].as_f64().unwrap();
        let index = outbox["wal_index_bytes"].as_f64().unwrap();
        assert!(heap > 0.0 && index > 0.0, "{name}: {outbox}");
        let split: f64 = writes["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["wal_heap_bytes"].as_f64().unwrap() + t["wal_index_bytes"].as_f64().unwrap())
            .sum();
        let total = writes["wal_bytes_per_msg"].as_f64().unwrap();
        assert!(split <= total + 1e-6, "{name}: {split} of {total} bytes");
    }
    let trace = &c["trace"];
    let counted: u64 = trace["per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(
        counted <= c["messages"].as_u64().unwrap(),
        "{name}: {trace}"
    );
    assert!(trace["longest_stall_s"].as_u64().is_some(), "{name}");
}

#[test]
fn the_table_names_every_part() {
    let _shared = gate::shared_blocking();
    let out = Command::new(idem_binary())
        .args(["bench", "--messages", "50", "--only", "tuned,ceiling"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "END-TO-END msg/s",
        "publish → recorded p99",
        "publish → settled p99",
        "CPU µs/msg",
        "ceiling",
        "end to end / ceiling",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

/// Invariant: the bench's autovacuum emulation asks for what autovacuum would
/// do: nothing on a table just analyzed, `ANALYZE` once inserts pass the
/// analyze threshold (a queue that grows without dead rows), `VACUUM` once
/// deletes pass the vacuum threshold — and each statement it returns runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vacuum_emulation_analyzes_a_growing_table_and_vacuums_a_churned_one() {
    use idem_store::bench::{Upkeep, due_for_upkeep, upkeep};
    let name = format!("idem_t_upkeep_{}", uuid::Uuid::new_v4().simple());
    let pool = idem_tests::pg::scratch_database(&name, 2).await.unwrap();
    // Each change on a session of its own, closed after it: a session's
    // counters reach pg_stat_* when it ends (an idle one may sit on them 10 s).
    let url = idem_tests::pg::url(&name);
    let run = |sql: &'static str, from: i64, to: i64| {
        let url = url.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let q = sqlx::query(sql);
            let q = if sql.contains("$1") {
                q.bind(from).bind(to)
            } else {
                q
            };
            q.execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        }
    };
    let insert =
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency)
                  SELECT 'u', 'u-' || g, md5('u-' || g)::uuid, 'a', 1, 'EUR'
                  FROM generate_series($1::bigint, $2::bigint) g";
    run(insert, 1, 1_000).await;
    run("VACUUM ANALYZE outbox", 0, 0).await;
    let due = || async {
        let mut conn = pool.acquire().await.unwrap();
        due_for_upkeep(&mut conn).await.unwrap()
    };
    let outbox = |d: &[Upkeep]| {
        d.iter()
            .find(|u| matches!(u, Upkeep::Vacuum(t) | Upkeep::Analyze(t) if t == "outbox"))
            .cloned()
    };
    assert_eq!(outbox(&due().await), None, "just analyzed");

    run(insert, 1_001, 3_000).await;
    let grown = due().await;
    assert_eq!(
        outbox(&grown),
        Some(Upkeep::Analyze("outbox".into())),
        "{grown:?}"
    );
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    upkeep(&mut conn, &Upkeep::Analyze("outbox".into()))
        .await
        .unwrap();
    conn.close().await.unwrap();

    run("DELETE FROM outbox WHERE id % 2 = 0", 0, 0).await;
    let churned = due().await;
    assert_eq!(
        outbox(&churned),
        Some(Upkeep::Vacuum("outbox".into())),
        "{churned:?}"
    );
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    upkeep(&mut conn, &Upkeep::Vacuum("outbox".into()))
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert_eq!(outbox(&due().await), None, "vacuumed and analyzed");
    pool.close().await;
    idem_tests::pg::drop_database(&name).await.unwrap();
}
