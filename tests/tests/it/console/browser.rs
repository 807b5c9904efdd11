//! The console in a real headless Chromium (the harness is `browser::`):
//! what an operator does, click by click, against a real database, broker
//! and simulator. With `IDEM_UPDATE_DOCS=1` the screenshots go to
//! docs/img/, where docs/operations.md shows them.

use std::time::Duration;

use idem_simulator::Faults;
use idem_tests::TestEnv;

use super::{audit, dead_rows, serve, state_of};
use crate::browser::{Browser, WAIT};

const TOKEN: &str = "browser-console-token-0123456789";

/// Invariants: an operator opens the overview (3 dead rows counted), goes
/// to the dead rows, narrows them by error text, opens the bulk retry,
/// which counts the 3, gives a name and a reason and confirms; the audit
/// trail then shows one `outbox.retry_bulk` row by `console:<name>`, and
/// the database holds exactly that row with 3 retried. With the provider
/// healed, each row's page shows it succeeded; the provider charged each
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_bulk_retries_dead_rows_in_the_browser_and_sees_them_charged()
-> anyhow::Result<()> {
    let env = TestEnv::new(Faults::default()).await;
    let ids = dead_rows(&env, "browser-bulk", 3).await;
    let console = serve(&env, None, false).await;
    let b = Browser::start().await?;

    b.goto(&console.url("/console/")).await?;
    assert_eq!(b.text("#state-dead .value").await?, "3");
    b.screenshot("console-overview").await?;
    b.click("#nav-dead").await?;
    b.wait_until("the dead rows listed", WAIT, async |b| {
        Ok(b.texts("#rows .row").await?.len() == 3)
    })
    .await?;
    b.fill("#f-error", "400 bad request").await?;
    b.click("#apply").await?;
    b.wait_until("the filtered list", WAIT, async |b| {
        Ok(b.url().await?.contains("error=400"))
    })
    .await?;
    assert_eq!(b.texts("#rows .row").await?.len(), 3);
    b.screenshot("console-dead-rows").await?;

    b.click("#bulk-retry").await?;
    b.wait_until("the preview", WAIT, async |b| {
        Ok(b.text("#matched-count").await? == "3")
    })
    .await?;
    b.fill("#bulk-actor", "dana").await?;
    b.fill("#bulk-reason", "provider fixed its 400s").await?;
    b.screenshot("console-bulk-retry").await?;
    b.click("#bulk-confirm").await?;
    b.wait_until("the audit trail", WAIT, async |b| {
        Ok(b.text(".audit-row").await?.contains("outbox.retry_bulk"))
    })
    .await?;
    let trail = b.text(".audit-row").await?;
    assert!(
        trail.contains("console:dana") && trail.contains("provider fixed its 400s"),
        "{trail}"
    );
    b.screenshot("console-audit").await?;
    let rows = audit(&env).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("console:dana", "outbox.retry_bulk")
    );
    assert_eq!(rows[0].4["retried"], 3, "{:?}", rows[0].4);

    let worker = env.start_worker(&[]);
    let row = console.url(&format!("/console/outbox/{}", ids[0]));
    b.wait_until("the row succeeded", Duration::from_secs(30), async |b| {
        b.goto(&row).await?;
        Ok(b.text("#row-state").await? == "succeeded")
    })
    .await?;
    b.screenshot("console-row").await?;
    for id in &ids {
        idem_tests::wait_for(
            "every retried row charged",
            Duration::from_secs(30),
            || async { state_of(&env, *id).await == "succeeded" },
        )
        .await;
    }
    worker.stop().await?;
    let charges = env.charges_by_reference();
    assert_eq!(
        (charges.len(), charges.values().sum::<usize>()),
        (3, 3),
        "{charges:?}"
    );
    b.close().await?;
    env.cleanup().await;
    Ok(())
}

/// Invariants: a console with a token (as every console off localhost
/// must have) shows a browser without it nothing but the sign-in page,
/// whatever page it asks for; a wrong token is refused there; the right
/// one leads on to the page first asked for, with an `HttpOnly` session
/// cookie that no script can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_a_browser_gets_only_the_sign_in_page() -> anyhow::Result<()> {
    let env = TestEnv::new(Faults::default()).await;
    let console = serve(&env, Some(TOKEN), false).await;
    let b = Browser::start().await?;
    b.goto(&console.url("/console/audit")).await?;
    assert!(
        b.url().await?.contains("/console/login"),
        "{}",
        b.url().await?
    );
    assert!(b.texts("#states").await.map_or(true, |t| t.is_empty()));
    b.screenshot("console-sign-in").await?;
    b.fill("#token", "not-the-token-0123456789").await?;
    b.click_away("#sign-in").await?;
    assert!(b.text("#error").await?.contains("not the console's token"));
    b.fill("#token", TOKEN).await?;
    b.click("#sign-in").await?;
    b.wait_until("the audit page", WAIT, async |b| {
        Ok(b.url().await?.ends_with("/console/audit"))
    })
    .await?;
    assert_eq!(b.script("return document.cookie;").await?, "");
    let cookies = b.cookies().await?;
    let session = cookies
        .iter()
        .find(|c| c.name() == "idem_console_session")
        .expect("a session cookie");
    assert_eq!(session.http_only(), Some(true));
    b.close().await?;
    env.cleanup().await;
    Ok(())
}

/// Invariant: a console without a token answers a page reached through a
/// host name that merely points at 127.0.0.1 (what a DNS-rebinding page
/// does) with a refusal, never with its pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_pointed_at_localhost_gets_no_console() -> anyhow::Result<()> {
    let env = TestEnv::new(Faults::default()).await;
    let console = serve(&env, None, false).await;
    let b = Browser::start_with(&["--host-resolver-rules=MAP console.test 127.0.0.1"]).await?;
    b.goto(&format!(
        "http://console.test:{}/console/",
        console.addr.port()
    ))
    .await?;
    assert!(b.text("#error").await?.contains("localhost"));
    assert!(b.texts("#states").await.map_or(true, |t| t.is_empty()));
    b.goto(&console.url("/console/")).await?;
    assert!(
        !b.texts("#states").await?.is_empty(),
        "the same console by its loopback address"
    );
    b.close().await?;
    env.cleanup().await;
    Ok(())
}
