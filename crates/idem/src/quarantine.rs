//! `idem quarantine list|show|replay`: bad messages kept with their reason
//! (a long body as its prefix, size and SHA-256), and a replay through the
//! normal path of those kept whole. What a producer sent is printed escaped
//! (crate::render). A replay's audit row is committed
//! before publishing and completed after (crates/store/src/admin/quarantine.rs).
//! `list` and `show` only read: they never create or migrate a database.

use anyhow::bail;
use clap::{Args, Subcommand};
use idem_daemon::config::AmqpArgs;
use idem_store::admin::{self, QuarantineRow};
use serde_json::json;

use crate::operator::{Common, Why};
use crate::page::{self, PageArgs};
use crate::render::{audit_table, escape, escape_bytes, fields, raw, report, row, table};

/// `idem quarantine ...`.
#[derive(Args, Debug)]
pub struct QuarantineCommand {
    #[command(subcommand)]
    pub action: QuarantineAction,
}

/// What to do with quarantined messages.
#[derive(Subcommand, Debug)]
pub enum QuarantineAction {
    /// List quarantined messages, newest first, a page at a time.
    List {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One quarantined message: reason, properties and raw body.
    Show {
        #[command(flatten)]
        common: Common,
        /// Quarantine id.
        id: i64,
    },
    /// Publish the message again to the work queue: it goes through the
    /// normal path and is deduplicated like any message.
    Replay {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        amqp: AmqpArgs,
        /// Quarantine id.
        id: i64,
        #[command(flatten)]
        why: Why,
    },
}

/// `idem quarantine ...`.
pub async fn run(cmd: QuarantineCommand) -> anyhow::Result<()> {
    match cmd.action {
        QuarantineAction::List { common, page } => list(common, page).await,
        QuarantineAction::Show { common, id } => show(common, id).await,
        QuarantineAction::Replay {
            common,
            amqp,
            id,
            why,
        } => replay(common, amqp, id, why).await,
    }
}

async fn list(common: Common, args: PageArgs) -> anyhow::Result<()> {
    let pool = common.read_only().await?;
    let mut conn = pool.acquire().await?;
    let page = admin::quarantine_page(&mut conn, args.after.as_deref(), args.limit).await?;
    if common.json {
        let value = page::to_json(&page, |rows| {
            rows.iter().map(quarantine_json).collect::<Vec<_>>()
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut t = table(&[
        "id",
        "received",
        "reason code",
        "message id",
        "bytes",
        "replays",
    ]);
    for r in &page.rows {
        t.add_row(row(vec![
            r.id.to_string(),
            r.received_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            r.reason_code.clone(),
            raw(r.message_id.as_deref()),
            body_size(r),
            r.replay_count.to_string(),
        ]));
    }
    print!("{t}\n{}", page::footer(&page, "message"));
    Ok(())
}

async fn show(common: Common, id: i64) -> anyhow::Result<()> {
    let pool = common.read_only().await?;
    let mut conn = pool.acquire().await?;
    let Some(r) = admin::find_quarantine(&mut conn, id).await? else {
        bail!("no quarantined message {id} (retention may have deleted it)");
    };
    let audit = admin::audit_of(&mut conn, &format!("quarantine:{id}")).await?;
    if common.json {
        let mut out = quarantine_json(&r);
        out["audit"] = serde_json::to_value(&audit)?;
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!(
            "quarantined message {id}\n{}{}",
            message_fields(&r)?,
            audit_table(&audit)
        );
    }
    Ok(())
}

async fn replay(common: Common, amqp: AmqpArgs, id: i64, why: Why) -> anyhow::Result<()> {
    let actor = why.actor()?;
    let pool = common.for_change().await?;
    let mut conn = pool.acquire().await?;
    let action = why.action(&actor, false);
    // The audit row first, then the publish, then its outcome (shared with
    // the console).
    let audit_id = idem_inbox::replay::replay_kept(
        &mut conn,
        amqp.broker.amqp_url.expose(),
        &amqp.queue,
        id,
        &action,
    )
    .await?;
    report(
        common.json,
        json!({"quarantine_id": id, "queue": amqp.queue, "audit_id": audit_id, "actor": actor}),
        format!(
            "quarantined message {id} published to {} (confirmed); audit #{audit_id} by {actor}",
            amqp.queue
        ),
    )
}

/// The stored body's size, and the whole body's when only a prefix is kept.
fn body_size(r: &QuarantineRow) -> String {
    if r.body_truncated {
        format!("{} of {}", r.body.len(), r.body_size)
    } else {
        r.body.len().to_string()
    }
}

/// The message's reason, properties and body (as kept), as key/value lines,
/// escaped.
fn message_fields(r: &QuarantineRow) -> anyhow::Result<String> {
    let mut t = fields();
    t.add_row(vec!["id".to_owned(), r.id.to_string()]);
    t.add_row(vec!["received".to_owned(), r.received_at.to_rfc3339()]);
    t.add_row(vec!["reason code".to_owned(), r.reason_code.clone()]);
    t.add_row(vec!["reason".to_owned(), escape(&r.reason)]);
    t.add_row(vec!["message id".to_owned(), raw(r.message_id.as_deref())]);
    t.add_row(vec![
        "replays".to_owned(),
        match r.replayed_at {
            Some(at) => format!("{} (last {})", r.replay_count, at.to_rfc3339()),
            None => "0".to_owned(),
        },
    ]);
    let properties = serde_json::to_string_pretty(&r.properties)?;
    t.add_row(vec![
        if r.properties_truncated {
            "properties (summary)".to_owned()
        } else {
            "properties".to_owned()
        },
        properties,
    ]);
    t.add_row(vec!["body sha256".to_owned(), r.body_sha256.clone()]);
    let body_key = if r.body_truncated {
        format!("body (first {} of {} bytes)", r.body.len(), r.body_size)
    } else {
        format!("body ({} bytes)", r.body.len())
    };
    t.add_row(vec![body_key, escape_bytes(&r.body)]);
    if let Some(header) = &r.raw_header {
        t.add_row(vec![
            format!(
                "content header (raw, {} of {} bytes)",
                header.len().min(SHOWN_HEADER),
                r.raw_header_size.unwrap_or_default()
            ),
            hex_lines(&header[..header.len().min(SHOWN_HEADER)]),
        ]);
    }
    if let Some(why_not) = r.not_replayable() {
        t.add_row(vec!["replay".to_owned(), why_not]);
    }
    Ok(t.to_string())
}

/// Raw content-header bytes shown in a terminal; `--json` has them all.
const SHOWN_HEADER: usize = 512;

/// Bytes as lines of 32 lower-case hex digit pairs: a content header that no
/// library reads is binary, and hex is what an operator compares.
fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(32)
        .map(|line| line.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The row as JSON, with the raw message id and body as (lossy) text: the
/// bytes are skipped by the row's own serialisation.
fn quarantine_json(r: &QuarantineRow) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["message_id"] = json!(r.message_id.as_deref().map(|b| String::from_utf8_lossy(b)));
    v["body"] = json!(String::from_utf8_lossy(&r.body));
    v["body_bytes"] = json!(r.body.len());
    v["raw_header_hex"] = json!(
        r.raw_header
            .as_deref()
            .map(|h| hex_lines(h).replace('\n', ""))
    );
    v
}
