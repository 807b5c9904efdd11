//! The chaos suite's own infrastructure, proven against the real things: a
//! private PostgreSQL cluster and RabbitMQ node that survive restarts and
//! crashes with their data, and a TCP proxy that cuts connections on demand.
//! Each test states its invariant. `RUST_LOG=idem_tests=info` shows timings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use idem_tests::pg::PgCluster;
use idem_tests::proxy::TcpProxy;
use idem_tests::rabbit::RabbitNode;
use idem_tests::{gate, init};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Retry `f` every 50 ms until it succeeds; panic with the last error after `timeout`.
async fn eventually<T, E, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(value) => return value,
            Err(e) if Instant::now() > deadline => {
                panic!("{what}: still failing after {timeout:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Pool that gives up quickly, so a query against a dead server fails fast.
async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .unwrap()
}

async fn values(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT v FROM t ORDER BY id")
        .fetch_all(pool)
        .await
}

/// Whether `pid` is a live process (a zombie counts as dead).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.get(stat.rfind(')')? + 1..)?;
            after.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Invariant: a private cluster keeps committed rows across a fast-mode
/// restart and across a SIGKILL of all its processes; an existing pool
/// reconnects by itself within seconds; dropping the cluster leaves no
/// process and no directory behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_cluster_keeps_committed_rows_across_restart_and_crash() {
    init();
    let _shared = gate::shared().await;
    let pg = PgCluster::start().await.unwrap();
    assert_ne!(pg.port(), 5432);
    let pool = pool(&pg.url("postgres")).await;
    sqlx::query("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1, 'before restart')")
        .execute(&pool)
        .await
        .unwrap();

    let pid_before = pg.pid().unwrap();
    let took = pg.restart().await.unwrap();
    assert_ne!(pg.pid().unwrap(), pid_before, "a new postmaster");
    assert!(!process_alive(pid_before), "the old postmaster is gone");
    eprintln!("PgCluster::restart took {took:?}");
    // The pool's old connections are dead: it may fail once, then reconnects.
    let rows = eventually(
        "pool reconnects after restart",
        Duration::from_secs(10),
        || values(&pool),
    )
    .await;
    assert_eq!(rows, ["before restart"]);

    sqlx::query("INSERT INTO t VALUES (2, 'before crash')")
        .execute(&pool)
        .await
        .unwrap();
    let pid = pg.pid().unwrap();
    let started = Instant::now();
    pg.kill_hard();
    let killed = started.elapsed();
    assert!(!pg.is_running());
    assert!(!process_alive(pid), "the postmaster is dead");
    let crashed = PgConnection::connect(&pg.url("postgres")).await;
    assert!(crashed.is_err(), "nothing answers while crashed");
    let started = Instant::now();
    pg.start_again().await.unwrap();
    eprintln!(
        "PgCluster::kill_hard took {killed:?}, start_again (crash recovery) {:?}",
        started.elapsed()
    );
    let rows = eventually(
        "pool reconnects after crash",
        Duration::from_secs(10),
        || values(&pool),
    )
    .await;
    assert_eq!(rows, ["before restart", "before crash"]);

    // Drop: immediate shutdown, no process left, dir removed.
    let (pid, data) = (pg.pid().unwrap(), pg.data_dir());
    pool.close().await;
    drop(pg);
    assert!(!process_alive(pid), "postmaster left running after drop");
    assert!(!data.exists(), "data dir left behind");
}

/// Invariant: a test that panics while owning a cluster does not leak it:
/// `Drop` runs during unwinding and stops the postmaster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_cluster_is_cleaned_up_when_a_test_panics() {
    init();
    let _shared = gate::shared().await;
    let (tx, rx) = std::sync::mpsc::channel::<(u32, PathBuf)>();
    let task = tokio::spawn(async move {
        let pg = PgCluster::start().await.unwrap();
        tx.send((pg.pid().unwrap(), pg.data_dir())).unwrap();
        panic!("a failing test");
    });
    assert!(task.await.unwrap_err().is_panic());
    let (pid, data) = rx.recv().unwrap();
    assert!(!process_alive(pid), "postmaster leaked by a panicking test");
    assert!(!data.exists(), "data dir leaked by a panicking test");
}

async fn queue_depth(url: &str, queue: &str) -> anyhow::Result<u32> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    // Peek without consuming: the unacked message returns to the queue on close.
    let got = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await?
        .map(|m| m.delivery.data.clone());
    assert_eq!(
        got.as_deref(),
        Some(&b"persistent"[..]),
        "the message itself"
    );
    connection.close(200, "done".into()).await?;
    Ok(q.message_count())
}

/// Invariant: a persistent message confirmed by a private node's durable
/// queue is still there after a full restart of the node (VM included),
/// after an app-only restart through `rabbitmqctl` (which proves the CLI can
/// talk to the node: cookie, node name), and after a SIGKILL of the VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbit_node_keeps_confirmed_persistent_messages_across_restarts_and_crash() {
    init();
    let _shared = gate::shared().await;
    let started = Instant::now();
    let node = RabbitNode::start().await.unwrap();
    eprintln!("RabbitNode::start took {:?}", started.elapsed());
    assert_ne!(node.port(), 5672);
    let url = node.amqp_url();
    let queue = "infra.durable";
    {
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b"persistent",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        connection.close(200, "done".into()).await.unwrap();
    }
    assert_eq!(queue_depth(&url, queue).await.unwrap(), 1);

    let took = node.restart().await.unwrap();
    eprintln!("RabbitNode::restart took {took:?}");
    assert_eq!(
        queue_depth(&url, queue).await.unwrap(),
        1,
        "after a full restart"
    );

    let status = node.ctl(&["status"]).await.unwrap();
    assert!(
        status.contains(node.node_name()),
        "rabbitmqctl talks to our node: {status}"
    );
    let took = node.restart_app().await.unwrap();
    eprintln!("RabbitNode::restart_app took {took:?}");
    assert_eq!(
        queue_depth(&url, queue).await.unwrap(),
        1,
        "after an app restart"
    );

    let started = Instant::now();
    node.kill_hard();
    let killed = started.elapsed();
    assert!(!node.is_running());
    let crashed = Connection::connect(&url, ConnectionProperties::default()).await;
    assert!(crashed.is_err(), "nothing answers while crashed");
    let started = Instant::now();
    node.start_again().await.unwrap();
    eprintln!(
        "RabbitNode::kill_hard took {killed:?}, start_again {:?}",
        started.elapsed()
    );
    assert_eq!(queue_depth(&url, queue).await.unwrap(), 1, "after a crash");
}

/// Invariant: through the proxy a connection works; `cut_all` kills it (its
/// next query fails) while new connections still work; `set_down(true)`
/// kills live connections and makes new ones fail; `set_down(false)`
/// restores service. Uses the shared PostgreSQL: only connections are cut,
/// the server is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cuts_connections_and_simulates_outages() {
    init();
    let _shared = gate::shared().await;
    let proxy = TcpProxy::start(idem_tests::pg::addr()).await;
    let url = idem_tests::via(idem_tests::PG_ADMIN_URL, proxy.addr());
    let select_one = "SELECT 1::int4";

    let mut conn = PgConnection::connect(&url).await.unwrap();
    let one: i32 = sqlx::query_scalar(select_one)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    assert_eq!(proxy.active(), 1);

    assert_eq!(proxy.cut_all(), 1);
    assert_eq!(proxy.connections_cut(), 1);
    let after_cut = sqlx::query_scalar::<_, i32>(select_one)
        .fetch_one(&mut conn)
        .await;
    assert!(
        after_cut.is_err(),
        "a cut connection must fail: {after_cut:?}"
    );
    let mut fresh = PgConnection::connect(&url).await.unwrap();
    let one: i32 = sqlx::query_scalar(select_one)
        .fetch_one(&mut fresh)
        .await
        .unwrap();
    assert_eq!(one, 1, "new connections work after a cut");

    proxy.set_down(true);
    assert!(proxy.is_down());
    assert_eq!(
        proxy.connections_cut(),
        2,
        "the outage cut the live connection"
    );
    let during = sqlx::query_scalar::<_, i32>(select_one)
        .fetch_one(&mut fresh)
        .await;
    assert!(
        during.is_err(),
        "live connections die in an outage: {during:?}"
    );
    let connect = PgConnection::connect(&url).await;
    assert!(connect.is_err(), "connects fail in an outage");
    assert!(proxy.connections_refused() >= 1);

    proxy.set_down(false);
    let mut back = PgConnection::connect(&url).await.unwrap();
    let one: i32 = sqlx::query_scalar(select_one)
        .fetch_one(&mut back)
        .await
        .unwrap();
    assert_eq!(one, 1, "service restored");
    back.close().await.unwrap();
}

/// Invariant: a cut is seen by both sides: the client's read fails or hits
/// EOF, and so does the server's, within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cut_is_seen_by_both_sides() {
    init();
    let _shared = gate::shared().await;
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target: SocketAddr = server.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        let (mut socket, _) = server.accept().await.unwrap();
        let mut buf = [0u8; 5];
        socket.read_exact(&mut buf).await.unwrap();
        socket.write_all(&buf).await.unwrap();
        // Wait for the cut: EOF or an error.
        let mut rest = [0u8; 16];
        let saw_cut = matches!(socket.read(&mut rest).await, Ok(0) | Err(_));
        // Then serve one more connection: an echo.
        let (mut socket, _) = server.accept().await.unwrap();
        let mut buf = [0u8; 5];
        socket.read_exact(&mut buf).await.unwrap();
        socket.write_all(&buf).await.unwrap();
        saw_cut
    });
    let proxy = TcpProxy::start(target).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut echo = [0u8; 5];
    client.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hello");

    assert_eq!(proxy.cut_all(), 1);
    let mut buf = [0u8; 16];
    let client_saw = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf))
        .await
        .expect("client did not see the cut");
    assert!(
        matches!(client_saw, Ok(0) | Err(_)),
        "client: {client_saw:?}"
    );
    // The proxy keeps accepting and forwarding.
    let mut again = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    again.write_all(b"again").await.unwrap();
    again.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"again");
    let server_saw = tokio::time::timeout(Duration::from_secs(1), server_side)
        .await
        .expect("server did not see the cut")
        .unwrap();
    assert!(server_saw, "server: the cut connection did not end");
    assert_eq!(proxy.connections_forwarded(), 2);
    assert_eq!(proxy.connections_cut(), 1);
}
