//! The operator console over HTTP, against a real database, broker and
//! simulator: who may reach it (token, session cookie, loopback `Host`),
//! what a change must carry (CSRF value, same site, not read-only), the
//! changes themselves with their audit rows, and pages that show hostile
//! bytes escaped. The browser suite (`browser::`) drives the same pages in
//! Chromium.

mod access;
mod actions;
mod browser;
mod lag;
mod pages;
mod plans;

use std::net::SocketAddr;

use idem_console::{Console, Replay, Settings};
use idem_tests::TestEnv;
use reqwest::header::{self, HeaderMap};
use tokio_util::sync::CancellationToken;

/// A console served on 127.0.0.1:0 for one test.
pub struct Served {
    /// Its address.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Served {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Serve a console over `env`'s database (replays to its queue) with
/// `token` and `read_only`.
pub async fn serve(env: &TestEnv, token: Option<&str>, read_only: bool) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = Settings::new(
        "IDEM_CONSOLE_ADDR",
        addr,
        token.map(str::to_owned),
        read_only,
        &[],
        Some(Replay {
            amqp_url: env.amqp_url.clone(),
            queue: env.queue.clone(),
        }),
    )
    .unwrap();
    let console = Console::new(env.pool.clone(), settings).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(idem_console::serve(listener, console, stop.clone()));
    Served { addr, stop }
}

/// A browser as far as the guard can tell: keeps the cookies it is given,
/// follows no redirect (the tests read them).
pub struct Browser {
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
    /// Every `Set-Cookie` received, whole (to check its attributes).
    pub set_cookies: Vec<String>,
}

impl Browser {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: vec![],
            set_cookies: vec![],
        }
    }

    fn cookie_header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn keep(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(header::SET_COOKIE) {
            let text = v.to_str().unwrap().to_owned();
            let pair = text.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != k);
            self.cookies.push((k.to_owned(), v.to_owned()));
            self.set_cookies.push(text);
        }
    }

    /// GET `url` with `extra` headers: (status, location, body).
    pub async fn get(&mut self, url: &str, extra: &[(&str, &str)]) -> (u16, String, String) {
        let mut req = self.http.get(url);
        if let Some(c) = self.cookie_header() {
            req = req.header(header::COOKIE, c);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        self.answer(resp).await
    }

    /// POST the form `fields` to `url` with `extra` headers.
    pub async fn post(
        &mut self,
        url: &str,
        fields: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> (u16, String, String) {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut req = self
            .http
            .post(url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = self.cookie_header() {
            req = req.header(header::COOKIE, c);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        self.answer(resp).await
    }

    async fn answer(&mut self, resp: reqwest::Response) -> (u16, String, String) {
        self.keep(resp.headers());
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, location, resp.text().await.unwrap())
    }
}

/// The CSRF value a page's forms carry.
pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in the page: {page}"));
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Every audit row: (actor, action, target, reason, details), oldest first.
pub async fn audit(
    env: &TestEnv,
) -> Vec<(String, String, String, Option<String>, serde_json::Value)> {
    sqlx::query_as("SELECT actor, action, target, reason, details FROM audit ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// `n` rows left dead by a provider that refuses every charge (`400`), the
/// worker stopped and the provider healed; their ids, ascending.
pub async fn dead_rows(env: &TestEnv, prefix: &str, n: usize) -> Vec<i64> {
    use idem_simulator::Faults;
    env.sim.set_faults(Faults {
        refuse_status: 400,
        ..Faults::default()
    });
    let worker = env.start_worker(&[]);
    env.publish(&idem_workload::generate(&idem_tests::spec(prefix, n)))
        .await;
    idem_tests::wait_for(
        &format!("{n} rows dead"),
        std::time::Duration::from_secs(30),
        || async {
            let dead: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE state = 'dead' AND message_id LIKE $1",
            )
            .bind(format!("{prefix}%"))
            .fetch_one(&env.pool)
            .await
            .unwrap();
            dead == n as i64
        },
    )
    .await;
    worker.stop().await.unwrap();
    env.sim.set_faults(Faults::default());
    sqlx::query_scalar("SELECT id FROM outbox WHERE message_id LIKE $1 ORDER BY id")
        .bind(format!("{prefix}%"))
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// The state of outbox row `id`.
pub async fn state_of(env: &TestEnv, id: i64) -> String {
    sqlx::query_scalar("SELECT state::text FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}
