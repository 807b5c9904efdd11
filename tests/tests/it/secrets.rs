//! Credentials are used and never printed: a full run in which every
//! credential is a distinctive value of this test — a PostgreSQL role's
//! password, a RabbitMQ user's password, the provider's API key — given
//! through the variables and through their `*_FILE` files, at `RUST_LOG=debug`
//! in both log formats, with a database cut, the operator commands, `--help`
//! and start-up errors. Nothing any process prints contains a credential, and
//! the charges happened (counted at the simulator, which demands the key), so
//! the credentials were really used. A wrong key is refused (`401`): the row
//! is retried, never charged, and charged once the right key comes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::binary::{Proc, idem, json_field, output, run, run_flags_without, simulator};
use idem_tests::{PG_ADMIN_URL, TestEnv, spec, wait_for};
use idem_workload as workload;
use sqlx::PgPool;

const SETTLE: Duration = Duration::from_secs(60);

/// The PostgreSQL role and RabbitMQ user of one test, removed when dropped
/// (also when the test panics).
struct Accounts {
    /// Role and user name.
    name: String,
}

impl Accounts {
    async fn create(name: &str, pg_password: &str, amqp_password: &str) -> Self {
        let admin = PgPool::connect(PG_ADMIN_URL).await.unwrap();
        // Local authentication is trust: the password is not checked, but
        // the URL carries it through every path that could print it.
        sqlx::query(&format!(
            "CREATE ROLE \"{name}\" LOGIN SUPERUSER PASSWORD '{pg_password}'"
        ))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
        rabbitmqctl(&["add_user", name, amqp_password]);
        rabbitmqctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
        Self {
            name: name.to_owned(),
        }
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &self.name])
            .output();
        let _ = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
            .arg(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{0}'; \
                 DROP ROLE IF EXISTS \"{0}\"",
                self.name
            ))
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (the test needs the local RabbitMQ node)");
    assert!(
        out.status.success(),
        "rabbitmqctl {}: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// Charges at the simulator per reference id, over its admin API.
async fn ledger(sim_url: &str) -> BTreeMap<String, usize> {
    let ledger: serde_json::Value = reqwest::get(format!("{sim_url}/_sim/ledger"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for charge in ledger["charges"].as_array().unwrap() {
        let reference = charge["reference_id"].as_str().unwrap().to_owned();
        *counts.entry(reference).or_insert(0) += 1;
    }
    counts
}

/// How many charge requests for `reference` the simulator received (each
/// refused here: the key is wrong).
async fn refused_requests(sim_url: &str, reference: &str) -> usize {
    let seen: serde_json::Value = reqwest::get(format!("{sim_url}/_sim/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    seen.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "POST" && r["idempotency_key"] == reference)
        .count()
}

async fn publish_and_settle(env: &TestEnv, prefix: &str, n: usize, settled_before: usize) {
    env.publish(&workload::generate(&spec(prefix, n))).await;
    wait_for(
        &format!("{} charges succeeded", settled_before + n),
        SETTLE,
        || async {
            env.status().await.outbox_in(OutboxState::Succeeded) == (settled_before + n) as i64
        },
    )
    .await;
}

/// What a process printed must not contain any of `secrets`, as text or as
/// the list of its bytes (how `Debug` shows a byte string, e.g. an AMQP
/// frame's SASL response).
fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        let bytes = secret
            .bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        assert!(
            !text.contains(secret) && !text.contains(&bytes),
            "{what} printed a credential ({secret}):\n{text}"
        );
    }
}

/// One run of this suite: its credentials, where they are, and everything
/// the processes printed.
struct World {
    env: TestEnv,
    /// The PostgreSQL role and RabbitMQ user (removed on drop).
    accounts: Accounts,
    pg_password: String,
    amqp_password: String,
    api_key: String,
    /// A key the provider does not accept.
    wrong_key: String,
    /// The URLs with their passwords.
    database_url: String,
    amqp_url: String,
    /// Files holding the database URL, broker URL and key.
    dir: PathBuf,
    db_file: String,
    amqp_file: String,
    key_file: String,
    /// The provider (demands `api_key`) and its URL.
    sim: Option<Proc>,
    sim_url: String,
    /// `idem run` flags but the credentials.
    flags: Vec<String>,
    /// What each process printed, by what it was.
    printed: Vec<(String, String)>,
}

impl World {
    async fn new() -> Self {
        let env = TestEnv::new(Faults::default()).await;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("idem_secrets_{}", &tag[..12]);
        let pg_password = format!("pg-secret-{tag}");
        let amqp_password = format!("amqp-secret-{tag}");
        let api_key = format!("api-key-{tag}");
        let accounts = Accounts::create(&name, &pg_password, &amqp_password).await;
        let pg_at = idem_tests::authority(idem_tests::PG_ADMIN_URL, 5432);
        let database_url = format!("postgres://{name}:{pg_password}@{pg_at}/{}", env.name);
        let mq_at = idem_tests::authority(idem_tests::AMQP_URL, 5672);
        let amqp_url = format!("amqp://{name}:{amqp_password}@{mq_at}/%2f");
        let dir = std::env::temp_dir().join(format!("idem-secrets-{}", env.name));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, value: &str| {
            let path = write(&dir, name, &format!("{value}\n"));
            path.to_str().unwrap().to_owned()
        };
        let (db_file, amqp_file, key_file) = (
            file("database-url", &database_url),
            file("amqp-url", &amqp_url),
            file("api-key", &api_key),
        );
        // The provider demands the key, given to it as a file too.
        let (sim, sim_url) = simulator(&[], &[("IDEM_SIM_API_KEY_FILE", &key_file)]).await;
        let mut flags =
            run_flags_without(&env, &["--database-url", "--amqp-url", "--charge-api-url"]);
        flags.extend(["--charge-api-url".to_owned(), sim_url.clone()]);
        Self {
            env,
            accounts,
            pg_password,
            amqp_password,
            api_key,
            wrong_key: format!("wrong-key-{tag}"),
            database_url,
            amqp_url,
            dir,
            db_file,
            amqp_file,
            key_file,
            sim: Some(sim),
            sim_url,
            flags,
            printed: Vec::new(),
        }
    }

    fn secrets(&self) -> [&str; 4] {
        [
            &self.pg_password,
            &self.amqp_password,
            &self.api_key,
            &self.wrong_key,
        ]
    }

    fn daemon(&self, name: &str, envs: &[(&str, &str)]) -> Proc {
        let mut cmd = run(&self.flags, envs);
        // lapin traces its login frame (password bytes) at TRACE: idem caps
        // it, and this run asks for it.
        cmd.env("RUST_LOG", "debug,lapin=trace");
        Proc::spawn(name, &mut cmd)
    }

    async fn stop(&mut self, worker: Proc, what: &str) {
        let (status, text) = worker.stop().await;
        assert!(status.success(), "{what}: {status:?}\n{text}");
        self.printed.push((what.to_owned(), text));
    }

    /// A wrong key: `401`, the row retried (never dead, never uncertain),
    /// nothing charged.
    async fn refused_with_a_wrong_key(&mut self) {
        let worker = self.daemon(
            "idem run (wrong key)",
            &[
                ("IDEM_DATABASE_URL_FILE", &self.db_file),
                ("IDEM_AMQP_URL", &self.amqp_url),
                ("IDEM_CHARGE_API_KEY", &self.wrong_key),
                ("IDEM_MAX_ATTEMPTS", "1000"),
            ],
        );
        let env = &self.env;
        env.publish(&workload::generate(&spec("secrets-refused", 1)))
            .await;
        // The breaker probes the refused row again and again; a refusal
        // spends none of its attempts.
        let sim = self.sim_url.clone();
        wait_for("the refused charge retried 3 times", SETTLE, || async {
            let row: Option<(i32, Option<String>, String)> =
                sqlx::query_as("SELECT attempts, last_error, reference_id::text FROM outbox")
                    .fetch_optional(&env.pool)
                    .await
                    .unwrap();
            match row {
                Some((0, Some(error), reference)) if error.contains("401") => {
                    refused_requests(&sim, &reference).await >= 3
                }
                _ => false,
            }
        })
        .await;
        self.stop(worker, "idem run with a wrong key").await;
        assert!(
            ledger(&self.sim_url).await.is_empty(),
            "charged without the key"
        );
        // "Not processed": retried later, never taken for a charge that may
        // have happened.
        let (state, uncertain): (String, bool) =
            sqlx::query_as("SELECT state::text, uncertain_since IS NOT NULL FROM outbox")
                .fetch_one(&self.env.pool)
                .await
                .unwrap();
        assert!(
            matches!(state.as_str(), "pending" | "in_flight") && !uncertain,
            "{state}, uncertain: {uncertain}"
        );
    }

    /// Text logs: database URL from a file, broker URL from its variable,
    /// key from a file; the database connections cut in the middle. The
    /// refused charge of before goes through too.
    async fn text_logs_and_a_database_cut(&mut self) {
        let worker = self.daemon(
            "idem run (text)",
            &[
                ("IDEM_DATABASE_URL_FILE", &self.db_file),
                ("IDEM_AMQP_URL", &self.amqp_url),
                ("IDEM_CHARGE_API_KEY_FILE", &self.key_file),
                ("IDEM_LOG_FORMAT", "text"),
            ],
        );
        publish_and_settle(&self.env, "secrets-text", 4, 1).await;
        let admin = PgPool::connect(PG_ADMIN_URL).await.unwrap();
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
        )
        .bind(&self.accounts.name)
        .fetch_all(&admin)
        .await
        .unwrap();
        admin.close().await;
        assert!(!cut.is_empty(), "idem connected as {}", self.accounts.name);
        publish_and_settle(&self.env, "secrets-cut", 3, 5).await;
        self.stop(worker, "idem run (text logs, database cut)")
            .await;
    }

    /// JSON logs, the other way round: database URL and key from their
    /// variables, broker URL from a file; its `/metrics` too.
    async fn json_logs_and_metrics(&mut self) {
        let worker = self.daemon(
            "idem run (json)",
            &[
                ("IDEM_DATABASE_URL", &self.database_url),
                ("IDEM_AMQP_URL_FILE", &self.amqp_file),
                ("IDEM_CHARGE_API_KEY", &self.api_key),
                ("IDEM_LOG_FORMAT", "json"),
            ],
        );
        publish_and_settle(&self.env, "secrets-json", 4, 8).await;
        let http = worker
            .wait_for_line(SETTLE, |line| json_field(line, "http_addr"))
            .await;
        let metrics = reqwest::get(format!("http://{http}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        self.printed.push(("/metrics".into(), metrics));
        self.stop(worker, "idem run (json logs)").await;
    }

    /// Run `idem args` with `envs` at `RUST_LOG=debug` to its end; keep its
    /// output; it must succeed or fail as `succeeds` says.
    async fn command(
        &mut self,
        what: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        succeeds: bool,
    ) -> String {
        let mut cmd = idem(args);
        cmd.envs(envs.iter().copied()).env("RUST_LOG", "debug");
        let (status, text) = output(&mut cmd).await;
        assert_eq!(status.success(), succeeds, "{what}: {status:?}\n{text}");
        self.printed.push((what.to_owned(), text.clone()));
        text
    }

    /// Operator commands, help and start-up errors, with the credentials set.
    async fn commands(&mut self) {
        let (db_url, amqp_url, key) = (
            self.database_url.clone(),
            self.amqp_url.clone(),
            self.api_key.clone(),
        );
        let (db_file, amqp_file, key_file) = (
            self.db_file.clone(),
            self.amqp_file.clone(),
            self.key_file.clone(),
        );
        let db_env = [("IDEM_DATABASE_URL_FILE", db_file.as_str())];
        let variables = [
            ("IDEM_DATABASE_URL", db_url.as_str()),
            ("IDEM_AMQP_URL", amqp_url.as_str()),
            ("IDEM_CHARGE_API_KEY", key.as_str()),
        ];
        let files = [
            ("IDEM_DATABASE_URL_FILE", db_file.as_str()),
            ("IDEM_AMQP_URL_FILE", amqp_file.as_str()),
            ("IDEM_CHARGE_API_KEY_FILE", key_file.as_str()),
        ];
        let status = self
            .command("idem status", &["status"], &db_env, true)
            .await;
        assert!(status.contains("outbox succeeded"), "{status}");
        self.command("idem status --json", &["status", "--json"], &db_env, true)
            .await;
        let migrate = self
            .command("idem migrate", &["migrate"], &variables, true)
            .await;
        let shown = format!("postgres://{}:***@127.0.0.1", self.accounts.name);
        assert!(migrate.contains(&shown), "{migrate}");
        // The listing demands the key: reconcile's client has it.
        let sim_url = self.sim_url.clone();
        let reconcile = [
            "reconcile",
            "--since-hours",
            "1",
            "--charge-api-url",
            &sim_url,
        ];
        self.command("idem reconcile", &reconcile, &files, true)
            .await;
        self.command(
            "idem run --help (variables)",
            &["run", "--help"],
            &variables,
            true,
        )
        .await;
        let help = self
            .command("idem run --help (files)", &["run", "--help"], &files, true)
            .await;
        assert!(help.contains("IDEM_CHARGE_API_KEY_FILE"), "{help}");
        self.command("idem --help", &["--help"], &variables, true)
            .await;
        let sim_env = [("IDEM_SIM_API_KEY", key.as_str())];
        self.command(
            "idem provider-sim --help",
            &["provider-sim", "--help"],
            &sim_env,
            true,
        )
        .await;
        let config = self
            .command(
                "a config error",
                &["run", "--lease-secs", "1"],
                &files,
                false,
            )
            .await;
        assert!(config.contains("IDEM_LEASE_SECS"), "{config}");
        let both = [
            ("IDEM_CHARGE_API_KEY", key.as_str()),
            ("IDEM_CHARGE_API_KEY_FILE", key_file.as_str()),
        ];
        let both = self
            .command("a variable and its file", &["run"], &both, false)
            .await;
        assert!(
            both.contains("IDEM_CHARGE_API_KEY and IDEM_CHARGE_API_KEY_FILE are both set"),
            "{both}"
        );
        let wrong_amqp_url = amqp_url.replace(&self.amqp_password, &self.wrong_key);
        let queue = self.env.queue.clone();
        let wrong_broker_password = [
            ("IDEM_DATABASE_URL_FILE", db_file.as_str()),
            ("IDEM_AMQP_URL", wrong_amqp_url.as_str()),
            ("IDEM_HTTP_ADDR", "127.0.0.1:0"),
            ("IDEM_QUEUE", queue.as_str()),
        ];
        let refused = self
            .command(
                "a wrong broker password",
                &["run"],
                &wrong_broker_password,
                false,
            )
            .await;
        assert!(refused.contains("ACCESS_REFUSED"), "{refused}");
        let unreachable = idem_tests::via(&db_url, "127.0.0.1:1".parse().unwrap());
        let unreachable = [("IDEM_DATABASE_URL", unreachable.as_str())];
        let down = self
            .command("an unreachable database", &["status"], &unreachable, false)
            .await;
        assert!(down.contains(":***@127.0.0.1:1"), "{down}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_used_and_never_printed() {
    let mut world = World::new().await;
    world.refused_with_a_wrong_key().await;
    world.text_logs_and_a_database_cut().await;
    world.json_logs_and_metrics().await;
    // Every charge made once, at the provider that demands the key: the
    // refused one, then 4 + 3 + 4.
    let charges = ledger(&world.sim_url).await;
    assert_eq!(charges.len(), 12, "{charges:?}");
    assert!(charges.values().all(|&n| n == 1), "{charges:?}");
    world.commands().await;

    let sim = world.sim.take().unwrap();
    let (_, sim_text) = sim.stop().await;
    world.printed.push(("provider-sim".into(), sim_text));
    for (what, text) in &world.printed {
        assert_clean(what, text, &world.secrets());
    }
    let _ = std::fs::remove_dir_all(&world.dir);
    let World { env, accounts, .. } = world;
    env.cleanup().await;
    drop(accounts);
}
