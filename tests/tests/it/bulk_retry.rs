//! `idem outbox retry` by filter: the rows a provider's refusal window left
//! dead, found by their error text (or account, or when they died), previewed
//! without a change, retried in batches as one audited action, then charged
//! once each at the provider; and a run cut between batches, whose audit row
//! says exactly how far it got.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_store::admin::{self, Action, RetryFilter};
use idem_tests::binary::run_against_text;
use idem_tests::{TestEnv, spec, wait_for};
use idem_workload as workload;
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(30);

/// Run `idem <args> --database-url <env>`; (success, stdout, stderr).
fn idem(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    run_against_text(&env.database_url, args)
}

/// `idem <args> --json`, which must succeed; its JSON and its stderr.
fn idem_json(env: &TestEnv, args: &[&str]) -> (Value, String) {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = idem(env, &all);
    assert!(ok, "idem {args:?} failed: {err}");
    let value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("idem {args:?}: {e}: {out}"));
    (value, err)
}

/// Every audit row: (actor, action, target, reason, details), oldest first.
async fn audit(env: &TestEnv) -> Vec<(String, String, String, Option<String>, Value)> {
    sqlx::query_as("SELECT actor, action, target, reason, details FROM audit ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// Ids of the rows in `state`, ascending.
async fn ids_in(env: &TestEnv, state: OutboxState) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM outbox WHERE state = $1 ORDER BY id")
        .bind(state)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

/// A dry run's number of matches for `filter`.
fn matched(env: &TestEnv, filter: &[&str]) -> i64 {
    let mut args = vec!["outbox", "retry", "--dry-run"];
    args.extend_from_slice(filter);
    idem_json(env, &args).0["matched"].as_i64().unwrap()
}

/// Invariants: 30 rows left dead by a window in which the provider rejected
/// every charge (`400`), then 5 by a window of `422`s (marked, as a provider
/// without keys or lookup leaves them, with an uncertain outcome). A filter
/// naming nothing, a state no retry is for, and an id with a filter are
/// refused, auditing nothing. A dry run reports 30 matches for the first
/// window's error text (case-insensitive), and the exact counts for an
/// account and either side of the time between the windows, changing
/// nothing. The retry by error text, in batches of 7, turns exactly those 30
/// pending, reports each batch, and writes one audit row (who, why, the
/// filter, 30). Uncertain rows are left dead and counted without --force,
/// retried with it; a filter matching nothing writes its audit row with 0.
/// Then the provider charges each of the 35 exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_window_is_retried_by_filter_as_one_audited_action() {
    let env = TestEnv::new(Faults {
        refuse_status: 400,
        ..Faults::default()
    })
    .await;
    let worker = env.start_worker(&[]);
    env.publish(&workload::generate(&spec("bulk-400", 30)))
        .await;
    wait_for("30 rows dead", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Dead) == 30
    })
    .await;
    let between: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    env.sim.set_faults(Faults {
        refuse_status: 422,
        ..Faults::default()
    });
    env.publish(&workload::generate(&spec("bulk-422", 5))).await;
    wait_for("35 rows dead", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Dead) == 35
    })
    .await;
    worker.stop().await.unwrap();
    env.sim.set_faults(Faults::default());
    let dead = ids_in(&env, OutboxState::Dead).await;
    let refused: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM outbox WHERE message_id LIKE 'bulk-400%' ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let uncertain: Vec<i64> = sqlx::query_scalar(
        "UPDATE outbox SET uncertain_since = now() WHERE message_id LIKE 'bulk-422%' RETURNING id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let mut uncertain = uncertain;
    uncertain.sort_unstable();
    assert_eq!((refused.len(), uncertain.len()), (30, 5));

    // Refused before anything changes, saying what to do instead.
    let refusals: [(&[&str], &[&str]); 4] = [
        (
            &["outbox", "retry", "--reason", "x"],
            &["no filter", "--all"],
        ),
        (
            &[
                "outbox",
                "retry",
                "--state",
                "succeeded",
                "--all",
                "--reason",
                "x",
            ],
            &["charged already", "only dead rows"],
        ),
        (
            &[
                "outbox", "retry", "--state", "declined", "--error", "a", "--reason", "x",
            ],
            &["declined", "only dead rows"],
        ),
        (
            &["outbox", "retry", "7", "--error", "a", "--reason", "x"],
            &["cannot be used with"],
        ),
    ];
    for (args, says) in refusals {
        let (ok, _, err) = idem(&env, args);
        assert!(!ok, "idem {args:?} succeeded");
        assert!(says.iter().all(|s| err.contains(s)), "{args:?}: {err}");
    }
    assert!(audit(&env).await.is_empty());

    // Dry runs: counted, sampled, nothing changed, nothing audited.
    let (dry, _) = idem_json(
        &env,
        &["outbox", "retry", "--error", "400 BAD REQUEST", "--dry-run"],
    );
    assert_eq!(
        (dry["matched"].as_i64(), dry["uncertain"].as_i64()),
        (Some(30), Some(0))
    );
    let sample = dry["sample"].as_array().unwrap();
    assert_eq!(sample.len(), 10);
    assert!(sample.iter().all(|r| {
        r["state"] == "dead"
            && r["last_error"]
                .as_str()
                .unwrap()
                .contains("400 Bad Request")
    }));
    let (ok, text, err) = idem(
        &env,
        &["outbox", "retry", "--error", "400 bad request", "--dry-run"],
    );
    assert!(
        ok && text.contains("30 dead row(s) match") && text.contains("nothing was changed"),
        "{text}{err}"
    );
    assert_eq!(matched(&env, &["--error", "422 unprocessable"]), 5);
    let account: String = sqlx::query_scalar("SELECT account_id FROM outbox WHERE id = $1")
        .bind(refused[3])
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let of_account = count(
        &env,
        &format!("SELECT count(*) FROM outbox WHERE account_id = '{account}'"),
    )
    .await;
    assert_eq!(matched(&env, &["--account", &account]), of_account);
    let between = between.to_rfc3339_opts(SecondsFormat::Micros, true);
    assert_eq!(matched(&env, &["--since", &between]), 5);
    assert_eq!(matched(&env, &["--until", &between]), 30);
    assert_eq!(matched(&env, &["--since", "1h", "--until", &between]), 30);
    assert_eq!(matched(&env, &["--since", &between, "--error", "400"]), 0);
    assert_eq!(ids_in(&env, OutboxState::Dead).await, dead);
    assert!(audit(&env).await.is_empty());

    // The retry by error text, 7 rows per transaction: exactly the 30.
    let (out, progress) = idem_json(
        &env,
        &[
            "outbox",
            "retry",
            "--error",
            "400 bad request",
            "--batch",
            "7",
            "--actor",
            "ops",
            "--reason",
            "provider quota restored (INC-7)",
        ],
    );
    assert_eq!(
        (out["retried"].as_i64(), out["batches"].as_i64()),
        (Some(30), Some(5))
    );
    assert_eq!(out["skipped_uncertain"], 0);
    assert!(
        progress.contains("batch 1: 7 row(s)") && progress.contains("batch 5: 30 row(s)"),
        "{progress}"
    );
    assert_eq!(ids_in(&env, OutboxState::Pending).await, refused);
    assert_eq!(ids_in(&env, OutboxState::Dead).await, uncertain);
    let rows = audit(&env).await;
    assert_eq!(rows.len(), 1, "one audit row for the action: {rows:?}");
    let (actor, action, target, reason, details) = &rows[0];
    assert_eq!(
        (
            actor.as_str(),
            action.as_str(),
            target.as_str(),
            reason.as_deref()
        ),
        (
            "ops",
            "outbox.retry_bulk",
            "outbox",
            Some("provider quota restored (INC-7)")
        )
    );
    assert_eq!(
        (details["retried"].as_i64(), details["batches"].as_i64()),
        (Some(30), Some(5))
    );
    assert_eq!(details["status"], "done");
    assert_eq!(details["filter"]["error"], "400 bad request");
    assert_eq!(details["filter"]["state"], "dead");
    assert_eq!(
        out["audit_id"],
        count(&env, "SELECT max(id) FROM audit").await
    );

    // Uncertain rows: left dead and counted without --force; a filter that
    // matches nothing is audited with 0; --force retries them.
    let uncertain_args = ["outbox", "retry", "--since", "1h", "--reason", "looked up"];
    let (out, _) = idem_json(&env, &uncertain_args);
    assert_eq!(
        (out["retried"].as_i64(), out["skipped_uncertain"].as_i64()),
        (Some(0), Some(5))
    );
    assert_eq!(ids_in(&env, OutboxState::Dead).await, uncertain);
    let (out, _) = idem_json(
        &env,
        &[
            "outbox",
            "retry",
            "--error",
            "no such error",
            "--reason",
            "x",
        ],
    );
    assert_eq!(out["retried"], 0);
    let rows = audit(&env).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (rows[2].4["retried"].as_i64(), rows[2].4["status"].as_str()),
        (Some(0), Some("done"))
    );
    let mut forced = uncertain_args.to_vec();
    forced.push("--force");
    let (out, _) = idem_json(&env, &forced);
    assert_eq!(
        (out["retried"].as_i64(), out["skipped_uncertain"].as_i64()),
        (Some(5), Some(0))
    );
    assert_eq!(audit(&env).await[3].4["force"], true);
    assert!(ids_in(&env, OutboxState::Dead).await.is_empty());

    // The provider accepts again: each of the 35 is charged exactly once.
    let worker = env.start_worker(&[]);
    wait_for("all 35 charged", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 35
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await.unwrap();
    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 35);
    assert!(charges.values().all(|n| *n == 1), "{charges:?}");
    env.cleanup().await;
}

/// Invariants: a bulk retry cut between batches (its future dropped, as a
/// killed command) leaves its audit row `running` with exactly the rows its
/// committed batches retried, and those rows pending — never a row changed
/// without its count, nor a count without its row; the same command run
/// again takes exactly the rest, under an audit row of its own.
///
/// The cut comes once the first batch has committed; on a loaded machine
/// the next batch may commit too before the cut is polled (every read of it
/// already answered), so the test holds the counts to each other, not to 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_between_batches_is_recorded_as_far_as_it_got() {
    let env = TestEnv::new(Faults::default()).await;
    sqlx::query(
        "INSERT INTO outbox (scope, message_id, reference_id, account_id, amount, currency,
                             state, settled_at, last_error)
         SELECT 'default', 'cut-' || g, gen_random_uuid(), 'acc_cut_' || g, 100, 'EUR', 'dead',
                now() - make_interval(secs => g), 'gave up after 12 attempts (never charged): 401'
         FROM generate_series(1, 70) g",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let filter = RetryFilter::new(
        OutboxState::Dead,
        Some("401".into()),
        None,
        None,
        None,
        false,
    )
    .unwrap();
    let action = Action {
        actor: "ops",
        reason: Some("key rotated"),
        force: false,
    };
    let first_batch = tokio::sync::Notify::new();
    let mut conn = env.pool.acquire().await.unwrap();
    let run = admin::retry_matching(&mut conn, &filter, &action, 7, |_| first_batch.notify_one());
    tokio::select! {
        biased;
        () = first_batch.notified() => {}
        done = run => panic!("finished before it was cut: {done:?}"),
    }
    drop(conn);
    let rows = audit(&env).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].4["status"], "running");
    let first = rows[0].4["retried"].as_i64().expect("a count");
    assert!(
        (7..70).contains(&first) && first % 7 == 0,
        "whole batches, cut before the end: {first}"
    );
    let pending = i64::try_from(ids_in(&env, OutboxState::Pending).await.len()).unwrap();
    assert_eq!(pending, first, "the rows its count says, no more, no fewer");

    let mut conn = env.pool.acquire().await.unwrap();
    let done = admin::retry_matching(&mut conn, &filter, &action, 7, |_| {})
        .await
        .unwrap();
    let rest = 70 - first;
    assert_eq!((done.retried, done.batches), (rest, (rest + 6) / 7));
    assert_eq!(ids_in(&env, OutboxState::Pending).await.len(), 70);
    let rows = audit(&env).await;
    assert_eq!(
        (rows[1].4["retried"].as_i64(), rows[1].4["status"].as_str()),
        (Some(rest), Some("done"))
    );
    drop(conn);
    env.cleanup().await;
}
