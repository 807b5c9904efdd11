//! Who may reach the console, and what a change must carry.

use idem_simulator::Faults;
use idem_tests::TestEnv;

use super::{Browser, audit, csrf_of, dead_rows, serve, state_of};

const TOKEN: &str = "a-console-token-for-tests-0123456789";

/// Invariants: with a token, no page is served without it (a page asks to
/// sign in, a POST is refused), a wrong bearer or a wrong sign-in is
/// refused; the right bearer is let in; the sign-in form sets a session
/// cookie that is `HttpOnly`, `SameSite=Strict`, limited to `/console`,
/// and is not the token; that cookie then lets the browser in, and a made-up
/// cookie does not. A sign-in cannot send the browser off the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_with_a_token_lets_in_only_who_has_it() {
    let env = TestEnv::new(Faults::default()).await;
    let console = serve(&env, Some(TOKEN), false).await;
    let mut b = Browser::new();
    let (status, location, _) = b.get(&console.url("/console/outbox?state=dead"), &[]).await;
    assert_eq!(status, 303);
    assert_eq!(
        location,
        "/console/login?next=%2Fconsole%2Foutbox%3Fstate%3Ddead"
    );
    let (status, _, _) = b
        .post(
            &console.url("/console/outbox/1/retry"),
            &[("reason", "x")],
            &[],
        )
        .await;
    assert_eq!(status, 401, "a change without the token");
    let wrong = format!("Bearer {TOKEN}x");
    let (status, _, _) = b
        .get(&console.url("/console/"), &[("authorization", &wrong)])
        .await;
    assert_eq!(status, 303, "a wrong bearer is sent to sign in");
    let right = format!("Bearer {TOKEN}");
    let (status, _, page) = b
        .get(&console.url("/console/"), &[("authorization", &right)])
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Outbox rows per state"), "{page}");

    let mut b = Browser::new();
    let (status, _, page) = b
        .post(
            &console.url("/console/login"),
            &[
                ("token", "not-the-token-at-all"),
                ("next", "/console/audit"),
            ],
            &[],
        )
        .await;
    assert_eq!(status, 401, "{page}");
    assert!(
        b.set_cookies
            .iter()
            .all(|c| !c.starts_with("idem_console_session"))
    );
    let (status, location, _) = b
        .post(
            &console.url("/console/login"),
            &[("token", TOKEN), ("next", "/console/audit")],
            &[],
        )
        .await;
    assert_eq!((status, location.as_str()), (303, "/console/audit"));
    let session = b
        .set_cookies
        .iter()
        .find(|c| c.starts_with("idem_console_session="))
        .expect("a session cookie")
        .clone();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(
        !session.contains(TOKEN),
        "the cookie is not the token: {session}"
    );
    let (status, _, page) = b.get(&console.url("/console/audit"), &[]).await;
    assert_eq!(status, 200, "{page}");

    let mut forged = Browser::new();
    let (status, _, _) = forged
        .get(
            &console.url("/console/"),
            &[("cookie", "idem_console_session=0000000000000000")],
        )
        .await;
    assert_eq!(status, 303, "a made-up session cookie is not a session");

    let mut b = Browser::new();
    let (_, location, _) = b
        .post(
            &console.url("/console/login"),
            &[("token", TOKEN), ("next", "//evil.example/")],
            &[],
        )
        .await;
    assert_eq!(
        location, "/console/",
        "sign-in goes on only to console pages"
    );
    env.cleanup().await;
}

/// Invariants: a dead row is retried from the console only by a request
/// that carries this browser's CSRF value with its nonce cookie, from the
/// console's own site, to a console whose `Host` is loopback (without a
/// token), and with a name and a reason. Each refusal changes nothing and
/// writes no audit row. The accepted one turns the row pending and writes
/// one audit row with `console:<name>` and the reason; the row is then
/// charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_row_is_retried_only_by_a_request_from_the_consoles_own_page() {
    let env = TestEnv::new(Faults::default()).await;
    let ids = dead_rows(&env, "console-csrf", 1).await;
    let id = ids[0];
    let console = serve(&env, None, false).await;
    let row = console.url(&format!("/console/outbox/{id}"));
    let retry = console.url(&format!("/console/outbox/{id}/retry"));
    let mut b = Browser::new();
    let (status, _, page) = b.get(&row, &[]).await;
    assert_eq!(status, 200, "{page}");
    let csrf = csrf_of(&page);
    let good = [
        ("csrf", csrf.as_str()),
        ("actor", "ana"),
        ("reason", "provider fixed"),
    ];

    // Another site's name for this machine (DNS rebinding).
    let (status, _, _) = b.get(&row, &[("host", "evil.example")]).await;
    assert_eq!(status, 421);
    let (status, _, _) = b.post(&retry, &good, &[("host", "evil.example:80")]).await;
    assert_eq!(status, 421);
    // Another site's page.
    let (status, _, _) = b
        .post(&retry, &good, &[("sec-fetch-site", "cross-site")])
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = b
        .post(&retry, &good, &[("origin", "http://evil.example")])
        .await;
    assert_eq!(status, 403);
    // A value not this browser's, or none.
    let mut stranger = Browser::new();
    let (status, _, _) = stranger.post(&retry, &good, &[]).await;
    assert_eq!(status, 403, "the value without its nonce cookie");
    let (status, _, _) = b
        .post(
            &retry,
            &[("csrf", "00"), ("actor", "ana"), ("reason", "r")],
            &[],
        )
        .await;
    assert_eq!(status, 403);
    // No name or reason.
    let (status, _, _) = b
        .post(
            &retry,
            &[("csrf", csrf.as_str()), ("actor", "ana"), ("reason", " ")],
            &[],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(state_of(&env, id).await, "dead");
    assert!(audit(&env).await.is_empty(), "refusals audit nothing");

    let origin = format!("http://{}", console.addr);
    let (status, location, _) = b
        .post(
            &retry,
            &good,
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(status, 303);
    assert!(
        location.starts_with(&format!("/console/outbox/{id}?done=")),
        "{location}"
    );
    assert_eq!(state_of(&env, id).await, "pending");
    let rows = audit(&env).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (actor, action, target, reason, _) = &rows[0];
    assert_eq!(
        (
            actor.as_str(),
            action.as_str(),
            target.as_str(),
            reason.as_deref()
        ),
        (
            "console:ana",
            "outbox.retry",
            format!("outbox:{id}").as_str(),
            Some("provider fixed")
        )
    );
    let (_, _, page) = b
        .get(&format!("http://{}{location}", console.addr), &[])
        .await;
    assert!(page.contains("id=\"done\""), "{page}");
    assert!(
        page.contains("console:ana"),
        "the row page shows its audit row: {page}"
    );

    let worker = env.start_worker(&[]);
    idem_tests::wait_for(
        "the retried row charged",
        std::time::Duration::from_secs(30),
        || async { state_of(&env, id).await == "succeeded" },
    )
    .await;
    worker.stop().await.unwrap();
    let charges = env.charges_by_reference();
    assert_eq!(charges.values().sum::<usize>(), 1, "{charges:?}");
    env.cleanup().await;
}

/// Invariants: a read-only console shows its pages without a single form
/// that changes anything, and refuses every change (retry, resolve, bulk
/// retry, replay) with 403, the row left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_console_shows_rows_and_changes_nothing() {
    let env = TestEnv::new(Faults::default()).await;
    let ids = dead_rows(&env, "console-ro", 1).await;
    let id = ids[0];
    let console = serve(&env, None, true).await;
    let mut b = Browser::new();
    let (status, _, page) = b
        .get(&console.url(&format!("/console/outbox/{id}")), &[])
        .await;
    assert_eq!(status, 200);
    assert!(!page.contains("method=\"post\""), "no change form: {page}");
    let (_, _, list) = b.get(&console.url("/console/outbox?state=dead"), &[]).await;
    assert!(list.contains(&format!("row-{id}")), "{list}");
    assert!(!list.contains("bulk-retry"), "{list}");
    for path in [
        format!("/console/outbox/{id}/retry"),
        format!("/console/outbox/{id}/resolve"),
        "/console/retry".to_owned(),
        "/console/quarantine/1/replay".to_owned(),
    ] {
        let (status, _, page) = b
            .post(
                &console.url(&path),
                &[("actor", "ana"), ("reason", "r"), ("all", "on")],
                &[],
            )
            .await;
        assert_eq!(status, 403, "{path}: {page}");
        assert!(page.contains("read-only"), "{page}");
    }
    assert_eq!(state_of(&env, id).await, "dead");
    assert!(audit(&env).await.is_empty());
    env.cleanup().await;
}
