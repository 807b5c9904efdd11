//! A connection cut during the inbox's COMMIT, deterministically: a proxy in
//! front of PostgreSQL forwards the consumer's `COMMIT`, drops the server's
//! answer (the test checks there was one: the server did commit), then resets
//! the connection. The consumer sees an error with the outcome unknown, while
//! the commit in fact applied. Requirement: a connection cut during COMMIT
//! (outcome unknown) must leave the message unacked. Every invariant is
//! counted at the tables, the queue and the provider simulator.

use std::collections::BTreeMap;
use std::time::Duration;

use idem_message::reference_id;
use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::proxy::TcpProxy;
use idem_tests::{TestEnv, Worker, spec, wait_for};
use idem_workload as workload;

const SETTLE: Duration = Duration::from_secs(60);

/// Bound on the consumer's retry of the cut batch.
const RECORD_AGAIN: Duration = Duration::from_secs(20);

/// How long the proxy keeps the cut connection up after forwarding COMMIT:
/// ample for a local server to commit (the test also checks that the server
/// answered before the cut).
const HOLD: Duration = Duration::from_millis(500);

/// The simple-query message sqlx sends to commit a top-level transaction:
/// 'Q', the length (4 + 7 bytes, big-endian), "COMMIT\0". A whole protocol
/// message, so it cannot match a statement that merely contains "COMMIT",
/// nor a `RELEASE SAVEPOINT`, nor an extended-protocol query.
const PG_COMMIT: &[u8] = b"Q\x00\x00\x00\x0bCOMMIT\x00";

/// Invariant: a single message whose inbox COMMIT is cut with the outcome
/// unknown is not acked on that uncertain outcome: it is held and recorded
/// again, so there is exactly one inbox key whose duplicate counter is 1 (the
/// re-record found the row of the cut commit, which did apply; a consumer
/// that acked after the failed commit, or dropped the message, leaves it at
/// 0), exactly one outbox row, an empty queue afterwards, and exactly one
/// charge at the provider once a dispatcher runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_cut_with_unknown_outcome_leaves_the_message_unacked() {
    cut_one_commit("commit-cut", 1).await;
}

/// Invariant: the same for a batch of messages recorded in one transaction:
/// the cut COMMIT covered them all, so every one is held, recorded again
/// (duplicate counter 1 each) and charged exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_cut_of_a_batch_leaves_every_message_unacked() {
    cut_one_commit("commit-cut-batch", 5).await;
}

/// Publish `n` messages, cut the consumer's first COMMIT, check the inbox and
/// the queue, then dispatch and check the provider.
async fn cut_one_commit(prefix: &str, n: usize) {
    let env = TestEnv::new(Faults::default()).await;
    let messages = workload::generate(&spec(prefix, n));
    // Published before the consumer starts, with a batch of exactly `n`, so
    // all of them land in the consumer's first batch: one transaction, one
    // COMMIT.
    env.publish(&messages).await;
    let proxy = TcpProxy::start(idem_tests::pg::addr()).await;
    // Armed before the worker starts: with the schema already applied, its
    // start-up sends no COMMIT, so the first one is the consumer's.
    proxy.cut_after_client_sends(PG_COMMIT, HOLD);
    let consumer = start_consumer_through(&env, &proxy, n);

    wait_for("the proxy cut the COMMIT", SETTLE, || async {
        proxy.triggers_fired() == 1
    })
    .await;
    assert!(
        proxy.bytes_swallowed() > 0,
        "the server answered the COMMIT before the cut (so it had processed it) \
         and the consumer never saw that answer"
    );
    // The retry comes within a second (100 ms backoff, a fresh connection).
    // A timeout here means no re-record: the batch was acked or dropped after
    // the failed commit.
    wait_for(
        "the cut batch held and recorded again (duplicates == n)",
        RECORD_AGAIN,
        || async { env.status().await.duplicates == n as i64 },
    )
    .await;
    // Stopping returns whatever is still unacked to the queue.
    consumer.stop().await.unwrap();
    assert_eq!(env.queue_depth().await, 0, "every message acked");
    assert_eq!(proxy.triggers_fired(), 1, "exactly one cut");
    check_recorded_once_again(&env, n).await;

    dispatch_and_check(&env, &messages).await;
    env.cleanup().await;
}

/// A consumer-only worker whose database connections go through `proxy`,
/// recording batches of `n`.
fn start_consumer_through(env: &TestEnv, proxy: &TcpProxy, n: usize) -> Worker {
    // Plaintext, or the proxy would see only TLS records (the local server
    // accepts TLS and sqlx prefers it).
    let proxied_url = format!(
        "{}?sslmode=disable",
        idem_tests::via(&env.database_url, proxy.addr())
    );
    let batch = n.to_string();
    env.start_worker(&[
        "--role",
        "consumer",
        "--database-url",
        &proxied_url,
        "--inbox-batch-size",
        &batch,
        "--inbox-batch-linger-ms",
        "2000",
        // The byte budget's first window assumes bodies of RabbitMQ's largest
        // (128 MiB): with the default it would start at one message, and the
        // first batch must hold all `n` (docs/performance.md, memory).
        "--prefetch-bytes",
        "1073741824",
    ])
}

/// One inbox key and one pending outbox row per message, each key recorded
/// again exactly once, nothing else.
async fn check_recorded_once_again(env: &TestEnv, n: usize) {
    let n = n as i64;
    let status = env.status().await;
    assert_eq!(status.inbox_keys, n, "one inbox key per message");
    assert_eq!(status.duplicates, n, "each recorded again exactly once");
    assert_eq!(status.outbox_in(OutboxState::Pending), n, "{status:?}");
    assert_eq!(status.outbox.values().sum::<i64>(), n, "{status:?}");
    assert_eq!((status.conflicts, status.quarantined), (0, 0), "{status:?}");
    let per_key: Vec<(String, i32)> =
        sqlx::query_as("SELECT message_id, duplicates FROM inbox ORDER BY message_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(
        per_key.iter().all(|(_, d)| *d == 1),
        "every message of the cut batch recorded again exactly once: {per_key:?}"
    );
}

/// A dispatcher-only worker straight on the database charges every message
/// exactly once, leaving no open row.
async fn dispatch_and_check(env: &TestEnv, messages: &[workload::Outgoing]) {
    let n = messages.len() as i64;
    let dispatcher = env.start_worker(&["--role", "dispatcher"]);
    wait_for("every row charged", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == n
    })
    .await;
    dispatcher.stop().await.unwrap();

    let expected: BTreeMap<String, usize> = messages
        .iter()
        .map(|m| {
            let id = m.message_id.as_deref().unwrap();
            (reference_id("default", id).to_string(), 1)
        })
        .collect();
    assert_eq!(
        env.charges_by_reference(),
        expected,
        "exactly one charge per message"
    );
    assert_eq!(env.status().await.open_rows(), 0, "no open rows");
}
