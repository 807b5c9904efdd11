//! Result events end to end: a settled charge's result is published to the
//! results exchange and to the request's `reply_to`, with publisher confirms
//! and a deterministic message_id; a duplicate request gets the stored result
//! again, never a new charge. Real RabbitMQ, PostgreSQL, simulator and daemon.
//!
//! Each test publishes to its own results exchange (`--results-exchange`) and
//! reads its own queues, so tests running side by side never see each other's
//! events. Reply queues are named under the requests' scope (`default.…`),
//! as the default `IDEM_REPLY_TO_ALLOW` (`{scope}.*`) requires.

use std::time::{Duration, Instant};

use idem_events::{ResultBody, event_id};
use idem_message::{Inbound, reference_id};
use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::proxy::TcpProxy;
use idem_tests::{AMQP_URL, TestEnv, wait_for};
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(60);
/// The result publisher's idle bound on a step's transaction.
const STEP: Duration = idem_events::publisher::STEP_IDLE_LIMIT;
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(700);

/// One test's view of the results: its own exchange, a queue bound to every
/// state on it, and reply queues.
struct Results {
    /// Reading connection (kept open for the test).
    conn: Connection,
    /// Channel the queues are read with.
    channel: Channel,
    /// This test's results exchange.
    exchange: String,
    /// Queue bound to `charge.#` on the exchange.
    all: String,
    /// Every queue to delete at the end.
    queues: Vec<String>,
}

impl Results {
    /// Declare the exchange and the catch-all queue before any worker runs,
    /// so no event of this test is unroutable.
    async fn new(env: &TestEnv) -> Self {
        let conn = idem_inbox::connect_amqp(AMQP_URL).await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let exchange = format!("{}.results", env.queue);
        idem_events::declare_exchange(&channel, &exchange)
            .await
            .unwrap();
        let mut results = Self {
            conn,
            channel,
            exchange,
            all: format!("{}.results.all", env.queue),
            queues: Vec::new(),
        };
        let all = results.all.clone();
        results.queue(&all).await;
        results
            .channel
            .queue_bind(
                all.as_str().into(),
                results.exchange.as_str().into(),
                "charge.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        results
    }

    /// Declare a queue (e.g. a reply queue) deleted by `cleanup`.
    async fn queue(&mut self, name: &str) -> String {
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.queues.push(name.to_owned());
        name.to_owned()
    }

    /// The worker flag that points it at this test's exchange.
    fn flags(&self) -> [&str; 2] {
        ["--results-exchange", &self.exchange]
    }

    /// Wait for `n` messages on `queue` (panics after `SETTLE`).
    async fn take(&self, queue: &str, n: usize) -> Vec<Delivery> {
        let deadline = Instant::now() + SETTLE;
        let mut got = Vec::new();
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} messages on {queue}; got {}",
                got.len()
            );
            match self.get(queue).await {
                Some(d) => got.push(d),
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        got
    }

    /// Assert that nothing (more) arrives on `queue` for a while.
    async fn assert_quiet(&self, queue: &str) {
        tokio::time::sleep(QUIET).await;
        if let Some(d) = self.get(queue).await {
            panic!(
                "unexpected message on {queue}: {}",
                String::from_utf8_lossy(&d.data)
            );
        }
    }

    async fn get(&self, queue: &str) -> Option<Delivery> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .map(|m| m.delivery)
    }

    async fn cleanup(self) {
        for q in &self.queues {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}

const BODY: &[u8] = br#"{"account_id":"acc_1","amount":1250,"currency":"EUR"}"#;

/// A charge request with `message_id`, optionally asking for a reply.
fn request(message_id: &str, reply: Option<(&str, &str)>) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_message_id(message_id.into())
        .with_content_type("application/json".into());
    if let Some((reply_to, correlation_id)) = reply {
        props = props
            .with_reply_to(reply_to.into())
            .with_correlation_id(correlation_id.into());
    }
    props
}

/// The event's body; every body a suite here receives must also be one the
/// published schema (docs/schema/result-event.v1.schema.json) accepts.
fn body(d: &Delivery) -> ResultBody {
    idem_tests::schema::assert_result_event(&d.data);
    serde_json::from_slice(&d.data).unwrap()
}

fn message_id(d: &Delivery) -> String {
    d.properties.message_id().as_ref().unwrap().to_string()
}

fn correlation_id(d: &Delivery) -> Option<String> {
    d.properties
        .correlation_id()
        .as_ref()
        .map(|c| c.to_string())
}

/// The `x-idem-kind` header: why this copy was sent.
fn kind(d: &Delivery) -> String {
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(idem_events::wire::KIND_HEADER))
    {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("no kind header: {other:?}"),
    }
}

async fn events_owed(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM result_event")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Invariant: a succeeded charge publishes exactly one result event to the
/// results exchange (routing key `charge.succeeded`) and one to the request's
/// `reply_to`, both persistent JSON with the request's `correlation_id`, the
/// deterministic message_id of (reference, succeeded), and a body holding the
/// provider's charge; once confirmed, nothing is left owed in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_charge_publishes_to_exchange_and_reply_to() {
    let env = TestEnv::new(Faults::default()).await;
    let mut results = Results::new(&env).await;
    let reply = results
        .queue(&format!("default.{}.reply.a", env.queue))
        .await;
    let worker = env.start_worker(&results.flags());
    env.publish_raw(request("res-ok-1", Some((&reply, "corr-1"))), BODY)
        .await;

    let on_exchange = results.take(&results.all, 1).await.remove(0);
    let direct = results.take(&reply, 1).await.remove(0);
    let reference = reference_id("default", "res-ok-1");
    let expected = event_id(reference, OutboxState::Succeeded).to_string();
    let ledger = env.sim.ledger();
    assert_eq!(ledger.charges.len(), 1);
    let charge = &ledger.charges[0];
    for d in [&on_exchange, &direct] {
        assert_eq!(message_id(d), expected);
        assert_eq!(correlation_id(d).as_deref(), Some("corr-1"));
        assert_eq!(
            d.properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*d.properties.delivery_mode(), Some(2), "persistent");
        assert_eq!(kind(d), "settled");
        let b = body(d);
        assert_eq!(b.version, 1);
        assert_eq!(b.event_id.to_string(), expected);
        assert_eq!(b.reference_id, reference);
        assert_eq!(
            (b.scope.as_str(), b.message_id.as_str()),
            ("default", "res-ok-1")
        );
        assert_eq!(b.state, OutboxState::Succeeded);
        assert_eq!(
            (b.amount, b.currency.as_str(), b.account_id.as_str()),
            (1250, "EUR", "acc_1")
        );
        assert_eq!(b.charge_id.as_deref(), Some(charge.id.as_str()));
        assert_eq!(b.result.as_ref().unwrap()["id"], charge.id.as_str());
        assert_eq!(b.error, None);
    }
    assert_eq!(on_exchange.routing_key.as_str(), "charge.succeeded");
    assert_eq!(on_exchange.exchange.as_str(), results.exchange);
    assert_eq!(
        direct.routing_key.as_str(),
        reply,
        "via the default exchange"
    );
    assert_eq!(on_exchange.data, direct.data, "one body per settlement");

    wait_for("the confirmed event deleted", SETTLE, || async {
        events_owed(&env).await == 0
    })
    .await;
    results.assert_quiet(&results.all).await;
    results.assert_quiet(&reply).await;
    worker.stop().await.unwrap();
    results.cleanup().await;
    env.cleanup().await;
}

/// Invariant: a declined charge publishes a `declined` event (routing key
/// `charge.declined`) carrying the provider's decline and no charge; a
/// request without `reply_to` gets no direct reply and no correlation_id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_charge_publishes_a_declined_event() {
    let env = TestEnv::new(Faults::default()).await;
    let results = Results::new(&env).await;
    let worker = env.start_worker(&results.flags());
    env.publish_raw(
        request("res-decline-1", None),
        br#"{"account_id":"acc_decline_7","amount":500,"currency":"USD"}"#,
    )
    .await;

    let d = results.take(&results.all, 1).await.remove(0);
    assert_eq!(d.routing_key.as_str(), "charge.declined");
    let reference = reference_id("default", "res-decline-1");
    assert_eq!(
        message_id(&d),
        event_id(reference, OutboxState::Declined).to_string()
    );
    assert_eq!(correlation_id(&d), None);
    let b = body(&d);
    assert_eq!(b.state, OutboxState::Declined);
    assert_eq!(b.charge_id, None);
    assert_eq!(b.result.as_ref().unwrap()["code"], "card_declined");
    assert_eq!((b.amount, b.currency.as_str()), (500, "USD"));
    assert!(
        env.sim.ledger().charges.is_empty(),
        "a decline is no charge"
    );
    results.assert_quiet(&results.all).await;
    worker.stop().await.unwrap();
    results.cleanup().await;
    env.cleanup().await;
}

/// Invariant: a duplicate request of an already settled charge gets the
/// stored result published again — to the exchange and to the duplicate's own
/// `reply_to` with its own `correlation_id` — under the same message_id and
/// with the same body (same charge id) as the first event; the provider still
/// has exactly one charge, and the first requester's queue gets nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_of_settled_charge_replays_the_stored_result() {
    let env = TestEnv::new(Faults::default()).await;
    let mut results = Results::new(&env).await;
    let first = results
        .queue(&format!("default.{}.reply.a", env.queue))
        .await;
    let second = results
        .queue(&format!("default.{}.reply.b", env.queue))
        .await;
    let worker = env.start_worker(&results.flags());
    env.publish_raw(request("res-dup-1", Some((&first, "corr-1"))), BODY)
        .await;
    let original = results.take(&results.all, 1).await.remove(0);
    results.take(&first, 1).await;

    env.publish_raw(request("res-dup-1", Some((&second, "corr-2"))), BODY)
        .await;
    let replay = results.take(&results.all, 1).await.remove(0);
    let answer = results.take(&second, 1).await.remove(0);
    for d in [&replay, &answer] {
        assert_eq!(message_id(d), message_id(&original), "same fact, same id");
        assert_eq!(d.data, original.data, "the stored result, byte for byte");
        assert_eq!(kind(d), "replayed");
    }
    assert_eq!(correlation_id(&replay).as_deref(), Some("corr-2"));
    assert_eq!(correlation_id(&answer).as_deref(), Some("corr-2"));
    let reference = reference_id("default", "res-dup-1").to_string();
    let ledger = env.sim.ledger();
    assert_eq!(ledger.charges.len(), 1, "never a fresh charge");
    assert_eq!(env.charges_by_reference().get(&reference), Some(&1));
    assert_eq!(
        body(&answer).charge_id.as_deref(),
        Some(ledger.charges[0].id.as_str())
    );
    assert_eq!(env.status().await.duplicates, 1);
    results.assert_quiet(&first).await;
    results.assert_quiet(&results.all).await;
    worker.stop().await.unwrap();
    results.cleanup().await;
    env.cleanup().await;
}

/// Invariant: a duplicate that arrives while its charge is still open and asks
/// for a reply elsewhere gets one when the charge settles (a producer that
/// retried with a new reply queue still gets its answer); a duplicate naming
/// the original's reply_to adds nothing; the exchange gets one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_of_open_charge_is_answered_when_it_settles() {
    let env = TestEnv::new(Faults::default()).await;
    let mut results = Results::new(&env).await;
    let first = results
        .queue(&format!("default.{}.reply.a", env.queue))
        .await;
    let second = results
        .queue(&format!("default.{}.reply.b", env.queue))
        .await;
    let consumer = env.start_worker(&["--role", "consumer"]);
    env.publish_raw(request("res-open-1", Some((&first, "corr-1"))), BODY)
        .await;
    env.publish_raw(request("res-open-1", Some((&first, "corr-1"))), BODY)
        .await;
    env.publish_raw(request("res-open-1", Some((&second, "corr-2"))), BODY)
        .await;
    wait_for("both duplicates recorded", SETTLE, || async {
        env.status().await.duplicates == 2
    })
    .await;
    assert_eq!(env.status().await.outbox_in(OutboxState::Pending), 1);
    assert_eq!(events_owed(&env).await, 0, "nothing settled yet");

    let mut flags = vec!["--role", "dispatcher"];
    flags.extend(results.flags());
    let dispatcher = env.start_worker(&flags);
    let settled = results.take(&results.all, 1).await.remove(0);
    let to_first = results.take(&first, 1).await.remove(0);
    let to_second = results.take(&second, 1).await.remove(0);
    assert_eq!(kind(&settled), "settled");
    assert_eq!(kind(&to_second), "reply");
    assert_eq!(correlation_id(&to_first).as_deref(), Some("corr-1"));
    assert_eq!(correlation_id(&to_second).as_deref(), Some("corr-2"));
    for d in [&to_first, &to_second] {
        assert_eq!(message_id(d), message_id(&settled));
        assert_eq!(d.data, settled.data);
    }
    assert_eq!(env.sim.ledger().charges.len(), 1);
    results.assert_quiet(&results.all).await;
    results.assert_quiet(&first).await;
    results.assert_quiet(&second).await;
    dispatcher.stop().await.unwrap();
    consumer.stop().await.unwrap();
    results.cleanup().await;
    env.cleanup().await;
}

/// Invariant: a row that goes `dead` (here: the provider answers every
/// attempt `410`, a refusal about the request, until the attempt limit —
/// a `429` would open the breaker and spend no attempt) publishes a `dead` event saying why; when
/// an operator re-queues it and it then succeeds, the success is published as
/// a new fact under a new message_id — a consumer deduplicating by message_id
/// never drops it as a copy of the death — to the same reply_to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_row_publishes_dead_and_a_later_success_is_a_new_event() {
    let env = TestEnv::new(Faults {
        refuse_status: 410,
        ..Faults::default()
    })
    .await;
    let mut results = Results::new(&env).await;
    let reply = results
        .queue(&format!("default.{}.reply.a", env.queue))
        .await;
    let mut flags = vec!["--max-attempts", "2"];
    flags.extend(results.flags());
    let worker = env.start_worker(&flags);
    env.publish_raw(request("res-dead-1", Some((&reply, "corr-d"))), BODY)
        .await;

    let dead = results.take(&results.all, 1).await.remove(0);
    results.take(&reply, 1).await;
    let reference = reference_id("default", "res-dead-1");
    assert_eq!(dead.routing_key.as_str(), "charge.dead");
    assert_eq!(
        message_id(&dead),
        event_id(reference, OutboxState::Dead).to_string()
    );
    let b = body(&dead);
    assert_eq!(b.state, OutboxState::Dead);
    assert_eq!(b.charge_id, None);
    assert!(
        b.error.as_deref().unwrap().contains("never charged"),
        "{:?}",
        b.error
    );
    assert!(env.sim.ledger().charges.is_empty());

    // The operator fixes the cause and re-queues the row by hand.
    env.sim.set_faults(Faults::default());
    sqlx::query(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now()
         WHERE reference_id = $1",
    )
    .bind(reference)
    .execute(&env.pool)
    .await
    .unwrap();
    let success = results.take(&results.all, 1).await.remove(0);
    let direct = results.take(&reply, 1).await.remove(0);
    assert_eq!(success.routing_key.as_str(), "charge.succeeded");
    assert_eq!(
        message_id(&success),
        event_id(reference, OutboxState::Succeeded).to_string()
    );
    assert_ne!(message_id(&success), message_id(&dead));
    assert_eq!(message_id(&direct), message_id(&success));
    assert_eq!(correlation_id(&direct).as_deref(), Some("corr-d"));
    assert_eq!(env.sim.ledger().charges.len(), 1);
    assert_eq!(
        body(&success).charge_id.as_deref(),
        Some(env.sim.ledger().charges[0].id.as_str())
    );
    results.assert_quiet(&results.all).await;
    worker.stop().await.unwrap();
    results.cleanup().await;
    env.cleanup().await;
}

/// Record a charge request the way the inbox does, without the broker.
async fn record(env: &TestEnv, message_id: &str) -> Uuid {
    let inbound = Inbound {
        message_id: Some(message_id),
        body: BODY,
        ..Inbound::default()
    };
    let request = inbound.parse(64 * 1024).unwrap();
    let mut tx = env.pool.begin().await.unwrap();
    idem_store::inbox::record(&mut tx, &request, BODY)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    request.reference_id()
}

/// Invariant: result events survive a broker outage. While the publisher
/// cannot reach the broker (a proxy that refuses it, from the daemon's start,
/// then cuts its live session) charges still settle and their events wait in
/// the database; once the broker is reachable again every event is published
/// and nothing stays owed. The publisher never exits meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_out_a_broker_outage() {
    let env = TestEnv::new(Faults::default()).await;
    let results = Results::new(&env).await;
    let proxy = TcpProxy::start(idem_tests::rabbit::addr()).await;
    proxy.set_down(true);
    let url = idem_tests::via(AMQP_URL, proxy.addr());
    let mut flags = vec!["--role", "dispatcher", "--amqp-url", &url];
    flags.extend(results.flags());
    let worker = env.start_worker(&flags);

    let first = record(&env, "res-outage-1").await;
    wait_for("the charge settled during the outage", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        events_owed(&env).await,
        1,
        "the event waits in the database"
    );
    assert!(proxy.connections_refused() > 0, "the publisher kept trying");
    assert!(!worker.handle.is_finished(), "the daemon rides it out");

    proxy.set_down(false);
    let d = results.take(&results.all, 1).await.remove(0);
    assert_eq!(
        message_id(&d),
        event_id(first, OutboxState::Succeeded).to_string()
    );

    // A cut of the live session: the next event goes out after a reconnect.
    wait_for("the drained event deleted", SETTLE, || async {
        events_owed(&env).await == 0
    })
    .await;
    assert!(proxy.cut_all() > 0, "the publisher had a live session");
    let second = record(&env, "res-outage-2").await;
    let d = results.take(&results.all, 1).await.remove(0);
    assert_eq!(
        message_id(&d),
        event_id(second, OutboxState::Succeeded).to_string()
    );
    wait_for("nothing owed", SETTLE, || async {
        events_owed(&env).await == 0
    })
    .await;
    results.assert_quiet(&results.all).await;
    assert_eq!(env.sim.ledger().charges.len(), 2);
    worker.stop().await.unwrap();
    results.cleanup().await;
    env.cleanup().await;
}

/// Invariant: an event is deleted only after the broker confirmed it. A
/// publish the broker nacks (here: a bound queue that rejects every message)
/// leaves the event owed with its error and a backoff; the retry publishes it
/// again under the same message_id with the same body, so a consumer that got
/// the first copy can drop the second. The trigger writes events for a row
/// settled by hand, and none for a final row rewritten to the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_publish_is_retried_under_the_same_message_id() {
    let env = TestEnv::new(Faults::default()).await;
    let mut results = Results::new(&env).await;
    let full = results.queue(&format!("{}.full", env.queue)).await;
    // Re-declare it as a queue that refuses everything: the broker nacks.
    results
        .channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    results
        .channel
        .queue_declare(full.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    results
        .channel
        .queue_bind(
            full.as_str().into(),
            results.exchange.as_str().into(),
            "charge.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // An operator settles a row by hand: the trigger owes its event.
    let reference = record(&env, "res-nack-1").await;
    let settle = "UPDATE outbox SET state = 'succeeded', provider_charge_id = 'ch_manual',
                      result = '{\"id\": \"ch_manual\"}', settled_at = now()
                  WHERE reference_id = $1";
    sqlx::query(settle)
        .bind(reference)
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query(settle)
        .bind(reference)
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(events_owed(&env).await, 1, "same state again: no event");

    let publisher = idem_events::Publisher::new(
        env.pool.clone(),
        idem_events::PublisherConfig {
            amqp_url: AMQP_URL.into(),
            exchange: results.exchange.clone(),
            batch: 10,
            idle_poll: Duration::from_millis(10),
        },
    );
    let (conn, channel) = publisher.open().await.unwrap();
    let step = publisher.publish_once(&channel).await.unwrap();
    assert_eq!((step.claimed, step.published, step.failed), (1, 0, 1));
    let (attempts, error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM result_event")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 1);
    assert!(error.unwrap().contains("nack"), "the error is kept");

    // The refusing queue goes away; the retry (after its backoff) is confirmed.
    results
        .channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    wait_for("the retry confirmed", SETTLE, || async {
        publisher.publish_once(&channel).await.unwrap().published == 1
    })
    .await;
    assert_eq!(events_owed(&env).await, 0);
    let copies = results.take(&results.all, 2).await;
    let id = event_id(reference, OutboxState::Succeeded).to_string();
    assert_eq!(message_id(&copies[0]), id);
    assert_eq!(message_id(&copies[1]), id, "the retry carries the same id");
    assert_eq!(copies[0].data, copies[1].data);
    assert_eq!(body(&copies[0]).charge_id.as_deref(), Some("ch_manual"));
    let _ = conn.close(200, "done".into()).await;
    results.cleanup().await;
    env.cleanup().await;
}

/// Invariant: a publisher's claim is the row locks of its transaction and
/// writes nothing. While one step holds an event, another step skips it; the
/// moment the holder's transaction ends without recording an outcome (the
/// publisher died, or its connection dropped) the event is due again, with no
/// lease to wait out; the event's row version is the one the settle wrote
/// (a claim that pushed a lease ahead would have made a new one); and a
/// holder that freezes with its transaction open loses the claim once the
/// step's idle bound has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_claim_lasts_as_long_as_its_transaction_and_writes_nothing() {
    let env = TestEnv::new(Faults::default()).await;
    let reference = record(&env, "res-claim-1").await;
    sqlx::query(
        "UPDATE outbox SET state = 'succeeded', provider_charge_id = 'ch_manual',
             result = '{\"id\": \"ch_manual\"}', settled_at = now()
         WHERE reference_id = $1",
    )
    .bind(reference)
    .execute(&env.pool)
    .await
    .unwrap();
    let version = || async {
        sqlx::query_scalar::<_, String>("SELECT ctid::text FROM result_event")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    let written = version().await;

    let mut holder = env.pool.begin().await.unwrap();
    let held = idem_store::event::claim(&mut holder, 10, STEP)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].reference_id, reference);
    let mut other = env.pool.begin().await.unwrap();
    let skipped = idem_store::event::claim(&mut other, 10, STEP)
        .await
        .unwrap();
    assert!(skipped.is_empty(), "a held event is skipped: {skipped:?}");
    other.commit().await.unwrap();

    // The holder goes away without recording anything.
    holder.rollback().await.unwrap();
    let mut next = env.pool.begin().await.unwrap();
    let again = idem_store::event::claim(&mut next, 10, STEP).await.unwrap();
    assert_eq!(again.len(), 1, "due again at once");
    assert_eq!(again[0].id, held[0].id);
    assert_eq!(again[0].attempts, 0, "no failure was recorded");
    next.commit().await.unwrap();
    assert_eq!(version().await, written, "the claims wrote no row version");

    // A holder that freezes mid-step (its session idle in the transaction)
    // loses the claim once the step's idle bound has passed: the server ends
    // its session, and the event is due again without it.
    let mut frozen = env.pool.begin().await.unwrap();
    assert_eq!(
        idem_store::event::claim(&mut frozen, 10, Duration::from_millis(300))
            .await
            .unwrap()
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let mut after = env.pool.begin().await.unwrap();
    let freed = idem_store::event::claim(&mut after, 10, STEP)
        .await
        .unwrap();
    assert_eq!(
        freed.len(),
        1,
        "the frozen holder's claim ended with its session"
    );
    after.commit().await.unwrap();
    assert!(
        frozen.commit().await.is_err(),
        "the frozen holder's session is gone"
    );
    env.cleanup().await;
}
