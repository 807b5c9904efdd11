//! The bench's report: a table per part and the ratios, or all of it as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::args::BenchArgs;
use super::ceiling::CeilingReport;
use super::claim_rate::ClaimRateReport;
use super::least::LeastReport;
use super::pipeline::PipelineReport;
use super::recovery::RecoveryReport;
use super::skew::SkewReport;

/// Everything one `idem bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Messages per configuration.
    pub messages: usize,
    /// Provider latency, ms.
    pub provider_latency_ms: u64,
    /// Settled rows pre-loaded per database.
    pub backlog: i64,
    /// Daemon replicas per configuration.
    pub replicas: usize,
    /// The server's `autovacuum` setting.
    pub server_autovacuum: String,
    /// The bench's emulated autovacuum naptime, ms (0: none).
    pub vacuum_ms: u64,
    /// The end-to-end configurations, in the order they ran.
    pub configurations: Vec<PipelineReport>,
    /// The SQL alone.
    pub ceiling: Option<CeilingReport>,
    /// Claims against backlogs.
    pub claim_rate: Option<ClaimRateReport>,
    /// Few accounts against many.
    pub skew: Option<SkewReport>,
    /// Replicas killed mid-run.
    pub recovery: Option<RecoveryReport>,
    /// The least SQL the guarantees need.
    pub least_sql: Option<LeastReport>,
    /// Ratios between the parts.
    pub ratios: Ratios,
    /// Wall time of the whole bench, s.
    pub elapsed_s: f64,
}

/// Ratios between parts (None when a part did not run).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Ratios {
    /// Tuned end-to-end rate over the baseline's.
    pub tuned_over_baseline: Option<f64>,
    /// Tuned end-to-end rate over the ceiling's.
    pub end_to_end_over_ceiling: Option<f64>,
    /// Tuned end-to-end rate over the least SQL's.
    pub end_to_end_over_least_sql: Option<f64>,
}

impl BenchReport {
    /// An empty report for `args`.
    pub fn new(args: &BenchArgs) -> Self {
        Self {
            messages: args.messages,
            provider_latency_ms: args.provider_latency_ms,
            backlog: args.backlog,
            replicas: args.replicas,
            server_autovacuum: String::new(),
            vacuum_ms: args.vacuum_ms,
            configurations: Vec::new(),
            ceiling: None,
            claim_rate: None,
            skew: None,
            recovery: None,
            least_sql: None,
            ratios: Ratios::default(),
            elapsed_s: 0.0,
        }
    }

    /// The configuration named `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&PipelineReport> {
        self.configurations.iter().find(|c| c.name == name)
    }

    /// Compute the ratios once every part ran.
    pub fn finish(&mut self, elapsed: Duration) {
        let rate = |name: &str| self.get(name).map(|c| c.end_to_end_msg_per_s);
        self.ratios = Ratios {
            tuned_over_baseline: rate("tuned").zip(rate("baseline")).map(|(t, b)| t / b),
            end_to_end_over_ceiling: rate("tuned")
                .zip(self.ceiling.as_ref())
                .map(|(t, c)| t / c.msg_per_s),
            end_to_end_over_least_sql: rate("tuned")
                .zip(self.least_sql.as_ref())
                .map(|(t, l)| t / l.msg_per_s),
        };
        self.elapsed_s = elapsed.as_secs_f64();
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let mut out = format!(
            "\nidem bench: {} messages, provider latency {} ms, backlog {} settled rows, {} replica(s)\n",
            self.messages, self.provider_latency_ms, self.backlog, self.replicas
        );
        let _ = writeln!(
            out,
            "PostgreSQL autovacuum: {}; the bench's own (its thresholds): {}",
            self.server_autovacuum,
            match self.vacuum_ms {
                0 => "never".to_owned(),
                ms => format!("every {ms} ms"),
            }
        );
        if !self.configurations.is_empty() {
            out.push_str("\nend to end: publish -> charge recorded\n");
            out.push_str(&pipeline_table(
                &self.configurations.iter().collect::<Vec<_>>(),
            ));
        }
        if let Some(c) = &self.ceiling {
            let _ = writeln!(
                out,
                "\nceiling: the same SQL per message ({} sizes), no broker, no HTTP\n  {} messages in {:.2} s: {:.0} msg/s; CPU/msg PostgreSQL {} µs, client {:.1} µs",
                c.sizes_of,
                c.messages,
                c.elapsed_s,
                c.msg_per_s,
                opt(c.cpu.postgres_us),
                c.cpu.idem_us,
            );
        }
        if let Some(l) = &self.least_sql {
            let _ = writeln!(
                out,
                "\nleast SQL: inbox key + fingerprint, outbox row with a unique reference, leased claim, fenced settle; {} per transaction, {} loops, tables of its own\n  {} messages in {:.2} s: {:.0} msg/s; WAL {:.0} bytes/msg; CPU/msg PostgreSQL {} µs, client {:.1} µs",
                l.batch,
                l.loops,
                l.messages,
                l.elapsed_s,
                l.msg_per_s,
                l.wal_bytes_per_msg,
                opt(l.cpu.postgres_us),
                l.cpu.idem_us,
            );
        }
        let r = &self.ratios;
        if r.tuned_over_baseline.is_some()
            || r.end_to_end_over_ceiling.is_some()
            || r.end_to_end_over_least_sql.is_some()
        {
            out.push_str("\nratios\n");
            if let Some(x) = r.tuned_over_baseline {
                let _ = writeln!(out, "  tuned / baseline        {x:>6.2}x");
            }
            if let Some(x) = r.end_to_end_over_ceiling {
                let _ = writeln!(out, "  end to end / ceiling    {x:>6.2}");
            }
            if let Some(x) = r.end_to_end_over_least_sql {
                let _ = writeln!(out, "  end to end / least SQL  {x:>6.2}");
            }
        }
        if let Some(c) = &self.claim_rate {
            out.push_str(&claim_table(c));
        }
        if let Some(s) = &self.skew {
            out.push_str(&skew_table(s));
        }
        if let Some(r) = &self.recovery {
            out.push_str(&recovery_table(r));
        }
        let _ = writeln!(out, "\n(bench took {:.0} s)", self.elapsed_s);
        out
    }
}

/// One column per configuration.
fn pipeline_table(configs: &[&PipelineReport]) -> String {
    let mut out = String::new();
    let mut row = |label: &str, cell: &dyn Fn(&PipelineReport) -> String| {
        let _ = write!(out, "  {label:<38}");
        for c in configs {
            let _ = write!(out, "{:>18}", cell(c));
        }
        out.push('\n');
    };
    row("", &|c| c.name.clone());
    row("prefetch / inbox batch", &|c| {
        format!("{} / {}", c.settings.prefetch, c.settings.inbox_batch_size)
    });
    row("claim batch / dispatch concurrency", &|c| {
        format!(
            "{} / {}",
            c.settings.claim_batch, c.settings.dispatch_concurrency
        )
    });
    row("db connections / idle poll ms", &|c| {
        format!(
            "{} / {}",
            c.settings.db_max_connections, c.settings.idle_poll_ms
        )
    });
    row("results batch", &|c| c.settings.results_batch.to_string());
    row("per-account ordering", &|c| {
        on_off(c.settings.per_account_ordering).into()
    });
    row("publish rate cap (msg/s)", &|c| match c.rate_cap {
        0 => "none".into(),
        r => r.to_string(),
    });
    row("charged once / double / missing", &|c| {
        format!(
            "{}/{}/{}",
            c.charged - c.double_charges,
            c.double_charges,
            c.missing_charges
        )
    });
    row("elapsed (s)", &|c| format!("{:.2}", c.elapsed_s));
    row("publish msg/s (confirmed)", &|c| {
        format!("{:.0}", c.publish_msg_per_s)
    });
    row("END-TO-END msg/s", &|c| {
        format!("{:.0}", c.end_to_end_msg_per_s)
    });
    row("median msg/s (per-second trace)", &|c| {
        format!("{:.0}", c.trace.median_per_s)
    });
    row(
        "longest stall (s < median / 2)",
        &|c| match c.trace.stall_began_at_s {
            Some(at) => format!("{} @{at}s", c.trace.longest_stall_s),
            None => "0".to_owned(),
        },
    );
    row("publish → recorded p50 (ms)", &|c| {
        format!("{:.1}", c.recorded_ms.p50)
    });
    row("publish → recorded p99 (ms)", &|c| {
        format!("{:.1}", c.recorded_ms.p99)
    });
    row("publish → settled p50 (ms)", &|c| {
        format!("{:.1}", c.latency_ms.p50)
    });
    row("publish → settled p90 (ms)", &|c| {
        format!("{:.1}", c.latency_ms.p90)
    });
    row("publish → settled p99 (ms)", &|c| {
        format!("{:.1}", c.latency_ms.p99)
    });
    row("publish → settled max (ms)", &|c| {
        format!("{:.1}", c.latency_ms.max)
    });
    row("CPU µs/msg idem (daemon)", &|c| {
        format!("{:.1}", c.cpu.idem_us)
    });
    row("CPU µs/msg PostgreSQL", &|c| opt(c.cpu.postgres_us));
    row("  of which upkeep (vacuum, analyze)", &|c| {
        opt(c.cpu.postgres_upkeep_us)
    });
    row("CPU µs/msg RabbitMQ", &|c| opt(c.cpu.rabbitmq_us));
    row("CPU µs/msg idem+PostgreSQL+RabbitMQ", &|c| {
        format!("{:.1}", c.cpu.pipeline_us)
    });
    row("CPU µs/msg simulator (not counted)", &|c| {
        format!("{:.1}", c.cpu.simulator_us)
    });
    row("CPU µs/msg publisher (not counted)", &|c| {
        format!("{:.1}", c.cpu.publisher_us)
    });
    row("WAL bytes/msg", &|c| {
        format!("{:.0}", c.writes.wal_bytes_per_msg)
    });
    row("row writes/msg (ins+upd+del)", &|c| {
        format!("{:.2}", c.writes.rows_per_msg)
    });
    let mut tables: Vec<&str> = configs
        .iter()
        .flat_map(|c| c.writes.tables.iter().map(|t| t.table.as_str()))
        .collect();
    tables.sort_unstable();
    tables.dedup();
    let wal_split = configs.iter().any(|c| c.writes.wal_by_table);
    for table in tables {
        row(&format!("  {table} ins/upd(HOT)/del"), &|c| {
            c.writes
                .tables
                .iter()
                .find(|t| t.table == table)
                .map_or_else(
                    || "-".to_owned(),
                    |t| {
                        let n = short_number;
                        format!(
                            "{}/{}({})/{}",
                            n(t.inserted),
                            n(t.updated),
                            n(t.hot),
                            n(t.deleted)
                        )
                    },
                )
        });
        if wal_split {
            row(&format!("  {table} WAL B/msg heap+indexes"), &|c| {
                let t = c.writes.tables.iter().find(|t| t.table == table);
                match t.and_then(|t| t.wal_heap_bytes.zip(t.wal_index_bytes)) {
                    Some((heap, index)) => format!("{heap:.0}+{index:.0}"),
                    None => "-".to_owned(),
                }
            });
        }
    }
    if wal_split {
        row("  WAL B/msg on no table (commits, …)", &|c| {
            c.writes
                .wal_elsewhere_bytes
                .map_or_else(|| "-".to_owned(), |b| format!("{b:.0}"))
        });
    }
    let flagged: Vec<_> = configs.iter().filter(|c| !c.flags.is_empty()).collect();
    for c in flagged {
        let _ = writeln!(out, "  {} flags: {}", c.name, c.flags);
    }
    out
}

fn recovery_table(r: &RecoveryReport) -> String {
    let mut out = format!(
        "\nrecovery: {} messages at {} msg/s, 2 replicas (child processes), provider losing 3% of answers and failing 3%, lease {} s\n",
        r.messages, r.rate, r.lease_s
    );
    for (name, run) in [
        ("undisturbed", &r.steady),
        (&*format!("SIGKILL every {} s", r.kill_every_s), &r.killed),
    ] {
        let _ = writeln!(
            out,
            "  {name:<20} {:>7.1} s, charged once/double/missing {}/{}/{}",
            run.elapsed_s, run.charged_once, run.double_charges, run.missing_charges
        );
    }
    let mut recovered: Vec<f64> = r
        .killed
        .kills
        .iter()
        .filter(|k| k.held > 0)
        .map(|k| k.recovered_s)
        .collect();
    recovered.sort_by(f64::total_cmp);
    let held: usize = r.killed.kills.iter().map(|k| k.held).sum();
    let _ = writeln!(
        out,
        "  {} kills, {} rows in flight at them; killed rows settled after: median {}, max {}",
        r.killed.kills.len(),
        held,
        recovered
            .get(recovered.len() / 2)
            .map_or_else(|| "n/a".into(), |s| format!("{s:.2} s")),
        recovered
            .last()
            .map_or_else(|| "n/a".into(), |s| format!("{s:.2} s")),
    );
    let _ = writeln!(out, "  killed / undisturbed: {:.2}", r.killed_over_steady);
    out
}

fn skew_table(s: &SkewReport) -> String {
    let mut out = format!(
        "\nskew: {} messages on {} accounts against the same on {}, default settings, provider {} ms per call\n",
        s.messages, s.accounts, s.spread_accounts, s.provider_latency_ms
    );
    out.push_str(&pipeline_table(&[&s.skewed, &s.spread]));
    let _ = writeln!(
        out,
        "  ordering allows {} accounts / {} ms = {:.0} charges/s; skewed reached {:.0} = {:.2} of it",
        s.accounts,
        s.provider_latency_ms,
        s.allowed_msg_per_s,
        s.skewed.end_to_end_msg_per_s,
        s.skewed_over_allowed
    );
    let _ = writeln!(
        out,
        "  one account's charge, claim to next claim: {:.1} ms ({} ms at the provider, {:.1} ms of round trips)",
        s.account_cycle_ms,
        s.provider_latency_ms,
        s.account_cycle_ms - s.provider_latency_ms as f64
    );
    let _ = writeln!(
        out,
        "  PostgreSQL CPU per charge, skewed / spread: {}",
        s.postgres_skewed_over_spread
            .map_or_else(|| "n/a".into(), |x| format!("{x:.2}"))
    );
    out
}

fn claim_table(c: &ClaimRateReport) -> String {
    let mut out = format!(
        "\nclaim rate: claim + settle, no provider ({} claim, batch {}, one settle statement per claim; rows/s is the median of 3 rounds)\n",
        if c.per_account_ordering {
            "per-account ordered"
        } else {
            "plain"
        },
        c.claim_batch
    );
    let _ = writeln!(
        out,
        "  {:<20}{:>10}{:>10}{:>10}{:>14}{:>10}",
        "backlog", "rows", "rows/s", "claims", "PG µs/row", "load s"
    );
    for m in &c.measurements {
        let _ = writeln!(
            out,
            "  {:<20}{:>10}{:>10.0}{:>10}{:>14}{:>10.1}",
            format!("{} {}", short(m.shape.as_str()), m.backlog),
            m.rows,
            m.rows_per_s,
            m.claims,
            opt(m.postgres_us_per_row),
            m.load_s
        );
    }
    for r in &c.ratios {
        let _ = writeln!(
            out,
            "  large / small, {}: {:.2}",
            r.shape.as_str(),
            r.large_over_small
        );
    }
    for m in c.measurements.iter().filter(|m| !m.explain.is_empty()) {
        let _ = writeln!(
            out,
            "\nEXPLAIN (ANALYZE, BUFFERS) of the claim, {} backlog {}:",
            m.shape.as_str(),
            m.backlog
        );
        for line in &m.explain {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

fn short(shape: &str) -> &str {
    shape.split(' ').next().unwrap_or(shape)
}

/// A count per message: whole when it is, else to two places.
fn short_number(v: f64) -> String {
    if (v - v.round()).abs() < 0.005 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.1}"))
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}
