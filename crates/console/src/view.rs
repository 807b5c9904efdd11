//! What every page shares: the frame (title, navigation, the CSRF value its
//! forms carry), errors as pages, the stylesheet, and how values are
//! written. Templates are compiled into the binary (askama) and escape
//! everything they print; bytes that are not text are shown as escapes
//! before they reach a template.

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::Console;

/// The frame of every page.
#[derive(Debug, Clone)]
pub(crate) struct Chrome {
    /// The page's title.
    pub(crate) title: String,
    /// The value this browser's forms carry (see `guard`).
    pub(crate) csrf: String,
    /// Hide every change.
    pub(crate) read_only: bool,
    /// A token is set (the frame offers no sign-out: the cookie is the
    /// token's, see `guard`; it shows that access is guarded).
    pub(crate) signed_in: bool,
}

/// Render `page` as HTML, or an error page if the template fails.
pub(crate) fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered\n",
            )
                .into_response()
        }
    }
}

/// A request that could not be answered with its page: a status, a title
/// and what to do.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    title: String,
    detail: String,
}

impl Failure {
    pub(crate) fn new(
        status: StatusCode,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            title: title.into(),
            detail: detail.into(),
        }
    }

    /// What to do, as the page says it.
    pub(crate) fn detail(&self) -> &str {
        &self.detail
    }

    /// A 400 naming what is wrong with the request.
    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Cannot do that", detail)
    }

    /// A 404.
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", what)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!(error = %e, "console: database");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The database did not answer",
            format!(
                "{e}. Nothing was changed by this request; try again when the database is back."
            ),
        )
    }
}

impl From<idem_store::admin::PageError> for Failure {
    fn from(e: idem_store::admin::PageError) -> Self {
        match e {
            idem_store::admin::PageError::Database(e) => e.into(),
            other => Self::bad_request(other.to_string()),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    chrome: Chrome,
    detail: &'a str,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            chrome: Chrome {
                title: self.title.clone(),
                csrf: String::new(),
                read_only: true,
                signed_in: false,
            },
            detail: &self.detail,
        };
        let mut response = render(&page);
        *response.status_mut() = self.status;
        response
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    chrome: Chrome,
    next: &'a str,
    wrong: Option<&'a str>,
}

/// The sign-in page, going on to `next`.
pub(crate) fn login(_console: &Console, next: &str, wrong: Option<&str>) -> Response {
    render(&LoginPage {
        chrome: Chrome {
            title: "Sign in".to_owned(),
            csrf: String::new(),
            read_only: true,
            signed_in: false,
        },
        next,
        wrong,
    })
}

/// Any other path under the console.
pub(crate) async fn not_found() -> Failure {
    Failure::not_found("No console page here. Start from the overview.")
}

/// The console's stylesheet (its own, small, compiled in).
pub(crate) async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../templates/style.css"),
    )
}

/// A time as the pages write it: UTC to the second.
pub(crate) fn when(t: impl std::borrow::Borrow<DateTime<Utc>>) -> String {
    t.borrow().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// An optional time, `-` when absent.
pub(crate) fn when_opt(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), when)
}

/// Bytes as text a page can show: printable ASCII as is, everything else as
/// `\xNN` (and `\\` for a backslash), so no byte can pass for another.
pub(crate) fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n\n"),
            b' '..=b'~' => out.push(char::from(b)),
            other => out.push_str(&format!("\\x{other:02x}")),
        }
    }
    out
}

/// A hex dump: offset, 16 bytes in hex, the same as escaped text.
pub(crate) fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = chunk
            .iter()
            .map(|&b| {
                if (b' '..=b'~').contains(&b) {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:08x}  {:<47}  {text}\n", i * 16, hex.join(" ")));
    }
    out
}

/// Percent-encode `s` for a query string value.
pub(crate) fn query_value(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// JSON written for reading (two-space indent).
pub(crate) fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Producer or provider text as a page shows it: control characters and
/// the bidi controls that make a line read otherwise (U+202A–U+202E,
/// U+2066–U+2069, U+200E/F, U+061C) as `\u{..}`; the template then escapes
/// the markup. A newline stays a newline.
pub(crate) fn shown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}');
        if (c.is_control() && c != '\n') || bidi {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// A long text [`shown`] and cut for a table cell, with an ellipsis.
pub(crate) fn clip(s: &str, max: usize) -> String {
    let s = shown(s);
    if s.chars().count() <= max {
        s
    } else {
        let mut cut: String = s.chars().take(max).collect();
        cut.push('…');
        cut
    }
}

/// Seconds as the page writes them: `-` when unknown.
pub(crate) fn seconds(s: &Option<f64>) -> String {
    match s {
        None => "-".to_owned(),
        Some(s) if *s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) if *s < 120.0 => format!("{s:.1} s"),
        Some(s) => format!("{:.0} min", s / 60.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_so_that_none_passes_for_another() {
        assert_eq!(escape_bytes(b"ok <b>"), "ok <b>");
        assert_eq!(escape_bytes(b"a\\x41"), "a\\\\x41");
        assert_eq!(escape_bytes(&[0, 0xff, b'\n']), "\\x00\\xff\\n\n");
        assert_eq!(escape_bytes("é".as_bytes()), "\\xc3\\xa9");
    }

    #[test]
    fn a_hex_dump_lines_up() {
        let dump = hex_dump(b"0123456789abcdef\x00");
        let lines: Vec<_> = dump.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("00000000  30 31"), "{dump}");
        assert!(lines[0].ends_with("0123456789abcdef"), "{dump}");
        assert!(lines[1].starts_with("00000010  00 "), "{dump}");
        assert!(lines[1].ends_with("  ."), "{dump}");
    }

    #[test]
    fn controls_and_bidi_overrides_are_shown_as_escapes() {
        assert_eq!(
            shown("a\u{1b}[31mb\u{202e}c\nd"),
            "a\\u{1b}[31mb\\u{202e}c\nd"
        );
        assert_eq!(shown("plain <b>"), "plain <b>");
    }

    #[test]
    fn long_texts_are_clipped_on_characters() {
        assert_eq!(clip("ééé", 2), "éé…");
        assert_eq!(clip("ab", 2), "ab");
    }
}
