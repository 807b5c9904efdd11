//! Outbox rows: the list with its filters (a keyset page, newest first),
//! one row with everything around it, and the two hand changes, retry a
//! dead row and resolve one, refused exactly as the CLI refuses them (an
//! uncertain row only with `force`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use chrono::Utc;
use idem_store::OutboxState;
use idem_store::admin::{self, OutboxFilter, OutboxRow, OutboxSelector, Refused, Resolution};
use idem_store::attempt::{self, AttemptRow};
use idem_store::event::{self, PendingEvent};
use serde::Deserialize;

use crate::Console;
use crate::audit::{AuditView, WhyForm};
use crate::guard::{self, Csrf};
use crate::view::{self, Chrome, Failure};

/// Rows per list page.
const PAGE: i64 = 50;

/// The list's filters as the form sends them (empty fields are no filter).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) account: String,
    #[serde(default)]
    pub(crate) scope: String,
    #[serde(default)]
    pub(crate) error: String,
    #[serde(default)]
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) until: String,
    #[serde(default)]
    pub(crate) after: String,
}

fn given(s: &str) -> Option<String> {
    Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A state's name as the pages and the database spell it.
pub(crate) fn parse_state(s: &str) -> Result<Option<OutboxState>, Failure> {
    let Some(s) = given(s) else { return Ok(None) };
    OutboxState::ALL
        .into_iter()
        .find(|st| st.as_str() == s)
        .map(Some)
        .ok_or_else(|| {
            let names: Vec<_> = OutboxState::ALL.iter().map(|s| s.as_str()).collect();
            Failure::bad_request(format!("state must be one of {}", names.join(", ")))
        })
}

/// A time field: RFC 3339 or an age (`2h`), as the CLI's `--since`.
pub(crate) fn parse_time(field: &str, s: &str) -> Result<Option<chrono::DateTime<Utc>>, Failure> {
    given(s)
        .map(|s| {
            admin::parse_time(&s, Utc::now())
                .map_err(|e| Failure::bad_request(format!("{field}: {e}")))
        })
        .transpose()
}

impl ListQuery {
    fn filter(&self) -> Result<OutboxFilter, Failure> {
        OutboxFilter::new(
            parse_state(&self.state)?,
            given(&self.account),
            given(&self.scope),
            given(&self.error),
            parse_time("since", &self.since)?,
            parse_time("until", &self.until)?,
        )
        .map_err(|e| Failure::bad_request(e.to_string()))
    }

    /// This query as a URL query string, `after` set to `after`.
    fn with_after(&self, after: &str) -> String {
        let pairs = [
            ("state", &self.state),
            ("account", &self.account),
            ("scope", &self.scope),
            ("error", &self.error),
            ("since", &self.since),
            ("until", &self.until),
        ];
        let mut q: Vec<String> = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", view::query_value(v)))
            .collect();
        q.push(format!("after={}", view::query_value(after)));
        q.join("&")
    }
}

/// An outbox row in a table.
pub(crate) struct RowView {
    pub(crate) id: i64,
    pub(crate) state: &'static str,
    pub(crate) key: String,
    pub(crate) account: String,
    pub(crate) amount: String,
    pub(crate) attempts: i32,
    pub(crate) created: String,
    pub(crate) error: String,
}

impl From<&OutboxRow> for RowView {
    fn from(r: &OutboxRow) -> Self {
        Self {
            id: r.id,
            state: r.state.as_str(),
            key: view::clip(&format!("{}:{}", r.scope, r.message_id), 60),
            account: view::clip(&r.account_id, 40),
            amount: format!("{} {}", r.amount, r.currency),
            attempts: r.attempts,
            created: view::when(r.created_at),
            error: view::clip(r.last_error.as_deref().unwrap_or(""), 120),
        }
    }
}

#[derive(Template)]
#[template(path = "outbox_list.html")]
struct ListPage {
    chrome: Chrome,
    q: ListQuery,
    states: Vec<&'static str>,
    rows: Vec<RowView>,
    examined: i64,
    /// The page is short because the scan reached its budget.
    scan_limited: bool,
    next: Option<String>,
    /// The bulk retry's preview for this list's dead rows, when it lists them.
    bulk: Option<String>,
}

/// `GET /console/outbox`.
pub(crate) async fn list(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Query(q): Query<ListQuery>,
) -> Result<Response, Failure> {
    let filter = q.filter()?;
    let mut conn = console.pool().acquire().await?;
    let after = given(&q.after);
    let page = admin::outbox_page(&mut conn, &filter, after.as_deref(), PAGE).await?;
    let next = page
        .next
        .as_deref()
        .map(|n| format!("/console/outbox?{}", q.with_after(n)));
    let bulk = (q.state == "dead" && !console.settings().read_only).then(|| {
        let mut pairs = vec![];
        for (k, v) in [("account", &q.account), ("error", &q.error)] {
            if !v.is_empty() {
                pairs.push(format!("{k}={}", view::query_value(v)));
            }
        }
        format!("/console/retry?{}", pairs.join("&"))
    });
    Ok(view::render(&ListPage {
        chrome: guard::chrome(&console, &csrf, "Outbox"),
        states: OutboxState::ALL.iter().map(|s| s.as_str()).collect(),
        rows: page.rows.iter().map(RowView::from).collect(),
        examined: page.examined,
        scan_limited: page.scan_limited,
        next,
        bulk,
        q,
    }))
}

/// An attempt as the row page shows it.
struct AttemptView {
    id: i64,
    kind: String,
    replica: String,
    started: String,
    latency: String,
    status: String,
    error: String,
    provider_id: String,
}

impl From<AttemptRow> for AttemptView {
    fn from(a: AttemptRow) -> Self {
        Self {
            id: a.id,
            kind: a.kind,
            replica: view::shown(&a.replica),
            started: view::when(a.started_at),
            latency: format!("{:.1} ms", a.latency_ms),
            status: a
                .http_status
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            error: view::shown(&a.error.unwrap_or_default()),
            provider_id: view::shown(&a.provider_id.unwrap_or_default()),
        }
    }
}

#[derive(Template)]
#[template(path = "outbox_row.html")]
struct RowPage {
    chrome: Chrome,
    r: OutboxRow,
    state: &'static str,
    fields: Vec<(&'static str, String)>,
    inbox: Option<admin::InboxRow>,
    inbox_href: String,
    attempts: Vec<AttemptView>,
    result: String,
    events: Vec<PendingEvent>,
    audit: Vec<AuditView>,
    done: Option<i64>,
    can_retry: bool,
    can_resolve: bool,
    uncertain: bool,
}

/// Result events shown per row: the publisher's backlog of one row is a
/// handful; more would be a stuck publisher, which the overview shows.
const EVENTS_SHOWN: i64 = 20;

/// `GET /console/outbox/{id}`'s query: the audit row a change just wrote.
#[derive(Deserialize)]
pub(crate) struct RowQuery {
    done: Option<i64>,
}

/// `GET /console/outbox/{id}`: the row, its inbox key, every provider call,
/// the stored result, its unconfirmed result events, its audit rows.
pub(crate) async fn row(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    Query(q): Query<RowQuery>,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    let mut conn = console.pool().acquire().await?;
    let Some(r) = admin::find_outbox(&mut conn, &OutboxSelector::Id(id)).await? else {
        return Err(Failure::not_found(format!(
            "No outbox row {id} (retention deletes settled rows after their window)."
        )));
    };
    let inbox = admin::find_inbox(&mut conn, &r.scope, &r.message_id).await?;
    let attempts = attempt::of_outbox(&mut conn, id).await?;
    let events = event::pending_of(&mut conn, id, EVENTS_SHOWN).await?;
    let audit = admin::audit_of(&mut conn, &format!("outbox:{id}")).await?;
    let state = r.state.as_str();
    let writable = !console.settings().read_only;
    Ok(view::render(&RowPage {
        chrome: guard::chrome(&console, &csrf, format!("Outbox row {id}")),
        fields: fields(&r),
        inbox_href: format!(
            "/console/inbox?scope={}&message_id={}",
            view::query_value(&r.scope),
            view::query_value(&r.message_id)
        ),
        inbox,
        attempts: attempts.into_iter().map(AttemptView::from).collect(),
        result: r.result.as_ref().map(view::pretty).unwrap_or_default(),
        events,
        audit: audit.into_iter().map(AuditView::from).collect(),
        done: q.done,
        can_retry: writable && r.state == OutboxState::Dead,
        can_resolve: writable
            && matches!(
                r.state,
                OutboxState::Pending | OutboxState::Unknown | OutboxState::Dead
            ),
        uncertain: r.uncertain_since.is_some(),
        state,
        r,
    }))
}

fn fields(r: &OutboxRow) -> Vec<(&'static str, String)> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    vec![
        ("scope", r.scope.clone()),
        ("message_id", r.message_id.clone()),
        ("reference_id", r.reference_id.to_string()),
        ("account", r.account_id.clone()),
        ("amount", format!("{} {}", r.amount, r.currency)),
        ("description", opt(&r.description)),
        ("attempts", r.attempts.to_string()),
        ("next attempt", view::when(r.next_attempt_at)),
        (
            "lease",
            format!(
                "{} until {}",
                opt(&r.lease_owner),
                view::when_opt(r.lease_expires_at)
            ),
        ),
        ("uncertain since", view::when_opt(r.uncertain_since)),
        ("provider charge", opt(&r.provider_charge_id)),
        ("last error", opt(&r.last_error)),
        ("reply_to", opt(&r.reply_to)),
        ("correlation_id", opt(&r.correlation_id)),
        ("traceparent", opt(&r.traceparent)),
        ("created", view::when(r.created_at)),
        ("updated", view::when(r.updated_at)),
        ("settled", view::when_opt(r.settled_at)),
    ]
    .into_iter()
    .map(|(k, v)| (k, view::shown(&v)))
    .collect()
}

/// A row id from a path: digits only, in range.
pub(crate) fn parse_id(s: &str) -> Result<i64, Failure> {
    s.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Failure::not_found(format!("{:?} is not a row id.", view::clip(s, 40))))
}

/// A change's form: who, why, and the CSRF value.
#[derive(Deserialize)]
pub(crate) struct ChangeForm {
    #[serde(flatten)]
    why: WhyForm,
    /// Resolve only: `succeeded` or `declined`.
    #[serde(default, rename = "as")]
    resolution: String,
    /// Resolve as succeeded: the provider's charge id.
    #[serde(default)]
    charge_id: String,
}

/// `POST /console/outbox/{id}/retry`: dead → pending, audited.
pub(crate) async fn retry(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    Form(form): Form<ChangeForm>,
) -> Result<Response, Failure> {
    let who = form.why.check(&csrf)?;
    let id = parse_id(&id)?;
    let mut conn = console.pool().acquire().await?;
    let audit_id = admin::retry_dead(&mut conn, id, &who.action())
        .await
        .map_err(refused)?;
    tracing::info!(outbox_id = id, audit_id, actor = %who.actor, "console: dead row retried");
    Ok(Redirect::to(&format!("/console/outbox/{id}?done={audit_id}")).into_response())
}

/// `POST /console/outbox/{id}/resolve`: settle by hand, audited.
pub(crate) async fn resolve(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    Form(form): Form<ChangeForm>,
) -> Result<Response, Failure> {
    let who = form.why.check(&csrf)?;
    let id = parse_id(&id)?;
    let charge_id = given(&form.charge_id);
    let resolution = match form.resolution.as_str() {
        "succeeded" => Resolution::Succeeded,
        "declined" if charge_id.is_none() => Resolution::Declined,
        "declined" => {
            return Err(Failure::bad_request(
                "A charge id goes with succeeded only.",
            ));
        }
        _ => return Err(Failure::bad_request("Resolve as succeeded or declined.")),
    };
    let mut conn = console.pool().acquire().await?;
    let audit_id = admin::resolve(
        &mut conn,
        id,
        resolution,
        charge_id.as_deref(),
        &who.action(),
    )
    .await
    .map_err(refused)?;
    tracing::info!(outbox_id = id, audit_id, actor = %who.actor, "console: row resolved by hand");
    Ok(Redirect::to(&format!("/console/outbox/{id}?done={audit_id}")).into_response())
}

/// A change the store refused, as a page saying why (the CLI's words).
fn refused(e: Refused) -> Failure {
    match e {
        Refused::Database(e) => e.into(),
        Refused::NotFound(id) => {
            Failure::not_found(format!("No outbox row {id}. Nothing was changed."))
        }
        other => Failure::new(
            StatusCode::CONFLICT,
            "Refused",
            format!("{other}. Nothing was changed."),
        ),
    }
}
