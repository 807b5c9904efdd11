//! `idem inbox lookup`: was a message seen, how often, with which conflicting
//! payloads, and what became of it; `idem inbox conflicts`: every key's
//! conflicts, newest first, a page at a time. Only reads: they never create
//! or migrate a database.

use clap::{Args, Subcommand};
use idem_store::admin::{self, ConflictRow, InboxRow, OutboxRow, OutboxSelector};
use serde_json::json;

use crate::operator::Common;
use crate::page::{self, PageArgs};
use crate::render::{clip, escape, fields, row, table};

/// `idem inbox ...`.
#[derive(Args, Debug)]
pub struct InboxCommand {
    #[command(subcommand)]
    pub action: InboxAction,
}

/// What to look up in the inbox.
#[derive(Subcommand, Debug)]
pub enum InboxAction {
    /// Was this message seen? Its key, copies, conflicts and outbox row.
    Lookup {
        #[command(flatten)]
        common: Common,
        /// scope:message_id (the scope is the message's app_id, or `default`).
        key: String,
    },
    /// Key conflicts of every key (the same key with another payload; never
    /// charged), newest first, a page at a time.
    Conflicts {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        page: PageArgs,
    },
}

/// `idem inbox ...`.
pub async fn run(cmd: InboxCommand) -> anyhow::Result<()> {
    match cmd.action {
        InboxAction::Lookup { common, key } => lookup(common, &key).await,
        InboxAction::Conflicts { common, page } => conflicts(common, page).await,
    }
}

async fn conflicts(common: Common, args: PageArgs) -> anyhow::Result<()> {
    let pool = common.read_only().await?;
    let mut conn = pool.acquire().await?;
    let page = admin::conflict_page(&mut conn, args.after.as_deref(), args.limit).await?;
    if common.json {
        let value = page::to_json(&page, |rows| rows.to_vec());
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut c = table(&[
        "conflict",
        "key",
        "received",
        "stored fingerprint",
        "received fingerprint",
        "body",
    ]);
    for k in &page.rows {
        c.add_row(row(vec![
            k.id.to_string(),
            format!("{}:{}", k.scope, k.message_id),
            k.received_at.to_rfc3339(),
            clip(&k.stored_fingerprint, 16),
            clip(&k.received_fingerprint, 16),
            clip(&k.body, 60),
        ]));
    }
    print!("{c}\n{}", page::footer(&page, "conflict"));
    Ok(())
}

async fn lookup(common: Common, key: &str) -> anyhow::Result<()> {
    let (scope, message_id) = admin::parse_key(key).map_err(anyhow::Error::msg)?;
    let pool = common.read_only().await?;
    let mut conn = pool.acquire().await?;
    let inbox = admin::find_inbox(&mut conn, &scope, &message_id).await?;
    let conflicts = admin::conflicts_of(&mut conn, &scope, &message_id).await?;
    let selector = OutboxSelector::Key {
        scope: scope.clone(),
        message_id: message_id.clone(),
    };
    let outbox = admin::find_outbox(&mut conn, &selector).await?;
    let reference_id = idem_message::reference_id(&scope, &message_id);
    if common.json {
        let out = json!({"scope": scope, "message_id": message_id, "reference_id": reference_id,
                         "inbox": inbox, "conflicts": conflicts, "outbox": outbox});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let key = format!("{scope}:{message_id}");
    print!(
        "{}",
        key_fields(&key, reference_id, inbox.as_ref(), outbox.as_ref())
    );
    if !conflicts.is_empty() {
        println!(
            "key conflicts (same key, other payload; never charged)\n{}",
            conflict_table(&conflicts)
        );
    }
    Ok(())
}

/// The key, when it was seen and how often, and its outbox row.
fn key_fields(
    key: &str,
    reference_id: uuid::Uuid,
    inbox: Option<&InboxRow>,
    outbox: Option<&OutboxRow>,
) -> String {
    let mut t = fields();
    t.add_row(vec!["key".to_owned(), escape(key)]);
    t.add_row(vec!["reference id".to_owned(), reference_id.to_string()]);
    match inbox {
        Some(k) => {
            t.add_row(vec!["first seen".to_owned(), k.received_at.to_rfc3339()]);
            t.add_row(vec!["last seen".to_owned(), k.last_seen_at.to_rfc3339()]);
            t.add_row(vec!["duplicates".to_owned(), k.duplicates.to_string()]);
            t.add_row(vec!["conflicts".to_owned(), k.conflicts.to_string()]);
            t.add_row(vec!["fingerprint".to_owned(), k.fingerprint.clone()]);
        }
        None => {
            t.add_row(vec![
                "inbox".to_owned(),
                "not recorded (never seen, or past its retention window)".to_owned(),
            ]);
        }
    }
    t.add_row(vec![
        "outbox".to_owned(),
        match outbox {
            Some(o) => format!("row {} ({})", o.id, o.state.as_str()),
            None => "none".to_owned(),
        },
    ]);
    t.to_string()
}

/// The deliveries that reused the key with another payload.
fn conflict_table(conflicts: &[ConflictRow]) -> comfy_table::Table {
    let mut c = table(&["conflict", "received", "received fingerprint", "body"]);
    for k in conflicts {
        c.add_row(row(vec![
            k.id.to_string(),
            k.received_at.to_rfc3339(),
            k.received_fingerprint.clone(),
            clip(&k.body, 80),
        ]));
    }
    c
}
