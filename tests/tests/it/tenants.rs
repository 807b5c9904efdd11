//! Tenants end to end: the scope bound to the broker-validated `user_id`
//! (`IDEM_SCOPE_AUTH`), and `reply_to` kept to the scope's own queues
//! (`IDEM_REPLY_TO_ALLOW`), on the real broker, database, simulator and
//! daemon. Each test publishes as a second RabbitMQ user of its own (created
//! with `rabbitmqctl`, unique per run, deleted at the end), so the broker
//! itself vouches for the `user_id` the worker reads.

use std::process::Command;
use std::time::Duration;

use futures_lite::StreamExt;
use idem_message::reference_id;
use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::{AMQP_URL, TestEnv, wait_for};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(60);
const BODY: &[u8] = br#"{"account_id":"acc_1","amount":700,"currency":"EUR"}"#;

/// A RabbitMQ user of this test's own, with every permission on `/` (the
/// test is about who the broker says published, not about permissions).
/// Deleted when dropped, so a failing test leaves none behind.
struct BrokerUser {
    name: String,
    password: String,
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "rabbitmqctl {}: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
}

impl BrokerUser {
    fn create() -> Self {
        let name = format!("idem_t_{}", Uuid::new_v4().simple());
        let password = Uuid::new_v4().simple().to_string();
        rabbitmqctl(&["add_user", &name, &password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);
        Self { name, password }
    }

    /// Connect as this user; a channel with publisher confirms on.
    async fn connect(&self) -> (Connection, Channel) {
        let at = idem_tests::authority(idem_tests::AMQP_URL, 5672);
        let url = format!("amqp://{}:{}@{at}/%2f", self.name, self.password);
        idem_tests::rabbit::confirming_channel(&url).await
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

/// A charge `message_id` claiming `user_id` and, if given, `app_id`.
fn charge(message_id: &str, user_id: Option<&str>, app_id: Option<&str>) -> BasicProperties {
    let mut p = BasicProperties::default().with_message_id(message_id.into());
    if let Some(u) = user_id {
        p = p.with_user_id(u.into());
    }
    if let Some(a) = app_id {
        p = p.with_app_id(a.into());
    }
    p
}

/// Publish to the env's queue on `channel` and wait for the broker's confirm.
async fn publish(channel: &Channel, env: &TestEnv, props: BasicProperties) -> lapin::Result<()> {
    let confirm = channel
        .basic_publish(
            "".into(),
            env.queue.as_str().into(),
            BasicPublishOptions::default(),
            BODY,
            props,
        )
        .await?
        .await?;
    assert!(confirm.is_ack(), "the broker took it");
    Ok(())
}

/// The quarantine rows as (message_id, reason_code, user_id kept), by id.
async fn quarantined(env: &TestEnv) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT convert_from(message_id, 'UTF8'), reason_code, properties->>'user_id'
         FROM quarantine ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// Rows of any table that name `message_id`.
async fn rows_naming(env: &TestEnv, message_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM inbox WHERE message_id = $1)
              + (SELECT count(*) FROM outbox WHERE message_id = $1)
              + (SELECT count(*) FROM quarantine WHERE message_id = convert_to($1, 'UTF8'))",
    )
    .bind(message_id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// Invariant (`IDEM_SCOPE_AUTH=user_id`): the scope is the broker user. A
/// charge a second broker user publishes with its own `user_id` is charged
/// exactly once at the provider, under the reference of (user, message_id);
/// one whose `app_id` names another scope, and one without `user_id` that
/// claims the user's scope, are quarantined as `scope_not_allowed` (with the
/// user_id they carried) and never charged; one whose `user_id` is not the
/// connection's user is refused by the broker itself — the publish fails and
/// the channel is closed — and leaves no row anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_mode_charges_the_users_scope_and_refuses_the_rest() {
    let env = TestEnv::new(Faults::default()).await;
    let user = BrokerUser::create();
    let (conn, channel) = user.connect().await;
    let me = Some(user.name.as_str());
    publish(&channel, &env, charge("own-1", me, None))
        .await
        .unwrap();
    publish(&channel, &env, charge("foreign-1", me, Some("victim")))
        .await
        .unwrap();
    env.publish_raw(charge("anon-1", None, me), BODY).await;

    let spoofing = conn.create_channel().await.unwrap();
    spoofing
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let spoofed = publish(&spoofing, &env, charge("spoof-1", Some("guest"), None)).await;
    assert!(spoofed.is_err(), "the broker refused a forged user_id");
    wait_for("the broker closed the channel", SETTLE, || async {
        !spoofing.status().connected()
    })
    .await;

    let worker = env.start_worker(&["--scope-auth", "user_id"]);
    wait_for("1 charged, 2 quarantined", SETTLE, || async {
        let st = env.status().await;
        st.outbox_in(OutboxState::Succeeded) == 1 && st.quarantined == 2
    })
    .await;
    worker.stop().await.unwrap();

    let charges = env.charges_by_reference();
    let own = reference_id(&user.name, "own-1").to_string();
    assert_eq!(charges.len(), 1, "only the user's own scope: {charges:?}");
    assert_eq!(
        charges.get(&own),
        Some(&1),
        "charged once, in the user's scope"
    );
    let rows = quarantined(&env).await;
    let refused = "scope_not_allowed".to_owned();
    assert_eq!(
        rows,
        vec![
            ("foreign-1".into(), refused.clone(), Some(user.name.clone())),
            ("anon-1".into(), refused, None),
        ]
    );
    assert_eq!(rows_naming(&env, "spoof-1").await, 0, "nothing recorded");
    assert_eq!(env.queue_depth().await, 0);
    let _ = conn.close(200, "done".into()).await;
    env.cleanup().await;
}

/// Invariant (`IDEM_SCOPE_AUTH=allow_list`): the scope is `app_id`, and only
/// the scopes listed for the broker user are charged (once, under that
/// scope's reference); an unlisted `app_id`, and none at all (scope
/// `default`, unlisted), are quarantined as `scope_not_allowed`, never charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_mode_charges_only_the_users_listed_scopes() {
    let env = TestEnv::new(Faults::default()).await;
    let user = BrokerUser::create();
    let (conn, channel) = user.connect().await;
    let me = Some(user.name.as_str());
    publish(&channel, &env, charge("listed-1", me, Some("shop-a")))
        .await
        .unwrap();
    publish(&channel, &env, charge("unlisted-1", me, Some("shop-b")))
        .await
        .unwrap();
    publish(&channel, &env, charge("unscoped-1", me, None))
        .await
        .unwrap();
    let allow = format!("{}=shop-a", user.name);
    let worker = env.start_worker(&["--scope-auth", "allow_list", "--scope-allow", &allow]);
    wait_for("1 charged, 2 quarantined", SETTLE, || async {
        let st = env.status().await;
        st.outbox_in(OutboxState::Succeeded) == 1 && st.quarantined == 2
    })
    .await;
    worker.stop().await.unwrap();

    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 1, "{charges:?}");
    let listed = reference_id("shop-a", "listed-1").to_string();
    assert_eq!(charges.get(&listed), Some(&1));
    let codes: Vec<(String, String)> = quarantined(&env)
        .await
        .into_iter()
        .map(|(id, code, _)| (id, code))
        .collect();
    let refused = "scope_not_allowed".to_owned();
    assert_eq!(
        codes,
        vec![
            ("unlisted-1".into(), refused.clone()),
            ("unscoped-1".into(), refused)
        ]
    );
    let _ = conn.close(200, "done".into()).await;
    env.cleanup().await;
}

/// Take `n` messages from `queue` (no ack), waiting up to `SETTLE`.
async fn take(channel: &Channel, queue: &str, n: usize) -> Vec<lapin::message::Delivery> {
    let deadline = std::time::Instant::now() + SETTLE;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {n} messages on {queue}; got {}",
            got.len()
        );
        let get = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true });
        match get.await.unwrap() {
            Some(m) => got.push(m.delivery),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    got
}

fn correlation(d: &lapin::message::Delivery) -> String {
    d.properties.correlation_id().as_ref().unwrap().to_string()
}

/// The value of a counter in this process's metrics registry.
fn counter(name: &str) -> f64 {
    let handle = idem_daemon::metrics::install().unwrap();
    let scrape = handle.render();
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Invariant (`IDEM_SCOPE_AUTH=user_id`, the default `IDEM_REPLY_TO_ALLOW`):
/// every charge is charged once and its result is on the results exchange,
/// whatever its `reply_to`; a `reply_to` under the scope (`<user>.replies`)
/// gets its reply, and so does Direct Reply-To (the broker rewrites
/// `amq.rabbitmq.reply-to` to its per-channel form); a `reply_to` naming
/// another tenant's queue gets nothing, and
/// `idem_inbox_reply_to_refused_total` counts exactly that one. Alone in the
/// process: the counter is compared as a delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_to_outside_the_scope_gets_no_reply_but_its_result() {
    let env = TestEnv::alone(Faults::default()).await;
    let user = BrokerUser::create();
    let watch = idem_inbox::connect_amqp(AMQP_URL).await.unwrap();
    let reader = watch.create_channel().await.unwrap();
    let exchange = format!("{}.results", env.queue);
    idem_events::declare_exchange(&reader, &exchange)
        .await
        .unwrap();
    let all = format!("{}.results.all", env.queue);
    let mine = format!("{}.replies", user.name);
    let foreign = format!("tenant_{}.replies", Uuid::new_v4().simple());
    for q in [&all, &mine, &foreign] {
        reader
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    reader
        .queue_bind(
            all.as_str().into(),
            exchange.as_str().into(),
            "charge.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let (conn, channel) = user.connect().await;
    let mut direct = channel
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "direct".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let me = Some(user.name.as_str());
    for (id, reply_to) in [
        ("in-1", mine.as_str()),
        ("out-1", foreign.as_str()),
        ("direct-1", "amq.rabbitmq.reply-to"),
    ] {
        let props = charge(id, me, None)
            .with_reply_to(reply_to.into())
            .with_correlation_id(format!("c-{id}").as_str().into());
        publish(&channel, &env, props).await.unwrap();
    }
    let before = counter(idem_inbox::metrics::REPLY_TO_REFUSED);
    let worker = env.start_worker(&["--scope-auth", "user_id", "--results-exchange", &exchange]);

    let on_exchange = take(&reader, &all, 3).await;
    let mut answered: Vec<String> = on_exchange.iter().map(correlation).collect();
    answered.sort();
    assert_eq!(
        answered,
        ["c-direct-1", "c-in-1", "c-out-1"],
        "every result"
    );
    let replied = take(&reader, &mine, 1).await;
    assert_eq!(correlation(&replied[0]), "c-in-1");
    let reply = tokio::time::timeout(SETTLE, direct.next()).await.unwrap();
    assert_eq!(correlation(&reply.unwrap().unwrap()), "c-direct-1");
    wait_for("nothing owed", SETTLE, || async {
        let owed: i64 = sqlx::query_scalar("SELECT count(*) FROM result_event")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        owed == 0
    })
    .await;
    let stray = reader
        .basic_get(foreign.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(stray.is_none(), "nothing reached the foreign queue");
    assert!(
        reader
            .basic_get(mine.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .is_none()
    );
    let refused = counter(idem_inbox::metrics::REPLY_TO_REFUSED) - before;
    assert_eq!(refused, 1.0, "the one foreign reply_to is counted");
    worker.stop().await.unwrap();

    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 3);
    assert!(
        charges.values().all(|&n| n == 1),
        "each charged once: {charges:?}"
    );
    for q in [&all, &mine, &foreign] {
        let _ = reader
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = reader
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    let _ = watch.close(200, "done".into()).await;
    env.cleanup().await;
}
