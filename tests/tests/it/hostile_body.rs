//! Hostile bodies and terminal bytes: a body far over the size limit, and a
//! message whose key, headers and body hold terminal control sequences, each
//! published ahead of valid charges, on the real broker, database and binary.

use std::time::Duration;

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_store::quarantine::MAX_KEPT_BODY;
use idem_tests::binary::run_against;
use idem_tests::{AMQP_URL, TestEnv, spec, wait_for};
use idem_workload as workload;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

const SETTLE: Duration = Duration::from_secs(60);
/// The worker's body limit in this test.
const LIMIT: usize = 1024;
/// The oversize body: well past both the limit and what quarantine keeps.
const HUGE: usize = 3 * 1024 * 1024;
const EVIL_ID: &str = "evil-\u{1b}[2J\r\u{202e}-1";

/// `idem <args> --database-url <env>`: (success, raw stdout, stderr).
fn idem(env: &TestEnv, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = run_against(&env.database_url, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), out.stdout, err)
}

/// Nothing a terminal acts on: no ESC, CR or right-to-left override.
fn assert_inert(what: &str, out: &[u8]) {
    assert!(!out.contains(&0x1b), "{what} printed a raw ESC");
    assert!(!out.contains(&0x0d), "{what} printed a raw CR");
    let rlo = "\u{202e}".as_bytes();
    assert!(
        !out.windows(rlo.len()).any(|w| w == rlo),
        "{what} printed a raw U+202E"
    );
}

/// Invariant: a 3 MiB body over the limit and a message whose key, header and
/// body hold ESC/CR/bidi bytes are both quarantined, and the valid charges
/// published after them are each charged exactly once (at the provider).
/// The oversize row keeps at most [`MAX_KEPT_BODY`] bytes (a prefix), the
/// whole size and the SHA-256 of the whole body (computed here by
/// PostgreSQL, not by idem), and cannot be replayed; `idem quarantine
/// list|show` print neither row's control bytes raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_terminal_bytes_are_quarantined_bounded_and_printed_escaped() {
    let env = TestEnv::new(Faults::default()).await;
    let mut huge = b"\x1b[31m\r\xe2\x80\xae ".to_vec();
    huge.resize(HUGE, b'x');
    env.publish_raw(
        BasicProperties::default().with_message_id("huge-1".into()),
        &huge,
    )
    .await;
    let mut headers = FieldTable::default();
    headers.insert(
        "x-evil".into(),
        AMQPValue::LongString("\u{1b}]0;pwned\u{7}".into()),
    );
    env.publish_raw(
        BasicProperties::default()
            .with_message_id(EVIL_ID.into())
            .with_headers(headers),
        "\u{1b}[2J\r\u{202e} not json \u{9b}".as_bytes(),
    )
    .await;
    let valid = workload::generate(&spec("hostile", 50));
    env.publish(&valid).await;
    let limit = LIMIT.to_string();
    let worker = env.start_worker(&["--max-body-bytes", &limit]);
    wait_for("2 quarantined, 50 charged", SETTLE, || async {
        let st = env.status().await;
        st.quarantined == 2 && st.outbox_in(OutboxState::Succeeded) == 50
    })
    .await;
    worker.stop().await.unwrap();

    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 50, "only the valid messages were charged");
    for m in &valid {
        let id = m.message_id.as_deref().unwrap();
        let reference = idem_message::reference_id("default", id).to_string();
        assert_eq!(charges.get(&reference), Some(&1), "{id} charged once");
    }

    let (id, kept, size, digest, truncated): (i64, i32, i64, bool, bool) = sqlx::query_as(
        "SELECT id, octet_length(body), body_size, body_sha256 = sha256($1), body_truncated
         FROM quarantine WHERE reason_code = 'too_large'",
    )
    .bind(&huge)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(kept as usize <= MAX_KEPT_BODY, "kept {kept} bytes");
    assert_eq!(size, HUGE as i64);
    assert!(digest, "the SHA-256 of the whole body");
    assert!(truncated);
    let (evil, evil_reason): (i64, String) =
        sqlx::query_as("SELECT id, reason_code FROM quarantine WHERE id <> $1")
            .bind(id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(evil_reason, "not_json");

    for qid in [id, evil] {
        let (ok, out, err) = idem(&env, &["quarantine", "show", &qid.to_string()]);
        assert!(ok, "quarantine show {qid}: {err}");
        assert_inert("quarantine show", &out);
        assert!(String::from_utf8_lossy(&out).contains("\\u{1b}"));
    }
    let (ok, out, err) = idem(&env, &["quarantine", "list"]);
    assert!(ok, "quarantine list: {err}");
    assert_inert("quarantine list", &out);
    assert!(
        String::from_utf8_lossy(&out).contains(&format!("{MAX_KEPT_BODY} of {HUGE}")),
        "the list says the body was cut"
    );

    let (ok, _, err) = idem(
        &env,
        &[
            "quarantine",
            "replay",
            &id.to_string(),
            "--actor",
            "carol",
            "--reason",
            "try it",
            "--amqp-url",
            AMQP_URL,
            "--queue",
            &env.queue,
        ],
    );
    assert!(!ok, "a truncated message is not replayed");
    assert!(err.contains("cannot be replayed"), "{err}");
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM audit")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(audits, 0, "nothing was attempted, so nothing is audited");
    env.cleanup().await;
}
