//! What every list command takes (`--after`, `--limit`) and what it prints
//! after its rows: the command hint of the next page, or, for a page cut
//! short by its scan budget, that the scan stopped and how to go on
//! (crates/store/src/admin/page.rs says why a page stops).

use clap::Args;
use idem_store::admin::{MAX_LIMIT, Page};
use serde::Serialize;
use serde_json::json;

/// One page of a list.
#[derive(Args, Debug, Clone)]
pub struct PageArgs {
    /// Continue after this cursor: the `next page: --after <cursor>` the
    /// previous page printed (its JSON's `next`), with the same filters.
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
    /// Most rows on the page (1 to 500).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=MAX_LIMIT))]
    pub limit: i64,
}

/// The lines after a page's table: how many rows, and how to go on.
pub fn footer<T>(page: &Page<T>, noun: &str) -> String {
    let mut out = format!("{} {noun}(s)\n", page.rows.len());
    match &page.next {
        Some(next) if page.scan_limited => out.push_str(&format!(
            "scanned {} rows without filling the page (a filter no index covers): older \
             matches may follow; continue with: --after {next}\n",
            page.examined
        )),
        Some(next) => out.push_str(&format!("next page: --after {next}\n")),
        None => out.push_str("(last page)\n"),
    }
    out
}

/// A page as `--json` prints it: its rows (as `rows` renders them), `next`
/// (`null` on the last page), and what the scan read.
pub fn to_json<T, R: Serialize>(page: &Page<T>, rows: impl FnOnce(&[T]) -> R) -> serde_json::Value {
    json!({
        "rows": rows(&page.rows), "next": page.next, "examined": page.examined,
        "scan_limited": page.scan_limited,
    })
}
