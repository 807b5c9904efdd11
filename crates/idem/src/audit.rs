//! `idem audit list`: the record of operator changes (retry, resolve,
//! replay, bulk retry), newest first, a page at a time; only the targets
//! starting with `--target` when given. Only reads.

use clap::{Args, Subcommand};
use idem_store::admin::{self, AuditRow};

use crate::operator::Common;
use crate::page::{self, PageArgs};
use crate::render::{clip, row, table};

/// `idem audit ...`.
#[derive(Args, Debug)]
pub struct AuditCommand {
    #[command(subcommand)]
    pub action: AuditAction,
}

/// What to read of the audit table.
#[derive(Subcommand, Debug)]
pub enum AuditAction {
    /// Audit rows, newest first, a page at a time.
    List {
        #[command(flatten)]
        common: Common,
        /// Only targets starting with this: `outbox:17` (that row, and any
        /// id starting so), `outbox:` (changes of single rows), `outbox`
        /// (those and bulk retries, whose target is `outbox`), `quarantine:`.
        #[arg(long, value_name = "PREFIX")]
        target: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
}

/// `idem audit ...`.
pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    let AuditAction::List {
        common,
        target,
        page: args,
    } = cmd.action;
    let pool = common.read_only().await?;
    let mut conn = pool.acquire().await?;
    let page = admin::audit_page(
        &mut conn,
        target.as_deref(),
        args.after.as_deref(),
        args.limit,
    )
    .await?;
    if common.json {
        let value = page::to_json(&page, |rows| rows.to_vec());
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    print!(
        "{}\n{}",
        audit_list(&page.rows),
        page::footer(&page, "audit row")
    );
    Ok(())
}

fn audit_list(rows: &[AuditRow]) -> comfy_table::Table {
    let mut t = table(&[
        "audit", "at", "actor", "action", "target", "reason", "details",
    ]);
    for a in rows {
        t.add_row(row(vec![
            a.id.to_string(),
            a.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            a.actor.clone(),
            a.action.clone(),
            a.target.clone(),
            a.reason.clone().unwrap_or_default(),
            clip(&scalars_first(&a.details), 100),
        ]));
    }
    t
}

/// `details` as JSON with an object's plain values before its nested ones:
/// the clipped column then shows what a bulk action did (`retried`,
/// `status`) rather than the start of its cursor and filter.
fn scalars_first(details: &serde_json::Value) -> String {
    let Some(map) = details.as_object() else {
        return details.to_string();
    };
    let nested = |v: &serde_json::Value| v.is_object() || v.is_array();
    let fields: Vec<String> = map
        .iter()
        .filter(|(_, v)| !nested(v))
        .chain(map.iter().filter(|(_, v)| nested(v)))
        .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
        .collect();
    format!("{{{}}}", fields.join(","))
}

#[cfg(test)]
mod tests {
    use super::scalars_first;

    #[test]
    fn plain_values_come_before_nested_ones_and_the_json_stays_equal() {
        let details = serde_json::json!({
            "batch": 500, "cursor": {"id": 3}, "filter": {"account": "a\"b"},
            "retried": 3, "status": "done", "tags": [1]
        });
        let shown = scalars_first(&details);
        assert!(
            shown.starts_with(r#"{"batch":500,"retried":3,"status":"done","cursor":"#),
            "{shown}"
        );
        let back: serde_json::Value = serde_json::from_str(&shown).expect("valid JSON");
        assert_eq!(back, details);
        assert_eq!(scalars_first(&serde_json::json!("x")), r#""x""#);
    }
}
