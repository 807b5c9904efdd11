//! How the operator commands print: bordered tables, key/value fields, JSON,
//! the audit table every `show` ends with, and cutting long text to fit (the
//! JSON output always has it all).
//!
//! Producers and the provider choose much of what these commands print (keys,
//! bodies, headers, error text), and a terminal obeys what it is sent: an
//! escape sequence can rewrite the screen, a carriage return or bidi override
//! can make a line say something else. So every table cell and field passes
//! through [`escape`] (the `--json` output is escaped by serde_json, which
//! writes C0 controls as `\u001b`; the rest is valid JSON text).

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
    /// A `[key, value]` line (the value may span lines: its newlines are
    /// kept, every other control escaped, see [`escape_lines`]).
    pub fn add_row(&mut self, row: Vec<String>) {
        let mut row = row.into_iter().map(|cell| escape_lines(&cell));
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

/// Raw bytes as escaped text ([`escape_bytes`]), or `(none)`.
pub fn raw(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(|| "(none)".to_owned(), escape_bytes)
}

/// A table row with every cell [`escape`]d.
pub fn row(cells: Vec<String>) -> Vec<String> {
    cells.iter().map(|cell| escape(cell)).collect()
}

/// `text` with nothing a terminal acts on: control characters (C0 with
/// newline and tab, DEL, C1 U+0080..U+009F), bidi controls (U+061C,
/// U+200E/F, U+202A..U+202E, U+2066..U+2069) and line/paragraph separators
/// become `\u{1b}`-style escapes. A backslash is left alone, so a producer
/// can spell an escape; the bytes it stands for are never sent.
pub fn escape(text: &str) -> String {
    escape_with(text, false)
}

/// [`escape`], keeping newlines: for text laid out in lines by idem itself
/// (pretty JSON, whose strings cannot hold a raw newline).
pub fn escape_lines(text: &str) -> String {
    escape_with(text, true)
}

/// Raw bytes as [`escape`]d text, each byte that is not UTF-8 as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(&escape(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn escape_with(text: &str, keep_newlines: bool) -> String {
    if !text.chars().any(|c| needs_escape(c, keep_newlines)) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c, keep_newlines) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char, keep_newlines: bool) -> bool {
    if c == '\n' {
        return !keep_newlines;
    }
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
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
        t.add_row(row(vec![
            a.id.to_string(),
            a.at.to_rfc3339(),
            a.actor.clone(),
            a.action.clone(),
            a.reason.clone().unwrap_or_default(),
            a.details.to_string(),
        ]));
    }
    format!("audit\n{t}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a terminal must never receive raw.
    fn hostile(c: char) -> bool {
        c.is_control()
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    }

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        let text = "a\u{1b}[2Jb\rc\u{7}d\u{8}e\u{85}f\u{9b}g\u{202e}h\u{2066}i\nj\tk";
        let out = escape(text);
        assert_eq!(
            out,
            "a\\u{1b}[2Jb\\u{d}c\\u{7}d\\u{8}e\\u{85}f\\u{9b}g\\u{202e}h\\u{2066}i\\u{a}j\\u{9}k"
        );
        assert!(!out.chars().any(hostile), "{out:?}");
        assert_eq!(escape("plain café €"), "plain café €");
    }

    #[test]
    fn lines_keep_their_newlines_only() {
        assert_eq!(escape_lines("a\nb\r\u{1b}"), "a\nb\\u{d}\\u{1b}");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        assert_eq!(escape_bytes(b"id-\xff\xfe\x1b!"), "id-\\xff\\xfe\\u{1b}!");
        assert_eq!(raw(None), "(none)");
    }

    #[test]
    fn escaping_twice_changes_nothing_more() {
        let once = escape("\u{1b}\u{202e}\r");
        assert_eq!(escape(&once), once);
        assert_eq!(escape_lines(&once), once);
    }

    #[test]
    fn fields_and_rows_escape_every_cell() {
        let mut f = fields();
        f.add_row(vec!["k\u{1b}".to_owned(), "line 1\nline\r2".to_owned()]);
        let out = f.to_string();
        assert!(!out.contains('\u{1b}') && !out.contains('\r'), "{out:?}");
        assert!(out.contains("line\\u{d}2"), "{out:?}");
        assert_eq!(row(vec!["\u{9b}".to_owned()]), ["\\u{9b}"]);
    }
}
