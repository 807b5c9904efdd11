//! What a chaos run found, and the one table the suite prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

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
