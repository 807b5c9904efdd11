//! Hostile infrastructure, against servers of the test's own: a PostgreSQL
//! cluster and a RabbitMQ node started for it ([`Private`]), the real `idem
//! run` binary connecting as an unprivileged role ([`APP_ROLE`]), the
//! provider simulator in process. Each condition is one the shared servers
//! must never be put in — the whole server read-only, both servers really
//! stopped, a table locked, a privilege revoked, connections refused, the
//! schema renamed under the replica — and each states what holds at the
//! provider: every valid charge made exactly once, nothing dead-lettered or
//! quarantined, no outbox row left open or dead, the replica never exiting
//! and saying why it waits.

use std::collections::BTreeSet;
use std::time::Duration;

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::private::{APP_ROLE, Private, Replica};
use idem_tests::{TestEnv, spec, wait_for};
use idem_workload as workload;
use sqlx::PgConnection;

const SETTLE: Duration = Duration::from_secs(45);

/// The provider and the tables after a run, as the issue states them: every
/// one of `expected` valid charges made exactly once, none quarantined, none
/// in the `.dead` queue, no outbox row open or `dead`; the replica never
/// exited and stops cleanly. Returns its log.
async fn assert_each_charged_once(env: &TestEnv, expected: usize, mut replica: Replica) -> String {
    wait_for(&format!("{expected} succeeded"), SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == expected as i64
    })
    .await;
    assert!(
        replica.proc.still_running(),
        "the replica exited:\n{}",
        replica.proc.text()
    );
    let (status, log) = replica.proc.stop().await;
    assert!(status.success(), "{log}");
    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), expected, "{charges:?}");
    assert!(charges.values().all(|n| *n == 1), "each once: {charges:?}");
    let st = env.status().await;
    assert_eq!(st.quarantined, 0, "a server's refusal is not the message's");
    assert_eq!(st.open_rows(), 0, "no row left open: {st:?}");
    assert_eq!(st.outbox_in(OutboxState::Dead), 0, "no row dead: {st:?}");
    let dead = idem_tests::rabbit::queue_depth(&env.amqp_url, &format!("{}.dead", env.queue))
        .await
        .unwrap();
    assert_eq!(dead, 0, "nothing dead-lettered");
    log
}

/// A superuser session on `env`'s database that is never read-only itself
/// (it is the one that turns the server read-only and back).
async fn admin_of(private: &Private, env: &TestEnv) -> PgConnection {
    let mut admin = private.admin(&env.name).await;
    exec(&mut admin, "SET default_transaction_read_only = off").await;
    admin
}

async fn exec(admin: &mut PgConnection, sql: &str) {
    sqlx::query(sql)
        .execute(&mut *admin)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Invariant: with the whole server turned read-only
/// (`default_transaction_read_only` in `postgresql.auto.conf`, reloaded) and
/// idem's sessions ended, as a demoted primary does, 30 valid charges
/// published during the spell are held (not dead-lettered, not quarantined),
/// `/readyz` says "read_only" while it lasts, and once the server takes
/// writes again they and the 10 published before are each charged exactly
/// once, no row open or dead, the replica never exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_wide_read_only_spell_holds_and_loses_nothing() {
    let private = Private::start().await;
    let env = private.env(Faults::default()).await;
    let url = private.app_role(&env).await;
    let replica = Replica::start(&env, &url, &[]);
    env.publish(&workload::generate(&spec("ro-before", 10)))
        .await;
    wait_for("10 charged", SETTLE, || async {
        env.charges_by_reference().len() == 10
    })
    .await;

    let mut admin = admin_of(&private, &env).await;
    exec(
        &mut admin,
        "ALTER SYSTEM SET default_transaction_read_only = on",
    )
    .await;
    exec(&mut admin, "SELECT pg_reload_conf()").await;
    private.terminate_app_sessions(&mut admin).await;
    env.publish(&workload::generate(&spec("ro-during", 30)))
        .await;
    wait_for("/readyz names read_only", SETTLE, || async {
        let (status, body) = replica.readyz().await;
        status == 503 && body.contains("inbox cannot record") && body.contains("read_only")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.charges_by_reference().len(),
        10,
        "nothing charged while nothing can be recorded"
    );
    exec(
        &mut admin,
        "ALTER SYSTEM RESET default_transaction_read_only",
    )
    .await;
    exec(&mut admin, "SELECT pg_reload_conf()").await;

    wait_for("ready again", SETTLE, || async {
        replica.readyz().await.0 == 200
    })
    .await;
    let log = assert_each_charged_once(&env, 40, replica).await;
    assert!(log.contains("read_only"), "the log says which: {log}");
    env.cleanup().await;
}

/// Invariant: a replica started while its PostgreSQL cluster and its
/// RabbitMQ node are both really stopped stays up and unready (`/readyz`
/// 503: first the database it waits for at start, then the broker), and
/// once both are started again it charges exactly once each of the 10
/// messages published (persistent, durable queue) before they stopped and
/// the 10 published after the broker came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_both_servers_are_stopped_waits_for_them() {
    let private = Private::start().await;
    let env = private.env(Faults::default()).await;
    let url = private.app_role(&env).await;
    env.publish(&workload::generate(&spec("stopped-before", 10)))
        .await;
    let (pg, mq) = tokio::join!(private.pg.stop(), private.rabbit.stop());
    pg.unwrap();
    mq.unwrap();

    let mut replica = Replica::start(&env, &url, &[]);
    wait_for("not ready: waiting for the database", SETTLE, || async {
        let (status, body) = replica.readyz().await;
        status == 503 && body.contains("database: waiting for it at start")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(replica.proc.still_running(), "{}", replica.proc.text());

    private.pg.start_again().await.unwrap();
    wait_for("not ready: the broker", SETTLE, || async {
        let (status, body) = replica.readyz().await;
        status == 503 && body.contains("broker session down") && !body.contains("database")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(replica.proc.still_running(), "{}", replica.proc.text());
    assert!(env.charges_by_reference().is_empty());

    private.rabbit.start_again().await.unwrap();
    // The env's publishing connection died with the node: a fresh one.
    let (connection, channel) = idem_tests::rabbit::confirming_channel(&env.amqp_url).await;
    let after = workload::generate(&spec("stopped-after", 10));
    workload::publish(&channel, &env.queue, &after, 0, |_| {})
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    wait_for("ready", SETTLE, || async {
        replica.readyz().await.0 == 200
    })
    .await;
    let log = assert_each_charged_once(&env, 20, replica).await;
    assert!(
        log.contains("the database is not available yet"),
        "the log says what it waited for: {log}"
    );
    env.cleanup().await;
}

/// One refusal the server makes for a few seconds while charges flow.
struct Condition {
    /// What it is, in messages and message keys.
    name: &'static str,
    /// Statements (as the superuser) that start it.
    apply: &'static [&'static str],
    /// Statements that end it.
    undo: &'static [&'static str],
    /// End idem's sessions after applying (and after undoing), so that
    /// pooled connections meet it (a role setting, a connection limit).
    terminate: bool,
    /// End them again every 100 ms while it lasts.
    keep_terminating: bool,
    /// What `/readyz` says while it lasts.
    readyz: Option<&'static str>,
    /// What the replica's log says about it.
    log: Option<&'static str>,
}

/// The error classes other than read-only, in turn. A lock is taken in the
/// admin session's open transaction, so it lasts exactly as long as the
/// condition.
const CONDITIONS: &[Condition] = &[
    Condition {
        name: "lock-timeout",
        apply: &["BEGIN", "LOCK TABLE inbox, outbox IN ACCESS EXCLUSIVE MODE"],
        undo: &["COMMIT"],
        terminate: false,
        keep_terminating: false,
        readyz: Some("inbox cannot record its batch: lock_timeout"),
        log: Some("canceling statement due to lock timeout"),
    },
    Condition {
        // Shorter than the role's lock_timeout: a lock wait ends in 57014.
        name: "statement-timeout",
        apply: &[
            "ALTER ROLE idem_app SET statement_timeout = '50ms'",
            "BEGIN",
            "LOCK TABLE inbox, outbox IN ACCESS EXCLUSIVE MODE",
        ],
        undo: &["COMMIT", "ALTER ROLE idem_app RESET statement_timeout"],
        terminate: true,
        keep_terminating: false,
        readyz: Some("inbox cannot record its batch: statement_timeout"),
        log: Some("canceling statement due to statement timeout"),
    },
    Condition {
        name: "privilege",
        apply: &["REVOKE INSERT ON inbox FROM idem_app"],
        undo: &["GRANT INSERT ON inbox TO idem_app"],
        terminate: false,
        keep_terminating: false,
        readyz: Some("inbox cannot record its batch: schema_or_privilege"),
        log: Some("permission denied for table inbox"),
    },
    Condition {
        // The pool retries a refused connect (53300) quietly until its
        // acquire timeout; `/readyz` opens one connection itself to name
        // the server's answer.
        name: "connection-limit",
        apply: &["ALTER ROLE idem_app CONNECTION LIMIT 0"],
        undo: &["ALTER ROLE idem_app CONNECTION LIMIT -1"],
        terminate: true,
        keep_terminating: false,
        readyz: Some(
            "database unreachable: error returned from database: too many connections for role",
        ),
        log: None,
    },
    Condition {
        name: "admin-shutdown",
        apply: &[],
        undo: &[],
        terminate: true,
        keep_terminating: true,
        readyz: None,
        log: Some("terminating connection due to administrator command"),
    },
    Condition {
        name: "schema-rename",
        apply: &["ALTER TABLE outbox RENAME TO outbox_x"],
        undo: &["ALTER TABLE outbox_x RENAME TO outbox"],
        terminate: false,
        keep_terminating: false,
        readyz: Some("inbox cannot record its batch: schema_or_privilege"),
        log: Some("relation \\\"outbox\\\" does not exist"),
    },
];

/// Apply `condition`, publish `messages` into it, hold it for 3 s (checking
/// what `/readyz` says meanwhile), then undo it.
async fn hold(
    private: &Private,
    admin: &mut PgConnection,
    env: &TestEnv,
    replica: &Replica,
    condition: &Condition,
    messages: &[workload::Outgoing],
) {
    for sql in condition.apply {
        exec(admin, sql).await;
    }
    if condition.terminate {
        private.terminate_app_sessions(admin).await;
    }
    env.publish(messages).await;
    let held = std::time::Instant::now();
    if let Some(says) = condition.readyz {
        wait_for(
            &format!("{}: /readyz says {says}", condition.name),
            Duration::from_secs(15),
            || async {
                let (status, body) = replica.readyz().await;
                status == 503 && body.contains(says)
            },
        )
        .await;
    }
    while condition.keep_terminating && held.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        private.terminate_app_sessions(admin).await;
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(held.elapsed())).await;
    for sql in condition.undo {
        exec(admin, sql).await;
    }
    if condition.terminate {
        private.terminate_app_sessions(admin).await;
    }
}

/// The `cause` labels of `idem_inbox_batch_retries_total` on `/metrics`.
fn retry_causes(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("idem_inbox_batch_retries_total{"))
        .filter_map(|l| l.split("cause=\"").nth(1)?.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// Invariant: while the replica (connecting as the unprivileged
/// [`APP_ROLE`], `lock_timeout` 200 ms on the role) meets, a few seconds
/// each with 12 valid charges published into each, a lock on `inbox` and
/// `outbox` (55P03), a statement timeout (57014), `INSERT` on `inbox`
/// revoked (42501), a connection limit of 0 (53300), its sessions ended
/// (57P01) and `outbox` renamed by a rollout (42P01), every charge is made
/// exactly once once each condition is over, nothing is dead-lettered or
/// quarantined, no row is open or dead, the replica never exits, and its
/// `/readyz` (unready while each lasts, but for ended sessions, which the
/// pool replaces), its log and `idem_inbox_batch_retries_total{cause}` name
/// what it met — the dispatcher's claims meeting the lock and the rename too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_refusal_class_holds_and_loses_nothing() {
    let private = Private::start().await;
    let env = private.env(Faults::default()).await;
    let url = private.app_role(&env).await;
    let mut admin = admin_of(&private, &env).await;
    exec(
        &mut admin,
        &format!("ALTER ROLE {APP_ROLE} SET lock_timeout = '200ms'"),
    )
    .await;
    let mut replica = Replica::start(&env, &url, &[]);
    env.publish(&workload::generate(&spec("classes-before", 10)))
        .await;
    let mut expected = 10;
    wait_for("10 charged", SETTLE, || async {
        env.charges_by_reference().len() == expected
    })
    .await;

    for condition in CONDITIONS {
        let messages = workload::generate(&spec(condition.name, 12));
        hold(&private, &mut admin, &env, &replica, condition, &messages).await;
        expected += messages.len();
        wait_for(
            &format!("{}: {expected} charged", condition.name),
            SETTLE,
            || async { env.charges_by_reference().len() == expected },
        )
        .await;
        assert!(
            replica.proc.still_running(),
            "{}: the replica exited:\n{}",
            condition.name,
            replica.proc.text()
        );
    }

    let causes = retry_causes(&replica.metrics().await);
    let log = assert_each_charged_once(&env, expected, replica).await;
    for cause in ["lock_timeout", "statement_timeout", "schema_or_privilege"] {
        assert!(causes.contains(cause), "{cause} counted: {causes:?}\n{log}");
    }
    for met in ["lock timeout", "relation \\\"outbox\\\" does not exist"] {
        assert!(
            log.lines()
                .any(|l| l.contains("claim failed") && l.contains(met)),
            "the dispatcher met {met} too: {log}"
        );
    }
    for condition in CONDITIONS {
        if let Some(says) = condition.log {
            assert!(
                log.contains(says),
                "{}: the log says {says}",
                condition.name
            );
        }
    }
    env.cleanup().await;
}
