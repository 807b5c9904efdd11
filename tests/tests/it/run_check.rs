//! `idem run --check` against the real services: every check passes with the
//! test's own settings; with one service on a closed port, that check fails,
//! naming the variable to fix, the others still pass, and the exit status
//! says so. A missing database is reported and not created.

use idem_simulator::Faults;
use idem_tests::TestEnv;
use idem_tests::binary::{self, output, run_flags_without};

/// A local port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `idem run <flags> --check`: (success, every line it printed).
async fn check(flags: Vec<String>) -> (bool, String) {
    let mut flags = flags;
    flags.push("--check".to_owned());
    let (status, text) = output(&mut binary::run(&flags, &[("RUST_LOG", "warn")])).await;
    (status.success(), text)
}

/// The line of check `name`.
fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(name) && (l.contains(" ok: ") || l.contains(" FAILED: ")))
        .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
}

/// Invariant: `--check` passes only when every service a replica needs
/// answers, and a failing check names the setting to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_check_names_the_service_to_fix() {
    let env = TestEnv::new(Faults::default()).await;
    let (ok, text) = check(env.run_flags()).await;
    assert!(ok, "{text}");
    for name in ["database", "broker", "charge API"] {
        assert!(line(&text, name).contains(" ok: "), "{text}");
    }
    assert!(line(&text, "broker").contains(&env.queue), "{text}");

    let port = closed_port();
    let cases = [
        (
            "--database-url",
            format!("postgres://postgres@127.0.0.1:{port}/idem"),
            "database",
            "IDEM_DATABASE_URL",
        ),
        (
            "--amqp-url",
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            "broker",
            "IDEM_AMQP_URL",
        ),
        (
            "--charge-api-url",
            format!("http://127.0.0.1:{port}"),
            "charge API",
            "IDEM_CHARGE_API_URL",
        ),
    ];
    for (flag, value, name, variable) in &cases {
        let mut flags = run_flags_without(&env, &[flag]);
        flags.extend([flag.to_string(), value.clone()]);
        let (ok, text) = check(flags).await;
        assert!(!ok, "{flag} {value}: {text}");
        let failed = line(&text, name);
        assert!(
            failed.contains("FAILED") && failed.contains(variable),
            "{text}"
        );
        assert!(
            !failed.contains("guest:guest"),
            "no password printed: {text}"
        );
        for (_, _, other, _) in cases.iter().filter(|c| c.2 != *name) {
            assert!(line(&text, other).contains(" ok: "), "{text}");
        }
        assert!(text.contains("1 check(s) failed"), "{text}");
    }

    // A database that does not exist: reported, naming `idem migrate`, and
    // left uncreated (the check changes nothing).
    let missing = format!("{}_missing", env.name);
    let url = env.database_url.replace(&env.name, &missing);
    let mut flags = run_flags_without(&env, &["--database-url"]);
    flags.extend(["--database-url".to_owned(), url]);
    let (ok, text) = check(flags).await;
    assert!(
        !ok && line(&text, "database").contains("idem migrate"),
        "{text}"
    );
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(&missing)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(!exists, "--check created database {missing}");
    env.cleanup().await;
}
