//! The messages lapin cannot hand over, end to end with the real binary: a
//! `message_id` that is not UTF-8 (lapin drops the connection on it) and a
//! header nested as deep as RabbitMQ's default frame allows (lapin's
//! recursive parse would overflow a default thread stack), each ahead of
//! valid charges.

use std::time::Duration;

use idem_inbox::raw::properties::RawProperties;
use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::binary::{Proc, run};
use idem_tests::rabbit::raw_publish;
use idem_tests::{AMQP_URL, TestEnv, spec, wait_for};
use idem_workload as workload;

const SETTLE: Duration = Duration::from_secs(90);

/// Invariant: a message whose `message_id` is `\xff\xfe` and one whose
/// header nests ~18,700 tables deep, published ahead of 30 valid charges,
/// are each quarantined once (`not_utf8` with its raw header bytes, and
/// `header_limits`), every valid charge is charged exactly once at the provider,
/// and the one replica is still running at the end (no abort, no loop: it
/// reconnected at most twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_heads_are_quarantined_raw_and_the_rest_is_charged() {
    let env = TestEnv::new(Faults::default()).await;
    let hostile = RawProperties {
        message_id: Some(b"\xff\xfe".to_vec()),
        app_id: Some(b"shop".to_vec()),
        ..RawProperties::default()
    };
    raw_publish::publish(AMQP_URL, &env.queue, &hostile, b"{\"not\":\"utf8\"}")
        .await
        .unwrap();
    let depth = raw_publish::publish_nested(AMQP_URL, &env.queue, 100_000, b"deep")
        .await
        .unwrap();
    assert!(depth > 15_000, "as deep as the frame allows: {depth}");
    let valid = workload::generate(&spec("salvage", 30));
    env.publish(&valid).await;

    let mut replica = Proc::spawn("replica", &mut run(&env.run_flags(), &[]));
    wait_for("2 quarantined, 30 charged", SETTLE, || async {
        let st = env.status().await;
        st.quarantined == 2 && st.outbox_in(OutboxState::Succeeded) == 30
    })
    .await;
    assert!(
        replica.still_running(),
        "the replica survived: {}",
        replica.text()
    );
    let (status, log) = replica.stop().await;
    assert!(status.success(), "clean stop: {log}");

    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 30, "only the valid messages were charged");
    assert!(charges.values().all(|n| *n == 1), "each once: {charges:?}");
    let codes: Vec<String> =
        sqlx::query_scalar("SELECT reason_code FROM quarantine ORDER BY reason_code")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    // The deep one is refused by the same bounds whichever reader took it
    // (lapin, on its large stack, or idem's own beside the other).
    assert_eq!(codes, ["header_limits", "not_utf8"]);
    let (header, message_id): (Option<Vec<u8>>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT raw_header, message_id FROM quarantine WHERE reason_code = 'not_utf8'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(message_id.as_deref(), Some(&b"\xff\xfe"[..]));
    let header = header.unwrap();
    assert!(
        header.windows(2).any(|w| w == b"\xff\xfe"),
        "the raw header holds the producer's bytes"
    );
    let reconnects = log.matches("lost its broker session").count();
    assert!(reconnects <= 2, "{reconnects} reconnects:\n{log}");
    env.cleanup().await;
}

/// Invariant: the `idem` binary started without `RUST_MIN_STACK` gives its
/// threads the stack lapin's parser needs for RabbitMQ's default frame size
/// (it re-executes itself with the variable set); started with the standard
/// library's 2 MiB, a replica refuses to start, naming the variable and the
/// broker's frame size, and takes nothing off the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_sizes_its_stack_for_the_brokers_frames_or_refuses_to_start() {
    let env = TestEnv::new(Faults::default()).await;
    env.publish(&workload::generate(&spec("stack", 3))).await;

    let mut small = run(&env.run_flags(), &[("RUST_MIN_STACK", "2097152")]);
    let (status, text) = idem_tests::binary::output(&mut small).await;
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("RUST_MIN_STACK") && text.contains("131072 bytes"),
        "the error says what to fix: {text}"
    );
    assert_eq!(env.status().await.inbox_keys, 0, "nothing consumed: {text}");

    let mut unset = run(&env.run_flags(), &[("IDEM_LOG_FORMAT", "json")]);
    unset.env_remove("RUST_MIN_STACK");
    let replica = Proc::spawn("replica", &mut unset);
    let stack: usize = replica
        .wait_for_line(SETTLE, |line| {
            idem_tests::binary::json_field(line, "thread_stack_bytes")
                .or_else(|| {
                    let v: serde_json::Value = serde_json::from_str(line).ok()?;
                    v["fields"]["thread_stack_bytes"]
                        .as_u64()
                        .map(|n| n.to_string())
                })
                .and_then(|v| v.parse().ok())
        })
        .await;
    assert_eq!(stack, idem_inbox::stack::DEFAULT);
    wait_for("3 charged", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 3
    })
    .await;
    let (status, log) = replica.stop().await;
    assert!(status.success(), "{log}");
    env.cleanup().await;
}
