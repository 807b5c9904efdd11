//! `idem-client`, the producers' crate, against a real broker and daemon:
//! what it publishes is charged once, `call` gets the result over Direct
//! Reply-To, and what would be lost or quarantined is an error at the
//! producer instead. `idem publish --key` is the same client.

use std::time::Duration;

use idem_client::{Client, Error, Kind, Request, State};
use idem_simulator::Faults;
use idem_tests::binary::{idem, output};
use idem_tests::{TestEnv, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn body(account: &str, amount: i64) -> Vec<u8> {
    format!(r#"{{"account_id":"{account}","amount":{amount},"currency":"EUR"}}"#).into_bytes()
}

/// Invariants: a `call` returns the settled result of its request (state,
/// reference id); calling again with the same key returns the stored result
/// as `replayed`, under the same event id, and the provider holds one charge
/// for the reference; a decline comes back as `declined`; a fire-and-forget
/// `publish` that the broker confirmed is charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_gets_its_result_and_a_repeat_gets_the_stored_one() {
    let env = TestEnv::new(Faults {
        decline_prefix: "acc_decline".into(),
        ..Faults::default()
    })
    .await;
    let worker = env.start_worker(&[]);
    let client = Client::connect(&env.amqp_url, &env.queue).await.unwrap();

    let request = Request::new("client-1", body("acc_client", 1250)).in_scope("shop-a");
    let first = client.call(&request, WAIT).await.unwrap();
    let reference = idem_message::reference_id("shop-a", "client-1");
    assert_eq!(
        (first.state, first.kind, first.reference_id),
        (State::Succeeded, Kind::Settled, reference)
    );
    assert!(first.charge_id.is_some(), "{first:?}");
    let again = client.call(&request, WAIT).await.unwrap();
    assert_eq!(
        (again.state, again.kind),
        (State::Succeeded, Kind::Replayed)
    );
    assert_eq!(again.event_id, first.event_id);

    let declined = Request::new("client-2", body("acc_decline_1", 500));
    let outcome = client.call(&declined, WAIT).await.unwrap();
    assert_eq!(outcome.state, State::Declined, "{outcome:?}");

    let sent = client
        .publish(&Request::new("client-3", body("acc_client", 7)))
        .await
        .unwrap();
    assert_eq!(
        sent.reference_id,
        idem_message::reference_id("default", "client-3")
    );
    wait_for("the published request charged", WAIT, || async {
        env.charges_by_reference()
            .contains_key(&sent.reference_id.to_string())
    })
    .await;
    let charges = env.charges_by_reference();
    assert_eq!(charges.get(&reference.to_string()), Some(&1));
    assert_eq!(charges.get(&sent.reference_id.to_string()), Some(&1));
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// Invariants: a request idem would quarantine is refused before anything
/// is sent (the queue stays empty); a publish to a queue that does not exist
/// is an error (`mandatory`: the broker returned it), not a message lost
/// without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_would_be_quarantined_or_lost_is_an_error_at_the_producer() {
    let env = TestEnv::new(Faults::default()).await;
    let client = Client::connect(&env.amqp_url, &env.queue).await.unwrap();
    for bad in [
        Request::new("client-bad-1", body("acc", 0)),
        Request::new("", body("acc", 1)),
        Request::new("client-bad-2", &b"not json"[..]),
    ] {
        match client.publish(&bad).await {
            Err(Error::Refused(_)) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(env.queue_depth().await, 0, "nothing was sent");

    let missing = format!("{}.missing", env.queue);
    let lost = Client::connect(&env.amqp_url, &missing).await.unwrap();
    match lost
        .publish(&Request::new("client-4", body("acc", 1)))
        .await
    {
        Err(Error::Unroutable { queue }) => assert_eq!(queue, missing),
        other => panic!("a publish to no queue: {other:?}"),
    }
    env.cleanup().await;
}

/// Invariant: `idem publish --key --body --wait` sends one real request and
/// prints its result; a body idem would quarantine fails with the reason
/// and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idem_publish_sends_one_request_and_prints_its_result() {
    let env = TestEnv::new(Faults::default()).await;
    let worker = env.start_worker(&[]);
    let body = String::from_utf8(body("acc_cli", 42)).unwrap();
    let args = [
        "publish",
        "--amqp-url",
        &env.amqp_url,
        "--queue",
        &env.queue,
        "--key",
        "cli-1",
        "--body",
        &body,
        "--wait",
        "30",
    ];
    let (status, text) = output(&mut idem(&args)).await;
    assert!(status.success(), "{text}");
    let reference = idem_message::reference_id("default", "cli-1").to_string();
    assert!(
        text.contains("cli-1: Succeeded (Settled)") && text.contains(&reference),
        "{text}"
    );
    assert_eq!(env.charges_by_reference().get(&reference), Some(&1));

    let bad = r#"{"account_id":"acc","amount":-1,"currency":"EUR"}"#;
    let (status, text) = output(&mut idem(&[
        "publish",
        "--amqp-url",
        &env.amqp_url,
        "--queue",
        &env.queue,
        "--key",
        "cli-2",
        "--body",
        bad,
    ]))
    .await;
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("idem would quarantine this request") && text.contains("amount must be > 0"),
        "{text}"
    );
    worker.stop().await.unwrap();
    assert_eq!(env.queue_depth().await, 0);
    env.cleanup().await;
}

/// `python3 docs/examples/python/producer.py <args>` with `env`'s broker,
/// publishing to `queue`.
async fn python_producer(env: &TestEnv, queue: &str, args: &[&str]) -> (bool, String, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/examples/python/producer.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(args)
        .env("IDEM_AMQP_URL", &env.amqp_url)
        .env("IDEM_QUEUE", queue)
        .env("IDEM_SCOPE", "shop-py")
        .output()
        .await
        .expect("python3 runs (the example producer needs Python 3 and `pip install pika`)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("No module named 'pika'"),
        "the Python example needs pika: python3 -m pip install pika, or apt-get install python3-pika (scripts/test does)"
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// Invariants: the documented Python producer (pika) is a correct one: its
/// request is charged once and it prints the `settled` result, whose body
/// the published schema accepts; run again with the same key it prints the
/// stored result (`replayed`, same event id) and the provider still holds
/// one charge; a publish to a missing queue exits 2, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_producer_charges_once_and_reads_its_result() {
    let env = TestEnv::new(Faults::default()).await;
    let worker = env.start_worker(&[]);
    let args = ["py-order-1", "acc_py", "1250", "EUR"];
    let mut events = Vec::new();
    for _ in 0..2 {
        let (ok, stdout, stderr) = python_producer(&env, &env.queue, &args).await;
        assert!(ok, "{stdout}\n{stderr}");
        let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        idem_tests::schema::assert_result_event(line["event"].to_string().as_bytes());
        events.push(line);
    }
    let reference = idem_message::reference_id("shop-py", "py-order-1").to_string();
    assert_eq!(events[0]["kind"], "settled", "{events:?}");
    assert_eq!(events[1]["kind"], "replayed", "{events:?}");
    for e in &events {
        assert_eq!(e["event"]["state"], "succeeded");
        assert_eq!(e["event"]["reference_id"], reference.as_str());
    }
    assert_eq!(
        events[0]["event"]["event_id"],
        events[1]["event"]["event_id"]
    );
    assert_eq!(env.charges_by_reference().get(&reference), Some(&1));
    worker.stop().await.unwrap();

    let missing = format!("{}.missing", env.queue);
    let (ok, _, stderr) = python_producer(&env, &missing, &args).await;
    assert!(
        !ok && stderr.contains("the broker returned the message"),
        "{stderr}"
    );
    env.cleanup().await;
}

/// Invariant: against a deployment that binds the scope to the broker user
/// (`IDEM_SCOPE_AUTH=user_id`), the client sends its user as `user_id`, so
/// its request is charged (not quarantined `scope_not_allowed`), and the
/// reference id it reports is the one idem uses (scope = the user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_user_id_scopes_the_client_proves_its_scope() {
    let env = TestEnv::new(Faults::default()).await;
    let worker = env.start_worker(&["--scope-auth", "user_id"]);
    let client = Client::connect(&env.amqp_url, &env.queue)
        .await
        .unwrap()
        .with_scope_auth(idem_message::ScopeAuth::UserId);
    let request = Request::new("client-user-1", body("acc_user", 3));
    let outcome = client.call(&request, WAIT).await.unwrap();
    let reference = idem_message::reference_id("guest", "client-user-1");
    assert_eq!(
        (outcome.state, outcome.reference_id),
        (State::Succeeded, reference)
    );
    let sent = client
        .publish(&Request::new("client-user-2", body("acc_user", 4)))
        .await
        .unwrap();
    assert_eq!(
        sent.reference_id,
        idem_message::reference_id("guest", "client-user-2")
    );
    // Another scope than the user's is refused here, before sending.
    let other = Request::new("client-user-3", body("acc_user", 5)).in_scope("shop-b");
    assert!(matches!(
        client.publish(&other).await,
        Err(Error::Refused(_))
    ));
    worker.stop().await.unwrap();
    env.cleanup().await;
}
