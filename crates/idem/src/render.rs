//! How the operator commands print: bordered tables, key/value fields, JSON,
//! the audit table every `show` ends with, and cutting long text to fit (the
//! JSON output always has it all).

use comfy_table::{ContentArrangement, Table, presets};
use idem_store::admin::AuditRow;

/// A change's outcome: `value` as JSON with `--json`, else `text`.
pub fn report(json: bool, value: serde_json::Value, text: String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

/// A table with borders only, wrapping to the terminal.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

/// Key/value lines: the key column padded to the longest key.
#[derive(Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// A `[key, value]` line (the value may span lines).
    pub fn add_row(&mut self, row: Vec<String>) {
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

/// Empty key/value lines.
pub fn fields() -> Fields {
    Fields::default()
}

/// At most `max` characters, with `…` where cut (the JSON output has it all).
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The last `max` characters: an error chain ends with its root cause.
pub fn clip_tail(text: &str, max: usize) -> String {
    let count = text.chars().count();
    match text.char_indices().nth(count.saturating_sub(max)) {
        Some((cut, _)) if cut > 0 => format!("…{}", &text[cut..]),
        _ => text.to_owned(),
    }
}

/// Raw bytes as text (lossy), or `(none)`.
pub fn lossy(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(
        || "(none)".to_owned(),
        |b| String::from_utf8_lossy(b).into_owned(),
    )
}

/// A time as RFC 3339, or `-`.
pub fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".to_owned())
}

/// The operator actions on a row, or a line saying there were none.
pub fn audit_table(audit: &[AuditRow]) -> String {
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
