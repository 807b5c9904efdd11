//! `idem status`: counts per state, as a table or JSON. Only reads: it never
//! creates or migrates a database.

use std::fmt::Write;

use idem_daemon::config::DatabaseArgs;
use idem_store::status::Status;

/// Print the status of the database named by `db`: it must exist with this
/// release's schema (else one line says to run `idem migrate`).
pub async fn print(db: &DatabaseArgs, json: bool) -> anyhow::Result<()> {
    let pool = idem_store::connect_existing(&db.database_url, 2).await?;
    let mut conn = pool.acquire().await?;
    let status = idem_store::status::read(&mut conn).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}

/// The human table.
pub fn table(s: &Status) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: i64| {
        let _ = writeln!(out, "{k:<22} {v:>10}");
    };
    row("inbox keys", s.inbox_keys);
    row("duplicates absorbed", s.duplicates);
    row("key conflicts", s.conflicts);
    row("quarantined", s.quarantined);
    for (state, n) in &s.outbox {
        row(&format!("outbox {state}"), *n);
    }
    row("expired leases", s.expired_leases);
    out
}
