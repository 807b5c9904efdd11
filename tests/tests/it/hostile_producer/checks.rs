//! What the hostile-producer suite checks once the run is over: per class
//! (rows, reasons, charges), in the tables as a whole, and per replica
//! (alive, reconnects, peak RSS); each failure as a sentence for the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use idem_tests::TestEnv;
use idem_tests::hostile::{self, Expect, Outcome, Published, QuarantineRow, Replica};

use super::{REPLICAS, RSS_BOUND_KIB, Run};

/// Lines of a replica's output worth showing when it failed.
const TELLING: [&str; 7] = [
    "overflow",
    "fatal",
    "panicked",
    "parse error",
    "reconnecting",
    "quarantine",
    "dead-letter",
];

/// `run`'s outcome from the quarantine `rows` and the provider's charges.
pub fn outcome(
    run: &Run,
    rows: &[QuarantineRow],
    by_reference: &BTreeMap<String, usize>,
    by_account: &BTreeMap<&str, usize>,
) -> Outcome {
    let mut o = Outcome {
        class: run.class.name,
        detail: run.class.detail.clone(),
        expected: run.class.expect.as_str(),
        messages: run.class.messages.len(),
        valid: run.valid.len(),
        ..Outcome::default()
    };
    for (message, published) in run.class.messages.iter().zip(&run.published) {
        o.hostile_charged += by_account
            .get(message.marker.as_str())
            .copied()
            .unwrap_or(0);
        if let Published::Refused(why) = published {
            o.refusals.push(why.clone());
            continue;
        }
        o.accepted += 1;
        let mine: Vec<&QuarantineRow> = rows.iter().filter(|r| r.is_of(&message.marker)).collect();
        let Some(row) = mine.first() else { continue };
        o.quarantined += 1;
        o.via_dead_letters += mine.iter().filter(|r| r.dead_letter.is_some()).count();
        o.extra_rows += mine.len() - 1;
        if mine.len() > 1 {
            let rows: Vec<String> = mine.iter().map(|r| describe(r)).collect();
            o.duplicates
                .push(format!("{}: {}", message.marker, rows.join(", ")));
        }
        o.reasons.insert(row.reason_code.clone());
        let kept_id = row.message_id.is_some() && row.message_id == message.message_id;
        let kept_header = row.kept_header(message);
        o.kept_message_id += usize::from(kept_id);
        o.kept_header += usize::from(kept_header);
        o.kept_nothing_raw += usize::from(!kept_id && !kept_header);
    }
    for m in &run.valid {
        let id = m.message_id.as_deref().unwrap();
        let reference = idem_message::reference_id("default", id).to_string();
        match by_reference.get(&reference).copied().unwrap_or(0) {
            0 => {}
            1 => o.valid_once += 1,
            _ => o.valid_doubled += 1,
        }
    }
    o
}

/// A row in a few words: id, code, where idem found the message.
fn describe(row: &QuarantineRow) -> String {
    let origin = row.dead_letter.as_ref().map_or_else(
        || "from the work queue".to_owned(),
        |why| format!("from the dead-letter queue, {why}"),
    );
    let header = if row.raw_header.is_some() {
        ", raw header"
    } else {
        ""
    };
    format!("row {} ({}, {origin}{header})", row.id, row.reason_code)
}

/// Each class's broken promises.
pub fn outcome_failures(runs: &[Run], outcomes: &[Outcome]) -> Vec<String> {
    let mut failures = Vec::new();
    for (run, o) in runs.iter().zip(outcomes) {
        let c = o.class;
        match &run.class.expect {
            Expect::Quarantined {
                reasons,
                keeps_message_id,
            } => quarantine_failures(o, reasons, *keeps_message_id, &mut failures),
            Expect::ChargedOnce => {
                if o.hostile_charged != o.accepted || o.quarantined > 0 {
                    failures.push(format!(
                        "{c}: {} charges and {} quarantine rows for {} messages to charge once",
                        o.hostile_charged, o.quarantined, o.accepted
                    ));
                }
            }
        }
        if o.valid_once < o.valid || o.valid_doubled > 0 {
            failures.push(format!(
                "{c}: {} of {} valid charges behind it charged once ({} more than once)",
                o.valid_once, o.valid, o.valid_doubled
            ));
        }
        if !o.refusals.is_empty() {
            // Not a failure of idem: the broker never queued them. Said so
            // that the table's "refused" is explained.
            println!("{c}: the broker refused {:?}", o.refusals);
        }
    }
    failures
}

fn quarantine_failures(
    o: &Outcome,
    reasons: &[&str],
    keeps_message_id: bool,
    failures: &mut Vec<String>,
) {
    let c = o.class;
    if o.quarantined < o.accepted {
        failures.push(format!(
            "{c}: {} of {} accepted hostile messages have a quarantine row",
            o.quarantined, o.accepted
        ));
    }
    if o.extra_rows > 0 {
        failures.push(format!(
            "{c}: quarantined more than once: {}",
            o.duplicates.join("; ")
        ));
    }
    if o.hostile_charged > 0 {
        failures.push(format!(
            "{c}: {} hostile messages CHARGED",
            o.hostile_charged
        ));
    }
    let unexpected: Vec<&String> = o
        .reasons
        .iter()
        .filter(|r| r.is_empty() || (!reasons.is_empty() && !reasons.contains(&r.as_str())))
        .collect();
    if !unexpected.is_empty() {
        failures.push(format!(
            "{c}: reason codes {unexpected:?}, expected {reasons:?}"
        ));
    }
    if keeps_message_id && o.kept_message_id < o.quarantined {
        failures.push(format!(
            "{c}: {} of {} rows kept the message_id bytes as sent",
            o.kept_message_id, o.quarantined
        ));
    }
    if o.kept_nothing_raw > 0 {
        failures.push(format!(
            "{c}: {} rows kept neither the message_id nor the header as sent",
            o.kept_nothing_raw
        ));
    }
}

/// What the tables and the provider hold beyond the per-class view: no
/// quarantine row that is not a hostile message's, no outbox row and no
/// charge for a hostile message but those to be charged.
pub async fn table_failures(env: &TestEnv, runs: &[Run]) -> Vec<String> {
    let mut failures = Vec::new();
    let markers: Vec<&str> = runs
        .iter()
        .flat_map(|r| r.class.messages.iter().map(|m| m.marker.as_str()))
        .collect();
    let to_charge: Vec<&str> = runs
        .iter()
        .filter(|r| matches!(r.class.expect, Expect::ChargedOnce))
        .flat_map(|r| r.class.messages.iter().map(|m| m.marker.as_str()))
        .collect();
    let rows = hostile::quarantine_rows(&env.pool).await;
    for row in rows.iter().filter(|r| !markers.iter().any(|m| r.is_of(m))) {
        failures.push(format!(
            "quarantine row {} ({}) is no hostile message's: {:?}",
            row.id,
            row.reason_code,
            String::from_utf8_lossy(&row.body[..row.body.len().min(120)])
        ));
    }
    let in_outbox: Vec<String> =
        sqlx::query_scalar("SELECT account_id FROM outbox WHERE account_id LIKE 'hostile-%'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for account in in_outbox
        .iter()
        .filter(|a| !to_charge.contains(&a.as_str()))
    {
        failures.push(format!("hostile message {account} has an outbox row"));
    }
    let expected = runs.iter().map(|r| r.valid.len()).sum::<usize>() + to_charge.len();
    let charged = env.sim.ledger().charges.len();
    if charged > expected {
        failures.push(format!(
            "{charged} charges at the provider, {expected} expected"
        ));
    }
    failures
}

/// Each replica's consumer reconnects (metric), `None` where `/metrics` is down.
pub async fn reconnects(replicas: &[Replica]) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for replica in replicas {
        out.push(replica.reconnects_metric().await);
    }
    out
}

/// Dead replicas, reconnect loops, sessions lost more often than there are
/// hostile messages, peak RSS over the bound; with log excerpts.
pub fn replica_failures(
    replicas: &[Replica],
    before_quiet: &[Option<u64>],
    after_quiet: &[Option<u64>],
    runs: &[Run],
) -> Vec<String> {
    let hostile = runs
        .iter()
        .flat_map(|r| &r.published)
        .filter(|p| matches!(p, Published::Accepted))
        .count() as u64;
    let mut failures = Vec::new();
    for ((r, before), after) in replicas.iter().zip(before_quiet).zip(after_quiet) {
        let mut wrong = Vec::new();
        if let Some(death) = r.death() {
            wrong.push(format!("died: {death}"));
        }
        match (before, after) {
            (Some(b), Some(a)) if a > b => wrong.push(format!(
                "reconnect loop: {} more reconnects in the quiet window ({b} -> {a})",
                a - b
            )),
            (_, Some(a)) if *a > hostile => wrong.push(format!(
                "lost its consumer session {a} times for {hostile} hostile messages"
            )),
            (_, None) if r.death().is_none() => wrong.push("/metrics does not answer".into()),
            _ => {}
        }
        if r.peak_rss_kib() > RSS_BOUND_KIB {
            wrong.push(format!(
                "peak RSS {} KiB over the bound of {RSS_BOUND_KIB} KiB",
                r.peak_rss_kib()
            ));
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n{}", r.name, wrong.join("; "), excerpt(r)));
        }
    }
    failures
}

/// The first few telling lines of a replica's output, and its last ones.
fn excerpt(r: &Replica) -> String {
    let mut out = String::new();
    for needle in TELLING {
        let lines = r.lines_with(needle);
        if let Some(first) = lines.first() {
            let _ = writeln!(out, "  [{needle}] x{}: {}", lines.len(), clip(first));
        }
    }
    let _ = write!(out, "  last lines:\n{}", r.tail(5));
    out
}

fn clip(line: &str) -> &str {
    match line.char_indices().nth(400) {
        Some((at, _)) => &line[..at],
        None => line,
    }
}

/// Per replica: alive or how it died, reconnects (metric and log lines),
/// peak RSS; Markdown.
pub fn replica_table(replicas: &[Replica], reconnects: &[Option<u64>]) -> String {
    let mut out = format!(
        "| replica (of {REPLICAS}) | alive at the end | consumer reconnects (metric / log lines) | \
         peak RSS (bound {} MiB) | RSS at the end |\n| --- | --- | --- | --- | --- |\n",
        RSS_BOUND_KIB / 1024
    );
    for (r, n) in replicas.iter().zip(reconnects) {
        let alive = r
            .death()
            .map_or_else(|| "yes".to_owned(), |d| format!("no: {d}"));
        let metric = n.map_or_else(|| "–".to_owned(), |n| n.to_string());
        let now = r.rss_now_kib().map_or_else(
            || "–".to_owned(),
            |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
        );
        let _ = writeln!(
            out,
            "| {} | {alive} | {metric} / {} | {:.1} MiB | {now} |",
            r.name,
            r.lines_with(idem_tests::hostile::RECONNECT_LINE).len(),
            r.peak_rss_kib() as f64 / 1024.0
        );
    }
    out
}
