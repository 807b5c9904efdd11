//! The operators' commands: `idem outbox list|show|retry|resolve`,
//! `idem quarantine list|show|replay`, `idem inbox lookup`. Every command
//! prints a readable table, or JSON with `--json`; every change has its audit
//! row: `retry` and `resolve` in the change's transaction, `replay` committed
//! before publishing and completed after (crates/store/src/admin.rs).

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{ContentArrangement, Table, presets};
use idem_store::OutboxState;
use idem_store::admin::{self, Action, OutboxRow, OutboxSelector, Refused, Resolution};
use idem_store::attempt::{self, AttemptRow};
use serde_json::json;
use sqlx::PgPool;

use crate::config::{AmqpArgs, DatabaseArgs};

/// What every admin command takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Who is acting and why: written to the audit table with the change.
#[derive(Args, Debug, Clone)]
pub struct Why {
    /// Who is acting (default: the OS user running the command).
    #[arg(long, env = "IDEM_ACTOR")]
    pub actor: Option<String>,
    /// Why: kept in the audit table with the change.
    #[arg(long)]
    pub reason: String,
}

/// `idem outbox ...`.
#[derive(Args, Debug)]
pub struct OutboxCommand {
    #[command(subcommand)]
    pub action: OutboxAction,
}

/// What to do with outbox rows.
#[derive(Subcommand, Debug)]
pub enum OutboxAction {
    /// List rows, oldest first (optionally only one state).
    List {
        #[command(flatten)]
        common: Common,
        /// Only rows in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Most rows listed.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One row: its columns, inbox key, attempt history, result and audit.
    Show {
        #[command(flatten)]
        common: Common,
        /// Row id, reference id (UUID), or scope:message_id.
        selector: String,
    },
    /// Put a dead row back in play (dead -> pending, attempts reset).
    Retry {
        #[command(flatten)]
        common: Common,
        /// Row id.
        id: i64,
        /// Retry although the last outcome was uncertain (the charge may exist
        /// at the provider and is sent again).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        why: Why,
    },
    /// Settle a pending, unknown or dead row by hand.
    Resolve {
        #[command(flatten)]
        common: Common,
        /// Row id.
        id: i64,
        /// The final state to record.
        #[arg(long = "as", value_enum)]
        resolution: ResolutionArg,
        /// The provider's charge id, when resolving as succeeded.
        #[arg(long)]
        charge_id: Option<String>,
        /// Record `declined` although the last outcome was uncertain (the
        /// charge may exist at the provider).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        why: Why,
    },
}

/// An outbox state on the command line.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum StateArg {
    /// Waiting for an attempt.
    Pending,
    /// Claimed by a replica.
    InFlight,
    /// Outcome uncertain, being resolved.
    Unknown,
    /// Charged.
    Succeeded,
    /// Declined.
    Declined,
    /// Given up; needs an operator.
    Dead,
}

impl From<StateArg> for OutboxState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Pending => OutboxState::Pending,
            StateArg::InFlight => OutboxState::InFlight,
            StateArg::Unknown => OutboxState::Unknown,
            StateArg::Succeeded => OutboxState::Succeeded,
            StateArg::Declined => OutboxState::Declined,
            StateArg::Dead => OutboxState::Dead,
        }
    }
}

/// How `idem outbox resolve` settles a row.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ResolutionArg {
    /// The charge exists at the provider.
    Succeeded,
    /// The charge must not (or did not) happen.
    Declined,
}

/// `idem quarantine ...`.
#[derive(Args, Debug)]
pub struct QuarantineCommand {
    #[command(subcommand)]
    pub action: QuarantineAction,
}

/// What to do with quarantined messages.
#[derive(Subcommand, Debug)]
pub enum QuarantineAction {
    /// List quarantined messages, newest first.
    List {
        #[command(flatten)]
        common: Common,
        /// Most rows listed.
        #[arg(long, default_value_t = 50)]
        limit: i64,
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
}

async fn pool(common: &Common) -> anyhow::Result<PgPool> {
    let pool = idem_store::connect(&common.database.database_url, 2).await?;
    idem_store::migrate(&pool).await?;
    Ok(pool)
}

impl Why {
    /// Check that `--reason` says something, and name the acting user:
    /// `--actor`, else the OS user.
    fn actor(&self) -> anyhow::Result<String> {
        if self.reason.trim().is_empty() {
            bail!("--reason must say why (it is kept in the audit table)");
        }
        if let Some(a) = self
            .actor
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            return Ok(a.to_owned());
        }
        let uid = nix::unistd::getuid();
        if let Ok(Some(user)) = nix::unistd::User::from_uid(uid) {
            return Ok(user.name);
        }
        for var in ["USER", "LOGNAME"] {
            if let Ok(name) = std::env::var(var)
                && !name.is_empty()
            {
                return Ok(name);
            }
        }
        Ok(format!("uid:{uid}"))
    }

    /// The audit's who and why for `actor`.
    fn action<'a>(&'a self, actor: &'a str, force: bool) -> Action<'a> {
        Action {
            actor,
            reason: Some(&self.reason),
            force,
        }
    }
}

/// `idem outbox ...`.
pub async fn outbox(cmd: OutboxCommand) -> anyhow::Result<()> {
    match cmd.action {
        OutboxAction::List {
            common,
            state,
            limit,
        } => {
            let pool = pool(&common).await?;
            let mut conn = pool.acquire().await?;
            let rows = admin::list_outbox(&mut conn, state.map(Into::into), limit.max(0)).await?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", outbox_list(&rows));
            }
            Ok(())
        }
        OutboxAction::Show { common, selector } => {
            let selector: OutboxSelector = selector.parse().map_err(anyhow::Error::msg)?;
            let pool = pool(&common).await?;
            let mut conn = pool.acquire().await?;
            let Some(row) = admin::find_outbox(&mut conn, &selector).await? else {
                bail!("no outbox row for {}", describe(&selector));
            };
            let inbox = admin::find_inbox(&mut conn, &row.scope, &row.message_id).await?;
            let attempts = attempt::of_outbox(&mut conn, row.id).await?;
            let audit = admin::audit_of(&mut conn, &format!("outbox:{}", row.id)).await?;
            if common.json {
                let out = json!({"outbox": row, "inbox": inbox, "attempts": attempts,
                                 "result": row.result, "audit": audit});
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", outbox_show(&row, inbox.as_ref(), &attempts, &audit));
            }
            Ok(())
        }
        OutboxAction::Retry {
            common,
            id,
            force,
            why,
        } => {
            let actor = why.actor()?;
            let pool = pool(&common).await?;
            let mut conn = pool.acquire().await?;
            let action = why.action(&actor, force);
            let audit_id = refused(admin::retry_dead(&mut conn, id, &action).await)?;
            report(
                common.json,
                json!({"outbox_id": id, "state": "pending", "audit_id": audit_id, "actor": actor}),
                format!("outbox row {id}: dead -> pending (due now); audit #{audit_id} by {actor}"),
            )
        }
        OutboxAction::Resolve {
            common,
            id,
            resolution,
            charge_id,
            force,
            why,
        } => {
            let actor = why.actor()?;
            if charge_id.is_some() && matches!(resolution, ResolutionArg::Declined) {
                bail!("--charge-id goes with --as succeeded only");
            }
            let pool = pool(&common).await?;
            let mut conn = pool.acquire().await?;
            let action = why.action(&actor, force);
            let (resolution, state) = match resolution {
                ResolutionArg::Succeeded => (Resolution::Succeeded, "succeeded"),
                ResolutionArg::Declined => (Resolution::Declined, "declined"),
            };
            let audit_id = refused(
                admin::resolve(&mut conn, id, resolution, charge_id.as_deref(), &action).await,
            )?;
            report(
                common.json,
                json!({"outbox_id": id, "state": state, "audit_id": audit_id, "actor": actor}),
                format!("outbox row {id}: resolved as {state}; audit #{audit_id} by {actor}"),
            )
        }
    }
}

/// `idem quarantine ...`.
pub async fn quarantine(cmd: QuarantineCommand) -> anyhow::Result<()> {
    match cmd.action {
        QuarantineAction::List { common, limit } => {
            let pool = pool(&common).await?;
            let mut conn = pool.acquire().await?;
            let rows = admin::list_quarantine(&mut conn, limit.max(0)).await?;
            if common.json {
                let rows: Vec<_> = rows.iter().map(quarantine_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let mut t = table(&[
                    "id",
                    "received",
                    "reason code",
                    "message id",
                    "bytes",
                    "replays",
                ]);
                for r in &rows {
                    t.add_row(vec![
                        r.id.to_string(),
                        r.received_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        r.reason_code.clone(),
                        lossy(r.message_id.as_deref()),
                        r.body.len().to_string(),
                        r.replay_count.to_string(),
                    ]);
                }
                println!("{t}\n{} message(s)", rows.len());
            }
            Ok(())
        }
        QuarantineAction::Show { common, id } => {
            let pool = pool(&common).await?;
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
                let mut t = fields();
                t.add_row(vec!["id".to_owned(), r.id.to_string()]);
                t.add_row(vec!["received".to_owned(), r.received_at.to_rfc3339()]);
                t.add_row(vec!["reason code".to_owned(), r.reason_code.clone()]);
                t.add_row(vec!["reason".to_owned(), r.reason.clone()]);
                t.add_row(vec![
                    "message id".to_owned(),
                    lossy(r.message_id.as_deref()),
                ]);
                t.add_row(vec![
                    "replays".to_owned(),
                    match r.replayed_at {
                        Some(at) => format!("{} (last {})", r.replay_count, at.to_rfc3339()),
                        None => "0".to_owned(),
                    },
                ]);
                t.add_row(vec![
                    "properties".to_owned(),
                    serde_json::to_string_pretty(&r.properties)?,
                ]);
                t.add_row(vec![
                    format!("body ({} bytes)", r.body.len()),
                    String::from_utf8_lossy(&r.body).into_owned(),
                ]);
                print!("quarantined message {id}\n{t}");
                print_audit(&audit);
            }
            Ok(())
        }
        QuarantineAction::Replay {
            common,
            amqp,
            id,
            why,
        } => {
            let actor = why.actor()?;
            let pool = pool(&common).await?;
            let mut conn = pool.acquire().await?;
            let Some(r) = admin::find_quarantine(&mut conn, id).await? else {
                bail!("no quarantined message {id} (retention may have deleted it)");
            };
            let action = why.action(&actor, false);
            // The audit row first: no replay is published without one.
            let Some(audit_id) = admin::begin_replay(&mut conn, id, &amqp.queue, &action).await?
            else {
                bail!("no quarantined message {id} (retention deleted it meanwhile)");
            };
            let props = idem_inbox::replay::properties(&r.properties, r.message_id.as_deref(), id);
            let published = publish_replay(&amqp, &r.body, props).await;
            let outcome = published.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
            admin::finish_replay(&mut conn, id, audit_id, outcome.as_ref().map(|_| ()).map_err(String::as_str))
                .await
                .with_context(|| {
                    format!("recording the outcome of replay #{audit_id} (audit row {audit_id} says requested)")
                })?;
            published.with_context(|| {
                format!("replaying quarantined message {id} (audit #{audit_id})")
            })?;
            report(
                common.json,
                json!({"quarantine_id": id, "queue": amqp.queue, "audit_id": audit_id, "actor": actor}),
                format!(
                    "quarantined message {id} published to {} (confirmed); audit #{audit_id} by {actor}",
                    amqp.queue
                ),
            )
        }
    }
}

/// Publish a replayed message to the work queue, confirmed.
async fn publish_replay(
    amqp: &AmqpArgs,
    body: &[u8],
    props: lapin::BasicProperties,
) -> anyhow::Result<()> {
    let connection = idem_inbox::connect_amqp(&amqp.broker.amqp_url).await?;
    let channel = connection.create_channel().await?;
    idem_inbox::declare(&channel, &idem_inbox::Topology::for_queue(&amqp.queue))
        .await
        .context("declaring the queue")?;
    idem_inbox::replay::publish(&channel, &amqp.queue, body, props).await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// `idem inbox ...`.
pub async fn inbox(cmd: InboxCommand) -> anyhow::Result<()> {
    let InboxAction::Lookup { common, key } = cmd.action;
    let (scope, message_id) = admin::parse_key(&key).map_err(anyhow::Error::msg)?;
    let pool = pool(&common).await?;
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
    let mut t = fields();
    t.add_row(vec!["key".to_owned(), format!("{scope}:{message_id}")]);
    t.add_row(vec!["reference id".to_owned(), reference_id.to_string()]);
    match &inbox {
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
        match &outbox {
            Some(o) => format!("row {} ({})", o.id, o.state.as_str()),
            None => "none".to_owned(),
        },
    ]);
    print!("{t}");
    if !conflicts.is_empty() {
        let mut c = table(&["conflict", "received", "received fingerprint", "body"]);
        for k in &conflicts {
            c.add_row(vec![
                k.id.to_string(),
                k.received_at.to_rfc3339(),
                k.received_fingerprint.clone(),
                clip(&k.body, 80),
            ]);
        }
        println!("key conflicts (same key, other payload; never charged)\n{c}");
    }
    Ok(())
}

fn describe(selector: &OutboxSelector) -> String {
    match selector {
        OutboxSelector::Id(id) => format!("id {id}"),
        OutboxSelector::Reference(r) => format!("reference id {r}"),
        OutboxSelector::Key { scope, message_id } => format!("key {scope}:{message_id}"),
    }
}

/// An operator change refused by the database's rules: say why, plainly.
fn refused<T>(result: Result<T, Refused>) -> anyhow::Result<T> {
    result.map_err(|e| match e {
        Refused::Database(e) => anyhow::Error::new(e).context("nothing was changed"),
        other => anyhow::anyhow!("{other}; nothing was changed"),
    })
}

fn report(json: bool, value: serde_json::Value, text: String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

/// Key/value lines: the key column padded to the longest key.
#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn add_row(&mut self, row: Vec<String>) {
        let mut row = row.into_iter();
        let key = row.next().unwrap_or_default();
        self.0.push((key, row.next().unwrap_or_default()));
    }
}

impl std::fmt::Display for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = self.0.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.0 {
            let mut lines = v.lines();
            writeln!(f, "  {k:<width$}  {}", lines.next().unwrap_or(""))?;
            for line in lines {
                writeln!(f, "  {:<width$}  {line}", "")?;
            }
        }
        Ok(())
    }
}

fn fields() -> Fields {
    Fields::default()
}

/// At most `max` characters, with `…` where cut (the JSON output has it all).
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The last `max` characters: an error chain ends with its root cause.
fn clip_tail(text: &str, max: usize) -> String {
    let count = text.chars().count();
    match text.char_indices().nth(count.saturating_sub(max)) {
        Some((cut, _)) if cut > 0 => format!("…{}", &text[cut..]),
        _ => text.to_owned(),
    }
}

fn lossy(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(
        || "(none)".to_owned(),
        |b| String::from_utf8_lossy(b).into_owned(),
    )
}

fn quarantine_json(r: &admin::QuarantineRow) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["message_id"] = json!(r.message_id.as_deref().map(|b| String::from_utf8_lossy(b)));
    v["body"] = json!(String::from_utf8_lossy(&r.body));
    v["body_bytes"] = json!(r.body.len());
    v
}

fn outbox_list(rows: &[OutboxRow]) -> String {
    let mut t = table(&[
        "id",
        "state",
        "key",
        "account",
        "amount",
        "attempts",
        "updated",
        "last error",
    ]);
    for r in rows {
        t.add_row(vec![
            r.id.to_string(),
            r.state.as_str().to_owned(),
            format!("{}:{}", r.scope, r.message_id),
            r.account_id.clone(),
            format!("{} {}", r.amount, r.currency),
            r.attempts.to_string(),
            r.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            clip_tail(r.last_error.as_deref().unwrap_or_default(), 60),
        ]);
    }
    format!("{t}\n{} row(s)\n", rows.len())
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".to_owned())
}

fn outbox_show(
    r: &OutboxRow,
    inbox: Option<&admin::InboxRow>,
    attempts: &[AttemptRow],
    audit: &[admin::AuditRow],
) -> String {
    let mut t = fields();
    let mut add = |k: &str, v: String| {
        t.add_row(vec![k.to_owned(), v]);
    };
    add("state", r.state.as_str().to_owned());
    add("key", format!("{}:{}", r.scope, r.message_id));
    add("reference id", r.reference_id.to_string());
    add("account", r.account_id.clone());
    add("amount", format!("{} {}", r.amount, r.currency));
    add("attempts", r.attempts.to_string());
    add(
        "provider charge",
        r.provider_charge_id.clone().unwrap_or_else(|| "-".into()),
    );
    add("created", r.created_at.to_rfc3339());
    add("updated", r.updated_at.to_rfc3339());
    add("settled", time(r.settled_at));
    add("uncertain since", time(r.uncertain_since));
    add("next attempt", r.next_attempt_at.to_rfc3339());
    if let Some(owner) = &r.lease_owner {
        add(
            "lease",
            format!("{owner} until {}", time(r.lease_expires_at)),
        );
    }
    add(
        "last error",
        r.last_error.clone().unwrap_or_else(|| "-".into()),
    );
    if let Some(tp) = &r.traceparent {
        add("traceparent", tp.clone());
    }
    if let Some(reply) = &r.reply_to {
        add(
            "reply to",
            format!(
                "{reply} (correlation {})",
                r.correlation_id.as_deref().unwrap_or("-")
            ),
        );
    }
    add(
        "inbox key",
        match inbox {
            Some(k) => format!(
                "first seen {}, last seen {}, {} duplicate(s), {} conflict(s)",
                k.received_at.to_rfc3339(),
                k.last_seen_at.to_rfc3339(),
                k.duplicates,
                k.conflicts
            ),
            None => "gone (past its retention window)".to_owned(),
        },
    );
    let mut out = format!("outbox row {}\n{t}", r.id);
    let mut h = table(&[
        "#",
        "started",
        "replica",
        "kind",
        "status",
        "latency ms",
        "provider id",
        "error",
    ]);
    for (i, a) in attempts.iter().enumerate() {
        h.add_row(vec![
            (i + 1).to_string(),
            a.started_at.format("%H:%M:%S%.3f").to_string(),
            a.replica.clone(),
            a.kind.clone(),
            a.http_status
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            format!("{:.1}", a.latency_ms),
            a.provider_id.clone().unwrap_or_else(|| "-".into()),
            clip_tail(a.error.as_deref().unwrap_or_default(), 60),
        ]);
    }
    out.push_str(&format!(
        "attempt history ({} call(s))\n{h}\n",
        attempts.len()
    ));
    out.push_str(&format!(
        "result\n{}\n",
        r.result
            .as_ref()
            .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
            .unwrap_or_else(|| "(none yet)".to_owned())
    ));
    out.push_str(&audit_table(audit));
    out
}

fn audit_table(audit: &[admin::AuditRow]) -> String {
    if audit.is_empty() {
        return "audit: no operator actions\n".to_owned();
    }
    let mut t = table(&["audit", "at", "actor", "action", "reason", "details"]);
    for a in audit {
        t.add_row(vec![
            a.id.to_string(),
            a.at.to_rfc3339(),
            a.actor.clone(),
            a.action.clone(),
            a.reason.clone().unwrap_or_default(),
            a.details.to_string(),
        ]);
    }
    format!("audit\n{t}\n")
}

fn print_audit(audit: &[admin::AuditRow]) {
    print!("{}", audit_table(audit));
}
