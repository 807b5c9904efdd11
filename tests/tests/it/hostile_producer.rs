//! Hostile producers (issue 12): raw AMQP frames no client library sends —
//! non-UTF-8 short strings in every property that is one and in header keys,
//! non-UTF-8 long strings, header tables and arrays nested as deep as the
//! broker's frame allows, a header table of 13,000+ entries, unknown field
//! types, a body 48 times the limit — each class followed by 100 valid
//! charges, into one queue consumed by 3 `idem run` replicas on the real
//! broker and database; on a classic queue and on a quorum
//! queue (the default) with its delivery limit and dead-letter drain. Prints the per-class
//! table of `docs/guarantees.md`.
//!
//! `IDEM_TEST_HOSTILE_CLASSES=message_id,deep_tables` runs only the named
//! classes (to see one class's failure without the others');
//! `IDEM_TEST_HOSTILE_LOGS=<dir>` keeps each replica's whole output there.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use idem_simulator::Faults;
use idem_tests::binary::{run, run_flags_without};
use idem_tests::hostile::{self, Class, Outcome, Published, RawPublisher, Replica};
use idem_tests::{AMQP_URL, TestEnv, rabbit, spec};
use idem_workload::{self as workload, Outgoing};

mod checks;
mod classes;

/// Replicas consuming the one queue.
const REPLICAS: usize = 3;
/// Valid charges published behind each class.
const VALID_PER_CLASS: usize = 100;
/// From the first publish until every class must have settled.
const SETTLE: Duration = Duration::from_secs(120);
/// After settling: no replica may reconnect in this window.
const QUIET: Duration = Duration::from_secs(5);
/// Each replica's peak RSS (VmHWM) stays under this. A replica idles at
/// ~40 MiB; this workload holds at most the 3 MiB body and a few hundred
/// small deliveries at once, far under `IDEM_PREFETCH_BYTES`. What dominates
/// is the stack lapin's recursive parser touches for a header nested as deep
/// as a frame allows (idem runs with a stack sized for it, see
/// `idem_inbox::stack`), once in each replica that parses one: measured
/// ~10 KiB a level unoptimised (+200 to 250 MiB for the deep classes),
/// ~1.6 KiB optimised (+40 MiB).
const RSS_BOUND_KIB: u64 = if cfg!(debug_assertions) { 384 } else { 128 } * 1024;

/// The queue the suite publishes to, and how the replicas are told of it.
struct Target {
    /// Says which in the printed table.
    what: &'static str,
    queue: String,
    /// `idem run` flags: the env's, the queue's own.
    flags: Vec<String>,
}

impl Target {
    /// A classic queue beside the env's (declared by the replicas, told
    /// `IDEM_QUEUE_TYPE=classic`): no delivery limit, idem's reader alone.
    fn classic(env: &TestEnv) -> Self {
        let queue = format!("{}.classic", env.queue);
        let mut flags = run_flags_without(env, &["--queue"]);
        flags.extend(["--queue", &queue, "--queue-type", "classic"].map(str::to_owned));
        Self {
            what: "classic queue",
            queue,
            flags,
        }
    }

    /// A quorum queue of the env's (declared by the replicas), with idem's
    /// default delivery limit and a dead-letter drain every second.
    fn quorum(env: &TestEnv) -> Self {
        let queue = format!("{}.quorum", env.queue);
        let mut flags = run_flags_without(env, &["--queue"]);
        flags.extend(
            [
                "--queue",
                &queue,
                "--queue-type",
                "quorum",
                "--dead-letter-drain-secs",
                "1",
            ]
            .map(str::to_owned),
        );
        Self {
            what: "quorum queue",
            queue,
            flags,
        }
    }
}

/// The classes `IDEM_TEST_HOSTILE_CLASSES` names (all when unset).
fn selected(all: Vec<Class>) -> Vec<Class> {
    let Ok(names) = std::env::var("IDEM_TEST_HOSTILE_CLASSES") else {
        return all;
    };
    let names: Vec<&str> = names.split(',').map(str::trim).collect();
    all.into_iter()
        .filter(|c| names.contains(&c.name))
        .collect()
}

/// One class as published: what the broker said to each hostile message,
/// and the valid charges behind it.
pub struct Run {
    pub class: Class,
    pub published: Vec<Published>,
    pub valid: Vec<Outgoing>,
}

/// The 3 replicas, up (listening, so the queue is declared) before anything
/// is published.
async fn start_replicas(target: &Target) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for n in 0..REPLICAS {
        let name = format!("replica-{n}");
        let mut cmd = run(
            &target.flags,
            &[
                ("IDEM_LOG_FORMAT", "json"),
                ("IDEM_REPLICA_ID", &name),
                ("RUST_LOG", "info,sqlx=warn"),
            ],
        );
        replicas.push(Replica::spawn(&name, &mut cmd));
    }
    for replica in &mut replicas {
        replica.wait_listening(Duration::from_secs(60)).await;
    }
    // Listening is not consuming: the queue (the replicas declare it) must
    // exist before the first publish, or the broker drops what it cannot
    // route. Every replica's consumer on it is the sign.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let consumers = consumers_on(&target.queue).await;
        if consumers >= REPLICAS as u32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {REPLICAS} replicas consume {} after 60 s",
            consumers,
            target.queue
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replicas
}

/// Consumers on `queue` (0 while it does not exist), on a fresh connection.
async fn consumers_on(queue: &str) -> u32 {
    let Ok(connection) = idem_inbox::connect_amqp(AMQP_URL).await else {
        return 0;
    };
    let declared = rabbit::consumers(&connection, queue).await;
    let _ = connection.close(200, "counted".into()).await;
    declared
}

/// Each class's hostile messages (raw), then its valid charges (lapin,
/// confirmed), in class order.
async fn publish(target: &Target, classes: Vec<Class>) -> Vec<Run> {
    let mut raw = RawPublisher::new(AMQP_URL, &target.queue);
    let (connection, channel) = rabbit::confirming_channel(AMQP_URL).await;
    let mut runs = Vec::new();
    for class in classes {
        let mut published = Vec::new();
        for message in &class.messages {
            published.push(raw.publish(message).await);
        }
        let valid = workload::generate(&spec(&format!("valid-{}", class.name), VALID_PER_CLASS));
        workload::publish(&channel, &target.queue, &valid, 0, |_| {})
            .await
            .unwrap();
        runs.push(Run {
            class,
            published,
            valid,
        });
    }
    raw.close().await;
    let _ = connection.close(200, "published".into()).await;
    runs
}

/// What the tables and the provider say about every class now.
async fn observe(env: &TestEnv, runs: &[Run], started: Instant, outcomes: &mut [Outcome]) {
    let rows = hostile::quarantine_rows(&env.pool).await;
    let ledger = env.sim.ledger();
    let by_reference = ledger.gross_by_reference();
    let mut by_account: BTreeMap<&str, usize> = BTreeMap::new();
    for charge in &ledger.charges {
        *by_account.entry(charge.account_id.as_str()).or_default() += 1;
    }
    for (run, outcome) in runs.iter().zip(outcomes.iter_mut()) {
        let settled_after = outcome.settled_after;
        *outcome = checks::outcome(run, &rows, &by_reference, &by_account);
        // Settled: every hostile message decided (a row or a charge, right
        // or wrong: a wrong one is reported, not waited out) and the valid
        // charges behind it made.
        outcome.settled_after = settled_after.or_else(|| {
            let decided = outcome.quarantined + outcome.hostile_charged >= outcome.accepted;
            (decided && outcome.valid_once == outcome.valid).then(|| started.elapsed())
        });
    }
}

/// Poll the tables and the replicas until every class settled, every
/// replica died, or [`SETTLE`] passed since `started`.
async fn settle(
    env: &TestEnv,
    runs: &[Run],
    replicas: &mut [Replica],
    started: Instant,
) -> Vec<Outcome> {
    let mut outcomes = vec![Outcome::default(); runs.len()];
    loop {
        observe(env, runs, started, &mut outcomes).await;
        let alive = replicas
            .iter_mut()
            .map(Replica::poll)
            .filter(Option::is_none)
            .count();
        let settled = outcomes.iter().all(|o| o.settled_after.is_some());
        if settled || alive == 0 || started.elapsed() > SETTLE {
            return outcomes;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// After a [`QUIET`] window: every broken promise, and each replica's
/// reconnects.
async fn verdict(
    env: &TestEnv,
    target: &Target,
    runs: &[Run],
    replicas: &mut [Replica],
    outcomes: &mut [Outcome],
    started: Instant,
) -> (Vec<String>, Vec<Option<u64>>) {
    let before_quiet = checks::reconnects(replicas).await;
    tokio::time::sleep(QUIET).await;
    observe(env, runs, started, outcomes).await;
    let after_quiet = checks::reconnects(replicas).await;
    for replica in replicas.iter_mut() {
        replica.poll();
    }
    let mut failures = checks::outcome_failures(runs, outcomes);
    failures.extend(checks::table_failures(env, runs).await);
    failures.extend(checks::replica_failures(
        replicas,
        &before_quiet,
        &after_quiet,
        runs,
    ));
    for queue in [target.queue.clone(), format!("{}.dead", target.queue)] {
        let left = rabbit::queue_depth(AMQP_URL, &queue).await.unwrap();
        if left > 0 {
            failures.push(format!("{left} messages left in {queue}"));
        }
    }
    (failures, after_quiet)
}

/// The suite on `target` of `env`: publish every class and its valid
/// charges to 3 running replicas, wait for them to settle, check, print;
/// returns what failed.
async fn suite(env: &TestEnv, target: Target) -> Vec<String> {
    let mut publisher = RawPublisher::new(AMQP_URL, &target.queue);
    let classes = selected(classes::classes(publisher.frame_max().await));
    publisher.close().await;
    assert!(
        !classes.is_empty(),
        "IDEM_TEST_HOSTILE_CLASSES names no class"
    );
    let mut replicas = start_replicas(&target).await;
    let started = Instant::now();
    let runs = publish(&target, classes).await;
    let published_in = started.elapsed();

    let mut outcomes = settle(env, &runs, &mut replicas, started).await;
    let (failures, reconnects) =
        verdict(env, &target, &runs, &mut replicas, &mut outcomes, started).await;
    println!(
        "hostile producers, {}: {} classes, each followed by {VALID_PER_CLASS} valid charges, \
         published in table order in {:.1} s to {REPLICAS} replicas (time to settle: from \
         the first publish)\n\n{}\n{}",
        target.what,
        runs.len(),
        published_in.as_secs_f64(),
        hostile::markdown_table(&outcomes),
        checks::replica_table(&replicas, &reconnects),
    );
    if let Some(dir) = std::env::var_os("IDEM_TEST_HOSTILE_LOGS") {
        for r in &replicas {
            let path = std::path::Path::new(&dir).join(format!("{}-{}.log", target.what, r.name));
            r.save(&path).unwrap();
        }
    }
    for replica in replicas {
        replica.stop().await;
    }
    if target.queue != env.queue {
        let _ = workload::scratch::delete_queue(AMQP_URL, &target.queue).await;
    }
    failures
}

/// Invariant (guarantee 6): whatever bytes, depth or size a producer puts in
/// a message, with 3 replicas consuming: every valid charge behind it is
/// charged exactly once (at the provider); every hostile message the broker
/// accepted has exactly one quarantine row (a reason code; its `message_id`
/// bytes where they parse, else its raw header) and nothing of it is charged
/// or in the outbox (or, for a class the contract charges, exactly one
/// charge and no row); the work queue and `<queue>.dead` end empty; every
/// replica is alive at the end (no stack overflow), lost its consumer
/// session at most once per hostile message and not at all in a quiet
/// window after settling (no reconnect loop), and stayed under
/// [`RSS_BOUND_KIB`] of peak RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_producers_cannot_stop_the_pipeline() {
    let env = TestEnv::new(Faults::default()).await;
    let failures = suite(&env, Target::classic(&env)).await;
    env.cleanup().await;
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Invariant: the same on a quorum queue, where a message that keeps
/// stopping consumers reaches the delivery limit and is dead-lettered: the
/// dead-letter drain decides it like any delivery, and `<queue>.dead` ends
/// empty too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_producers_cannot_stop_a_quorum_queue() {
    let env = TestEnv::new(Faults::default()).await;
    let failures = suite(&env, Target::quorum(&env)).await;
    env.cleanup().await;
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
