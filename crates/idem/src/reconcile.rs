//! `idem reconcile`: one run over a window, then its report. The periodic
//! job inside `idem run` is the daemon's; this is the operator's one-shot.

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::Args;
use idem_daemon::RunArgs;
use idem_reconcile::{Reconciler, Window};

/// `idem reconcile`: one run over a window, then a report.
#[derive(Args, Debug)]
pub struct ReconcileCommand {
    /// Database, provider and reconciler settings: the same flags and
    /// variables as `idem run`.
    #[command(flatten)]
    pub run: Box<RunArgs>,
    /// Window: charges created in the last this many hours, up to now (an
    /// open window: missing charges and unknown rows are judged too).
    #[arg(long, default_value_t = 24, conflicts_with = "from")]
    pub since_hours: u64,
    /// Window start instead (RFC 3339, e.g. 2026-11-22T00:00:00Z).
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// Window end (RFC 3339); absent: now (open). A closed window only
    /// compares the charges it lists.
    #[arg(long, requires = "from")]
    pub to: Option<DateTime<Utc>>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `idem reconcile`.
pub async fn execute(cmd: ReconcileCommand) -> anyhow::Result<()> {
    let config = cmd.run.validate()?;
    let window = match cmd.from {
        Some(from) => {
            if let Some(to) = cmd.to
                && to <= from
            {
                bail!("--to must be after --from");
            }
            Window { from, to: cmd.to }
        }
        None => Window {
            from: Utc::now() - chrono::Duration::hours(i64::try_from(cmd.since_hours)?),
            to: None,
        },
    };
    let pool = idem_store::connect(&config.database_url, 4).await?;
    idem_store::migrate(&pool).await?;
    let client = config.charge_client()?;
    let reconciler = Reconciler::new(pool, client, config.reconcile.reconciler.clone());
    let report = reconciler.run_once(window).await?;
    if cmd.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
