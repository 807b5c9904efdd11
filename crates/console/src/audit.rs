//! The audit trail, and who is acting: every change the console makes is
//! written with `console:<name>` as its actor and the reason the form gave,
//! the same table and the same rules as the CLI's `--actor`/`--reason`.

use askama::Template;
use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use idem_store::admin::{self, Action, AuditRow};
use serde::Deserialize;

use crate::Console;
use crate::guard::{self, Csrf};
use crate::view::{self, Chrome, Failure};

/// The longest name and reason accepted (the audit table keeps them whole).
const MAX_NAME: usize = 200;
const MAX_REASON: usize = 2000;

/// Who acts and why, from a form: the name is required (the console has
/// no accounts; the audit row must still say who), so is the reason.
pub(crate) fn who(actor: &str, reason: &str) -> Result<(String, String), Failure> {
    let (actor, reason) = (actor.trim(), reason.trim());
    if actor.is_empty() || reason.is_empty() {
        return Err(Failure::bad_request(
            "Say who you are and why: both go into the audit row with the change. Nothing was changed.",
        ));
    }
    if actor.chars().count() > MAX_NAME || reason.chars().count() > MAX_REASON {
        return Err(Failure::bad_request(format!(
            "The name is at most {MAX_NAME} characters and the reason at most {MAX_REASON}. \
             Nothing was changed."
        )));
    }
    if actor
        .chars()
        .chain(reason.chars())
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err(Failure::bad_request(
            "The name and reason must be text without control characters. Nothing was changed.",
        ));
    }
    Ok((format!("console:{actor}"), reason.to_owned()))
}

/// What every change's form carries besides its own fields.
#[derive(Deserialize)]
pub(crate) struct WhyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    reason: String,
    /// "Despite uncertain outcome": a checkbox, present when ticked.
    force: Option<String>,
}

/// Who acts, why, and whether despite an uncertain outcome: checked.
pub(crate) struct Who {
    pub(crate) actor: String,
    reason: String,
    force: bool,
}

impl WhyForm {
    /// Refuse a form without this browser's CSRF value, a name or a reason.
    pub(crate) fn check(&self, csrf: &Csrf) -> Result<Who, Failure> {
        csrf.check(&self.csrf)?;
        let (actor, reason) = who(&self.actor, &self.reason)?;
        Ok(Who {
            actor,
            reason,
            force: self.force.is_some(),
        })
    }
}

impl Who {
    /// The audit's who and why.
    pub(crate) fn action(&self) -> Action<'_> {
        Action {
            actor: &self.actor,
            reason: Some(&self.reason),
            force: self.force,
        }
    }
}

/// `?after=` of a list.
#[derive(Deserialize)]
pub(crate) struct After {
    pub(crate) after: Option<String>,
}

impl After {
    /// The cursor, if one was given.
    pub(crate) fn cursor(&self) -> Option<&str> {
        self.after.as_deref().filter(|a| !a.is_empty())
    }
}

/// An audit row as the pages show it.
pub(crate) struct AuditView {
    pub(crate) id: i64,
    pub(crate) at: String,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) target: String,
    /// Link to the target's page, when it has one.
    pub(crate) href: Option<String>,
    pub(crate) reason: String,
    pub(crate) details: String,
}

impl From<AuditRow> for AuditView {
    fn from(a: AuditRow) -> Self {
        let href = a.target.split_once(':').and_then(|(table, id)| {
            let id: i64 = id.parse().ok()?;
            match table {
                "outbox" => Some(format!("/console/outbox/{id}")),
                "quarantine" => Some(format!("/console/quarantine/{id}")),
                _ => None,
            }
        });
        let details = view::clip(&a.details_plain_first(), 600);
        Self {
            id: a.id,
            at: view::when(a.at),
            actor: view::shown(&a.actor),
            action: a.action,
            target: view::shown(&a.target),
            href,
            reason: view::shown(&a.reason.unwrap_or_default()),
            details,
        }
    }
}

#[derive(Template)]
#[template(path = "audit.html")]
struct Page {
    chrome: Chrome,
    rows: Vec<AuditView>,
    target: String,
    next: Option<String>,
}

/// `GET /console/audit`'s query.
#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    target: Option<String>,
    after: Option<String>,
}

/// The audit trail, newest first; optionally only targets starting with
/// `target` (e.g. `outbox:` or `quarantine:12`).
pub(crate) async fn list(
    State(console): State<Console>,
    Extension(csrf): Extension<Csrf>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Failure> {
    let target = q.target.unwrap_or_default();
    let prefix = Some(target.trim()).filter(|t| !t.is_empty());
    let mut conn = console.pool().acquire().await?;
    let page = admin::audit_page(
        &mut conn,
        prefix,
        q.after.as_deref().filter(|a| !a.is_empty()),
        50,
    )
    .await?;
    let next = page.next.map(|n| {
        format!(
            "/console/audit?target={}&after={}",
            view::query_value(&target),
            view::query_value(&n)
        )
    });
    Ok(view::render(&Page {
        chrome: guard::chrome(&console, &csrf, "Audit trail"),
        rows: page.rows.into_iter().map(AuditView::from).collect(),
        target,
        next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_needs_a_name_and_a_reason() {
        assert_eq!(
            who(" ana ", " card expired, retry ").map_err(|e| format!("{e:?}")),
            Ok(("console:ana".to_owned(), "card expired, retry".to_owned()))
        );
        assert!(who("", "why").is_err());
        assert!(who("ana", "  ").is_err());
        assert!(who("ana\u{0}", "why").is_err());
        assert!(who(&"a".repeat(201), "why").is_err());
    }
}
