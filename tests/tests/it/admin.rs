//! The operators' commands, driven as an operator would: the real `idem`
//! binary against a real database, broker and simulator. Each change's effect
//! is checked in the tables, and its audit row (who, when, what, why) is
//! checked to exist exactly when the change was made.

use std::time::Duration;

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::binary::{idem as idem_command, output, run_against_text};
use idem_tests::{AMQP_URL, TestEnv, gate, pg, spec, wait_for};
use idem_workload::{self as workload, Outgoing};
use lapin::BasicProperties;
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(30);

/// Run `idem <args> --database-url <env>`; (success, stdout, stderr).
fn idem(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    run_against_text(&env.database_url, args)
}

/// `idem <args> --json`, which must succeed; its JSON.
fn idem_json(env: &TestEnv, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = idem(env, &all);
    assert!(ok, "idem {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("idem {args:?}: {e}: {out}"))
}

async fn audit_rows(env: &TestEnv, target: &str) -> Vec<(String, String, Option<String>, Value)> {
    sqlx::query_as("SELECT actor, action, reason, details FROM audit WHERE target = $1 ORDER BY id")
        .bind(target)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

async fn state(env: &TestEnv, id: i64) -> OutboxState {
    sqlx::query_scalar("SELECT state FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn row_id(env: &TestEnv, message_id: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM outbox WHERE message_id = $1")
        .bind(message_id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

fn one(messages: &[Outgoing], i: usize) -> &Outgoing {
    &messages[i]
}

/// Invariants: a charge whose response was dropped shows, in `idem outbox
/// show`, every provider call — the charge without an answer, then the
/// lookups (and keyed re-sends) until the call that settled it — and is
/// charged once at the provider; `idem inbox lookup` finds its key and
/// row; `idem outbox list --state` filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_tells_the_story_of_a_dropped_response() {
    let env = TestEnv::new(Faults {
        drop_response: 1.0,
        ..Faults::default()
    })
    .await;
    let messages = workload::generate(&spec("adm-drop", 1));
    let worker = env.start_worker(&[]);
    env.publish(&messages).await;
    let message_id = one(&messages, 0).message_id.clone().unwrap();
    wait_for("the charge's outcome is uncertain", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Unknown) == 1
    })
    .await;
    // The provider answers again: the next attempt looks the charge up.
    env.sim.set_faults(Faults::default());
    wait_for("settled by lookup", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 1
    })
    .await;
    worker.stop().await.unwrap();
    assert_eq!(
        env.charges_by_reference()
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![1],
        "charged once"
    );

    let id = row_id(&env, &message_id).await;
    let key = format!("default:{message_id}");
    for selector in [id.to_string(), key.clone()] {
        let shown = idem_json(&env, &["outbox", "show", &selector]);
        assert_eq!(shown["outbox"]["id"], id);
        assert_eq!(shown["outbox"]["state"], "succeeded");
        let attempts = shown["attempts"].as_array().unwrap();
        let kinds: Vec<&str> = attempts
            .iter()
            .map(|a| a["kind"].as_str().unwrap())
            .collect();
        // One charge call, whose answer was lost; then lookups, and, when a
        // lookup's answer was lost too while the fault was on, re-sends of
        // the charge under the same idempotency key (the provider replays
        // them: the ledger above holds one charge), until the call that
        // found or replayed the charge.
        assert_eq!(kinds[0], "charge", "{attempts:?}");
        assert!(kinds.contains(&"lookup"), "looked up: {kinds:?}");
        assert!(
            kinds.iter().all(|k| *k == "lookup" || *k == "charge") && kinds.len() >= 2,
            "{kinds:?}"
        );
        assert!(
            attempts[0]["http_status"].is_null(),
            "no answer to the charge"
        );
        assert!(attempts[0]["error"].as_str().unwrap().len() > 3);
        let last = attempts.last().unwrap();
        assert_eq!(last["http_status"], 200);
        let charge_id = shown["outbox"]["provider_charge_id"].as_str().unwrap();
        assert_eq!(last["provider_id"], charge_id);
        assert_eq!(shown["result"]["id"], charge_id);
        assert_eq!(shown["inbox"]["message_id"], message_id.as_str());
        assert!(
            attempts
                .iter()
                .all(|a| a["replica"].as_str().unwrap().len() > 1)
        );
    }
    // By reference id too, and as a table.
    let reference = idem_message::reference_id("default", &message_id).to_string();
    let (ok, table, err) = idem(&env, &["outbox", "show", &reference]);
    assert!(ok, "{err}");
    for needle in ["attempt history (", "lookup", "charge", "succeeded", &key] {
        assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
    }
    let (ok, _, err) = idem(&env, &["outbox", "show", "default:no-such-message"]);
    assert!(!ok && err.contains("no outbox row"), "{err}");

    let looked = idem_json(&env, &["inbox", "lookup", &key]);
    assert_eq!(looked["inbox"]["duplicates"], 0);
    assert_eq!(looked["outbox"]["id"], id);
    assert_eq!(looked["reference_id"], reference.as_str());
    let listed = idem_json(&env, &["outbox", "list", "--state", "succeeded"]);
    assert_eq!(listed["rows"].as_array().unwrap().len(), 1);
    assert!(listed["next"].is_null(), "one page: {listed}");
    let listed = idem_json(&env, &["outbox", "list", "--state", "dead"]);
    assert_eq!(listed["rows"].as_array().unwrap().len(), 0);
    assert!(audit_rows(&env, &format!("outbox:{id}")).await.is_empty());
    env.cleanup().await;
}

/// Invariants: `retry` turns a dead row pending (then it is charged once)
/// and writes one audit row with actor and reason; `resolve` settles a dead
/// row and a pending one by hand (never charged afterwards) with their audit
/// rows; a refused change (wrong state) changes nothing and writes no audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_resolve_change_state_with_their_audit_rows() {
    // Every charge is refused with 410 (certainly not processed, and not a
    // refusal of us, which would open the breaker and spend no attempt):
    // after two attempts the rows are dead, never charged.
    let env = TestEnv::new(Faults {
        refuse_status: 410,
        ..Faults::default()
    })
    .await;
    let messages = workload::generate(&spec("adm-dead", 2));
    let worker = env.start_worker(&["--max-attempts", "2"]);
    env.publish(&messages).await;
    wait_for("both rows dead", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Dead) == 2
    })
    .await;
    worker.stop().await.unwrap();
    env.sim.set_faults(Faults::default());
    let a = row_id(&env, one(&messages, 0).message_id.as_deref().unwrap()).await;
    let b = row_id(&env, one(&messages, 1).message_id.as_deref().unwrap()).await;
    let dead = idem_json(&env, &["outbox", "list", "--state", "dead"]);
    assert_eq!(dead["rows"].as_array().unwrap().len(), 2);

    // A dead row whose last outcome was uncertain (as a provider without
    // keys or lookup leaves it): a retry could charge twice, so it is
    // refused — naming the reference to look up and --force — and audits
    // nothing; with --force it goes ahead, the audit row saying so.
    let set_uncertain = |id: i64, on: bool| {
        let pool = env.pool.clone();
        async move {
            sqlx::query(
                "UPDATE outbox SET uncertain_since = CASE WHEN $2 THEN now() END WHERE id = $1",
            )
            .bind(id)
            .bind(on)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    set_uncertain(a, true).await;
    let (ok, _, err) = idem(
        &env,
        &["outbox", "retry", &a.to_string(), "--reason", "try"],
    );
    assert!(
        !ok && err.contains("uncertain") && err.contains("--force") && err.contains("reference"),
        "{err}"
    );
    assert!(audit_rows(&env, &format!("outbox:{a}")).await.is_empty());
    assert_eq!(state(&env, a).await, OutboxState::Dead);

    // retry: dead -> pending, audited.
    let out = idem_json(
        &env,
        &[
            "outbox",
            "retry",
            &a.to_string(),
            "--force",
            "--actor",
            "alice",
            "--reason",
            "provider quota raised",
        ],
    );
    assert_eq!(out["state"], "pending");
    assert_eq!(state(&env, a).await, OutboxState::Pending);
    let audit = audit_rows(&env, &format!("outbox:{a}")).await;
    assert_eq!(audit.len(), 1);
    let (actor, action, reason, details) = &audit[0];
    assert_eq!(
        (actor.as_str(), action.as_str(), reason.as_deref()),
        ("alice", "outbox.retry", Some("provider quota raised"))
    );
    assert_eq!(
        (details["from"].as_str(), details["to"].as_str()),
        (Some("dead"), Some("pending"))
    );
    assert_eq!(details["force"], true);
    assert!(details["uncertain_since"].is_string());
    // The audit row has a time, in this transaction's past.
    let fresh: bool = sqlx::query_scalar(
        "SELECT bool_and(at > now() - interval '1 minute') FROM audit WHERE target = $1",
    )
    .bind(format!("outbox:{a}"))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(fresh);

    // A second retry is refused: the row is not dead any more. No audit row.
    let (ok, _, err) = idem(
        &env,
        &["outbox", "retry", &a.to_string(), "--reason", "again"],
    );
    assert!(
        !ok && err.contains("is pending") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(audit_rows(&env, &format!("outbox:{a}")).await.len(), 1);
    // A reason is required.
    let (ok, _, err) = idem(&env, &["outbox", "retry", &b.to_string(), "--reason", " "]);
    assert!(!ok && err.contains("--reason"), "{err}");

    // resolve the other dead row as succeeded (seen at the provider by hand).
    let out = idem_json(
        &env,
        &[
            "outbox",
            "resolve",
            &b.to_string(),
            "--as",
            "succeeded",
            "--charge-id",
            "ch_manual_1",
            "--actor",
            "bob",
            "--reason",
            "charged by phone",
        ],
    );
    assert_eq!(out["state"], "succeeded");
    let shown = idem_json(&env, &["outbox", "show", &b.to_string()]);
    assert_eq!(shown["outbox"]["state"], "succeeded");
    assert_eq!(shown["outbox"]["provider_charge_id"], "ch_manual_1");
    assert_eq!(shown["result"]["resolved_by"], "bob");
    assert_eq!(shown["result"]["reason"], "charged by phone");
    let audit = shown["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["action"], "outbox.resolve");
    assert_eq!(audit[0]["actor"], "bob");
    assert_eq!(audit[0]["details"]["from"], "dead");
    // Settled rows cannot be resolved again.
    let (ok, _, err) = idem(
        &env,
        &[
            "outbox",
            "resolve",
            &b.to_string(),
            "--as",
            "declined",
            "--reason",
            "oops",
        ],
    );
    assert!(!ok && err.contains("settled already"), "{err}");
    assert_eq!(audit_rows(&env, &format!("outbox:{b}")).await.len(), 1);

    // A pending row resolved as declined before any dispatcher sees it.
    let more = workload::generate(&spec("adm-pending", 1));
    let consumer = env.start_worker(&["--role", "consumer"]);
    env.publish(&more).await;
    let c_msg = one(&more, 0).message_id.clone().unwrap();
    wait_for("recorded", SETTLE, || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE message_id = $1")
            .bind(&c_msg)
            .fetch_one(&env.pool)
            .await
            .unwrap()
            == 1
    })
    .await;
    consumer.stop().await.unwrap();
    let c = row_id(&env, &c_msg).await;
    // In flight (a lease held): refused.
    sqlx::query(
        "UPDATE outbox SET state = 'in_flight', lease_token = gen_random_uuid(),
                lease_owner = 'someone', lease_expires_at = now() + interval '1 hour' WHERE id = $1",
    )
    .bind(c)
    .execute(&env.pool)
    .await
    .unwrap();
    let (ok, _, err) = idem(
        &env,
        &[
            "outbox",
            "resolve",
            &c.to_string(),
            "--as",
            "declined",
            "--reason",
            "customer cancelled",
        ],
    );
    assert!(!ok && err.contains("in_flight"), "{err}");
    assert!(audit_rows(&env, &format!("outbox:{c}")).await.is_empty());
    sqlx::query(
        "UPDATE outbox SET state = 'pending', lease_token = NULL, lease_owner = NULL,
                lease_expires_at = NULL WHERE id = $1",
    )
    .bind(c)
    .execute(&env.pool)
    .await
    .unwrap();
    // Declined while the outcome is uncertain: refused without --force.
    set_uncertain(c, true).await;
    let resolve_c = [
        "outbox",
        "resolve",
        &c.to_string(),
        "--as",
        "declined",
        "--reason",
        "customer cancelled",
    ];
    let (ok, _, err) = idem(&env, &resolve_c);
    assert!(
        !ok && err.contains("uncertain") && err.contains("--force"),
        "{err}"
    );
    assert!(audit_rows(&env, &format!("outbox:{c}")).await.is_empty());
    set_uncertain(c, false).await;
    let (ok, text, err) = idem(&env, &resolve_c);
    assert!(ok, "{err}");
    assert!(text.contains("resolved as declined"), "{text}");
    assert_eq!(state(&env, c).await, OutboxState::Declined);
    let audit = audit_rows(&env, &format!("outbox:{c}")).await;
    assert_eq!(audit.len(), 1);
    assert!(!audit[0].0.is_empty(), "the OS user is the default actor");

    // Now a dispatcher: the retried row is charged once, the resolved ones never.
    let worker = env.start_worker(&[]);
    wait_for("the retried row charged", SETTLE, || async {
        state(&env, a).await == OutboxState::Succeeded
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await.unwrap();
    let charges = env.charges_by_reference();
    let reference = |id: &str| idem_message::reference_id("default", id).to_string();
    assert_eq!(
        charges.get(&reference(one(&messages, 0).message_id.as_deref().unwrap())),
        Some(&1)
    );
    assert_eq!(
        charges.get(&reference(one(&messages, 1).message_id.as_deref().unwrap())),
        None
    );
    assert_eq!(charges.get(&reference(&c_msg)), None);
    assert_eq!(state(&env, b).await, OutboxState::Succeeded);
    assert_eq!(state(&env, c).await, OutboxState::Declined);
    env.cleanup().await;
}

/// Invariants: a message quarantined for a size limit since raised is, after
/// `idem quarantine replay`, recorded and charged once through the normal
/// path; a second replay is absorbed as a duplicate (no second charge); each
/// replay has its audit row; `list` and `show` expose the raw body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_goes_through_the_normal_path_and_is_deduplicated() {
    let env = TestEnv::new(Faults::default()).await;
    let body = serde_json::json!({
        "account_id": "acc_replay", "amount": 4200, "currency": "EUR",
        "description": "x".repeat(300),
    })
    .to_string();
    let props = BasicProperties::default()
        .with_message_id("adm-replay-1".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    // A replica with a small body limit quarantines it (too_large).
    let worker = env.start_worker(&["--max-body-bytes", "128"]);
    env.publish_raw(props, body.as_bytes()).await;
    wait_for("quarantined", SETTLE, || async {
        env.status().await.quarantined == 1
    })
    .await;
    worker.stop().await.unwrap();

    let listed = idem_json(&env, &["quarantine", "list"]);
    let listed = listed["rows"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    let qid = listed[0]["id"].as_i64().unwrap();
    assert_eq!(listed[0]["reason_code"], "too_large");
    let shown = idem_json(&env, &["quarantine", "show", &qid.to_string()]);
    assert_eq!(shown["body"], body.as_str(), "the raw body is kept whole");
    assert_eq!(shown["message_id"], "adm-replay-1");

    // The limit is raised; replay twice.
    let worker = env.start_worker(&[]);
    let replay = |reason: &'static str| {
        let env = &env;
        async move {
            let qid = qid.to_string();
            let args = [
                "quarantine",
                "replay",
                &qid,
                "--actor",
                "carol",
                "--reason",
                reason,
                "--amqp-url",
                AMQP_URL,
                "--queue",
                &env.queue,
            ];
            idem_json(env, &args)
        }
    };
    let out = replay("body limit raised").await;
    assert_eq!(out["quarantine_id"], qid);
    wait_for("charged after replay", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 1
    })
    .await;
    replay("replayed twice by mistake").await;
    wait_for("second copy absorbed as a duplicate", SETTLE, || async {
        env.status().await.duplicates == 1
    })
    .await;
    worker.stop().await.unwrap();
    let reference = idem_message::reference_id("default", "adm-replay-1").to_string();
    assert_eq!(
        env.charges_by_reference().get(&reference),
        Some(&1),
        "charged once"
    );
    assert_eq!(env.status().await.quarantined, 1, "not quarantined again");

    let audit = audit_rows(&env, &format!("quarantine:{qid}")).await;
    let reasons: Vec<_> = audit.iter().map(|a| a.2.as_deref().unwrap()).collect();
    assert_eq!(reasons, ["body limit raised", "replayed twice by mistake"]);
    assert!(
        audit
            .iter()
            .all(|a| a.0 == "carol" && a.1 == "quarantine.replay")
    );
    assert_eq!(audit[1].3["replay_count"], 2);
    assert!(
        audit.iter().all(|a| a.3["outcome"] == "published"),
        "{audit:?}"
    );
    let looked = idem_json(&env, &["inbox", "lookup", "default:adm-replay-1"]);
    assert_eq!(looked["inbox"]["duplicates"], 1);
    let (ok, _, err) = idem(&env, &["quarantine", "show", "999999"]);
    assert!(!ok && err.contains("no quarantined message"), "{err}");
    env.cleanup().await;
}

/// Whether database `name` exists on the shared server.
async fn database_exists(name: &str) -> bool {
    let admin = sqlx::PgPool::connect(idem_tests::PG_ADMIN_URL)
        .await
        .unwrap();
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&admin)
        .await
        .unwrap();
    admin.close().await;
    exists
}

/// Invariants: the read-only commands (`status`, `outbox list|show`, `inbox
/// lookup`, `quarantine list|show`) never create or migrate a database. Against
/// a database that does not exist, or one without the schema, each fails with
/// one line naming `idem migrate` and the URL with its password hidden, and
/// leaves the database as it was: still missing, still without a schema.
/// After `idem migrate`, the same commands succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_never_create_or_migrate_a_database() {
    let _shared = gate::shared().await;
    let name = format!("idem_t_{}", uuid::Uuid::new_v4().simple());
    // A password the server (trust) ignores, so it can be looked for in the output.
    let url = pg::url(&name).replace("postgres@", "postgres:n0t-printed@");
    let read_only: [&[&str]; 7] = [
        &["status"],
        &["status", "--json"],
        &["outbox", "list"],
        &["outbox", "show", "1"],
        &["inbox", "lookup", "default:order-1"],
        &["quarantine", "list"],
        &["quarantine", "show", "1"],
    ];
    let run = |args: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let mut cmd = idem_command(args);
            cmd.args(["--database-url", &url]).env("RUST_LOG", "warn");
            output(&mut cmd).await
        }
    };
    let refused = |args: &[&str], text: &str, why: &str| {
        assert!(
            text.contains("idem migrate") && text.contains(why),
            "idem {args:?}: {text}"
        );
        assert!(
            text.contains(&format!(
                ":***@{}",
                idem_tests::authority(idem_tests::PG_ADMIN_URL, 5432)
            )) && !text.contains("n0t-printed"),
            "idem {args:?}: {text}"
        );
        assert_eq!(
            text.trim().lines().count(),
            1,
            "idem {args:?}: one line: {text}"
        );
    };

    // No such database: refused, and still none afterwards.
    for args in read_only {
        let (status, text) = run(args).await;
        assert!(!status.success(), "idem {args:?} succeeded: {text}");
        refused(args, &text, "does not exist");
    }
    assert!(
        !database_exists(&name).await,
        "a read-only command created the database"
    );

    // An empty database (created by hand, never migrated): refused, and
    // still without the migrator's table afterwards.
    let admin = sqlx::PgPool::connect(idem_tests::PG_ADMIN_URL)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    for args in read_only {
        let (status, text) = run(args).await;
        assert!(!status.success(), "idem {args:?} succeeded: {text}");
        refused(args, &text, "no idem schema");
    }
    let pool = sqlx::PgPool::connect(&pg::url(&name)).await.unwrap();
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!migrated, "a read-only command migrated the database");

    // Migrated, then one migration taken back (an older release's schema):
    // refused as behind, naming the first migration missing.
    let (status, text) = run(&["migrate"]).await;
    assert!(status.success(), "{text}");
    let newest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(newest)
        .execute(&pool)
        .await
        .unwrap();
    let (status, text) = run(&["status"]).await;
    assert!(!status.success(), "{text}");
    refused(&["status"], &text, &format!("the first {newest}"));
    let still_behind: bool =
        sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1)")
            .bind(newest)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        still_behind,
        "a read-only command applied the missing migration"
    );

    // Up to date: every read-only command succeeds (the two `show`s find
    // nothing, and say so).
    let (status, text) = run(&["migrate"]).await;
    assert!(status.success(), "{text}");
    for args in read_only {
        let (status, text) = run(args).await;
        let nothing = args.contains(&"show");
        assert_eq!(status.success(), !nothing, "idem {args:?}: {text}");
        assert!(!text.contains("idem migrate"), "idem {args:?}: {text}");
    }
    pool.close().await;
    pg::drop_database(&name).await.unwrap();
}
