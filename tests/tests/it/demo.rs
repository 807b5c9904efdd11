//! `idem demo` on a machine whose services do not answer: the README's
//! first command brings up what it needs (private PostgreSQL and RabbitMQ
//! from the installed servers, removed when it ends), or says in one line
//! what to install.

use std::path::Path;

use idem_tests::binary::{idem, output};
use idem_tests::gate;

/// A local port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The directory a demo line names after `prefix`, up to the next `;`.
fn named_dir(text: &str, prefix: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.contains(prefix))
        .unwrap_or_else(|| panic!("no line with {prefix:?} in:\n{text}"));
    let start = line.find(prefix).unwrap() + prefix.len();
    line[start..].split(';').next().unwrap().trim().to_owned()
}

/// Invariant: with nothing answering at its (local) database and broker
/// URLs, the demo starts private servers, charges every distinct message
/// exactly once (its own report, counted at its provider, exits 0 only
/// then), and leaves no server data behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_starts_private_servers_when_the_local_ones_do_not_answer() {
    let _ticket = gate::shared().await;
    let (pg, amqp) = (closed_port(), closed_port());
    let database_url = format!("postgres://postgres@127.0.0.1:{pg}/idem_demo");
    let amqp_url = format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f");
    let (status, text) = output(
        servers_from_env(&mut idem(&[
            "demo",
            "--messages",
            "300",
            "--replicas",
            "2",
            "--timeout-secs",
            "90",
        ]))
        .env("IDEM_DEMO_DATABASE_URL", &database_url)
        .env("IDEM_AMQP_URL", &amqp_url)
        .env("RUST_LOG", "warn"),
    )
    .await;
    assert!(status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "PostgreSQL does not answer at 127.0.0.1:{pg}: starting a private cluster"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "RabbitMQ does not answer at 127.0.0.1:{amqp}: starting a private node"
        )),
        "{text}"
    );
    for figure in [
        "double charges                  0",
        "missing charges                 0",
    ] {
        assert!(text.contains(figure), "{figure:?} in:\n{text}");
    }
    let data = named_dir(&text, "(data in ");
    let pg_dir = Path::new(&data).parent().unwrap().to_owned();
    let rabbit_dir = named_dir(&text, "files in ");
    for dir in [pg_dir.to_str().unwrap(), &rabbit_dir] {
        assert!(
            dir.contains("idem-pgcluster-") || dir.contains("idem-rabbitnode-"),
            "{dir}"
        );
        assert!(!Path::new(dir).exists(), "{dir} removed:\n{text}");
    }
    // Their processes, by what only they carry on their command lines (a
    // port could be some other server's again by now).
    let node = named_dir(&text, "(node ");
    let node = node.split(',').next().unwrap().to_owned();
    for mark in [pg_dir.to_str().unwrap(), node.as_str()] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !processes_naming(mark).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let left = processes_naming(mark);
        assert!(left.is_empty(), "processes of {mark} left: {left:?}");
    }
}

/// The command lines of running processes that contain `mark`.
fn processes_naming(mark: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(mark) {
            found.push(cmdline);
        }
    }
    found
}

/// The server binaries the harness was told about, for the demo as well.
fn servers_from_env(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for var in ["IDEM_PG_BINDIR", "IDEM_RABBITMQ_SBIN"] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd
}

/// Invariant: without servers to start, the demo fails before anything
/// runs, in one line that names every package to install and the settings
/// to change instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_servers_installed_the_demo_says_what_to_install() {
    let empty = tempdir();
    let (pg, amqp) = (closed_port(), closed_port());
    let mut cmd = idem(&["demo", "--messages", "100"]);
    cmd.env(
        "IDEM_DEMO_DATABASE_URL",
        format!("postgres://postgres@127.0.0.1:{pg}/idem_demo"),
    )
    .env(
        "IDEM_AMQP_URL",
        format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
    )
    .env("IDEM_PG_BINDIR", &empty)
    .env("IDEM_RABBITMQ_SBIN", &empty)
    .env("RUST_LOG", "warn");
    let out = cmd.output().await.unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing ran: {out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    for part in [
        format!("PostgreSQL does not answer at 127.0.0.1:{pg}"),
        format!("RabbitMQ does not answer at 127.0.0.1:{amqp}"),
        "apt-get install postgresql rabbitmq-server".to_owned(),
        "IDEM_PG_BINDIR names no server there".to_owned(),
        "--database-url and --amqp-url".to_owned(),
    ] {
        assert!(lines[0].contains(&part), "{part:?} in {stderr}");
    }
    std::fs::remove_dir(&empty).unwrap();
}

/// An empty directory of our own under the temp dir.
fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("idem-t-empty-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// Invariant: the demo's private cluster (a superuser on a free port) lets
/// in over TCP only who has its password, and its socket dir only its own
/// user; its private node lets in only its own random user, not `guest`: no
/// other user of the machine reaches either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_private_servers_need_their_passwords() {
    use sqlx::Connection;
    use std::os::unix::fs::PermissionsExt;

    let _ticket = gate::shared().await;
    let cluster = idem_tests::pg::PgCluster::start_with_password()
        .await
        .unwrap();
    let with = sqlx::PgConnection::connect(&cluster.url("postgres"))
        .await
        .expect("the URL's password lets in");
    with.close().await.unwrap();
    let bare = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port());
    match sqlx::PgConnection::connect(&bare).await {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("28P01"), "{e}"),
        other => panic!("a login without the password: {other:?}"),
    }
    let dir = cluster.data_dir().parent().unwrap().to_owned();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{} is {mode:o}", dir.display());

    let node = idem_tests::rabbit::RabbitNode::start_with_password()
        .await
        .unwrap();
    let url = node.amqp_url();
    assert!(!url.contains("guest"), "{url}");
    let connection = idem_inbox::connect_amqp(&url)
        .await
        .expect("the URL's user lets in");
    let _ = connection.close(200, "done".into()).await;
    let guest = format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.port());
    let refused = lapin::Connection::connect(&guest, lapin::ConnectionProperties::default()).await;
    assert!(refused.is_err(), "guest is refused");
}
