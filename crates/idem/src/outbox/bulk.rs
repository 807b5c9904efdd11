//! `idem outbox retry` by filter: the flags, and printing what
//! `idem_store::admin::{preview, retry_matching}` did. The filter's rules,
//! the batches and the audit row are the store's (crates/store/src/admin/bulk.rs).

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use idem_store::OutboxState;
use idem_store::admin::{self, Preview, RetryFilter};
use serde_json::json;

use crate::operator::{Common, Why};
use crate::render::{clip_tail, report, row, table, time};

/// Rows a dry run shows.
const SAMPLE: i64 = 10;

/// Which dead rows `idem outbox retry` (without an id) takes, and how.
#[derive(Args, Debug)]
pub struct RetryFilterArgs {
    /// By filter: rows whose last error contains this text (case-insensitive).
    #[arg(long, value_name = "TEXT", conflicts_with = "id")]
    pub error: Option<String>,
    /// By filter: rows of this account.
    #[arg(long, conflicts_with = "id")]
    pub account: Option<String>,
    /// By filter: rows that went dead at or after this time: RFC 3339
    /// (`2026-12-01T10:00:00Z`) or an age (`90m`, `2h`, `1d`: that long ago).
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "id")]
    pub since: Option<DateTime<Utc>>,
    /// By filter: rows that went dead before this time (as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "id")]
    pub until: Option<DateTime<Utc>>,
    /// Retry every dead row: required when no other filter narrows it.
    #[arg(long, conflicts_with = "id")]
    pub all: bool,
    /// Count the matching rows and show the first ones; change nothing.
    #[arg(long, conflicts_with = "id")]
    pub dry_run: bool,
    /// Rows per transaction (each batch commits with its count in the audit row).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000), conflicts_with = "id")]
    pub batch: i64,
}

/// `idem outbox retry [--error ..] [--account ..] [--since ..] [--until ..] [--all]`.
pub async fn retry(
    common: Common,
    state: OutboxState,
    args: RetryFilterArgs,
    force: bool,
    why: Why,
) -> anyhow::Result<()> {
    let filter = RetryFilter::new(
        state,
        args.error,
        args.account,
        args.since,
        args.until,
        args.all,
    )?;
    if args.dry_run {
        let pool = common.read_only().await?;
        let preview = admin::preview(&mut *pool.acquire().await?, &filter, SAMPLE).await?;
        let value = json!({"dry_run": true, "filter": filter.describe(), "matched": preview.matched,
                           "uncertain": preview.uncertain, "sample": preview.sample});
        return report(common.json, value, preview_text(&preview, force));
    }
    let actor = why.actor()?;
    let pool = common.for_change().await?;
    let mut conn = pool.acquire().await?;
    let action = why.action(&actor, force);
    let done = admin::retry_matching(&mut conn, &filter, &action, args.batch, |p| {
        eprintln!(
            "batch {}: {} row(s) retried so far (audit #{})",
            p.batches, p.retried, p.audit_id
        );
    })
    .await
    .context(
        "bulk retry stopped: the batches committed are retried and counted in its audit row \
         (status running); the other rows are still dead — run the same command again",
    )?;
    // The audit row as written: its id, who, and the counts it holds (the
    // same numbers `idem audit list --target outbox` shows in its details).
    let mut text = format!(
        "{} row(s): dead -> pending (due now), {} left dead (uncertain), in {} batch(es); \
         audit #{} by {actor} (`idem audit list --target outbox`)",
        done.retried, done.skipped_uncertain, done.batches, done.audit_id
    );
    if done.skipped_uncertain > 0 {
        text.push_str(&format!(
            "\n{} row(s) left dead: their last outcome was uncertain — look their references up \
             at the provider (`idem outbox show <id>`), then retry with --force or resolve them",
            done.skipped_uncertain
        ));
    }
    let value = json!({"filter": filter.describe(), "retried": done.retried,
                       "skipped_uncertain": done.skipped_uncertain, "batches": done.batches,
                       "audit_id": done.audit_id, "actor": actor});
    report(common.json, value, text)
}

fn preview_text(p: &Preview, force: bool) -> String {
    let mut out = format!("dry run: {} dead row(s) match", p.matched);
    if p.uncertain > 0 {
        let fate = if force {
            "retried with --force"
        } else {
            "left dead without --force"
        };
        out.push_str(&format!(
            ", {} of them with an uncertain outcome ({fate})",
            p.uncertain
        ));
    }
    out.push_str("; nothing was changed\n");
    let mut t = table(&[
        "id",
        "key",
        "account",
        "dead since",
        "uncertain",
        "last error",
    ]);
    for r in &p.sample {
        t.add_row(row(vec![
            r.id.to_string(),
            format!("{}:{}", r.scope, r.message_id),
            r.account_id.clone(),
            time(r.settled_at),
            if r.uncertain_since.is_some() {
                "yes"
            } else {
                ""
            }
            .to_owned(),
            clip_tail(r.last_error.as_deref().unwrap_or_default(), 60),
        ]));
    }
    format!("{out}{t}\nfirst {} of {}\n", p.sample.len(), p.matched)
}

/// `--since`/`--until`: RFC 3339, or an age before now.
pub(super) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    admin::parse_time(s, Utc::now())
}
