//! The console's changes, refused where the CLI refuses them and audited as
//! the CLI audits them.

use std::time::Duration;

use idem_simulator::Faults;
use idem_tests::{TestEnv, wait_for};

use super::{Browser, audit, csrf_of, dead_rows, serve, state_of};

/// Invariants: of 6 dead rows, 2 marked as having an uncertain last
/// outcome. The preview of "every dead row of these" counts 6 with 2
/// uncertain and changes nothing. The run without force retries exactly
/// the 4 certain rows, leaves the 2 dead, and writes one
/// `outbox.retry_bulk` audit row with the console's actor, the reason and
/// those counts, which the audit page shows. A single uncertain row is
/// refused a retry and a resolve as declined without force (409, unchanged)
/// and resolved with it. Every retried row is then charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_retry_previews_then_retries_the_certain_rows_as_one_audited_action() {
    let env = TestEnv::new(Faults::default()).await;
    let ids = dead_rows(&env, "console-bulk", 6).await;
    let uncertain = &ids[..2];
    sqlx::query("UPDATE outbox SET uncertain_since = now() WHERE id = ANY($1)")
        .bind(uncertain)
        .execute(&env.pool)
        .await
        .unwrap();
    let console = serve(&env, None, false).await;
    let mut b = Browser::new();

    let (status, _, page) = b.get(&console.url("/console/retry?error=400"), &[]).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<strong id=\"matched-count\">6</strong>"),
        "{page}"
    );
    assert!(
        page.contains("<strong id=\"uncertain-count\">2</strong>"),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let (_, _, nothing) = b.get(&console.url("/console/retry"), &[]).await;
    assert!(
        nothing.contains("id=\"refused\""),
        "no filter is refused: {nothing}"
    );

    let (status, location, _) = b
        .post(
            &console.url("/console/retry"),
            &[
                ("csrf", &csrf),
                ("error", "400"),
                ("actor", "bo"),
                ("reason", "refusal window over"),
            ],
            &[],
        )
        .await;
    assert_eq!(status, 303);
    assert!(
        location.starts_with("/console/audit?target=outbox"),
        "{location}"
    );
    wait_for("the bulk retry done", Duration::from_secs(10), || async {
        audit(&env).await.iter().any(|a| a.4["status"] == "done")
    })
    .await;
    let rows = audit(&env).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (actor, action, target, reason, details) = &rows[0];
    assert_eq!(
        (
            actor.as_str(),
            action.as_str(),
            target.as_str(),
            reason.as_deref()
        ),
        (
            "console:bo",
            "outbox.retry_bulk",
            "outbox",
            Some("refusal window over")
        )
    );
    assert_eq!(
        (
            details["retried"].as_i64(),
            details["skipped_uncertain"].as_i64()
        ),
        (Some(4), Some(2))
    );
    for id in &ids {
        let expected = if uncertain.contains(id) {
            "dead"
        } else {
            "pending"
        };
        assert_eq!(state_of(&env, *id).await, expected, "row {id}");
    }
    let (_, _, trail) = b.get(&console.url(&location), &[]).await;
    assert!(
        trail.contains("outbox.retry_bulk") && trail.contains("console:bo"),
        "{trail}"
    );

    // One uncertain row: refused without force, as the CLI refuses it.
    let one = uncertain[0];
    for (path, extra) in [("retry", vec![]), ("resolve", vec![("as", "declined")])] {
        let url = console.url(&format!("/console/outbox/{one}/{path}"));
        let mut fields = vec![
            ("csrf", csrf.as_str()),
            ("actor", "bo"),
            ("reason", "checked"),
        ];
        fields.extend(extra);
        let (status, _, page) = b.post(&url, &fields, &[]).await;
        assert_eq!(status, 409, "{path}: {page}");
        assert!(page.contains("uncertain"), "{page}");
    }
    assert_eq!(state_of(&env, one).await, "dead");
    let url = console.url(&format!("/console/outbox/{one}/resolve"));
    let (status, _, page) = b
        .post(
            &url,
            &[
                ("csrf", &csrf),
                ("actor", "bo"),
                ("reason", "looked it up: not charged"),
                ("as", "declined"),
                ("force", "on"),
            ],
            &[],
        )
        .await;
    assert_eq!(status, 303, "{page}");
    assert_eq!(state_of(&env, one).await, "declined");
    assert_eq!(audit(&env).await.len(), 2);

    let worker = env.start_worker(&[]);
    wait_for(
        "the 4 retried rows charged",
        Duration::from_secs(30),
        || async {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state = 'succeeded'")
                    .fetch_one(&env.pool)
                    .await
                    .unwrap();
            n == 4
        },
    )
    .await;
    worker.stop().await.unwrap();
    let charges = env.charges_by_reference();
    assert_eq!(
        (charges.len(), charges.values().sum::<usize>()),
        (4, 4),
        "{charges:?}"
    );
    env.cleanup().await;
}
