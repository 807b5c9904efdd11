//! The opaque cursors of the list pages: `<list>.<time>.<id>`, the key of the
//! last row a page read (`<time>`: microseconds since the epoch, `-` where the
//! list has no time key or the row none). Parsed from whatever bytes an
//! operator (or an attacker) types: anything else is refused by name, never a
//! panic. The list name makes a cursor of one list useless for another, whose
//! order differs.

use chrono::{DateTime, Utc};

use super::PageError;

/// A cursor longer than this is no cursor of ours (ours are under 40 bytes):
/// refused before any other look at it.
const MAX_CURSOR: usize = 64;

/// A decoded cursor: the key of the last row read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    /// The time key (`None`: the list has none, or the row had none).
    pub ts: Option<DateTime<Utc>>,
    /// The row id, the tie-breaker of every order.
    pub id: i64,
}

/// The cursor continuing list `list` after the row keyed `(ts, id)`.
pub(super) fn encode(list: &str, ts: Option<DateTime<Utc>>, id: i64) -> String {
    match ts {
        Some(ts) => format!("{list}.{}.{id}", ts.timestamp_micros()),
        None => format!("{list}.-.{id}"),
    }
}

/// The cursor `text` of list `list`; `needs_ts`: the list's order has a time
/// key every row holds.
pub(super) fn decode(text: &str, list: &str, needs_ts: bool) -> Result<Cursor, PageError> {
    let bad = |why: &str| PageError::BadCursor(format!("{}: {why}", shown(text)));
    if text.len() > MAX_CURSOR {
        return Err(bad(&format!(
            "longer than any cursor ({} bytes, at most {MAX_CURSOR}); copy the `next` of the \
             previous page",
            text.len()
        )));
    }
    let mut parts = text.split('.');
    let (Some(tag), Some(ts), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "not a cursor (expected <list>.<time>.<id>, as the `next` of a page)",
        ));
    };
    if tag != list {
        return Err(bad(&format!(
            "a cursor of the {tag:?} list, not of this one ({list:?}): a cursor continues the \
             list, and the filters, it came from; start again without it"
        )));
    }
    let id = number(id).ok_or_else(|| bad("its row id is not a number"))?;
    let ts = match ts {
        "-" if needs_ts => return Err(bad("this list's cursor needs a time")),
        "-" => None,
        micros => Some(
            number(micros)
                .and_then(DateTime::from_timestamp_micros)
                .ok_or_else(|| bad("its time is not a number of microseconds in range"))?,
        ),
    };
    Ok(Cursor { ts, id })
}

/// A decimal `i64`, digits only (an optional leading `-`): no `+`, no spaces.
fn number(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `text` as an error message shows it: escaped, and cut to 40 characters
/// (an attacker's megabyte is not echoed back).
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(40).collect();
    if cut.len() < text.len() {
        format!("cursor {cut:?}...")
    } else {
        format!("cursor {cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips() {
        let ts = DateTime::from_timestamp_micros(1_764_590_400_123_456);
        let text = encode("dead", ts, 42);
        assert_eq!(text, "dead.1764590400123456.42");
        assert_eq!(
            decode(&text, "dead", true).ok(),
            Some(Cursor { ts, id: 42 })
        );
        let text = encode("id", None, 7);
        assert_eq!(
            decode(&text, "id", false).ok(),
            Some(Cursor { ts: None, id: 7 })
        );
    }

    #[test]
    fn a_wrong_cursor_says_what_is_wrong() {
        let cases = [
            ("", "not a cursor"),
            ("id.-.7.8", "not a cursor"),
            ("dead.-.7", "of the \"dead\" list"),
            ("id.-.x7", "not a number"),
            ("id.-.+7", "not a number"),
            ("id.-.99999999999999999999", "not a number"),
            ("id.9999999999999999999.7", "time is not"),
            (&"a".repeat(65), "longer than any cursor"),
        ];
        for (text, says) in cases {
            let e = decode(text, "id", false).expect_err(text).to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        let e = decode("due.-.1", "due", true).expect_err("no time");
        assert!(e.to_string().contains("needs a time"), "{e}");
    }

    proptest::proptest! {
        /// Any bytes typed as a cursor: refused with a reason, or read as a
        /// key whose own cursor reads back the same; never a panic.
        #[test]
        fn any_bytes_are_a_cursor_or_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let text = String::from_utf8_lossy(&bytes);
            for (list, needs_ts) in [("dead", false), ("due", true), ("audit", false)] {
                match decode(&text, list, needs_ts) {
                    Ok(c) => proptest::prop_assert_eq!(decode(&encode(list, c.ts, c.id), list, needs_ts).ok(), Some(c)),
                    Err(e) => proptest::prop_assert!(e.to_string().starts_with("bad cursor: cursor ")),
                }
            }
        }

        /// Cursors that look almost right: digits, dots, signs in any order.
        #[test]
        fn near_cursors_are_a_cursor_or_refused(text in "(dead|due)?[.0-9+-]{0,30}") {
            if decode(&text, "dead", false).is_ok() {
                proptest::prop_assert!(text.starts_with("dead."));
            }
        }
    }
}
