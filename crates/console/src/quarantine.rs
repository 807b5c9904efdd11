//! Quarantined messages: the list (a keyset page), one message with its raw
//! bytes shown escaped and as a hex dump (a producer's bytes are anything:
//! nothing of them reaches the page unescaped), and replay through the
//! normal path, audited (`idem_inbox::replay::replay_kept`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use idem_inbox::replay::{self, ReplayError};
use idem_store::admin::{self, QuarantineRow};
use serde::Deserialize;

use crate::Console;
use crate::audit::{After, AuditView, WhyForm};
use crate::guard::{self, Csrf};
use crate::outbox::parse_id;
use crate::view::{self, Chrome, Failure};

/// A kept message in the list.
struct ItemView {
    id: i64,
    reason_code: String,
    reason: String,
    message_id: String,
    size: i64,
    received: String,
    replays: i32,
}

impl From<&QuarantineRow> for ItemView {
    fn from(q: &QuarantineRow) -> Self {
        Self {
            id: q.id,
            reason_code: q.reason_code.clone(),
            reason: view::clip(&q.reason, 160),
            message_id: q.message_id.as_deref().map_or_else(
                || "-".to_owned(),
                |m| view::clip(&view::escape_bytes(m), 60),
            ),
            size: q.body_size,
            received: view::when(q.received_at),
            replays: q.replay_count,
        }
    }
}

#[derive(Template)]
#[template(path = "quarantine_list.html")]
struct ListPage {
    chrome: Chrome,
    rows: Vec<ItemView>,
    next: Option<String>,
}

/// `GET /console/quarantine`, newest first.
pub(crate) async fn list(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Query(q): Query<After>,
) -> Result<Response, Failure> {
    let mut conn = console.pool().acquire().await?;
    let page = admin::quarantine_page(&mut conn, q.cursor(), 50).await?;
    Ok(view::render(&ListPage {
        chrome: guard::chrome(&console, &csrf, "Quarantine"),
        rows: page.rows.iter().map(ItemView::from).collect(),
        next: page
            .next
            .map(|n| format!("/console/quarantine?after={}", view::query_value(&n))),
    }))
}

#[derive(Template)]
#[template(path = "quarantine_row.html")]
struct RowPage {
    chrome: Chrome,
    id: i64,
    fields: Vec<(&'static str, String)>,
    properties: String,
    body_text: String,
    body_hex: String,
    raw_header_hex: Option<String>,
    not_replayable: Option<String>,
    can_replay: bool,
    audit: Vec<AuditView>,
    done: Option<i64>,
}

/// `?done=` after a replay.
#[derive(Deserialize)]
pub(crate) struct Done {
    done: Option<i64>,
}

/// `GET /console/quarantine/{id}`.
pub(crate) async fn row(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    Query(q): Query<Done>,
) -> Result<Response, Failure> {
    let id = parse_id(&id)?;
    let mut conn = console.pool().acquire().await?;
    let Some(r) = admin::find_quarantine(&mut conn, id).await? else {
        return Err(Failure::not_found(format!(
            "No quarantined message {id} (retention deletes them after their window)."
        )));
    };
    let audit = admin::audit_of(&mut conn, &format!("quarantine:{id}")).await?;
    let not_replayable = r.not_replayable();
    let body_note = if r.body_truncated {
        format!("{} of {} bytes kept", r.body.len(), r.body_size)
    } else {
        format!("{} bytes", r.body_size)
    };
    let fields = vec![
        ("reason", format!("{} ({})", r.reason, r.reason_code)),
        (
            "message_id",
            r.message_id
                .as_deref()
                .map_or_else(|| "-".to_owned(), view::escape_bytes),
        ),
        ("body", body_note),
        ("body SHA-256", r.body_sha256.clone()),
        ("received", view::when(r.received_at)),
        (
            "replayed",
            format!(
                "{} times, last {}",
                r.replay_count,
                view::when_opt(r.replayed_at)
            ),
        ),
    ];
    Ok(view::render(&RowPage {
        chrome: guard::chrome(&console, &csrf, format!("Quarantined message {id}")),
        id,
        fields,
        properties: view::pretty(&r.properties),
        body_text: view::escape_bytes(&r.body),
        body_hex: view::hex_dump(&r.body),
        raw_header_hex: r.raw_header.as_deref().map(view::hex_dump),
        can_replay: !console.settings().read_only && not_replayable.is_none(),
        not_replayable,
        audit: audit.into_iter().map(AuditView::from).collect(),
        done: q.done,
    }))
}

/// The replay form.
#[derive(Deserialize)]
pub(crate) struct ReplayForm {
    #[serde(flatten)]
    why: WhyForm,
}

/// `POST /console/quarantine/{id}/replay`.
pub(crate) async fn replay(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
    Form(form): Form<ReplayForm>,
) -> Result<Response, Failure> {
    let who = form.why.check(&csrf)?;
    let id = parse_id(&id)?;
    let Some(to) = console.settings().replay.clone() else {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "No broker configured",
            "This console was started without a broker (IDEM_AMQP_URL and IDEM_QUEUE), so it \
             cannot replay. Nothing was changed.",
        ));
    };
    // A replay is never "despite" anything: the consumer decides it anew.
    let action = idem_store::admin::Action {
        force: false,
        ..who.action()
    };
    let mut conn = console.pool().acquire().await?;
    match replay::replay_kept(&mut conn, &to.amqp_url, &to.queue, id, &action).await {
        Ok(audit_id) => {
            tracing::info!(quarantine_id = id, audit_id, actor = %who.actor, "console: quarantined message replayed");
            Ok(Redirect::to(&format!("/console/quarantine/{id}?done={audit_id}")).into_response())
        }
        Err(ReplayError::Database(e)) => Err(e.into()),
        Err(ReplayError::Gone(_)) => Err(Failure::not_found(format!(
            "No quarantined message {id}. Nothing was replayed."
        ))),
        Err(e @ ReplayError::NotReplayable { .. }) => Err(Failure::new(
            StatusCode::CONFLICT,
            "Not replayable",
            e.to_string(),
        )),
        Err(e @ ReplayError::Publish { .. }) => Err(Failure::new(
            StatusCode::BAD_GATEWAY,
            "The broker did not take it",
            e.to_string(),
        )),
    }
}
