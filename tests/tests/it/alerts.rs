//! The alert rules and what they read: the Prometheus rules file
//! (`deploy/prometheus/alerts.yml`) and the Kubernetes `PrometheusRule`
//! (`deploy/kubernetes/prometheusrule.yaml`) hold the same rules; every rule
//! has what Alertmanager and an operator need (severity, summary,
//! description, a runbook anchor that exists); every expression parses as
//! PromQL and names only metrics that exist (idem's exported ones, RabbitMQ's
//! queue metrics, the process metrics); every runbook condition has an alert.
//! And a running `idem run` serves `idem_build_info` and the process metrics.

use std::collections::BTreeSet;
use std::time::Duration;

use idem_simulator::Faults;
use idem_tests::TestEnv;
use idem_tests::binary::{Proc, json_field, run};
use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_norway::Value;

use crate::deploy::{exported, metric_names, read};

const RULES: &str = "deploy/prometheus/alerts.yml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/prometheusrule.yaml";

/// The RabbitMQ metrics (rabbitmq_prometheus, `queue_coarse_metrics` of
/// `/metrics/detailed`, scraped by deploy/prometheus/prometheus.yml) the
/// alerts may use.
const RABBITMQ: &[&str] = &[
    "rabbitmq_detailed_queue_messages_ready",
    "rabbitmq_detailed_queue_messages_unacked",
    "rabbitmq_detailed_queue_messages",
];

/// A metric each runbook condition's alert must read: rows stuck unknown or
/// dead, breaker open, quarantine growth, reconcile findings, consumer lag,
/// dead letters, lease reclaims.
const CONDITIONS: &[&str] = &[
    "idem_outbox_rows",
    "idem_dispatch_breaker_open",
    "idem_inbox_quarantined_total",
    "idem_reconcile_findings_total",
    "rabbitmq_detailed_queue_messages_ready",
    "rabbitmq_detailed_queue_messages",
    "idem_lease_reclaims_total",
];

fn yaml(path: &str) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn str_at<'a>(value: &'a Value, key: &str, what: &str) -> &'a str {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no string `{key}`"))
}

/// Every rule of a `groups:` list, with the name of its group.
fn rules(groups: &Value) -> Vec<(String, Value)> {
    let groups = groups.as_sequence().expect("`groups` is a list");
    assert!(!groups.is_empty(), "no groups");
    let mut all = Vec::new();
    for group in groups {
        let name = str_at(group, "name", "a group").to_owned();
        let rules = group
            .get("rules")
            .and_then(Value::as_sequence)
            .unwrap_or_else(|| panic!("group {name}: no `rules` list"));
        all.extend(rules.iter().map(|r| (name.clone(), r.clone())));
    }
    all
}

/// The metric names a PromQL expression selects.
fn selected(expr: &Expr) -> BTreeSet<String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            let vs = match expr {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(ms) => &ms.vs,
                _ => return Ok(true),
            };
            let name = vs
                .name
                .clone()
                .ok_or_else(|| format!("a selector without a metric name: {vs}"))?;
            self.0.insert(name);
            Ok(true)
        }
    }
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, expr).unwrap_or_else(|e| panic!("{e}"));
    names.0
}

/// The anchors of a Markdown page: explicit `id="..."` and heading slugs.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in markdown.lines() {
        let mut rest = line;
        while let Some(at) = rest.find("id=\"") {
            rest = &rest[at + 4..];
            if let Some(end) = rest.find('"') {
                found.insert(rest[..end].to_owned());
            }
        }
        if let Some(heading) = line.strip_prefix('#') {
            let slug: String = heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            found.insert(slug);
        }
    }
    found
}

#[test]
fn the_prometheus_rule_holds_the_same_rules() {
    let file = yaml(RULES);
    let resource = yaml(PROMETHEUS_RULE);
    assert_eq!(
        str_at(&resource, "apiVersion", PROMETHEUS_RULE),
        "monitoring.coreos.com/v1"
    );
    assert_eq!(str_at(&resource, "kind", PROMETHEUS_RULE), "PrometheusRule");
    let spec = resource.get("spec").expect("a spec");
    let (ours, theirs) = (&file["groups"], &spec["groups"]);
    assert!(!rules(ours).is_empty());
    assert_eq!(
        ours, theirs,
        "{RULES} and {PROMETHEUS_RULE} hold different rules: edit both"
    );
}

#[test]
fn every_rule_is_complete_and_points_at_the_runbook() {
    let runbook = anchors(&read("docs/operations.md"));
    let mut names = BTreeSet::new();
    for (group, rule) in rules(&yaml(RULES)["groups"]) {
        let alert = str_at(&rule, "alert", &group).to_owned();
        assert!(names.insert(alert.clone()), "{alert} twice");
        str_at(&rule, "expr", &alert);
        let window = str_at(&rule, "for", &alert);
        promql_parser::util::parse_duration(window)
            .unwrap_or_else(|e| panic!("{alert}: `for: {window}`: {e}"));
        let severity = str_at(&rule["labels"], "severity", &alert);
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{alert}: severity {severity}"
        );
        let notes = &rule["annotations"];
        for key in ["summary", "description"] {
            assert!(!str_at(notes, key, &alert).trim().is_empty(), "{alert}");
        }
        let link = str_at(notes, "runbook", &alert);
        let anchor = link
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{alert}: runbook {link} is not docs/operations.md#..."));
        assert!(
            runbook.contains(anchor),
            "{alert}: docs/operations.md has no anchor {anchor}"
        );
        assert!(
            runbook.contains(&format!("alert-{}", alert.to_lowercase())),
            "{alert}: not explained in docs/operations.md, \"Alerts\" (anchor alert-{})",
            alert.to_lowercase()
        );
    }
}

#[test]
fn every_expression_parses_and_names_existing_metrics() {
    let exported = exported();
    let known: BTreeSet<&str> = RABBITMQ
        .iter()
        .chain(idem_daemon::metrics::PROCESS)
        .copied()
        .collect();
    let mut used = BTreeSet::new();
    for (_, rule) in rules(&yaml(RULES)["groups"]) {
        let alert = str_at(&rule, "alert", "a rule");
        let expr = str_at(&rule, "expr", alert);
        let parsed = parser::parse(expr).unwrap_or_else(|e| panic!("{alert}: {expr}: {e}"));
        for name in selected(&parsed) {
            if name.starts_with("idem_") {
                let base = metric_names(&name);
                assert!(
                    base.iter().all(|n| exported.contains(n)),
                    "{alert} reads {name}, which idem does not export"
                );
            } else {
                assert!(
                    known.contains(name.as_str()),
                    "{alert} reads {name}, not a RabbitMQ or process metric this stack scrapes"
                );
            }
            used.insert(name);
        }
    }
    let uncovered: Vec<_> = CONDITIONS.iter().filter(|c| !used.contains(**c)).collect();
    assert!(uncovered.is_empty(), "no alert reads {uncovered:?}");
}

#[test]
fn the_checks_can_fail() {
    // A broken expression is refused, a name is read from every selector kind.
    assert!(parser::parse("max(idem_outbox_rows{state=\"dead\"} > 0").is_err());
    assert!(parser::parse("rate(idem_lease_reclaims_total) > 0").is_err());
    let expr = parser::parse(
        "sum(increase(idem_dispatch_attempt_seconds_bucket[5m])) / on() group_left max(rabbitmq_detailed_queue_messages) > bool 1",
    )
    .unwrap();
    let want: BTreeSet<String> = [
        "idem_dispatch_attempt_seconds_bucket",
        "rabbitmq_detailed_queue_messages",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(selected(&expr), want);
    let a = anchors("## States an operator meets (runbook)\n- <a id=\"rows-dead\"></a>x");
    assert!(a.contains("states-an-operator-meets-runbook") && a.contains("rows-dead"));
}

/// A running `idem run` serves `idem_build_info` (its version) and the
/// standard process metrics, with values a Linux process has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serves_build_info_and_process_metrics() {
    let env = TestEnv::new(Faults::default()).await;
    let started = chrono::Utc::now().timestamp() as f64;
    let replica = Proc::spawn(
        "idem run",
        &mut run(
            &env.run_flags(),
            &[("IDEM_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
        ),
    );
    let http = replica
        .wait_for_line(Duration::from_secs(60), |line| {
            json_field(line, "http_addr")
        })
        .await;
    let scrape = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        scrape
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let bare = series.split('{').next()?;
                (bare == name).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("{name} missing from the scrape:\n{scrape}"))
    };
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        scrape.lines().any(|l| l.starts_with("idem_build_info{")
            && l.contains(&version)
            && l.ends_with(" 1")),
        "{scrape}"
    );
    for name in idem_daemon::metrics::PROCESS {
        value(name);
    }
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_threads") >= 2.0);
    let start = value("process_start_time_seconds");
    assert!(
        (started - 60.0..=started + 60.0).contains(&start),
        "the replica started at {start}, the test at {started}"
    );
    let (status, text) = replica.stop().await;
    assert!(status.success(), "{status:?}\n{text}");
    env.cleanup().await;
}
