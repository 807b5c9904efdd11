//! Bulk retry by filter: a preview that counts what the filter matches
//! (and how many of those are uncertain, left dead unless forced) and shows
//! the first of them, then the run itself. The run is the CLI's
//! (`idem_store::admin::retry_matching`): its audit row is committed first
//! and counts every batch, so the audit trail shows its progress. It runs
//! in the background: a retry of a million rows outlives any HTTP request.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use idem_store::OutboxState;
use idem_store::admin::{self, RetryFilter};
use serde::Deserialize;

use crate::Console;
use crate::audit::WhyForm;
use crate::guard::{self, Csrf};
use crate::outbox::{RowView, parse_time};
use crate::view::{self, Chrome, Failure};

/// Rows a preview shows.
const SAMPLE: i64 = 20;

/// Rows per transaction of a run (the CLI's default).
const BATCH: i64 = 500;

/// The filter, as the preview's link and the run's form send it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct FilterForm {
    #[serde(default)]
    account: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// "Every dead row": a checkbox, required when nothing else narrows.
    all: Option<String>,
}

impl FilterForm {
    fn filter(&self) -> Result<RetryFilter, Failure> {
        let text = |s: &str| Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned);
        RetryFilter::new(
            OutboxState::Dead,
            text(&self.error),
            text(&self.account),
            parse_time("went dead since", &self.since)?,
            parse_time("went dead until", &self.until)?,
            self.all.is_some(),
        )
        .map_err(|e| Failure::bad_request(e.to_string()))
    }
}

#[derive(Template)]
#[template(path = "bulk.html")]
struct PreviewPage {
    chrome: Chrome,
    f: FilterForm,
    /// Why the filter was refused (the form is shown again to fix it).
    refused: Option<String>,
    matched: i64,
    uncertain: i64,
    sample: Vec<RowView>,
}

/// `GET /console/retry`: what a bulk retry with this filter would take.
pub(crate) async fn preview(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Query(f): Query<FilterForm>,
) -> Result<Response, Failure> {
    let chrome = guard::chrome(&console, &csrf, "Bulk retry of dead rows");
    let filter = match f.filter() {
        Ok(filter) => filter,
        Err(e) => {
            return Ok(view::render(&PreviewPage {
                chrome,
                f,
                refused: Some(e.detail().to_owned()),
                matched: 0,
                uncertain: 0,
                sample: vec![],
            }));
        }
    };
    let mut conn = console.pool().acquire().await?;
    let p = admin::preview(&mut conn, &filter, SAMPLE).await?;
    Ok(view::render(&PreviewPage {
        chrome,
        f,
        refused: None,
        matched: p.matched,
        uncertain: p.uncertain,
        sample: p.sample.iter().map(RowView::from).collect(),
    }))
}

/// The run's form: the filter, who and why, force, and the CSRF value.
#[derive(Deserialize)]
pub(crate) struct RunForm {
    #[serde(flatten)]
    f: FilterForm,
    #[serde(flatten)]
    why: WhyForm,
}

/// `POST /console/retry`: start the run and show the audit trail, where its
/// row counts the batches as they commit.
pub(crate) async fn run(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Form(form): Form<RunForm>,
) -> Result<Response, Failure> {
    let who = form.why.check(&csrf)?;
    let filter = form.f.filter()?;
    let mut conn = console.pool().acquire().await?;
    let (started_tx, started) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let action = who.action();
        let actor = &who.actor;
        let mut started_tx = Some(started_tx);
        let result = admin::retry_matching(&mut conn, &filter, &action, BATCH, |p| {
            if let Some(tx) = started_tx.take() {
                let _ = tx.send(p.audit_id);
            }
        })
        .await;
        match result {
            Ok(done) => {
                if let Some(tx) = started_tx.take() {
                    let _ = tx.send(done.audit_id);
                }
                tracing::info!(audit_id = done.audit_id, retried = done.retried,
                    skipped_uncertain = done.skipped_uncertain, %actor, "console: bulk retry done");
            }
            Err(e) => {
                tracing::warn!(error = %e, %actor, "console: bulk retry stopped; its audit row says how far it got")
            }
        }
    });
    // Wait for the first batch (or the end): the trail then shows the run.
    let audit_id = started.await.ok();
    let to = match audit_id {
        Some(id) => format!("/console/audit?target=outbox#audit-{id}"),
        None => "/console/audit?target=outbox".to_owned(),
    };
    Ok(Redirect::to(&to).into_response())
}
