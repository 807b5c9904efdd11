//! Who may use the console, and what a request must carry to change rows.
//!
//! - **Token** (`IDEM_CONSOLE_TOKEN`): every page needs `Authorization:
//!   Bearer <token>` or the session cookie the login form sets. The cookie
//!   holds HMAC(token, "session"), not the token, so the same cookie works on
//!   every replica and stops working when the token changes.
//! - **No token** (loopback only, see `settings`): the `Host` header must
//!   name loopback. Otherwise a page on any site whose name an attacker
//!   points at 127.0.0.1 (DNS rebinding) would be same-origin with the
//!   console and could read its forms.
//! - **Changes** (POST): refused in read-only mode; refused when the browser
//!   says the request comes from another site (`Sec-Fetch-Site`, `Origin`);
//!   and every form carries a CSRF value, HMAC(key, nonce), where the nonce
//!   is this browser's `HttpOnly; SameSite=Strict` cookie. Another site can
//!   neither read the value nor make the browser send the cookie.
//! - Every response says: no scripts or anything from elsewhere (CSP), no
//!   framing, no caching, no referrer to other sites.

use std::time::Duration;

use axum::Form;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::Deserialize;
use sha2::Sha256;

use crate::settings::Token;
use crate::view::{self, Chrome, Failure};
use crate::{BASE, Console};

type HmacSha256 = Hmac<Sha256>;

/// The session cookie: HMAC(token, "session").
const SESSION: &str = "idem_console_session";
/// This browser's CSRF nonce.
const NONCE: &str = "idem_console_nonce";

/// The keys of the session and CSRF values.
pub(crate) struct Keys {
    /// The session cookie's value; `None` without a token.
    session: Option<String>,
    /// Signs CSRF nonces: derived from the token (so replicas behind one
    /// address agree), else random per process.
    csrf: [u8; 32],
}

impl Keys {
    pub(crate) fn new(token: Option<&Token>) -> Self {
        match token {
            Some(t) => Self {
                session: Some(hex::encode(mac(t.expose(), b"idem-console session v1"))),
                csrf: mac(t.expose(), b"idem-console csrf v1"),
            },
            None => {
                let mut csrf = [0; 32];
                rand::rng().fill_bytes(&mut csrf);
                Self {
                    session: None,
                    csrf,
                }
            }
        }
    }
}

fn mac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut m = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Whether `given` equals `expected`, in time independent of where they
/// differ (both are hashed first, so lengths leak nothing either).
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut m =
        HmacSha256::new_from_slice(b"idem-console compare").unwrap_or_else(|_| unreachable!());
    m.update(expected);
    let expected = m.finalize().into_bytes();
    let mut m =
        HmacSha256::new_from_slice(b"idem-console compare").unwrap_or_else(|_| unreachable!());
    m.update(given);
    m.verify_slice(&expected).is_ok()
}

/// The CSRF value of this request's browser, for forms to carry and POST
/// handlers to check. Put in the request's extensions by [`guard`].
#[derive(Clone)]
pub(crate) struct Csrf {
    /// What the forms carry: HMAC(key, nonce), hex.
    pub(crate) value: String,
}

impl Csrf {
    /// Refuse a change whose form does not carry this browser's value.
    pub(crate) fn check(&self, given: &str) -> Result<(), Failure> {
        if same_secret(given.as_bytes(), self.value.as_bytes()) {
            Ok(())
        } else {
            Err(Failure::new(
                StatusCode::FORBIDDEN,
                "This form has expired",
                "The form did not carry this browser's CSRF value (it was sent from another page, \
                 or the console's token changed since it was loaded). Nothing was changed: reload \
                 the page and send it again.",
            ))
        }
    }
}

/// The guard around every console route.
pub(crate) async fn guard(
    State(console): State<Console>,
    mut req: Request,
    next: Next,
) -> Response {
    let settings = console.settings();
    if settings.token.is_none() && !loopback_host(req.headers()) {
        return Failure::new(
            StatusCode::MISDIRECTED_REQUEST,
            "Not this host name",
            "Without IDEM_CONSOLE_TOKEN the console answers only to localhost, 127.0.0.1 or [::1] \
             in the Host header (a page elsewhere could otherwise reach it through a host name \
             pointed at this machine).",
        )
        .into_response();
    }
    let path = req.uri().path().to_owned();
    let open = path == format!("{BASE}/login") || path == format!("{BASE}/style.css");
    if !open && !authorized(&console, req.headers()) {
        return if req.method() == Method::GET {
            let next = req.uri().path_and_query().map_or(BASE, |p| p.as_str());
            Redirect::to(&format!("{BASE}/login?next={}", url_escape(next))).into_response()
        } else {
            Failure::new(
                StatusCode::UNAUTHORIZED,
                "Sign in first",
                "This console needs its token: sign in, or send Authorization: Bearer <token>.",
            )
            .into_response()
        };
    }
    if req.method() != Method::GET
        && req.method() != Method::HEAD
        && let Some(refusal) = refuse_change(&console, req.headers(), &path)
    {
        return refusal.into_response();
    }
    let jar = CookieJar::from_headers(req.headers());
    let (nonce, fresh) = match jar.get(NONCE).map(Cookie::value) {
        Some(n) if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) => {
            (n.to_owned(), false)
        }
        _ => {
            let mut bytes = [0; 32];
            rand::rng().fill_bytes(&mut bytes);
            (hex::encode(bytes), true)
        }
    };
    let value = hex::encode(mac(&console.inner.keys.csrf, nonce.as_bytes()));
    req.extensions_mut().insert(Csrf { value });
    let secure = forwarded_https(req.headers());
    let mut response = next.run(req).await;
    if fresh {
        set_cookie(&mut response, cookie(NONCE, nonce, secure));
    }
    secure_headers(response.headers_mut());
    response
}

/// Whether the request carries the token or the session cookie (always,
/// without a token).
fn authorized(console: &Console, headers: &HeaderMap) -> bool {
    let (Some(token), Some(session)) = (
        console.settings().token.as_ref(),
        console.inner.keys.session.as_deref(),
    ) else {
        return true;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = bearer {
        return same_secret(given.trim().as_bytes(), token.expose());
    }
    CookieJar::from_headers(headers)
        .get(SESSION)
        .is_some_and(|c| same_secret(c.value().as_bytes(), session.as_bytes()))
}

/// Why a change must not be made from this request, if it must not.
fn refuse_change(console: &Console, headers: &HeaderMap, path: &str) -> Option<Failure> {
    if console.settings().read_only && path != format!("{BASE}/login") {
        return Some(Failure::new(
            StatusCode::FORBIDDEN,
            "The console is read-only",
            "It was started with IDEM_CONSOLE_READ_ONLY: nothing can be changed from here. Use the \
             CLI (idem outbox retry, ...) or a console without that setting.",
        ));
    }
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let cross_site = site.is_some_and(|s| s != "same-origin" && s != "none");
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let foreign_origin = match (origin, host) {
        (Some("null"), _) => true,
        (Some(o), Some(h)) => url::Url::parse(o)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                })
            })
            .is_none_or(|o| !o.eq_ignore_ascii_case(h)),
        _ => false,
    };
    (cross_site || foreign_origin).then(|| {
        Failure::new(
            StatusCode::FORBIDDEN,
            "Sent from another site",
            "The browser says this request came from another site's page. Nothing was changed.",
        )
    })
}

/// The `Host` header names loopback (any port).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1" || name == "::1"
}

fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn cookie(name: &'static str, value: String, secure: bool) -> Cookie<'static> {
    Cookie::build((name, value))
        .path(BASE)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .build()
}

fn set_cookie(response: &mut Response, cookie: Cookie<'_>) {
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn secure_headers(headers: &mut HeaderMap) {
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: under it browsers send `Origin: null` with a
        // form's POST, which the change check must refuse as foreign.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// Percent-encode a path for a query value.
fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Where to go after signing in: only a console page (no open redirect).
fn after_login(next: Option<&str>) -> String {
    next.filter(|n| n.starts_with(&format!("{BASE}/")) || *n == BASE)
        .filter(|n| !n.contains("//") && !n.contains('\\'))
        .map_or_else(|| format!("{BASE}/"), str::to_owned)
}

/// `GET /console/login`'s query.
#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

/// The sign-in page.
pub(crate) async fn login_page(
    State(console): State<Console>,
    Query(q): Query<LoginQuery>,
) -> Response {
    if console.settings().token.is_none() {
        return Redirect::to(&after_login(q.next.as_deref())).into_response();
    }
    view::login(&console, &after_login(q.next.as_deref()), None)
}

/// The sign-in form.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Check the token; on success set the session cookie and go on.
pub(crate) async fn login(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = after_login(form.next.as_deref());
    let (Some(token), Some(session)) = (
        console.settings().token.as_ref(),
        console.inner.keys.session.clone(),
    ) else {
        return Redirect::to(&next).into_response();
    };
    if !same_secret(form.token.trim().as_bytes(), token.expose()) {
        // Slows guessing down; a token of 16+ random characters is out of
        // reach anyway.
        tokio::time::sleep(Duration::from_millis(500)).await;
        tracing::warn!("console sign-in refused: wrong token");
        let mut page = view::login(&console, &next, Some("That is not the console's token."));
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return page;
    }
    let mut response = Redirect::to(&next).into_response();
    set_cookie(
        &mut response,
        cookie(SESSION, session, forwarded_https(&headers)),
    );
    response
}

/// The frame of a page for this request.
pub(crate) fn chrome(console: &Console, csrf: &Csrf, title: impl Into<String>) -> Chrome {
    Chrome {
        title: title.into(),
        csrf: csrf.value.clone(),
        read_only: console.settings().read_only,
        signed_in: console.settings().token.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn only_loopback_host_names_pass_without_a_token() {
        for ok in [
            "localhost",
            "localhost:9465",
            "127.0.0.1:80",
            "[::1]:9465",
            "LOCALHOST",
        ] {
            assert!(loopback_host(&headers(&[("host", ok)])), "{ok}");
        }
        for bad in ["evil.example", "127.0.0.1.evil.example:80", "[::2]:1", ""] {
            assert!(!loopback_host(&headers(&[("host", bad)])), "{bad}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn secrets_compare_by_value_only() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
        assert!(!same_secret(b"abcabc", b"abc"));
    }

    #[test]
    fn sign_in_goes_on_only_to_console_pages() {
        assert_eq!(
            after_login(Some("/console/outbox?state=dead")),
            "/console/outbox?state=dead"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/console//evil",
            "/other",
            "/console\\x",
        ] {
            assert_eq!(after_login(Some(bad)), "/console/", "{bad}");
        }
        assert_eq!(after_login(None), "/console/");
    }
}
