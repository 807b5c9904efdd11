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
            clip(&a.details_plain_first(), 100),
        ]));
    }
    t
}
