//! `idem outbox list`: one page of the rows a filter matches, newest first
//! in the order of the index the filter reads (the store's `outbox_page`;
//! docs/performance.md, "Console and CLI lists"). Only reads.

use chrono::{DateTime, Utc};
use clap::Args;
use idem_store::admin::{self, OutboxFilter, OutboxRow};

use super::StateArg;
use super::bulk::parse_time;
use crate::operator::Common;
use crate::page::{self, PageArgs};
use crate::render::{clip_tail, row, table};

/// `idem outbox list [filters] [--after <cursor>] [--limit <n>]`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub common: Common,
    /// Only rows in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// Only this account's rows.
    #[arg(long)]
    pub account: Option<String>,
    /// Only this dedup scope's rows (the message's app_id, or `default`).
    #[arg(long)]
    pub scope: Option<String>,
    /// Only rows whose last error contains this text (case-insensitive;
    /// `%` and `_` are literal).
    #[arg(long, value_name = "TEXT")]
    pub error: Option<String>,
    /// Only rows created at or after this time: RFC 3339
    /// (`2026-12-01T10:00:00Z`) or an age (`90m`, `2h`, `1d`: that long ago).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only rows created before this time (as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// Print one page.
pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let filter = OutboxFilter::new(
        args.state.map(Into::into),
        args.account,
        args.scope,
        args.error,
        args.since,
        args.until,
    )?;
    let pool = args.common.read_only().await?;
    let mut conn = pool.acquire().await?;
    let page = admin::outbox_page(
        &mut conn,
        &filter,
        args.page.after.as_deref(),
        args.page.limit,
    )
    .await?;
    if args.common.json {
        let value = page::to_json(&page, |rows| rows.to_vec());
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!(
            "{}\n{}",
            outbox_table(&page.rows),
            page::footer(&page, "row")
        );
    }
    Ok(())
}

fn outbox_table(rows: &[OutboxRow]) -> comfy_table::Table {
    let mut t = table(&[
        "id",
        "state",
        "key",
        "account",
        "amount",
        "attempts",
        "created",
        "last error",
    ]);
    for r in rows {
        t.add_row(row(vec![
            r.id.to_string(),
            r.state.as_str().to_owned(),
            format!("{}:{}", r.scope, r.message_id),
            r.account_id.clone(),
            format!("{} {}", r.amount, r.currency),
            r.attempts.to_string(),
            r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            clip_tail(r.last_error.as_deref().unwrap_or_default(), 60),
        ]));
    }
    t
}
