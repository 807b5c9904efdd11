//! [`Private`]: a test's own PostgreSQL cluster and RabbitMQ node, a
//! [`TestEnv`] on them, the least-privileged role `idem run` connects as
//! there ([`APP_ROLE`]), and replicas of the built binary started on them
//! ([`Replica`]). What a test may do to servers of its own — stop them,
//! turn the whole server read-only, revoke a privilege, limit connections —
//! it must never do to the shared ones.

use std::time::Duration;

use idem_simulator::Faults;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use crate::binary::{Proc, run, run_flags_without};
use crate::env::{Servers, TestEnv};
use crate::gate::{self, Ticket};
use crate::pg::PgCluster;
use crate::rabbit::RabbitNode;

/// The role replicas connect as: not a superuser (superusers bypass
/// privileges and connection limits), not the tables' owner (an owner's
/// privileges are not the ones granted), granted what `idem run` needs.
pub const APP_ROLE: &str = "idem_app";

/// A PostgreSQL cluster and a RabbitMQ node of this test's own.
pub struct Private {
    /// The cluster (user `postgres`, trust authentication).
    pub pg: PgCluster,
    /// The node (user `guest`).
    pub rabbit: RabbitNode,
    /// Two servers booting and running load the machine: a place beside the
    /// other tests, never beside one that must have the process alone.
    _ticket: Ticket,
}

impl Private {
    /// Boot both (at once: the node's boot is the longer).
    pub async fn start() -> Self {
        let ticket = gate::shared().await;
        crate::init();
        let (pg, rabbit) = tokio::join!(PgCluster::start(), RabbitNode::start());
        Self {
            pg: pg.expect("a private PostgreSQL cluster starts"),
            rabbit: rabbit.expect("a private RabbitMQ node starts"),
            _ticket: ticket,
        }
    }

    /// Where a [`TestEnv`] on these servers lives.
    pub fn servers(&self) -> Servers {
        Servers {
            pg_admin_url: self.pg.url("postgres"),
            amqp_url: self.rabbit.amqp_url(),
        }
    }

    /// A fresh env (database, queue, simulator with `faults`) on these servers.
    pub async fn env(&self, faults: Faults) -> TestEnv {
        TestEnv::on(faults, &self.servers()).await
    }

    /// A superuser connection to database `db` of the cluster.
    pub async fn admin(&self, db: &str) -> PgConnection {
        PgConnection::connect(&self.pg.url(db)).await.unwrap()
    }

    /// Create [`APP_ROLE`] and grant it what `idem run` needs on `env`'s
    /// (migrated) database; returns that database's URL as the role.
    pub async fn app_role(&self, env: &TestEnv) -> String {
        let mut admin = self.admin(&env.name).await;
        for statement in [
            format!("CREATE ROLE {APP_ROLE} LOGIN"),
            // CREATE: `idem run` migrates at start, and the migrator's
            // `CREATE TABLE IF NOT EXISTS _sqlx_migrations` asks for it even
            // when the table is there.
            format!("GRANT USAGE, CREATE ON SCHEMA public TO {APP_ROLE}"),
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}"
            ),
            format!("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}"),
        ] {
            sqlx::query(&statement).execute(&mut admin).await.unwrap();
        }
        let _ = admin.close().await;
        self.pg
            .url(&env.name)
            .replacen("postgres@", &format!("{APP_ROLE}@"), 1)
    }

    /// End every session of [`APP_ROLE`] (`pg_terminate_backend`, SQLSTATE
    /// 57P01 on the replica's side); how many there were.
    pub async fn terminate_app_sessions(&self, admin: &mut PgConnection) -> i64 {
        sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
        )
        .bind(APP_ROLE)
        .fetch_one(admin)
        .await
        .unwrap()
    }
}

/// `idem run` (the built binary) for an env, on a health address of its own.
pub struct Replica {
    /// The child and its output.
    pub proc: Proc,
    /// Its health and metrics listener (`127.0.0.1:<port>`).
    pub addr: String,
}

impl Replica {
    /// Start `idem run` with `env`'s flags, its database given as
    /// `database_url`, plus `extra` flags (later flags win).
    pub fn start(env: &TestEnv, database_url: &str, extra: &[&str]) -> Self {
        let addr = free_addr();
        let mut flags = run_flags_without(env, &["--http-addr", "--database-url"]);
        flags.extend(["--http-addr", &addr, "--database-url", database_url].map(str::to_owned));
        flags.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn("replica", &mut run(&flags, &[]));
        Self { proc, addr }
    }

    /// `/readyz`: (status, body); status 0 while nothing answers.
    pub async fn readyz(&self) -> (u16, String) {
        readyz(&self.addr).await
    }

    /// `/metrics` (empty while nothing answers).
    pub async fn metrics(&self) -> String {
        let get = reqwest::get(format!("http://{}/metrics", self.addr));
        match tokio::time::timeout(Duration::from_secs(5), get).await {
            Ok(Ok(response)) => response.text().await.unwrap_or_default(),
            _ => String::new(),
        }
    }
}

/// A free port on 127.0.0.1 for a replica's health listener.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `/readyz` of the listener at `addr`: (status, body); status 0 while
/// nothing answers.
pub async fn readyz(addr: &str) -> (u16, String) {
    let url = format!("http://{addr}/readyz");
    match reqwest::get(&url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}
