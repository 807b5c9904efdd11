//! `idem bench` end to end, small: every part runs against the local
//! PostgreSQL and RabbitMQ, the report has its structure, and every message
//! was charged exactly once (counted at the simulator). Speed is measured by
//! the bench, never asserted here.

use std::process::Command;

use idem_tests::{gate, idem_binary};
use serde_json::Value;

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
            "baseline,tuned,latency,ceiling,claim-rate",
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
        for k in ["idem_us", "pipeline_us", "simulator_us", "publisher_us"] {
            assert!(c["cpu"][k].as_f64().is_some(), "{name} cpu {k}");
        }
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
        assert!(text[0].starts_with("Update on outbox"), "{text:?}");
        assert!(
            text.iter().any(|l| l.starts_with("Execution Time")),
            "{text:?}"
        );
    }
    assert_eq!(claim["ratios"].as_array().unwrap().len(), 2);
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
        "latency p99",
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
