//! What the provider sends, made safe before idem stores, logs or publishes
//! it: an answer is read up to [`MAX_BODY`] bytes, texts lose what a
//! terminal or a log viewer acts on and are cut to a bound, error codes are
//! kept only when they look like codes, a charge is used only when its fields
//! are within bounds, and an id is percent-encoded before it goes into a path.
//! A provider that is buggy or compromised is as hostile as a producer.

use idem_charge_api::Charge;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Bytes left as they are in a path segment: letters, digits, `_`, `-`, `~`
/// (RFC 3986's unreserved, less `.`, so no id can become `..`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'_').remove(b'-').remove(b'~');

/// Most bytes of one answer's body that are read; past that the answer is
/// refused unread (a success then counts as uncertain: money may have moved).
pub const MAX_BODY: usize = 1024 * 1024;
/// Most bytes of a provider text (an error body, a transport error) kept.
pub const MAX_TEXT: usize = 1024;
/// Most bytes of an error code (`card_declined`).
const MAX_CODE: usize = 64;
/// What an error code that does not look like one becomes.
pub const UNRECOGNISED: &str = "unrecognised";

/// `raw` with control characters (C0, DEL, C1), bidi controls and line
/// separators written as `\u{..}`, cut to `max` bytes on a character boundary.
pub fn text(raw: &str, max: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max));
    for c in raw.chars() {
        let piece = if needs_escape(c) {
            format!("\\u{{{:x}}}", u32::from(c))
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > max {
            out.push('…');
            break;
        }
        out.push_str(&piece);
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// A provider error code, if it looks like one (`[A-Za-z0-9_.-]{1,64}`);
/// else [`UNRECOGNISED`]. Codes reach result events and dashboards' labels.
pub fn code(raw: &str) -> String {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_CODE
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        raw.to_owned()
    } else {
        UNRECOGNISED.to_owned()
    }
}

/// `charge` if every field is within bounds: an id of 1..=255 bytes of
/// `[A-Za-z0-9_.:-]` starting with a letter or digit (it goes into paths,
/// logs and our rows), a reference of
/// at most 64 bytes, an account of at most 255, a currency of at most 16 and a
/// status of at most 32 bytes, none with a control character. Else why not.
pub fn checked(charge: Charge) -> Result<Charge, String> {
    let id_ok = charge
        .id
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && charge.id.len() <= 255
        && charge
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if !id_ok {
        return Err(format!(
            "a charge id that is not 1..=255 bytes of [A-Za-z0-9_.:-]: {}",
            text(&charge.id, 80)
        ));
    }
    for (field, value, max) in [
        ("reference_id", &charge.reference_id, 64),
        ("account_id", &charge.account_id, 255),
        ("currency", &charge.currency, 16),
        ("status", &charge.status, 32),
    ] {
        if value.len() > max || value.chars().any(needs_escape) {
            return Err(format!(
                "charge {}: {field} over {max} bytes or holding control characters: {}",
                charge.id,
                text(value, 80)
            ));
        }
    }
    Ok(charge)
}

/// `id` as one path segment: every byte but letters and digits
/// percent-encoded, so an id can never add a segment or a query.
pub fn path_segment(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// The body of `response`, read up to [`MAX_BODY`] bytes: `Err` says the body
/// was lost midway or was longer than that (the rest is not read).
pub async fn read_body(response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| text(&e.to_string(), MAX_TEXT))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("body longer than {MAX_BODY} bytes: not read"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(id: &str) -> Charge {
        Charge {
            id: id.into(),
            reference_id: "r".into(),
            account_id: "acc".into(),
            amount: 1,
            currency: "EUR".into(),
            status: "succeeded".into(),
            created: 1,
        }
    }

    #[test]
    fn texts_lose_terminal_controls_and_are_cut() {
        assert_eq!(
            text("ok \u{1b}[2J\r\u{202e}x", 100),
            "ok \\u{1b}[2J\\u{d}\\u{202e}x"
        );
        let long = "é".repeat(2000);
        let cut = text(&long, MAX_TEXT);
        assert!(cut.len() <= MAX_TEXT + '…'.len_utf8(), "{}", cut.len());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn codes_ids_and_paths_are_bounded() {
        assert_eq!(code("card_declined"), "card_declined");
        assert_eq!(code("\u{1b}]0;x\u{7}"), UNRECOGNISED);
        assert_eq!(code(&"a".repeat(65)), UNRECOGNISED);
        assert_eq!(code(""), UNRECOGNISED);
        assert!(checked(charge("ch_0000001")).is_ok());
        assert!(checked(charge("ch/../../admin")).is_err());
        assert!(checked(charge(&"c".repeat(256))).is_err());
        let mut bad = charge("ch_1");
        bad.status = "succeeded\u{1b}[31m".into();
        assert!(checked(bad).is_err());
        assert!(checked(charge("..")).is_err(), "no dot segment");
        assert_eq!(path_segment("ch_1"), "ch_1");
        assert_eq!(path_segment("a/b?c.d"), "a%2Fb%3Fc%2Ed");
    }
}
