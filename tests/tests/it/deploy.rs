//! The deployment files and the docs name only metrics the daemon exports:
//! every `idem_*` series the Grafana dashboard, the Prometheus config and the
//! operations runbook's metrics table use is one a replica exports (each
//! crate's `metrics::ALL`, gathered in `idem_daemon::metrics::EXPORTED`), and
//! every exported metric is in the runbook's table. A renamed metric fails
//! here, not on a dashboard at 3 a.m.

use std::collections::BTreeSet;
use std::path::Path;

/// The workspace root (this package is `tests/`).
pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

pub(crate) fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `idem_[a-z_]+` word in `text`, histogram suffixes removed.
pub(crate) fn metric_names(text: &str) -> BTreeSet<String> {
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

/// The metrics a replica exports: every crate's own list
/// (`idem_daemon::metrics::EXPORTED`).
pub(crate) fn exported() -> BTreeSet<String> {
    idem_daemon::metrics::EXPORTED
        .iter()
        .flat_map(|names| names.iter())
        .map(|name| (*name).to_owned())
        .collect()
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
    let exported = exported();
    assert!(exported.len() > 30, "{exported:?}");
    let dashboard = read("deploy/grafana/dashboards/idem.json");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    for file in [
        "deploy/grafana/dashboards/idem.json",
        "deploy/prometheus/prometheus.yml",
    ] {
        let used = metric_names(&read(file));
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics idem does not export: {unknown:?}"
        );
    }
}

#[test]
fn the_runbook_table_lists_exactly_the_exported_metrics() {
    let (exported, documented) = (exported(), documented());
    let missing: Vec<_> = exported.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&exported).collect();
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
