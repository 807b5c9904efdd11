//! Pages: hostile bytes shown escaped, hostile queries refused with a
//! reason, the overview's figures.

use std::time::Duration;

use idem_simulator::Faults;
use idem_tests::{TestEnv, wait_for};
use lapin::BasicProperties;

use super::{Browser, audit, csrf_of, serve};

/// `page` with the templates' numeric escapes of `<` and `>` written as
/// the named ones, so the assertions read as the markup would.
fn entities(page: &str) -> String {
    page.replace("&#60;", "&lt;").replace("&#62;", "&gt;")
}

/// Invariants: a message whose body is markup and bytes that are not text
/// is quarantined; its page shows the body escaped (`&lt;script`, `\xff`)
/// and never the markup itself; its replay from the console writes a
/// `quarantine.replay` audit row that says `published`, and the broker
/// holds the replayed message on the work queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_message_is_shown_escaped_and_replayed_with_its_audit_row() {
    let env = TestEnv::new(Faults::default()).await;
    let worker = env.start_worker(&[]);
    let body = b"<script>alert(1)</script>\xff\x00 not json";
    env.publish_raw(
        BasicProperties::default().with_message_id("hostile-<b>".into()),
        body,
    )
    .await;
    wait_for(
        "the message quarantined",
        Duration::from_secs(30),
        || async { env.status().await.quarantined == 1 },
    )
    .await;
    worker.stop().await.unwrap();
    let id: i64 = sqlx::query_scalar("SELECT id FROM quarantine")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let console = serve(&env, None, false).await;
    let mut b = Browser::new();
    let (status, _, list) = b.get(&console.url("/console/quarantine"), &[]).await;
    let list = entities(&list);
    assert_eq!(status, 200);
    assert!(list.contains(&format!("q-{id}")), "{list}");
    assert!(list.contains("hostile-&lt;b&gt;"), "{list}");
    let (status, _, page) = b
        .get(&console.url(&format!("/console/quarantine/{id}")), &[])
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        !page.contains("<script>"),
        "markup from a producer reaches the page: {page}"
    );
    let page = entities(&page);
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;\\xff\\x00"),
        "{page}"
    );
    assert!(page.contains("3c 73 63 72"), "the hex dump: {page}");

    let csrf = csrf_of(&page);
    let (status, location, page) = b
        .post(
            &console.url(&format!("/console/quarantine/{id}/replay")),
            &[
                ("csrf", &csrf),
                ("actor", "cy"),
                ("reason", "see what the consumer says now"),
            ],
            &[],
        )
        .await;
    assert_eq!(status, 303, "{page}");
    assert!(location.contains("done="), "{location}");
    let rows = audit(&env).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("console:cy", "quarantine.replay")
    );
    assert_eq!(rows[0].4["outcome"], "published", "{:?}", rows[0].4);
    wait_for(
        "the replay on the queue",
        Duration::from_secs(10),
        || async { env.queue_depth().await == 1 },
    )
    .await;
    env.cleanup().await;
}

/// Invariants: any bytes in a query or a path get a page that says what
/// is wrong (400 or 404), never a server error: a made-up cursor, a state
/// that does not exist, an unparsable time, a filter of 10,000 bytes, a
/// row id that is no number, an empty key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_get_a_reason_not_an_error() {
    let env = TestEnv::new(Faults::default()).await;
    let console = serve(&env, None, false).await;
    let mut b = Browser::new();
    let long = "x".repeat(10_000);
    let cases: Vec<(String, u16)> = vec![
        ("/console/outbox?after=%FF%00garbage".into(), 400),
        ("/console/outbox?state=dead%27%3B--".into(), 400),
        ("/console/outbox?since=yesterday-ish".into(), 400),
        (format!("/console/outbox?error={long}"), 400),
        (
            "/console/outbox?since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z".into(),
            400,
        ),
        ("/console/quarantine?after=%E2%82%AC".into(), 400),
        ("/console/conflicts?after=-1".into(), 400),
        ("/console/audit?after=zz".into(), 400),
        ("/console/outbox/abc".into(), 404),
        ("/console/outbox/99999999999999999999".into(), 404),
        ("/console/outbox/42".into(), 404),
        ("/console/inbox?scope=&message_id=".into(), 400),
        ("/console/nothing/here".into(), 404),
    ];
    for (path, expected) in cases {
        let (status, _, page) = b.get(&console.url(&path), &[]).await;
        assert_eq!(status, expected, "{path}: {page}");
        assert!(
            page.contains("id=\"error\""),
            "{path}: a page saying why: {page}"
        );
    }
    env.cleanup().await;
}

/// Invariants: the overview counts rows per state as the database holds
/// them, and shows the newest recorded reconciliation with its findings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_the_states_and_the_last_reconciliation() {
    let env = TestEnv::new(Faults::default()).await;
    let ids = super::dead_rows(&env, "console-overview", 3).await;
    let report = serde_json::json!({
        "window_from": "2026-12-01T00:00:00Z", "window_to": "2026-12-01T01:00:00Z",
        "charges_listed": 12, "extra_charges": 1,
        "findings_by_kind": {"extra_charge": 1},
        "findings": [{"kind": "extra_charge", "detail": "reference r-1 charged twice <b>"}],
    });
    let mut conn = env.pool.acquire().await.unwrap();
    idem_store::overview::record_reconcile_run(&mut conn, chrono::Utc::now(), &report)
        .await
        .unwrap();
    drop(conn);
    let console = serve(&env, None, false).await;
    let mut b = Browser::new();
    let (status, _, page) = b.get(&console.url("/console/"), &[]).await;
    assert_eq!(status, 200, "{page}");
    let dead_card = page.split("id=\"state-dead\"").nth(1).expect("a dead card");
    assert!(
        dead_card.contains(&format!("<div class=\"value\">{}</div>", ids.len())),
        "{dead_card}"
    );
    let page = entities(&page);
    assert!(page.contains("extra_charge: 1"), "{page}");
    assert!(
        page.contains("reference r-1 charged twice &lt;b&gt;"),
        "{page}"
    );
    env.cleanup().await;
}
