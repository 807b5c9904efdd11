//! TLS where idem offers it: PostgreSQL as the URL's `sslmode` says (the
//! server's own view, `pg_stat_ssl`, shows idem's connections encrypted with
//! `require` and `verify-full`, and not with `disable`), and the provider over
//! `https://` with a private CA given by `IDEM_CHARGE_API_CA_FILE` (without
//! it the handshake fails and nothing is charged), and RabbitMQ over
//! `amqps://` with a private CA given by `SSL_CERT_FILE` (on a private node of
//! the harness with a TLS listener: the shared broker has none).

use std::path::Path;
use std::time::Duration;

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::binary::{self, Proc, run, run_flags_without, simulator};
use idem_tests::rabbit::RabbitNode;
use idem_tests::{PG_ADMIN_URL, TestEnv, ca, spec, wait_for};
use idem_workload::{self as workload, Outgoing};
use lapin::Connection;
use lapin::options::ConfirmSelectOptions;
use sqlx::PgPool;

const SETTLE: Duration = Duration::from_secs(60);
/// The certificate Debian's `ssl-cert` package makes for the local server,
/// named after the machine it was made on (`localhost` in some images, the
/// host name on a fresh install).
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

async fn publish_and_settle(env: &TestEnv, prefix: &str, n: usize, settled: &mut usize) {
    env.publish(&workload::generate(&spec(prefix, n))).await;
    *settled += n;
    let want = *settled as i64;
    wait_for(&format!("{want} charges succeeded"), SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == want
    })
    .await;
}

/// A DNS name in `cert` that resolves to this machine's loopback only: the
/// host a `verify-full` connection to the local server can verify.
fn loopback_name_in(cert: &str, port: u16) -> Option<String> {
    use std::net::ToSocketAddrs;
    let out = std::process::Command::new("openssl")
        .args(["x509", "-in", cert, "-noout", "-ext", "subjectAltName"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split([',', '\n'])
        .filter_map(|part| part.trim().strip_prefix("DNS:"))
        .find(|name| {
            (*name, port).to_socket_addrs().is_ok_and(|addrs| {
                let addrs: Vec<_> = addrs.collect();
                !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
            })
        })
        .map(str::to_owned)
}

/// Invariant: every connection idem opens to PostgreSQL is encrypted exactly
/// when its URL asks for it (`sslmode=require`, or `verify-full` against the
/// server's certificate), as the server itself reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_are_encrypted_as_sslmode_says() {
    let env = TestEnv::new(Faults::default()).await;
    let admin = PgPool::connect(PG_ADMIN_URL).await.unwrap();
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&admin)
        .await
        .unwrap();
    if ssl != "on" {
        eprintln!("SKIPPED: the local PostgreSQL runs with ssl = {ssl}; nothing to test");
        env.cleanup().await;
        return;
    }
    let cert_file: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&admin)
        .await
        .unwrap();
    let mut modes = vec![
        ("disable", "127.0.0.1".to_owned(), false),
        ("require", "127.0.0.1".to_owned(), true),
    ];
    let verify_full = format!("verify-full&sslrootcert={SNAKEOIL}");
    let port = idem_tests::pg::addr().port();
    match (cert_file == SNAKEOIL && Path::new(SNAKEOIL).exists())
        .then(|| loopback_name_in(SNAKEOIL, port))
        .flatten()
    {
        // A name the certificate holds, so that is the host to verify.
        Some(name) => modes.push((verify_full.as_str(), name, true)),
        None => eprintln!(
            "verify-full not tried: the server's certificate {cert_file} names no host that resolves to loopback here"
        ),
    }
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut settled = 0;
    for (i, (mode, host, encrypted)) in modes.into_iter().enumerate() {
        let app = format!("idem-tls-{i}-{}", &tag[..12]);
        let url = format!(
            "postgres://postgres@{host}:{port}/{}?sslmode={mode}&application_name={app}",
            env.name
        );
        let worker = env.start_worker(&["--database-url", &url]);
        publish_and_settle(&env, &format!("tls-pg-{i}"), 3, &mut settled).await;
        let ssl: Vec<bool> = sqlx::query_scalar(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
        )
        .bind(&app)
        .fetch_all(&admin)
        .await
        .unwrap();
        assert!(
            !ssl.is_empty(),
            "sslmode={mode}: no connection of idem seen"
        );
        assert!(
            ssl.iter().all(|&s| s == encrypted),
            "sslmode={mode}: connections encrypted {ssl:?}, expected all {encrypted}"
        );
        worker.stop().await.unwrap();
    }
    admin.close().await;
    env.cleanup().await;
}

/// Invariant: over `https://`, idem charges only when it trusts the
/// provider's certificate, which `IDEM_CHARGE_API_CA_FILE` makes it do; an
/// untrusted certificate fails the handshake before any request is sent
/// (retried, never charged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_over_https_with_a_private_ca() {
    let env = TestEnv::new(Faults::default()).await;
    let dir = std::env::temp_dir().join(format!("idem-tls-{}", env.name));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = ca::self_signed(&dir);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let api_key = format!("tls-key-{}", env.name);
    let (sim, sim_url) = simulator(
        &["--tls-cert", cert, "--tls-key", key],
        &[("IDEM_SIM_API_KEY", &api_key)],
    )
    .await;
    assert!(sim_url.starts_with("https://"), "{sim_url}");
    let mut flags = run_flags_without(&env, &["--charge-api-url"]);
    flags.extend(["--charge-api-url".to_owned(), sim_url.clone()]);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(cert).unwrap()).unwrap();
    let admin_client = reqwest::Client::builder()
        .tls_certs_merge([ca])
        .build()
        .unwrap();
    let charges = || async {
        let ledger: serde_json::Value = admin_client
            .get(format!("{sim_url}/_sim/ledger"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ledger["charges"].as_array().unwrap().len()
    };

    // The system's roots only: the handshake fails, nothing is charged.
    let mut untrusting = run(
        &flags,
        &[
            ("IDEM_CHARGE_API_KEY", &api_key),
            ("IDEM_MAX_ATTEMPTS", "1000"),
        ],
    );
    let worker = Proc::spawn("idem run (no CA)", &mut untrusting);
    env.publish(&workload::generate(&spec("tls-untrusted", 1)))
        .await;
    // A failed handshake sends nothing: the provider is unreachable for
    // us, so the call is refused (the breaker's business), and the row is
    // put back with its attempt given back.
    wait_for(
        "the untrusted provider tried and refused",
        SETTLE,
        || async {
            let row: Option<(i32, Option<String>)> =
                sqlx::query_as("SELECT attempts, last_error FROM outbox")
                    .fetch_optional(&env.pool)
                    .await
                    .unwrap();
            matches!(row, Some((0, Some(error))) if error.contains("not counted"))
        },
    )
    .await;
    let (status, text) = worker.stop().await;
    assert!(status.success(), "{status:?}\n{text}");
    let last_error: String = sqlx::query_scalar("SELECT last_error FROM outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(last_error.contains("certificate"), "{last_error}");
    assert_eq!(charges().await, 0, "charged over an untrusted connection");

    // With the CA: the waiting charge and new ones go through.
    let mut trusting = run(
        &flags,
        &[
            ("IDEM_CHARGE_API_KEY", &api_key),
            ("IDEM_CHARGE_API_CA_FILE", cert),
        ],
    );
    let worker = Proc::spawn("idem run (CA)", &mut trusting);
    let mut settled = 1;
    publish_and_settle(&env, "tls-trusted", 3, &mut settled).await;
    assert_eq!(charges().await, 4);
    let (status, text) = worker.stop().await;
    assert!(status.success(), "{status:?}\n{text}");
    let (_, sim_text) = sim.stop().await;
    assert!(!sim_text.contains(&api_key), "{sim_text}");
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// Declare `queue` with idem's topology on `connection`'s broker and publish
/// `messages` to it, confirmed; then close the connection.
async fn publish_over(connection: Connection, queue: &str, messages: &[Outgoing]) {
    let channel = connection.create_channel().await.unwrap();
    idem_inbox::declare(&connection, &idem_inbox::Topology::for_queue(queue))
        .await
        .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    workload::publish(&channel, queue, messages, 0, |_| {})
        .await
        .unwrap();
    connection.close(200, "published".into()).await.unwrap();
}

/// Invariant: given only an `amqps://` URL, idem consumes over TLS, trusting
/// a private CA named by `SSL_CERT_FILE`; every message is charged exactly
/// once, and the broker reports every connection to it as TLS. With the
/// system's roots only (no `SSL_CERT_FILE`), the handshake fails: `idem run`
/// stops at start saying why, and nothing is taken from the queue or charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_amqps_with_a_private_ca() {
    let env = TestEnv::new(Faults::default()).await;
    let node = RabbitNode::start_with_tls().await.unwrap();
    let (amqps_url, ca) = (node.amqps_url().unwrap(), node.ca_cert().unwrap());
    let tls_port = node.tls_port().unwrap();
    let ca = ca.to_str().unwrap();
    let flags = run_flags_without(&env, &["--amqp-url"]);
    // Three originals and two re-publishes of them, over the plain listener.
    let mut first = spec("tls-amqp-a", 3);
    first.duplicates = 2;
    let first = workload::generate(&first);
    let plain = Connection::connect(&node.amqp_url(), Default::default())
        .await
        .unwrap();
    publish_over(plain, &env.queue, &first).await;

    // The system's roots only: the handshake fails, idem stops at start.
    let mut untrusting = run(&flags, &[("IDEM_AMQP_URL", &amqps_url)]);
    untrusting
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    let (status, text) =
        tokio::time::timeout(Duration::from_secs(30), binary::output(&mut untrusting))
            .await
            .expect("idem run without the CA stops within 30 s");
    assert!(!status.success(), "{status:?}\n{text}");
    assert!(
        text.contains("invalid peer certificate: UnknownIssuer"),
        "the failure names the certificate: {text}"
    );
    assert!(!text.contains("guest:guest"), "password shown: {text}");
    let status = env.status().await;
    assert_eq!(status.inbox_keys, 0, "consumed without trust: {status:?}");
    assert!(env.charges_by_reference().is_empty(), "charged: {text}");

    // With the CA as `SSL_CERT_FILE`: the waiting messages and new ones,
    // published over TLS, are charged once each.
    let mut trusting = run(
        &flags,
        &[("IDEM_AMQP_URL", &amqps_url), ("SSL_CERT_FILE", ca)],
    );
    trusting.env_remove("SSL_CERT_DIR");
    let worker = Proc::spawn("idem run (amqps, CA)", &mut trusting);
    let mut second = spec("tls-amqp-b", 4);
    second.duplicates = 1;
    let second = workload::generate(&second);
    publish_over(node.connect_tls().await.unwrap(), &env.queue, &second).await;
    wait_for("7 charges succeeded", SETTLE, || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == 7
    })
    .await;
    let charges = env.charges_by_reference();
    assert_eq!(charges.len(), 7, "{charges:?}");
    assert!(charges.values().all(|&n| n == 1), "{charges:?}");
    assert_eq!(env.status().await.duplicates, 3, "re-publishes absorbed");

    // The broker's view: idem's connections (ours are closed) are all on the
    // TLS listener, encrypted.
    let listed = node
        .ctl(&[
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "port",
            "ssl",
            "ssl_protocol",
            "user",
        ])
        .await
        .unwrap();
    let connections: Vec<Vec<&str>> = listed
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.len() == 4)
        .collect();
    assert!(!connections.is_empty(), "no connection listed: {listed}");
    for fields in &connections {
        assert_eq!(fields[0], tls_port.to_string(), "{listed}");
        assert_eq!(fields[1], "true", "{listed}");
        assert!(fields[2].starts_with("tlsv1."), "{listed}");
    }
    eprintln!("connections to the node:\n{listed}");

    let (status, text) = worker.stop().await;
    assert!(status.success(), "{status:?}\n{text}");
    drop(node);
    env.cleanup().await;
}
