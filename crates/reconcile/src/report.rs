//! What a reconciliation run found and did: counts, findings that need a
//! human, and their rendering (a table for people, JSON for machines).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What kind of mismatch a finding is. None of them is acted on: they are
/// reported (log, metrics, report) for an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The provider has a charge under a reference we never asked for (no
    /// outbox row; or retention removed it; or not one of our references).
    ForeignCharge,
    /// We marked a row succeeded, but the provider does not list its charge.
    MissingAtProvider,
    /// Our row says declined, yet the provider has a charge for it.
    ChargedButDeclined,
    /// Our row recorded one charge id, the provider lists others for the
    /// reference but not that one.
    ChargeMismatch,
}

impl FindingKind {
    /// The label used in metrics and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::ForeignCharge => "foreign_charge",
            FindingKind::MissingAtProvider => "missing_at_provider",
            FindingKind::ChargedButDeclined => "charged_but_declined",
            FindingKind::ChargeMismatch => "charge_mismatch",
        }
    }
}

/// One mismatch between the provider's books and ours.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// The reference involved (as the provider spelled it).
    pub reference_id: String,
    /// Our outbox row, if we have one.
    pub outbox_id: Option<i64>,
    /// The provider charges involved.
    pub charge_ids: Vec<String>,
    /// In words.
    pub detail: String,
}

/// The result of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Start of the window (charges created at or after).
    pub window_from: Option<DateTime<Utc>>,
    /// End of the window (charges created before); the run's start when open.
    pub window_to: Option<DateTime<Utc>>,
    /// Whether the window ran up to the run's start: only then are missing
    /// charges and unknown rows judged (a charge could be younger than a
    /// closed window's end).
    pub open_window: bool,
    /// Charges the provider listed in the window.
    pub charges_listed: usize,
    /// Distinct references among them.
    pub references: usize,
    /// References with more than one charge.
    pub references_charged_twice: usize,
    /// Extra charges (beyond the one kept) listed this run, compensated
    /// before or now.
    pub extra_charges: usize,
    /// Compensations recorded by this run (the rest were recorded before).
    pub compensations_recorded: usize,
    /// Refunds the provider confirmed during this run.
    pub refunds_confirmed: usize,
    /// Compensations waiting for an operator (the provider offers no refunds).
    pub refunds_manual: usize,
    /// Refunds that failed this run and will be retried by the next.
    pub refunds_failed: usize,
    /// Rows settled as succeeded because their charge was found.
    pub rows_settled: usize,
    /// `unknown` rows re-queued because the provider has no charge for them.
    pub rows_requeued: usize,
    /// References skipped because their row is in flight (next run).
    pub skipped_in_flight: usize,
    /// Mismatches for an operator: the first [`MAX_KEPT_FINDINGS`] (a run
    /// over a window with millions of them must not hold them all).
    pub findings: Vec<Finding>,
    /// Every finding of the run, by kind, kept or not.
    pub findings_by_kind: std::collections::BTreeMap<String, usize>,
}

/// Most findings one report holds; the counts stay exact.
pub const MAX_KEPT_FINDINGS: usize = 1000;

impl Report {
    /// Findings of `kind`, all of them (kept or not).
    pub fn count(&self, kind: FindingKind) -> usize {
        self.findings_by_kind
            .get(kind.as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Count `finding`; keep it while there is room. (The caller counts
    /// its metric: `metrics` reads this module's kinds.)
    pub fn note(&mut self, finding: Finding) {
        *self
            .findings_by_kind
            .entry(finding.kind.as_str().to_owned())
            .or_default() += 1;
        if self.findings.len() < MAX_KEPT_FINDINGS {
            self.findings.push(finding);
        }
    }

    /// All findings of the run, kept or not.
    pub fn findings_total(&self) -> usize {
        self.findings_by_kind.values().sum()
    }

    /// The human-readable report.
    pub fn table(&self) -> String {
        let window =
            |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339());
        let mut out = String::from("idem reconcile report\n");
        let rows: [(&str, String); 14] = [
            ("window from", window(self.window_from)),
            (
                "window to",
                format!(
                    "{}{}",
                    window(self.window_to),
                    if self.open_window { " (open: now)" } else { "" }
                ),
            ),
            ("charges listed", self.charges_listed.to_string()),
            ("references", self.references.to_string()),
            (
                "charged more than once",
                self.references_charged_twice.to_string(),
            ),
            ("extra charges found", self.extra_charges.to_string()),
            (
                "compensations recorded (new)",
                self.compensations_recorded.to_string(),
            ),
            ("refunds confirmed", self.refunds_confirmed.to_string()),
            ("refunds manual", self.refunds_manual.to_string()),
            ("refunds failed (retried)", self.refunds_failed.to_string()),
            ("rows settled (found)", self.rows_settled.to_string()),
            ("rows re-queued (not found)", self.rows_requeued.to_string()),
            ("skipped (in flight)", self.skipped_in_flight.to_string()),
            ("findings", self.findings_total().to_string()),
        ];
        for (label, value) in rows {
            let _ = writeln!(out, "  {label:<28} {value:>}");
        }
        for f in &self.findings {
            let _ = writeln!(
                out,
                "  finding {:<22} reference {} row {} charges [{}]: {}",
                f.kind.as_str(),
                f.reference_id,
                f.outbox_id
                    .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                f.charge_ids.join(", "),
                f.detail
            );
        }
        out
    }
}
