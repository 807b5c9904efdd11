//! Trace propagation end to end: a message published with a W3C `traceparent`
//! header is stored with it, its provider call carries a child of it (same
//! trace id, new parent id), and the daemon's JSON logs show the trace id on
//! the consumed message and on the dispatch attempt. With an OTLP endpoint,
//! the spans reach a collector, parented on the producer's span. A message
//! without a traceparent goes through as before.
//!
//! These run the built `idem` binary (`cargo build -p idem` first when running
//! this suite alone), so that its logging and exporter are the real ones.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use idem_message::{TraceParent, reference_id};
use idem_simulator::{Faults, SeenRequest};
use idem_store::OutboxState;
use idem_tests::{TestEnv, idem_binary, wait_for};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::process::{Child, Command};

const SETTLE: Duration = Duration::from_secs(60);

/// The producer's span: what the message's and the attempt's spans descend from.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PRODUCER_SPAN: &str = "b7ad6b7169203331";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PRODUCER_SPAN}-01")
}

/// `idem run` for `env`, logging JSON to `log`, with `vars` set and no OTLP
/// variable inherited from the caller's environment.
fn spawn(env: &TestEnv, log: &Path, vars: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(idem_binary());
    cmd.arg("run")
        .args(env.run_flags())
        .env("IDEM_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,idem_inbox::trace=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true);
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(vars.iter().copied());
    cmd.spawn().unwrap()
}

/// Graceful stop (SIGTERM): exit 0, buffered spans exported.
async fn stop(mut child: Child) {
    let pid = Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("idem stopped within 30 s")
        .unwrap();
    assert!(status.success(), "SIGTERM is a graceful exit 0: {status:?}");
}

/// Publish a valid charge with `message_id`, and `traceparent` as a header if given.
async fn publish(env: &TestEnv, message_id: &str, traceparent: Option<&str>) {
    let mut properties = BasicProperties::default()
        .with_message_id(message_id.into())
        .with_content_type("application/json".into());
    if let Some(tp) = traceparent {
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), AMQPValue::LongString(tp.into()));
        properties = properties.with_headers(headers);
    }
    let body = serde_json::json!({"account_id": format!("acc_{message_id}"), "amount": 1250, "currency": "EUR"});
    env.publish_raw(properties, body.to_string().as_bytes())
        .await;
}

/// The charge call the simulator received for `message_id`.
fn charge_call(env: &TestEnv, message_id: &str) -> SeenRequest {
    let reference = reference_id("default", message_id).to_string();
    let calls: Vec<SeenRequest> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.idempotency_key.as_deref() == Some(&*reference))
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "one charge call for {message_id}: {calls:?}"
    );
    calls.into_iter().next().unwrap()
}

async fn stored_traceparent(env: &TestEnv, message_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT traceparent FROM outbox WHERE reference_id = $1::uuid")
        .bind(reference_id("default", message_id).to_string())
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn all_charged(env: &TestEnv, n: i64) {
    wait_for("every message charged", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == n
    })
    .await;
}

/// The JSON log lines of `log` whose message is `message` and one of whose
/// spans has `trace_id` = `trace_id`.
fn lines_with_trace(log: &Path, message: &str, trace_id: &str) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == message)
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["trace_id"] == trace_id))
        })
        .collect()
}

fn log_path(env: &TestEnv, what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{what}.log", env.name))
}

/// Without OTLP: stored as published, a child on the provider call, the trace
/// id in the JSON logs of the inbox and the dispatcher; no header, no trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_stored_propagated_and_logged() {
    let env = TestEnv::new(Faults::default()).await;
    let log = log_path(&env, "json");
    let idem = spawn(&env, &log, &[]);
    publish(&env, "traced", Some(&traceparent())).await;
    publish(&env, "untraced", None).await;
    all_charged(&env, 2).await;

    // (a) the outbox row keeps the producer's header as published.
    assert_eq!(
        stored_traceparent(&env, "traced").await.as_deref(),
        Some(&*traceparent())
    );
    assert_eq!(stored_traceparent(&env, "untraced").await, None);

    // (b) the provider got the same trace, a new parent, the same flags.
    let sent = charge_call(&env, "traced")
        .traceparent
        .expect("a traceparent");
    let sent = TraceParent::parse(&sent).expect("a valid traceparent");
    assert_eq!(sent.trace_id_hex(), TRACE_ID);
    assert_ne!(
        sent.parent_id_hex(),
        PRODUCER_SPAN,
        "a child, not the producer's span"
    );
    assert!(sent.sampled());
    assert_eq!(
        charge_call(&env, "untraced").traceparent,
        None,
        "nothing to propagate without a trace and without span export"
    );

    stop(idem).await;
    // (c) the trace id on the consumed message's line and on the dispatcher's.
    let consumed = lines_with_trace(&log, "message recorded", TRACE_ID);
    assert_eq!(
        consumed.len(),
        1,
        "the inbox logged the message with its trace id"
    );
    assert_eq!(consumed[0]["span"]["message_id"], "traced");
    assert_eq!(consumed[0]["span"]["decision"], "new");
    let charged = lines_with_trace(&log, "charged", TRACE_ID);
    assert_eq!(
        charged.len(),
        1,
        "the dispatcher logged the charge with its trace id"
    );
    assert_eq!(charged[0]["span"]["name"], "attempt");
    assert_eq!(charged[0]["span"]["message_id"], "traced");
    env.cleanup().await;
    let _ = std::fs::remove_file(&log);
}

/// A stand-in OTLP/HTTP collector: keeps every body posted to `/v1/traces`.
async fn collector() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let bodies: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let kept = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body);
                // An empty ExportTraceServiceResponse.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

/// How often `needle` occurs in the bodies the collector received.
fn occurrences(bodies: &Mutex<Vec<Bytes>>, needle: &[u8]) -> usize {
    bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| b.windows(needle.len()).filter(|w| *w == needle).count())
        .sum()
}

fn exported(bodies: &Mutex<Vec<Bytes>>, needle: &[u8]) -> bool {
    occurrences(bodies, needle) > 0
}

/// With OTLP: the message's and the attempt's spans reach the collector in
/// the producer's trace, parented on the producer's span; the provider's
/// parent id is the exported attempt span's id; a message without a
/// traceparent starts a trace of its own and is still charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp() {
    let env = TestEnv::new(Faults::default()).await;
    let (endpoint, bodies) = collector().await;
    let log = log_path(&env, "otlp");
    let idem = spawn(
        &env,
        &log,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            // Logs at info only: the spans are exported regardless.
            ("RUST_LOG", "info"),
        ],
    );
    publish(&env, "traced", Some(&traceparent())).await;
    publish(&env, "untraced", None).await;
    all_charged(&env, 2).await;

    let trace = TraceParent::parse(&traceparent()).unwrap();
    let sent = TraceParent::parse(&charge_call(&env, "traced").traceparent.unwrap()).unwrap();
    assert_eq!(
        sent.trace_id, trace.trace_id,
        "the provider call is in the producer's trace"
    );
    assert_ne!(sent.parent_id, trace.parent_id);
    let own = charge_call(&env, "untraced")
        .traceparent
        .expect("with span export, an untraced message's call starts a trace");
    let own = TraceParent::parse(&own).unwrap();
    assert_ne!(own.trace_id, trace.trace_id);

    // Protobuf carries ids as raw bytes: the trace id; the producer's span as
    // the parent of two spans, the message's and the attempt's; the attempt
    // span whose id the provider saw; the service name.
    wait_for("spans exported", Duration::from_secs(30), || async {
        exported(&bodies, &trace.trace_id)
            && occurrences(&bodies, &trace.parent_id) >= 2
            && exported(&bodies, &sent.parent_id)
            && exported(&bodies, &own.trace_id)
            && exported(&bodies, &own.parent_id)
            && exported(&bodies, b"message")
            && exported(&bodies, b"attempt")
            && exported(&bodies, b"idem")
    })
    .await;
    stop(idem).await;
    env.cleanup().await;
    let _ = std::fs::remove_file(&log);
}
