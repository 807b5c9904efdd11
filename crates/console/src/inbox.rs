//! Key conflicts: deliveries that reused a key with another payload, which
//! the inbox refused. The list (a keyset page), and one key beside what it
//! first carried (its outbox row) and every payload that conflicted.

use askama::Template;
use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use idem_store::admin::{self, ConflictRow, InboxRow, OutboxRow, OutboxSelector};
use serde::Deserialize;

use crate::Console;
use crate::audit::After;
use crate::guard::{self, Csrf};
use crate::view::{self, Chrome, Failure};

/// A conflict as the pages show it.
struct ConflictView {
    id: i64,
    key: String,
    href: String,
    received: String,
    stored_fingerprint: String,
    received_fingerprint: String,
    body: String,
}

impl From<ConflictRow> for ConflictView {
    fn from(c: ConflictRow) -> Self {
        Self {
            id: c.id,
            key: view::clip(&format!("{}:{}", c.scope, c.message_id), 80),
            href: key_href(&c.scope, &c.message_id),
            received: view::when(c.received_at),
            stored_fingerprint: c.stored_fingerprint,
            received_fingerprint: c.received_fingerprint,
            body: view::shown(&c.body),
        }
    }
}

fn key_href(scope: &str, message_id: &str) -> String {
    format!(
        "/console/inbox?scope={}&message_id={}",
        view::query_value(scope),
        view::query_value(message_id)
    )
}

#[derive(Template)]
#[template(path = "conflicts.html")]
struct ListPage {
    chrome: Chrome,
    rows: Vec<ConflictView>,
    next: Option<String>,
}

/// `GET /console/conflicts`, newest first.
pub(crate) async fn conflicts(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Query(q): Query<After>,
) -> Result<Response, Failure> {
    let mut conn = console.pool().acquire().await?;
    let page = admin::conflict_page(&mut conn, q.cursor(), 50).await?;
    Ok(view::render(&ListPage {
        chrome: guard::chrome(&console, &csrf, "Key conflicts"),
        rows: page.rows.into_iter().map(ConflictView::from).collect(),
        next: page
            .next
            .map(|n| format!("/console/conflicts?after={}", view::query_value(&n))),
    }))
}

#[derive(Template)]
#[template(path = "inbox.html")]
struct KeyPage {
    chrome: Chrome,
    inbox: Option<InboxRow>,
    outbox: Option<OutboxRow>,
    stored: String,
    conflicts: Vec<ConflictView>,
}

/// `GET /console/inbox?scope=&message_id=`.
#[derive(Deserialize)]
pub(crate) struct KeyQuery {
    #[serde(default)]
    scope: String,
    #[serde(default)]
    message_id: String,
}

/// One key: the inbox record, the payload it first carried (its outbox
/// row's), and the conflicting payloads beside it.
pub(crate) async fn key(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, Failure> {
    if q.scope.is_empty() || q.message_id.is_empty() {
        return Err(Failure::bad_request(
            "A key is a scope and a message_id; both are needed.",
        ));
    }
    let mut conn = console.pool().acquire().await?;
    let inbox = admin::find_inbox(&mut conn, &q.scope, &q.message_id).await?;
    let selector = OutboxSelector::Key {
        scope: q.scope.clone(),
        message_id: q.message_id.clone(),
    };
    let outbox = admin::find_outbox(&mut conn, &selector).await?;
    let conflicts = admin::conflicts_of(&mut conn, &q.scope, &q.message_id).await?;
    let stored = outbox.as_ref().map_or_else(String::new, |o| {
        view::pretty(&serde_json::json!({
            "account_id": o.account_id, "amount": o.amount, "currency": o.currency,
            "description": o.description,
        }))
    });
    Ok(view::render(&KeyPage {
        chrome: guard::chrome(
            &console,
            &csrf,
            format!(
                "Key {}",
                view::clip(&format!("{}:{}", q.scope, q.message_id), 80)
            ),
        ),
        inbox,
        outbox,
        stored,
        conflicts: conflicts.into_iter().map(ConflictView::from).collect(),
    }))
}
