//! `idem outbox list|show|retry|resolve`: outbox rows with their attempt
//! history, and the two hand changes, each with its audit row in the change's
//! transaction (crates/store/src/admin/outbox.rs). `list` and `show` only
//! read: they never create or migrate a database. `list` is in `list`,
//! `retry` by filter in `bulk`.

mod bulk;
mod list;

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use idem_store::OutboxState;
use idem_store::admin::{self, InboxRow, OutboxRow, OutboxSelector, Refused, Resolution};
use idem_store::attempt::{self, AttemptRow};
use serde_json::json;

use self::bulk::RetryFilterArgs;

use crate::operator::{Common, Why};
use crate::render::{
    audit_table, clip_tail, escape, escape_lines, fields, report, row, table, time,
};

/// `idem outbox ...`.
#[derive(Args, Debug)]
pub struct OutboxCommand {
    #[command(subcommand)]
    pub action: OutboxAction,
}

/// What to do with outbox rows.
#[derive(Subcommand, Debug)]
pub enum OutboxAction {
    /// List rows by filter, newest first, a page at a time.
    List(Box<list::ListArgs>),
    /// One row: its columns, inbox key, attempt history, result and audit.
    Show {
        #[command(flatten)]
        common: Common,
        /// Row id, reference id (UUID), or scope:message_id.
        selector: String,
    },
    /// Put dead rows back in play (dead -> pending, attempts reset): one by
    /// id, or every row a filter matches, in batches, as one audited action.
    Retry {
        #[command(flatten)]
        common: Common,
        /// Row id; without it, the rows the filter flags select.
        id: Option<i64>,
        /// By filter: the rows' state. Only `dead` rows are retried by hand;
        /// the others are refused, saying why.
        #[arg(long, value_enum, default_value = "dead", conflicts_with = "id")]
        state: StateArg,
        #[command(flatten)]
        filter: Box<RetryFilterArgs>,
        /// Retry although the last outcome was uncertain (the charge may exist
        /// at the provider and is sent again). By filter: without it, such
        /// rows are left dead and counted.
        #[arg(long)]
        force: bool,
        /// Who is acting (default: the OS user running the command).
        #[arg(long, env = "IDEM_ACTOR")]
        actor: Option<String>,
        /// Why: kept in the audit table with the change (not needed with --dry-run).
        #[arg(long, required_unless_present = "dry_run")]
        reason: Option<String>,
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
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
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

/// `idem outbox ...`.
pub async fn run(cmd: OutboxCommand) -> anyhow::Result<()> {
    match cmd.action {
        OutboxAction::List(args) => list::list(*args).await,
        OutboxAction::Show { common, selector } => show(common, &selector).await,
        OutboxAction::Retry {
            common,
            id,
            state,
            filter,
            force,
            actor,
            reason,
        } => {
            let why = Why {
                actor,
                reason: reason.unwrap_or_default(),
            };
            match id {
                Some(id) => retry(common, id, force, why).await,
                None => bulk::retry(common, state.into(), *filter, force, why).await,
            }
        }
        OutboxAction::Resolve {
            common,
            id,
            resolution,
            charge_id,
            force,
            why,
        } => resolve(common, id, resolution, charge_id, force, why).await,
    }
}

async fn show(common: Common, selector: &str) -> anyhow::Result<()> {
    let selector: OutboxSelector = selector.parse().map_err(anyhow::Error::msg)?;
    let pool = common.read_only().await?;
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

async fn retry(common: Common, id: i64, force: bool, why: Why) -> anyhow::Result<()> {
    let actor = why.actor()?;
    let pool = common.for_change().await?;
    let mut conn = pool.acquire().await?;
    let action = why.action(&actor, force);
    let audit_id = refused(admin::retry_dead(&mut conn, id, &action).await)?;
    report(
        common.json,
        json!({"outbox_id": id, "state": "pending", "audit_id": audit_id, "actor": actor}),
        format!("outbox row {id}: dead -> pending (due now); audit #{audit_id} by {actor}"),
    )
}

async fn resolve(
    common: Common,
    id: i64,
    resolution: ResolutionArg,
    charge_id: Option<String>,
    force: bool,
    why: Why,
) -> anyhow::Result<()> {
    let actor = why.actor()?;
    if charge_id.is_some() && matches!(resolution, ResolutionArg::Declined) {
        bail!("--charge-id goes with --as succeeded only");
    }
    let pool = common.for_change().await?;
    let mut conn = pool.acquire().await?;
    let action = why.action(&actor, force);
    let (resolution, state) = match resolution {
        ResolutionArg::Succeeded => (Resolution::Succeeded, "succeeded"),
        ResolutionArg::Declined => (Resolution::Declined, "declined"),
    };
    let audit_id =
        refused(admin::resolve(&mut conn, id, resolution, charge_id.as_deref(), &action).await)?;
    report(
        common.json,
        json!({"outbox_id": id, "state": state, "audit_id": audit_id, "actor": actor}),
        format!("outbox row {id}: resolved as {state}; audit #{audit_id} by {actor}"),
    )
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

fn outbox_show(
    r: &OutboxRow,
    inbox: Option<&InboxRow>,
    attempts: &[AttemptRow],
    audit: &[admin::AuditRow],
) -> String {
    let mut out = format!("outbox row {}\n{}", r.id, row_fields(r, inbox));
    out.push_str(&format!(
        "attempt history ({} call(s))\n{}\n",
        attempts.len(),
        attempt_table(attempts)
    ));
    out.push_str(&format!(
        "result\n{}\n",
        r.result
            .as_ref()
            .map(|v| escape_lines(&serde_json::to_string_pretty(v).unwrap_or_default()))
            .unwrap_or_else(|| "(none yet)".to_owned())
    ));
    out.push_str(&audit_table(audit));
    out
}

/// The row's columns an operator reads first, and its inbox key.
fn row_fields(r: &OutboxRow, inbox: Option<&InboxRow>) -> String {
    let mut t = fields();
    let mut add = |k: &str, v: String| {
        t.add_row(vec![k.to_owned(), escape(&v)]);
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
    t.to_string()
}

/// Every provider call made for the row, in order.
fn attempt_table(attempts: &[AttemptRow]) -> comfy_table::Table {
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
        h.add_row(row(vec![
            (i + 1).to_string(),
            a.started_at.format("%H:%M:%S%.3f").to_string(),
            a.replica.clone(),
            a.kind.clone(),
            a.http_status
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            format!("{:.1}", a.latency_ms),
            a.provider_id.clone().unwrap_or_else(|| "-".into()),
            clip_tail(a.error.as_deref().unwrap_or_default(), 60),
        ]));
    }
    h
}
