//! One reconciliation run: list the provider's charges in a window, group them
//! by reference, hold them against our outbox rows, and act where the
//! evidence is unambiguous — refund extra charges, settle rows whose charge
//! was found, re-queue uncertain rows whose charge was not — reporting the
//! rest. What to do is decided by `verdict::judge`; this module reads,
//! applies the verdicts and refunds. Runs hold the reconciler's advisory
//! lock, so one runs at a time.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use idem_charge::{Charge, ChargeClient, ChargeList, ClientError};
use idem_store::attempt::{self, NewAttempt};
use idem_store::reconcile::{self as store, NewCompensation, RowView};
use serde_json::json;
use sqlx::PgPool;
use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;
use uuid::Uuid;

use crate::report::Report;
use crate::verdict::{Keep, SKEW, Verdict, judge};

/// Tries per listing page before the run gives up.
const PAGE_TRIES: u32 = 5;
/// References judged, and our rows accounted for, per round trip.
const CHUNK: i64 = 500;

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// How long an `unknown` row must have been left alone before a listing
    /// without its charge re-queues it: longer than the charge timeout, so
    /// the provider has finished any request the row's last attempt sent.
    pub grace: Duration,
    /// Charges per listing page.
    pub page_size: u32,
    /// This process's name in the attempt history (refund calls).
    pub replica: String,
}

/// The window of provider charges a run looks at (by the charge's creation
/// time). `to = None` means up to the run's start (an open window).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Charges created at or after.
    pub from: DateTime<Utc>,
    /// Charges created before; `None`: the run's start.
    pub to: Option<DateTime<Utc>>,
}

/// The reconciler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reconciler {
    /// Our database.
    pool: PgPool,
    /// The provider (its capabilities say whether refunds are possible).
    client: ChargeClient,
    /// Settings.
    config: ReconcileConfig,
}

impl Reconciler {
    /// A reconciler over `pool` and `client`.
    pub fn new(pool: PgPool, client: ChargeClient, config: ReconcileConfig) -> Self {
        Self {
            pool,
            client,
            config,
        }
    }

    /// Run once over `window`, waiting for another reconciler's run to end
    /// first.
    pub async fn run_once(&self, window: Window) -> anyhow::Result<Report> {
        let mut lock = self.pool.acquire().await?;
        store::lock(&mut lock).await?;
        let result = self.run_locked(window).await;
        store::unlock(&mut lock).await?;
        result
    }

    /// Run once over `window` unless another reconciler is running (`None`).
    pub async fn try_run_once(&self, window: Window) -> anyhow::Result<Option<Report>> {
        let mut lock = self.pool.acquire().await?;
        if !store::try_lock(&mut lock).await? {
            return Ok(None);
        }
        let result = self.run_locked(window).await;
        store::unlock(&mut lock).await?;
        result.map(Some)
    }

    async fn run_locked(&self, window: Window) -> anyhow::Result<Report> {
        let started = Utc::now();
        let to = window.to.unwrap_or(started);
        let mut report = Report {
            window_from: Some(window.from),
            window_to: Some(to),
            open_window: window.to.is_none(),
            ..Report::default()
        };
        let grace = chrono::Duration::from_std(self.config.grace)?;
        let mut conn = self.pool.acquire().await?;
        store::begin_listing(&mut conn).await?;
        let result = self
            .run_listed(&mut conn, window, to, started, grace, &mut report)
            .await;
        // Best effort: a connection whose listing is left is truncated by
        // its next run anyway.
        let _ = store::end_listing(&mut conn).await;
        result?;
        self.refund_pending(&mut conn, &mut report).await?;
        record_metrics(&report);
        // For the console and operators; the run's work is done and
        // committed, so a failure to record it is only logged.
        match serde_json::to_value(&report) {
            Ok(json) => {
                if let Err(e) =
                    idem_store::overview::record_reconcile_run(&mut conn, started, &json).await
                {
                    tracing::warn!(error = %e, "could not record the reconciliation's report");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not serialise the reconciliation's report"),
        }
        Ok(report)
    }

    /// List the window into the connection's listing table page by page,
    /// then judge reference by reference in chunks, then (open window) our
    /// rows the listing lacks: memory is a page and a chunk, whatever the
    /// window holds.
    async fn run_listed(
        &self,
        conn: &mut PoolConnection<Postgres>,
        window: Window,
        to: DateTime<Utc>,
        started: DateTime<Utc>,
        grace: chrono::Duration,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        report.charges_listed = self.list(conn, window.from, to).await?;
        report.references = usize::try_from(store::finish_listing(conn).await?)?;
        let mut after = String::new();
        loop {
            let chunk = store::listed_after(conn, &after, CHUNK).await?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            after = last.clone();
            let references: Vec<Uuid> = chunk
                .iter()
                .filter_map(|(r, _)| Uuid::parse_str(r).ok())
                .collect();
            let rows: HashMap<Uuid, RowView> = store::rows_by_reference(conn, &references)
                .await?
                .into_iter()
                .map(|row| (row.reference_id, row))
                .collect();
            for (reference, charges) in &chunk {
                let charges: Vec<Charge> = charges
                    .iter()
                    .filter_map(|c| serde_json::from_value(c.clone()).ok())
                    .collect();
                let row = Uuid::parse_str(reference).ok().and_then(|r| rows.get(&r));
                let verdict = judge(reference, row, &charges, started, grace);
                self.apply(conn, verdict, report).await?;
            }
        }
        if report.open_window {
            self.account_for_rows(conn, &window, started, grace, report)
                .await?;
        }
        Ok(())
    }

    /// Every page of the window into the listing table (succeeded charges
    /// only); returns how many charges were listed.
    async fn list(
        &self,
        conn: &mut PoolConnection<Postgres>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> anyhow::Result<usize> {
        let (gte, lt) = (from.timestamp(), to.timestamp() + 1);
        let mut listed = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self.page(gte, lt, after.as_deref()).await?;
            after = page.data.last().map(|c| c.id.clone());
            listed += page.data.len();
            let succeeded: Vec<(String, String, serde_json::Value)> = page
                .data
                .iter()
                .filter(|c| c.status == "succeeded")
                .map(|c| {
                    Ok((
                        c.reference_id.clone(),
                        c.id.clone(),
                        serde_json::to_value(c)?,
                    ))
                })
                .collect::<anyhow::Result<_>>()?;
            if !succeeded.is_empty() {
                store::add_listed(conn, &succeeded).await?;
            }
            if !page.has_more || after.is_none() {
                return Ok(listed);
            }
        }
    }

    async fn page(&self, gte: i64, lt: i64, after: Option<&str>) -> anyhow::Result<ChargeList> {
        let mut backoff = Duration::from_millis(200);
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .client
                .list_charges(Some(gte), Some(lt), self.config.page_size, after)
                .await
            {
                Ok(page) => return Ok(page),
                Err(e) if tries < PAGE_TRIES => {
                    tracing::debug!(error = %e, tries, "listing page failed; asking again");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "listing the provider's charges (gave up after {tries} tries)"
                    )));
                }
            }
        }
    }

    /// Do what `verdict` says; a write that finds the row changed since it
    /// was read (claimed meanwhile) leaves it to the next run.
    async fn apply(
        &self,
        conn: &mut PoolConnection<Postgres>,
        verdict: Verdict<'_>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        match verdict {
            Verdict::Nothing => {}
            Verdict::InFlight => report.skipped_in_flight += 1,
            Verdict::Report(finding) => note(report, finding),
            Verdict::Keep(keep) => {
                let Keep { row, kept, .. } = keep;
                if keep.settle {
                    let result = serde_json::to_value(kept)?;
                    if !store::settle_found(conn, row.id, &kept.id, &result).await? {
                        // Claimed meanwhile: the next run sees it again.
                        report.skipped_in_flight += 1;
                        return Ok(());
                    }
                    tracing::info!(outbox_id = row.id, reference_id = %row.reference_id, charge_id = %kept.id, from = row.state.as_str(), "reconciliation settled a row: its charge was found");
                    report.rows_settled += 1;
                }
                if keep.charges.len() > 1 {
                    report.references_charged_twice += 1;
                }
                for extra in &keep.refund {
                    let evidence = json!({
                        "charges": keep.charges,
                        "row_state_before": row.state,
                        "row_charge_before": row.provider_charge_id,
                        "kept": kept.id,
                        "rule": keep.rule.as_str(),
                    });
                    self.compensate(conn, row, Some(kept), extra, &evidence, report)
                        .await?;
                }
            }
            Verdict::RefundDeclined { row, charges } => {
                note(report, crate::report::Finding {
                    kind: crate::report::FindingKind::ChargedButDeclined,
                    reference_id: row.reference_id.to_string(),
                    outbox_id: Some(row.id),
                    charge_ids: charges.iter().map(|c| c.id.clone()).collect(),
                    detail: "our row is declined, but the provider has charges for it: refunding them all".to_owned(),
                });
                for extra in charges {
                    let evidence = json!({
                        "charges": charges,
                        "row_state_before": row.state,
                        "kept": null,
                        "rule": "the row is declined (its producer was told no charge): refund every charge",
                    });
                    self.compensate(conn, row, None, extra, &evidence, report)
                        .await?;
                }
            }
            // The statement re-checks state and quietness: a claim since
            // the read makes it a no-op.
            Verdict::Requeue { row, quiet_since } => {
                let requeued = store::requeue_unknown(conn, row.id, quiet_since).await?;
                report.rows_requeued += usize::from(requeued);
                if requeued {
                    tracing::info!(outbox_id = row.id, reference_id = %row.reference_id, "reconciliation re-queued an unknown row: no charge at the provider");
                }
            }
        }
        Ok(())
    }

    /// Record the refund of `extra`, with the evidence for it, once: a
    /// compensation recorded by an earlier run is not recorded again.
    /// `kept`: the charge that stands, or `None` when none does (a declined
    /// row; stored as an empty `kept_charge_id`, the evidence says why).
    async fn compensate(
        &self,
        conn: &mut PoolConnection<Postgres>,
        row: &RowView,
        kept: Option<&Charge>,
        extra: &Charge,
        evidence: &serde_json::Value,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        report.extra_charges += 1;
        let kept_id = kept.map_or("", |k| k.id.as_str());
        let compensation = NewCompensation {
            reference_id: row.reference_id,
            outbox_id: Some(row.id),
            charge_id: &extra.id,
            kept_charge_id: kept_id,
            amount: extra.amount,
            currency: &extra.currency,
            refund_key: refund_key(&extra.id),
            evidence,
        };
        if store::insert_compensation(conn, &compensation)
            .await?
            .is_some()
        {
            tracing::warn!(reference_id = %row.reference_id, charge_id = %extra.id, kept = kept_id, amount = extra.amount, "extra charge found: compensation recorded, refunding");
            report.compensations_recorded += 1;
        }
        Ok(())
    }

    /// In an open window: our `succeeded` and `unknown` rows whose reference
    /// the provider does not list, in chunks through the window's index.
    async fn account_for_rows(
        &self,
        conn: &mut PoolConnection<Postgres>,
        window: &Window,
        started: DateTime<Utc>,
        grace: chrono::Duration,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let mut after = None;
        loop {
            let rows = store::unlisted_rows(conn, window.from + SKEW, after, CHUNK).await?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = Some((last.created_at, last.id));
            for row in &rows {
                let reference = row.reference_id.to_string();
                let verdict = judge(&reference, Some(row), &[], started, grace);
                self.apply(conn, verdict, report).await?;
            }
        }
    }

    /// Refund every compensation not confirmed yet (this run's and earlier
    /// ones'), each under its own idempotency key.
    async fn refund_pending(
        &self,
        conn: &mut PoolConnection<Postgres>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        for c in store::pending_compensations(conn, 10_000).await? {
            if !self.client.capabilities().refunds {
                let why = format!(
                    "the provider offers no refunds: refund charge {} by hand",
                    c.charge_id
                );
                store::note_refund_failure(conn, c.id, true, &why).await?;
                report.refunds_manual += 1;
                continue;
            }
            let (refunded, call) = self
                .client
                .refund(&c.charge_id, &c.refund_key.to_string())
                .await;
            self.record_call(conn, c.reference_id, &call).await;
            match refunded {
                Ok(refund) => {
                    store::mark_refunded(conn, c.id, &refund.id).await?;
                    tracing::info!(charge_id = %c.charge_id, refund_id = %refund.id, "extra charge refunded");
                    report.refunds_confirmed += 1;
                }
                Err(ClientError::Status { body, .. })
                    if body.contains("charge_already_refunded") =>
                {
                    // Refunded under another key (an operator, by hand).
                    store::mark_refunded(conn, c.id, "(refunded elsewhere)").await?;
                    report.refunds_confirmed += 1;
                }
                Err(e) => {
                    tracing::warn!(charge_id = %c.charge_id, error = %e, "refund failed; the next run retries it under the same key");
                    store::note_refund_failure(conn, c.id, false, &e.to_string()).await?;
                    report.refunds_failed += 1;
                }
            }
        }
        Ok(())
    }
}

impl Reconciler {
    /// Put a refund call into the attempt history of the reference's outbox
    /// row (if we have one). Best effort: the compensation row is the record
    /// that counts, and a failed history write must not stop refunds.
    async fn record_call(
        &self,
        conn: &mut PoolConnection<Postgres>,
        reference_id: Uuid,
        call: &idem_charge::Call,
    ) {
        let written = async {
            let Some(outbox_id) = attempt::outbox_id_of(conn, reference_id).await? else {
                return Ok(0);
            };
            let row = NewAttempt::of_call(outbox_id, call);
            attempt::record(conn, &self.config.replica, &[row]).await
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(%reference_id, error = %e, "could not record the refund call in the attempt history");
        }
    }
}

/// The refund's idempotency key: a function of the refunded charge alone, so
/// every run and every process sends the same key for the same refund.
pub fn refund_key(charge_id: &str) -> Uuid {
    Uuid::new_v5(
        &idem_message::REFERENCE_NAMESPACE,
        format!("refund:{charge_id}").as_bytes(),
    )
}

/// Count `finding` in the report and in its metric.
fn note(report: &mut Report, finding: crate::report::Finding) {
    ::metrics::counter!(crate::metrics::FINDINGS, "kind" => finding.kind.as_str()).increment(1);
    report.note(finding);
}

fn record_metrics(report: &Report) {
    ::metrics::counter!(crate::metrics::RUNS).increment(1);
    ::metrics::counter!(crate::metrics::EXTRA_CHARGES).increment(report.extra_charges as u64);
    ::metrics::counter!(crate::metrics::REFUNDS).increment(report.refunds_confirmed as u64);
    ::metrics::counter!(crate::metrics::ROWS_SETTLED).increment(report.rows_settled as u64);
    ::metrics::counter!(crate::metrics::ROWS_REQUEUED).increment(report.rows_requeued as u64);
    ::metrics::gauge!(crate::metrics::LAST_RUN_TIMESTAMP_SECONDS)
        .set(Utc::now().timestamp_millis() as f64 / 1000.0);
}
