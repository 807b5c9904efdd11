//! The harness self-test's page: a real axum server on 127.0.0.1:0 with a
//! form that POSTs, a page that shows what was posted and which session
//! cookie came with it, and two cookies — one `HttpOnly` (scripts must not
//! read it), one not (so a script that reads no cookie at all is caught).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::State;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{AppendHeaders, Html, IntoResponse};
use axum::routing::get;
use axum::{Form, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The session cookie's value; a test checks it comes back with the POST.
pub const SESSION: &str = "s3cret-session";

/// The server, stopped on drop.
pub struct Fixture {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// POSTs the server has answered: proof the browser sent the form.
    posts: Arc<AtomicUsize>,
    /// The server task.
    task: JoinHandle<()>,
}

impl Fixture {
    /// Serve the page on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let posts = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/form", get(form))
            .route("/posted", axum::routing::post(posted))
            .with_state(posts.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            base: format!("http://{addr}"),
            posts,
            task,
        })
    }

    /// POSTs answered so far.
    pub fn posts(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn form() -> impl IntoResponse {
    let cookies = AppendHeaders([
        (
            SET_COOKIE,
            HeaderValue::from_static("session=s3cret-session; Path=/; HttpOnly; SameSite=Strict"),
        ),
        (
            SET_COOKIE,
            HeaderValue::from_static("visible=yes; Path=/; SameSite=Strict"),
        ),
    ]);
    let page = r#"<!doctype html><title>form</title>
<form id="send" method="post" action="/posted">
  <label>Value <input id="value" name="value"></label>
  <button type="submit" name="button" value="send">Send</button>
</form>"#;
    (cookies, Html(page))
}

/// Shows the posted value and session cookie, escaped; a script adds
/// `#later` after a moment, for `wait_until` to wait for.
async fn posted(
    State(posts): State<Arc<AtomicUsize>>,
    headers: HeaderMap,
    Form(fields): Form<HashMap<String, String>>,
) -> Html<String> {
    posts.fetch_add(1, Ordering::SeqCst);
    let session = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix("session="))
        .next()
        .unwrap_or("(none)");
    let field = |name: &str| escape(fields.get(name).map_or("(none)", String::as_str));
    Html(format!(
        r#"<!doctype html><title>posted</title>
<p id="posted">{value}</p><p id="button">{button}</p><p id="session">{session}</p>
<a id="again" href="/form">again</a>
<script>setTimeout(() => {{
  const p = document.createElement("p"); p.id = "later"; p.textContent = "ready";
  document.body.append(p);
}}, 300);</script>"#,
        value = field("value"),
        button = field("button"),
        session = escape(session),
    ))
}

/// HTML text escaping, enough for element content.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
