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

/// The directory a demo line names after `prefix`, up to the next `;` or `)`.
fn named_dir(text: &str, prefix: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.contains(prefix))
        .unwrap_or_else(|| panic!("no line with {prefix:?} in:\n{text}"));
    let start = line.find(prefix).unwrap() + prefix.len();
    line[start..]
        .split([';', ')'])
        .next()
        .unwrap()
        .trim()
        .to_owned()
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
        idem(&["demo", "--messages", "300", "--replicas", "2"])
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
    assert!(
        data.contains("idem-pgcluster-") && !Path::new(&data).exists(),
        "{data} removed:\n{text}"
    );
}

/// Invariant: without a server to start, the demo fails before anything
/// runs, in one line that names the package to install and the setting to
/// change instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_servers_installed_the_demo_says_what_to_install() {
    let empty = tempdir();
    let pg = closed_port();
    let (status, text) = output(
        idem(&["demo", "--messages", "100"])
            .env(
                "IDEM_DEMO_DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{pg}/idem_demo"),
            )
            .env("IDEM_PG_BINDIR", &empty)
            .env("RUST_LOG", "warn"),
    )
    .await;
    assert!(!status.success(), "{text}");
    let error = text
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("an error line in:\n{text}"));
    assert!(
        error.contains(&format!("PostgreSQL does not answer at 127.0.0.1:{pg}"))
            && error.contains("apt-get install postgresql")
            && error.contains("--database-url"),
        "{error}"
    );
    assert!(!text.contains("published"), "nothing ran:\n{text}");
    std::fs::remove_dir(&empty).unwrap();
}

/// An empty directory of our own under the temp dir.
fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("idem-t-empty-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).unwrap();
    dir
}
