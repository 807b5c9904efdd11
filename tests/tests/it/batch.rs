//! The set-based inbox batch (`idem_inbox::record_batch`) against real
//! PostgreSQL, called directly on a test database: copies of one key inside a
//! batch, mixed batches, a message the database refuses (the per-message
//! fallback), outbox ids in arrival order, the same outcome as the
//! per-message path, and how many statements a batch costs.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use idem_inbox::{Admission, Decision, Incoming, record_batch, record_one_by_one};
use idem_message::fingerprint;
use idem_simulator::Faults;
use idem_tests::TestEnv;
use lapin::BasicProperties;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

const MAX_BODY: usize = 64 * 1024;

/// One delivery, owned.
struct Msg {
    props: BasicProperties,
    body: Vec<u8>,
}

fn charge(id: &str, account: &str, amount: i64) -> Msg {
    raw(
        BasicProperties::default().with_message_id(id.into()),
        &format!(r#"{{"account_id":"{account}","amount":{amount},"currency":"EUR"}}"#),
    )
}

fn raw(props: BasicProperties, body: &str) -> Msg {
    Msg {
        props,
        body: body.as_bytes().to_vec(),
    }
}

fn with_reply(mut msg: Msg, reply_to: &str) -> Msg {
    msg.props = msg.props.with_reply_to(reply_to.into());
    msg
}

fn incoming(msgs: &[Msg]) -> Vec<Incoming<'_>> {
    msgs.iter()
        .map(|m| Incoming {
            properties: &m.props,
            body: &m.body,
            redelivered: false,
        })
        .collect()
}

/// Which path records a batch.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// `record_batch`: set-based, falling back to one by one.
    Set,
    /// `record_one_by_one`: the per-message savepoint path.
    Each,
}

/// Record `msgs` as one batch in one committed transaction.
async fn record(pool: &PgPool, path: Path, msgs: &[Msg]) -> Vec<Decision> {
    let items = incoming(msgs);
    let mut tx = pool.begin().await.unwrap();
    let decisions = match path {
        Path::Set => record_batch(&mut tx, &items, &Admission::open(MAX_BODY))
            .await
            .unwrap(),
        Path::Each => record_one_by_one(&mut tx, &items, &Admission::open(MAX_BODY))
            .await
            .unwrap(),
    };
    tx.commit().await.unwrap();
    assert_eq!(decisions.len(), msgs.len(), "one decision per delivery");
    decisions
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn new_ids(decisions: &[Decision]) -> Vec<i64> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::New { outbox_id } => Some(*outbox_id),
            _ => None,
        })
        .collect()
}

/// Invariant: two copies of one key in one batch are one new message plus a
/// duplicate (same payload) or a conflict (other payload); the first copy in
/// arrival order is the one recorded and charged, and the later copy is
/// counted on the inbox row.
#[tokio::test]
async fn same_key_twice_in_a_batch() {
    let env = TestEnv::new(Faults::default()).await;
    let pool = &env.pool;

    let decisions = record(
        pool,
        Path::Set,
        &[charge("dup", "acc_1", 100), charge("dup", "acc_1", 100)],
    )
    .await;
    assert!(
        matches!(decisions[0], Decision::New { .. }),
        "{decisions:?}"
    );
    assert_eq!(decisions[1], Decision::Duplicate);

    let decisions = record(
        pool,
        Path::Set,
        &[charge("clash", "acc_1", 200), charge("clash", "acc_1", 100)],
    )
    .await;
    assert!(
        matches!(decisions[0], Decision::New { .. }),
        "{decisions:?}"
    );
    assert_eq!(decisions[1], Decision::Conflict);

    let counters: Vec<(String, i32, i32)> =
        sqlx::query_as("SELECT message_id, duplicates, conflicts FROM inbox ORDER BY message_id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        counters,
        [("clash".into(), 0, 1), ("dup".into(), 1, 0)],
        "later copies counted"
    );
    let charged: i64 = count(pool, "SELECT amount FROM outbox WHERE message_id = 'clash'").await;
    assert_eq!(charged, 200, "the first copy in arrival order wins");
    assert_eq!(count(pool, "SELECT count(*) FROM outbox").await, 2);
    let (stored, received): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT stored_fingerprint, received_fingerprint FROM key_conflict")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(stored, fingerprint("acc_1", 200, "EUR"));
    assert_eq!(received, fingerprint("acc_1", 100, "EUR"));
    env.cleanup().await;
}

/// Invariant: a batch mixing new, malformed, duplicate and conflicting
/// messages decides every delivery, and each decision has its row: nothing
/// acked is lost, no bad message poisons the others.
#[tokio::test]
async fn mixed_batch_decides_every_delivery() {
    let env = TestEnv::new(Faults::default()).await;
    let pool = &env.pool;
    record(pool, Path::Set, &[charge("old", "acc_1", 100)]).await;

    let batch = [
        charge("a", "acc_1", 10),
        raw(
            BasicProperties::default().with_message_id("bad".into()),
            "{not json",
        ),
        charge("old", "acc_1", 100),
        raw(
            BasicProperties::default(),
            r#"{"account_id":"acc_1","amount":1,"currency":"EUR"}"#,
        ),
        charge("a", "acc_1", 10),
        charge("old", "acc_1", 999),
        charge("b", "acc_2", -5),
        charge("b", "acc_2", 20),
    ];
    let decisions = record(pool, Path::Set, &batch).await;
    let expected = [
        "new",
        "quarantined:not_json",
        "duplicate",
        "quarantined:missing_message_id",
        "duplicate",
        "conflict",
        "quarantined:schema",
        "new",
    ];
    assert_eq!(labels(&decisions), expected);

    assert_eq!(count(pool, "SELECT count(*) FROM outbox").await, 3);
    assert_eq!(count(pool, "SELECT count(*) FROM quarantine").await, 3);
    assert_eq!(count(pool, "SELECT count(*) FROM key_conflict").await, 1);
    assert_eq!(
        count(pool, "SELECT sum(duplicates)::int8 FROM inbox").await,
        2
    );
    assert_eq!(
        count(pool, "SELECT sum(conflicts)::int8 FROM inbox").await,
        1
    );
    let codes: Vec<String> = sqlx::query_scalar("SELECT reason_code FROM quarantine ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(
        codes,
        ["not_json", "missing_message_id", "schema"],
        "arrival order"
    );
    env.cleanup().await;
}

fn labels(decisions: &[Decision]) -> Vec<String> {
    decisions
        .iter()
        .map(|d| match d {
            Decision::New { .. } => "new".to_owned(),
            Decision::Duplicate => "duplicate".to_owned(),
            Decision::Conflict => "conflict".to_owned(),
            Decision::Quarantined { code } => format!("quarantined:{code}"),
            Decision::Unrecordable { .. } => "unrecordable".to_owned(),
        })
        .collect()
}

/// Invariant: when the database refuses one message's data in the set-based
/// statements, the batch falls back to one savepoint per message: only that
/// message is quarantined (with the database's reason), the others are
/// recorded, and nothing of the refused message's key is left behind.
///
/// Validation already keeps out everything the schema would refuse, so the
/// refusal is forced with a constraint this test adds (a stand-in for a
/// future constraint or an operator's trigger).
#[tokio::test]
async fn refused_message_falls_back_and_only_it_is_quarantined() {
    let env = TestEnv::new(Faults::default()).await;
    let pool = &env.pool;
    sqlx::query("ALTER TABLE outbox ADD CONSTRAINT test_poison CHECK (account_id <> 'acc_poison')")
        .execute(pool)
        .await
        .unwrap();

    let batch = [
        charge("p1", "acc_1", 10),
        charge("p2", "acc_2", 10),
        charge("poison", "acc_poison", 10),
        charge("p1", "acc_1", 10),
        charge("p3", "acc_3", 10),
    ];
    let decisions = record(pool, Path::Set, &batch).await;
    assert_eq!(
        labels(&decisions),
        ["new", "new", "quarantined:schema", "duplicate", "new"]
    );
    let (message_id, reason): (Vec<u8>, String) =
        sqlx::query_as("SELECT message_id, reason FROM quarantine")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(message_id, b"poison");
    assert!(reason.contains("database refused"), "{reason}");
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM inbox WHERE message_id = 'poison'"
        )
        .await,
        0,
        "the refused message's writes rolled back"
    );
    assert_eq!(count(pool, "SELECT count(*) FROM outbox").await, 3);
    assert_eq!(
        count(
            pool,
            "SELECT duplicates::int8 FROM inbox WHERE message_id = 'p1'"
        )
        .await,
        1
    );
    env.cleanup().await;
}

/// Invariant: when even quarantine refuses a rejected message, only that one
/// is unrecordable (dead-lettered by the consumer); the rest of its batch is
/// recorded.
#[tokio::test]
async fn refused_quarantine_makes_only_that_message_unrecordable() {
    let env = TestEnv::new(Faults::default()).await;
    let pool = &env.pool;
    sqlx::query(
        "ALTER TABLE quarantine ADD CONSTRAINT test_poison CHECK (reason_code <> 'not_json')",
    )
    .execute(pool)
    .await
    .unwrap();
    let batch = [
        charge("q1", "acc_1", 10),
        raw(
            BasicProperties::default().with_message_id("bad".into()),
            "{not json",
        ),
        raw(BasicProperties::default(), "{}"),
        charge("q2", "acc_1", 10),
    ];
    let decisions = record(pool, Path::Set, &batch).await;
    assert_eq!(
        labels(&decisions),
        [
            "new",
            "unrecordable",
            "quarantined:missing_message_id",
            "new"
        ]
    );
    assert_eq!(count(pool, "SELECT count(*) FROM outbox").await, 2);
    assert_eq!(count(pool, "SELECT count(*) FROM quarantine").await, 1);
    env.cleanup().await;
}

/// Invariant: outbox ids follow arrival order within a batch (per-account
/// ordering dispatches by id), even though the inbox upsert locks keys in key
/// order: here the keys arrive in reverse key order.
#[tokio::test]
async fn outbox_ids_follow_arrival_order() {
    let env = TestEnv::new(Faults::default()).await;
    let pool = &env.pool;
    let arrival: Vec<String> = (0..40).map(|i| format!("k{:03}", 999 - i)).collect();
    let batch: Vec<Msg> = arrival
        .iter()
        .enumerate()
        .map(|(i, id)| charge(id, "acc_order", i as i64 + 1))
        .collect();
    let decisions = record(pool, Path::Set, &batch).await;
    let ids = new_ids(&decisions);
    assert_eq!(ids.len(), 40, "{decisions:?}");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids rise with arrival: {ids:?}"
    );
    let by_id: Vec<String> = sqlx::query_scalar("SELECT message_id FROM outbox ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(by_id, arrival);
    env.cleanup().await;
}

/// Invariant: two replicas recording overlapping batches at the same time, in
/// opposite arrival orders, never deadlock (the upsert locks keys in key
/// order): each key is new in exactly one of them and a duplicate in the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_of_two_replicas_do_not_deadlock() {
    let env = TestEnv::new(Faults::default()).await;
    for round in 0..20 {
        let forward: Vec<Msg> = (0..30)
            .map(|i| charge(&format!("r{round}-{i:02}"), "acc_1", 10 + i))
            .collect();
        let backward: Vec<Msg> = (0..30)
            .rev()
            .map(|i| charge(&format!("r{round}-{i:02}"), "acc_1", 10 + i))
            .collect();
        let (a, b) = tokio::join!(
            record(&env.pool, Path::Set, &forward),
            record(&env.pool, Path::Set, &backward)
        );
        let new = new_ids(&a).len() + new_ids(&b).len();
        let duplicates = a
            .iter()
            .chain(&b)
            .filter(|d| **d == Decision::Duplicate)
            .count();
        assert_eq!((new, duplicates), (30, 30), "round {round}");
    }
    assert_eq!(count(&env.pool, "SELECT count(*) FROM outbox").await, 600);
    env.cleanup().await;
}

/// A scenario over three batches that reaches every judgement: new keys,
/// copies within a batch, duplicates and conflicts of recorded keys, a
/// duplicate of a settled charge (replayed result), duplicates of open charges
/// asking for replies, a key recalled from its outbox row after retention
/// removed it, rejections; with `between` run after the first batch.
async fn scenario(pool: &PgPool, path: Path) -> Vec<Vec<String>> {
    let first = vec![
        charge("k1", "acc_1", 100),
        charge("k2", "acc_1", 200),
        charge("k3", "acc_2", 300),
        raw(
            BasicProperties::default().with_message_id("x".into()),
            "nope",
        ),
        charge("k1", "acc_1", 100),
        charge("k2", "acc_1", 999),
        with_reply(charge("k4", "acc_3", 400), "replies.a"),
    ];
    let mut out = vec![labels(&record(pool, path, &first).await)];
    // k3 settles; retention removes k4's key but keeps its open outbox row.
    sqlx::query(
        "UPDATE outbox SET state = 'succeeded', result = '{\"id\":\"ch_1\"}', settled_at = now()
         WHERE message_id = 'k3'",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM inbox WHERE message_id = 'k4'")
        .execute(pool)
        .await
        .unwrap();
    let second = vec![
        with_reply(charge("k3", "acc_2", 300), "replies.b"),
        charge("k3", "acc_2", 301),
        with_reply(charge("k4", "acc_3", 400), "replies.c"),
        charge("k4", "acc_3", 401),
        charge("k5", "acc_1", 500),
        with_reply(charge("k5", "acc_1", 500), "replies.d"),
        with_reply(charge("k5", "acc_1", 500), "replies.d"),
        charge("k2", "acc_1", 999),
        charge("k2", "acc_1", 200),
        raw(BasicProperties::default(), "{}"),
    ];
    out.push(labels(&record(pool, path, &second).await));
    out.push(labels(
        &record(
            pool,
            path,
            &[charge("k1", "acc_1", 100), charge("k6", "acc_9", 1)],
        )
        .await,
    ));
    out
}

/// Every table the inbox writes, as text, in id order (or key order).
async fn tables(pool: &PgPool) -> Vec<String> {
    let queries = [
        "SELECT scope || '/' || message_id || ' ' || encode(fingerprint, 'hex') || ' '
                || duplicates || ' ' || conflicts FROM inbox ORDER BY scope, message_id",
        "SELECT message_id || ' ' || account_id || ' ' || amount || ' ' || state || ' '
                || coalesce(reply_to, '-') FROM outbox ORDER BY id",
        "SELECT message_id || ' ' || encode(stored_fingerprint, 'hex') || ' '
                || encode(received_fingerprint, 'hex') || ' ' || encode(body, 'escape')
         FROM key_conflict ORDER BY id",
        "SELECT reason_code || ' ' || reason || ' ' || coalesce(encode(message_id, 'escape'), '-')
                || ' ' || encode(body, 'escape') FROM quarantine ORDER BY id",
        "SELECT kind || ' ' || message_id || ' ' || state || ' ' || coalesce(reply_to, '-')
         FROM result_event ORDER BY id",
        "SELECT o.message_id || ' ' || r.reply_to || ' ' || coalesce(r.correlation_id, '-')
         FROM result_reply r JOIN outbox o ON o.id = r.outbox_id ORDER BY 1",
    ];
    let mut rows = Vec::new();
    for sql in queries {
        let table: Vec<String> = sqlx::query_scalar(sql).fetch_all(pool).await.unwrap();
        rows.push(format!("{} rows:", table.len()));
        rows.extend(table);
    }
    rows
}

/// Invariant: the set-based path decides exactly as the per-message path
/// (its fallback, and the behaviour before it) and writes the same rows:
/// inbox counters and fingerprints, outbox rows in the same order, key
/// conflicts, quarantine, replayed results and owed replies.
#[tokio::test]
async fn set_based_path_matches_the_per_message_path() {
    let set = TestEnv::new(Faults::default()).await;
    let each = TestEnv::new(Faults::default()).await;
    let set_decisions = scenario(&set.pool, Path::Set).await;
    let each_decisions = scenario(&each.pool, Path::Each).await;
    assert_eq!(set_decisions, each_decisions);
    assert_eq!(
        set_decisions[1],
        [
            "duplicate",
            "conflict",
            "duplicate",
            "conflict",
            "new",
            "duplicate",
            "duplicate",
            "conflict",
            "duplicate",
            "quarantined:missing_message_id"
        ],
        "the scenario reaches every judgement"
    );
    let set_tables = tables(&set.pool).await;
    assert_eq!(set_tables, tables(&each.pool).await);
    assert!(
        set_tables.iter().any(|r| r.starts_with("replayed k3")),
        "{set_tables:#?}"
    );
    set.cleanup().await;
    each.cleanup().await;
}

/// Counts the statements sqlx runs (its `sqlx::query` events) in one future.
#[derive(Clone, Default)]
struct Statements(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> Layer<S> for Statements {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            let mut summary = Summary::default();
            event.record(&mut summary);
            self.0.lock().unwrap().push(summary.0);
        }
    }
}

#[derive(Default)]
struct Summary(String);

impl tracing::field::Visit for Summary {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "summary" {
            value.clone_into(&mut self.0);
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.0 = format!("{value:?}");
        }
    }
}

/// The statements `path` runs to record `msgs` in an open transaction.
async fn statements(pool: &PgPool, path: Path, msgs: &[Msg]) -> Vec<String> {
    let seen = Statements::default();
    let subscriber = tracing_subscriber::registry().with(seen.clone());
    let items = incoming(msgs);
    let mut tx = pool.begin().await.unwrap();
    async {
        match path {
            Path::Set => record_batch(&mut tx, &items, &Admission::open(MAX_BODY))
                .await
                .unwrap(),
            Path::Each => record_one_by_one(&mut tx, &items, &Admission::open(MAX_BODY))
                .await
                .unwrap(),
        }
    }
    .with_subscriber(subscriber)
    .await;
    tx.commit().await.unwrap();
    seen.0.lock().unwrap().clone()
}

fn fifty(prefix: &str) -> Vec<Msg> {
    (0..50)
        .map(|i| charge(&format!("{prefix}-{i}"), &format!("acc_{}", i % 7), 100 + i))
        .collect()
}

/// Invariant: a batch costs a handful of statements, not several per message:
/// 50 new messages are one inbox upsert, one outbox insert and the savepoint's
/// release (the per-message path runs three per message); a mixed batch adds
/// at most one statement per kind of row. sqlx does not log `SAVEPOINT`
/// itself (one more round trip per savepoint: one per batch here, one per
/// message there).
#[tokio::test]
async fn a_batch_is_a_handful_of_statements() {
    let env = TestEnv::new(Faults::default()).await;
    // One connection, so statements are prepared once, before counting.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(env.pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let warm = fifty("warm");
    statements(&pool, Path::Set, &warm).await;
    statements(&pool, Path::Each, &fifty("warm-each")).await;

    let set = statements(&pool, Path::Set, &fifty("set")).await;
    assert_eq!(set.len(), 3, "{set:#?}");
    let each = statements(&pool, Path::Each, &fifty("each")).await;
    assert_eq!(each.len(), 3 * 50, "{each:#?}");

    // Rejections, duplicates (of recorded keys and within the batch) and a
    // conflict: quarantine, recount, conflicts and result events join in.
    let mut mixed = fifty("mixed");
    mixed.extend([
        raw(BasicProperties::default(), "{}"),
        charge("warm-1", "acc_1", 101),
        charge("mixed-2", "acc_2", 102),
        charge("warm-3", "acc_0", 1),
    ]);
    let set = statements(&pool, Path::Set, &mixed).await;
    assert_eq!(set.len(), 7, "{set:#?}");
    pool.close().await;
    env.cleanup().await;
}

/// Not an invariant: the throughput of both paths on this machine, for 50-
/// message batches of new keys with 20% copies of earlier messages, one
/// committed transaction per batch. Run with `cargo test -p idem-tests --test
/// it -- --ignored --nocapture batch::timing` (`IDEM_TIMING_BATCHES`, default
/// 200, and `IDEM_TIMING_BATCH_SIZE`, default 50, vary it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn timing_set_based_vs_one_by_one() {
    let env = TestEnv::new(Faults::default()).await;
    let pool = &env.pool;
    let batches: usize = std::env::var("IDEM_TIMING_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let size: usize = std::env::var("IDEM_TIMING_BATCH_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let batch = |path: &str, n: usize| -> Vec<Msg> {
        (0..size)
            .map(|i| {
                // Every fifth message repeats one of the previous batch.
                let (n, i) = if i % 5 == 4 && n > 0 {
                    (n - 1, i - 1)
                } else {
                    (n, i)
                };
                charge(
                    &format!("{path}-{n}-{i}"),
                    &format!("acc_{}", i % 13),
                    100 + i as i64,
                )
            })
            .collect()
    };
    let mut rates = Vec::new();
    for round in 0..2 {
        for (path, name) in [(Path::Each, "one_by_one"), (Path::Set, "set_based")] {
            let label = format!("{name}-{round}");
            let all: Vec<Vec<Msg>> = (0..batches).map(|n| batch(&label, n)).collect();
            let started = Instant::now();
            for msgs in &all {
                record(pool, path, msgs).await;
            }
            let rate = (batches * size) as f64 / started.elapsed().as_secs_f64();
            println!("round {round} {name:<10}: {rate:>8.0} messages/s ({size} per batch)");
            rates.push((name, round, rate));
        }
    }
    let last = |name: &str| rates.iter().rfind(|r| r.0 == name).unwrap().2;
    println!(
        "set-based / one-by-one: {:.1}x",
        last("set_based") / last("one_by_one")
    );
    env.cleanup().await;
}
