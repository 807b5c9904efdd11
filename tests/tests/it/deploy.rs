//! The deployment files and the docs name only metrics the daemon exports:
//! every `idem_*` series the Grafana dashboard, the Prometheus config and the
//! operations runbook's metrics table use is described (`describe_*!`) in the
//! sources of a crate under `crates/`, and every metric described there is in
//! the runbook's table. A renamed metric fails here, not on a dashboard at 3 a.m.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The workspace root (this package is `tests/`).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `idem_[a-z_]+` word in `text`, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("idem_") {
        let start = i + found;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + "idem_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let mut name = text[start..end].trim_end_matches('_').to_owned();
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base.to_owned();
                }
            }
            names.insert(name);
        }
        i = end;
    }
    names
}

/// The metrics the crates describe (`describe_*!("idem_...", ...)`), in any
/// `.rs` file under `crates/*/src`.
fn described() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in rust_sources() {
        let source = std::fs::read_to_string(&file).unwrap();
        for part in source.split("describe_").skip(1) {
            if let Some(name) = part.split('"').nth(1).filter(|n| n.starts_with("idem_")) {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// Every `.rs` file under `crates/*/src`.
fn rust_sources() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|crate_dir| crate_dir.unwrap().path().join("src"))
        .collect();
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The first column of the runbook's metrics table.
fn documented() -> BTreeSet<String> {
    read("docs/operations.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `idem_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("idem_{n}"))
        .collect()
}

#[test]
fn the_dashboard_and_the_scrape_config_use_only_exported_metrics() {
    let described = described();
    assert!(described.len() > 30, "parsed {described:?}");
    let dashboard = read("deploy/grafana/dashboards/idem.json");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    for file in [
        "deploy/grafana/dashboards/idem.json",
        "deploy/prometheus/prometheus.yml",
    ] {
        let used = metric_names(&read(file));
        let unknown: Vec<_> = used.difference(&described).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics idem does not export: {unknown:?}"
        );
    }
}

#[test]
fn the_runbook_table_lists_exactly_the_exported_metrics() {
    let (described, documented) = (described(), documented());
    let missing: Vec<_> = described.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&described).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/operations.md metrics table: missing {missing:?}, not exported {stale:?}"
    );
}

#[test]
fn names_are_read_as_prometheus_would() {
    let names = metric_names(
        "rate(idem_dispatch_attempt_seconds_bucket[5m]) / x_idem_no + idem_outbox_rows{state=\"dead\"}",
    );
    let want: BTreeSet<String> = ["idem_dispatch_attempt_seconds", "idem_outbox_rows"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
}
