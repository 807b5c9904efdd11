//! Private PostgreSQL clusters and RabbitMQ nodes that a test may stop,
//! restart and crash, without touching the shared services on 5432 / 5672.
//!
//! - [`PgCluster`]: its own `initdb`'d cluster in a scratch dir, on its own TCP
//!   port and Unix socket dir, run as the `postgres` user when we are root.
//! - [`RabbitNode`]: its own Erlang node (own node name, AMQP and distribution
//!   ports, mnesia / log dirs, config and cookie), sharing only epmd; with
//!   [`RabbitNode::start_with_tls`] also an AMQP-over-TLS listener whose
//!   certificate is signed by a CA made for the node.
//!
//! Both servers run as direct child processes of the test, never daemonised:
//! pid 1 on this machine reaps orphans only every ~2 s, and a zombie
//! postmaster's pid in `postmaster.pid` makes the next start refuse ("another
//! server might be running"). As our children they are reaped at once, and
//! `Drop` can wait for them synchronously, also while a test panics.
//!
//! Every process we start carries `IDEM_HARNESS_OWNER=<pid>:<start time>` in
//! its environment, and every scratch dir an `owner` file with the same token:
//! the first start in a test process kills leftovers of test processes that
//! died without unwinding (SIGKILL, a timeout) and removes their dirs.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

/// Environment variable that marks the processes we start with their owner.
const OWNER_ENV: &str = "IDEM_HARNESS_OWNER";
/// File in each scratch dir naming its owner (same token as [`OWNER_ENV`]).
const OWNER_FILE: &str = "owner";
/// Scratch dir prefix of PostgreSQL clusters.
const PG_PREFIX: &str = "idem-pgcluster-";
/// Scratch dir prefix of RabbitMQ nodes.
const RABBIT_PREFIX: &str = "idem-rabbitnode-";
/// How long a (re)start may take before we give up, crash recovery included.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a graceful stop may take before we SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// PostgreSQL

/// A private PostgreSQL cluster (same major version as the shared one), on
/// `127.0.0.1:<port()>`, user `postgres`, trust authentication.
///
/// `fsync=off` (a test cluster; a process crash keeps the OS page cache, so
/// committed data survives [`PgCluster::kill_hard`]), `synchronous_commit` on.
/// All methods take `&self`, so a fault injector can hold it in an `Arc`.
pub struct PgCluster {
    /// PostgreSQL's bin directory (`initdb`, `postgres`), found once.
    bindir: PathBuf,
    /// TCP port, the same across restarts so URLs and proxies stay valid.
    port: u16,
    /// `(uid, gid)` to run as: PostgreSQL refuses to run as root, so when we
    /// are root the server runs as the `postgres` user (who owns the dir).
    run_as: Option<(u32, u32)>,
    /// The running postmaster (our direct child); `None` while stopped.
    postmaster: Mutex<Option<Child>>,
    /// Scratch dir: `data/`, the Unix socket, `postgres.log`; removed on drop
    /// (declared last: dropped after the server is gone).
    dir: Scratch,
}

impl PgCluster {
    /// `initdb` a fresh cluster in a scratch dir and start it on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        sweep_orphans();
        let started = Instant::now();
        let bindir = pg_bindir()?;
        let run_as = if geteuid().is_root() {
            let user = User::from_name("postgres")
                .context("looking up the postgres user")?
                .context("running as root, but there is no `postgres` user to run PostgreSQL as")?;
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        let dir = Scratch::create(PG_PREFIX)?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir.path, Some(uid), Some(gid))
                .with_context(|| format!("chown {} to postgres", dir.path.display()))?;
        }
        let cluster = Self {
            bindir,
            port: free_port()?,
            run_as,
            postmaster: Mutex::new(None),
            dir,
        };
        let data = cluster.data_dir();
        let output = tokio::process::Command::from(cluster.command("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .output()
            .await
            .context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let initdb = started.elapsed();
        cluster.spawn()?;
        cluster.wait_ready().await?;
        tracing::info!(
            port = cluster.port,
            dir = %cluster.dir.path.display(),
            ?initdb,
            total = ?started.elapsed(),
            "PgCluster started"
        );
        Ok(cluster)
    }

    /// URL of database `db` (as user `postgres`, over TCP).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path.join("data")
    }

    /// The server log (all starts append to it).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join("postgres.log")
    }

    /// The postmaster's pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.lock().unwrap().as_ref().map(Child::id)
    }

    /// Whether the postmaster is running (it may still be starting up).
    pub fn is_running(&self) -> bool {
        let mut guard = self.postmaster.lock().unwrap();
        match guard.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                *guard = None;
                false
            }
            None => false,
        }
    }

    /// Stop in fast mode (SIGINT: roll back open transactions, disconnect
    /// clients, checkpoint). A no-op when already stopped.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let child = self.postmaster.lock().unwrap().take();
        if let Some(child) = child {
            stop_child(child, Signal::SIGINT, "postgres").await?;
            tracing::info!(port = self.port, took = ?started.elapsed(), "PgCluster stopped");
        }
        Ok(())
    }

    /// Start again on the same dir and port (after [`PgCluster::stop`] or
    /// [`PgCluster::kill_hard`]; crash recovery runs if needed); returns once
    /// it accepts connections.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        if self.is_running() {
            bail!("PgCluster on port {} is already running", self.port);
        }
        self.spawn()?;
        self.wait_ready().await?;
        tracing::info!(port = self.port, took = ?started.elapsed(), "PgCluster started again");
        Ok(())
    }

    /// [`PgCluster::stop`] then [`PgCluster::start_again`]; returns (and logs)
    /// how long the database was unavailable for.
    pub async fn restart(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.stop().await?;
        self.start_again().await?;
        let took = started.elapsed();
        tracing::info!(port = self.port, ?took, "PgCluster restarted");
        Ok(took)
    }

    /// Crash: SIGKILL the postmaster and all its processes at once, like a
    /// power loss minus the page cache. Returns once they are all dead;
    /// [`PgCluster::start_again`] then runs crash recovery.
    pub fn kill_hard(&self) {
        let child = self.postmaster.lock().unwrap().take();
        if let Some(child) = child {
            kill_child_tree(child);
            tracing::info!(port = self.port, "PgCluster killed (SIGKILL)");
        }
    }

    /// A `Command` for program `name` of the bindir, as the server's user,
    /// marked with our owner token.
    fn command(&self, name: &str) -> Command {
        let mut command = Command::new(self.bindir.join(name));
        command
            .current_dir(&self.dir.path)
            .env(OWNER_ENV, owner_token())
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Spawn the postmaster (foreground, our child), logging to `postgres.log`.
    fn spawn(&self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening postgres.log")?;
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir.path)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off"])
            .args(["-c", "max_connections=200"])
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command.spawn().context("spawning postgres")?;
        *self.postmaster.lock().unwrap() = Some(child);
        Ok(())
    }

    /// Wait until a connection succeeds; fail early if the postmaster exits.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = self.url("postgres");
        loop {
            if !self.is_running() {
                bail!(
                    "postgres on port {} exited while starting; log:\n{}",
                    self.port,
                    tail(&self.log_path(), 30)
                );
            }
            let attempt = tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(&url));
            if let Ok(Ok(conn)) = attempt.await {
                let _ = conn.close().await;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres on port {} not ready after {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    tail(&self.log_path(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for PgCluster {
    /// Immediate shutdown (SIGQUIT), SIGKILL if that hangs; then the scratch
    /// dir goes. Synchronous, so it also runs while a test unwinds.
    fn drop(&mut self) {
        let child = self
            .postmaster
            .get_mut()
            .map_or_else(|poisoned| poisoned.into_inner().take(), Option::take);
        if let Some(child) = child {
            stop_child_blocking(child, Signal::SIGQUIT, Duration::from_secs(10));
        }
    }
}

/// PostgreSQL's bin directory: `$IDEM_PG_BINDIR`, `pg_config --bindir`, or the
/// newest `/usr/lib/postgresql/<version>/bin`.
fn pg_bindir() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("IDEM_PG_BINDIR").map(PathBuf::from) {
        if has_server(&dir) {
            return Ok(dir);
        }
        bail!("IDEM_PG_BINDIR={} has no postgres/initdb", dir.display());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .context("no PostgreSQL server binaries (pg_config --bindir, /usr/lib/postgresql/*/bin)")
}

// ---------------------------------------------------------------------------
// RabbitMQ

/// A private RabbitMQ node (`idem-chaos-<random>@localhost`) with its own
/// AMQP port on 127.0.0.1, distribution port, mnesia, logs, config and Erlang
/// cookie; no plugins. Only epmd (port 4369) is shared with the shared node.
///
/// Started with [`RabbitNode::start_with_tls`], it also listens for AMQP over
/// TLS on a second port of 127.0.0.1 ([`RabbitNode::amqps_url`]), with a
/// server certificate for `localhost` and `127.0.0.1` signed by a CA made for
/// this node ([`RabbitNode::ca_cert`]); client certificates are not asked for.
///
/// It runs as the current user (root is fine for Erlang) with `HOME` set to
/// its scratch dir, where its cookie lives, so `rabbitmqctl` (run with the same
/// environment by [`RabbitNode::ctl`]) can talk to it.
/// All methods take `&self`, so a fault injector can hold it in an `Arc`.
pub struct RabbitNode {
    /// Erlang node name, unique per node.
    node: String,
    /// AMQP port on 127.0.0.1, the same across restarts.
    amqp_port: u16,
    /// AMQP-over-TLS port on 127.0.0.1 (same across restarts), if any.
    tls_port: Option<u16>,
    /// Erlang distribution port (for `rabbitmqctl`), the same across restarts.
    dist_port: u16,
    /// RabbitMQ's own scripts dir (not the Debian `/usr/sbin` wrappers, which
    /// `su` to the `rabbitmq` user and drop our environment's `HOME`).
    sbin: PathBuf,
    /// The running `rabbitmq-server` script (our child; the VM is its child).
    server: Mutex<Option<Child>>,
    /// Scratch dir: config, cookie, mnesia, logs; removed on drop (declared
    /// last: dropped after the node is gone).
    dir: Scratch,
}

impl RabbitNode {
    /// Configure and boot a fresh node; returns once AMQP connections succeed.
    pub async fn start() -> anyhow::Result<Self> {
        Self::boot(false).await
    }

    /// [`RabbitNode::start`] with a TLS listener as well: a CA and a server
    /// certificate (`localhost`, `127.0.0.1`) are made with `openssl` in the
    /// node's dir. Returns once plain and TLS AMQP connections both succeed.
    pub async fn start_with_tls() -> anyhow::Result<Self> {
        Self::boot(true).await
    }

    /// Configure and boot a fresh node, with a TLS listener if `tls`.
    async fn boot(tls: bool) -> anyhow::Result<Self> {
        sweep_orphans();
        let started = Instant::now();
        let sbin = rabbit_sbin()?;
        let dir = Scratch::create(RABBIT_PREFIX)?;
        let amqp_port = free_port()?;
        let dist_port = free_port()?;
        let tls_port = if tls { Some(free_port()?) } else { None };
        let node = format!(
            "idem-chaos-{}@localhost",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let path = &dir.path;
        fs::create_dir_all(path.join("mnesia"))?;
        fs::create_dir_all(path.join("log"))?;
        fs::write(path.join("enabled_plugins"), "[].\n")?;
        // Our own config and env files: the shared ones in /etc/rabbitmq set
        // the node name and listen on 5672.
        let mut config = format!("listeners.tcp.1 = 127.0.0.1:{amqp_port}\n");
        if let Some(tls_port) = tls_port {
            let tls_dir = path.join("tls");
            fs::create_dir_all(&tls_dir)?;
            make_tls_certs(&tls_dir).await?;
            config.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                tls_dir.join("ca.pem").display(),
                tls_dir.join("server.pem").display(),
                tls_dir.join("server.key").display(),
            ));
        }
        fs::write(path.join("rabbitmq.conf"), config)?;
        fs::write(path.join("rabbitmq-env.conf"), "")?;
        let cookie_path = path.join(".erlang.cookie");
        let cookie: String = Uuid::new_v4()
            .simple()
            .to_string()
            .to_uppercase()
            .chars()
            .filter(char::is_ascii_alphabetic)
            .chain("IDEMCOOKIE".chars())
            .collect();
        fs::write(&cookie_path, cookie)?;
        fs::set_permissions(&cookie_path, fs::Permissions::from_mode(0o400))?;
        let rabbit = Self {
            node,
            amqp_port,
            tls_port,
            dist_port,
            sbin,
            server: Mutex::new(None),
            dir,
        };
        rabbit.spawn()?;
        rabbit.wait_ready().await?;
        tracing::info!(
            node = %rabbit.node,
            amqp_port,
            ?tls_port,
            dist_port,
            dir = %rabbit.dir.path.display(),
            took = ?started.elapsed(),
            "RabbitNode started"
        );
        Ok(rabbit)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The AMQP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.amqp_port
    }

    /// The AMQP-over-TLS port (on 127.0.0.1), for a node started with
    /// [`RabbitNode::start_with_tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `amqps://guest:guest@localhost:<tls port>/%2f` (the name in the
    /// server certificate; `guest` may log in from loopback), for a node
    /// started with [`RabbitNode::start_with_tls`].
    pub fn amqps_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("amqps://guest:guest@localhost:{port}/%2f"))
    }

    /// The PEM file of the CA that signed the TLS listener's certificate
    /// (a client trusts the listener with it), for a node started with
    /// [`RabbitNode::start_with_tls`].
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.tls_port
            .map(|_| self.dir.path.join("tls").join("ca.pem"))
    }

    /// An AMQP connection over TLS trusting [`RabbitNode::ca_cert`] (given to
    /// lapin as an extra root, not through the environment), for a node
    /// started with [`RabbitNode::start_with_tls`].
    pub async fn connect_tls(&self) -> anyhow::Result<Connection> {
        let (Some(url), Some(ca)) = (self.amqps_url(), self.ca_cert()) else {
            bail!("RabbitNode {} has no TLS listener", self.node);
        };
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: Some(fs::read_to_string(&ca).context("reading the node's CA")?),
        };
        let builder = DefaultConnectionBuilder::new()?
            .with_uri_str(url)
            .with_tls_config(tls);
        let connection = tokio::time::timeout(Duration::from_secs(15), builder.connect())
            .await
            .context("TLS connection timed out")??;
        Ok(connection)
    }

    /// The Erlang node name (for `rabbitmqctl -n`).
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The node's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join("log").join(format!("{}.log", self.node))
    }

    /// Whether the VM is running (the broker app may be stopped).
    pub fn is_running(&self) -> bool {
        let mut guard = self.server.lock().unwrap();
        match guard.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                *guard = None;
                false
            }
            None => false,
        }
    }

    /// Stop the whole node gracefully (SIGTERM: the broker stops, then the VM
    /// exits). A no-op when already stopped.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let child = self.server.lock().unwrap().take();
        if let Some(child) = child {
            stop_child(child, Signal::SIGTERM, "rabbitmq-server").await?;
            tracing::info!(node = %self.node, took = ?started.elapsed(), "RabbitNode stopped");
        }
        Ok(())
    }

    /// Boot the node again (same name, ports and data) after
    /// [`RabbitNode::stop`] or [`RabbitNode::kill_hard`]; returns once AMQP
    /// connections succeed.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        if self.is_running() {
            bail!("RabbitNode {} is already running", self.node);
        }
        self.spawn()?;
        self.wait_ready().await?;
        tracing::info!(node = %self.node, took = ?started.elapsed(), "RabbitNode started again");
        Ok(())
    }

    /// Full restart (VM included): [`RabbitNode::stop`] then
    /// [`RabbitNode::start_again`]; returns (and logs) how long it took.
    pub async fn restart(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.stop().await?;
        self.start_again().await?;
        let took = started.elapsed();
        tracing::info!(node = %self.node, ?took, "RabbitNode restarted");
        Ok(took)
    }

    /// `rabbitmqctl stop_app`: the broker stops (connections close, the AMQP
    /// port refuses), the VM stays up. Faster to undo than a full stop.
    pub async fn stop_app(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.ctl(&["stop_app"]).await?;
        tracing::info!(node = %self.node, took = ?started.elapsed(), "RabbitNode app stopped");
        Ok(())
    }

    /// `rabbitmqctl start_app`; returns once AMQP connections succeed.
    pub async fn start_app(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.ctl(&["start_app"]).await?;
        self.wait_ready().await?;
        tracing::info!(node = %self.node, took = ?started.elapsed(), "RabbitNode app started");
        Ok(())
    }

    /// [`RabbitNode::stop_app`] then [`RabbitNode::start_app`]; returns (and
    /// logs) how long it took.
    pub async fn restart_app(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.stop_app().await?;
        self.start_app().await?;
        let took = started.elapsed();
        tracing::info!(node = %self.node, ?took, "RabbitNode app restarted");
        Ok(took)
    }

    /// Crash: SIGKILL the VM (and its helpers) at once. Returns once they are
    /// dead; [`RabbitNode::start_again`] then boots from what is on disk.
    pub fn kill_hard(&self) {
        let child = self.server.lock().unwrap().take();
        if let Some(child) = child {
            kill_child_tree(child);
            tracing::info!(node = %self.node, "RabbitNode killed (SIGKILL)");
        }
    }

    /// Run `rabbitmqctl -n <node> <args>` with this node's environment
    /// (cookie); returns its stdout, or an error with its stderr.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = tokio::process::Command::from(self.command("rabbitmqctl"));
        command
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(120), command.output())
            .await
            .with_context(|| format!("rabbitmqctl {args:?} timed out"))?
            .context("running rabbitmqctl")?;
        if !output.status.success() {
            bail!(
                "rabbitmqctl {args:?} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A `Command` for RabbitMQ script `name` with this node's environment.
    fn command(&self, name: &str) -> Command {
        let path = &self.dir.path;
        let mut command = Command::new(self.sbin.join(name));
        command
            .current_dir(path)
            .stdin(Stdio::null())
            .env(OWNER_ENV, owner_token())
            .env("HOME", path)
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", path.join("log"))
            .env("RABBITMQ_PID_FILE", path.join("rabbit.pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                path.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", path.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                path.join("advanced.config"),
            )
            .env("RABBITMQ_CONF_ENV_FILE", path.join("rabbitmq-env.conf"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env_remove("RABBITMQ_ENABLED_PLUGINS")
            .env_remove("ERL_FLAGS");
        command
    }

    /// Spawn `rabbitmq-server` in the foreground (our child), output to
    /// `stdout.log`. The script forwards SIGTERM to the VM as a graceful stop.
    fn spawn(&self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path.join("stdout.log"))
            .context("opening stdout.log")?;
        let child = self
            .command("rabbitmq-server")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning rabbitmq-server")?;
        *self.server.lock().unwrap() = Some(child);
        Ok(())
    }

    /// Wait until an AMQP connection succeeds (the listener opens at the end
    /// of the boot), and one over TLS too if the node has a TLS listener;
    /// fail early if the VM exits. Cheaper than polling
    /// `rabbitmqctl await_startup`, which fails at once until the node has
    /// registered with epmd and costs ~0.5 s CPU per try.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = self.amqp_url();
        let mut plain_ready = false;
        let mut tls_error = String::from("not tried");
        loop {
            if !self.is_running() {
                bail!(
                    "RabbitMQ node {} exited while starting; output:\n{}\nlog:\n{}",
                    self.node,
                    tail(&self.dir.path.join("stdout.log"), 20),
                    tail(&self.log_path(), 30)
                );
            }
            let port_open = tokio::net::TcpStream::connect(("127.0.0.1", self.amqp_port))
                .await
                .is_ok();
            if port_open && !plain_ready {
                let connect = Connection::connect(&url, ConnectionProperties::default());
                if let Ok(Ok(connection)) =
                    tokio::time::timeout(Duration::from_secs(5), connect).await
                {
                    let _ = connection.close(200, "ready".into()).await;
                    plain_ready = true;
                }
            }
            if plain_ready {
                if self.tls_port.is_none() {
                    return Ok(());
                }
                match self.connect_tls().await {
                    Ok(connection) => {
                        let _ = connection.close(200, "ready".into()).await;
                        return Ok(());
                    }
                    Err(e) => tls_error = format!("{e:#}"),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "RabbitMQ node {} not ready after {START_TIMEOUT:?} (plain AMQP ready: \
                     {plain_ready}, TLS: {tls_error}); log:\n{}",
                    self.node,
                    tail(&self.log_path(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RabbitNode {
    /// SIGKILL the VM and its helpers (the data goes anyway), then the scratch
    /// dir goes. Synchronous, so it also runs while a test unwinds.
    fn drop(&mut self) {
        let child = self
            .server
            .get_mut()
            .map_or_else(|poisoned| poisoned.into_inner().take(), Option::take);
        if let Some(child) = child {
            kill_child_tree(child);
        }
    }
}

/// `openssl req` making a P-256 key and an X.509 certificate valid 2 days,
/// unencrypted: what every test certificate starts from.
pub const OPENSSL_REQ: [&str; 9] = [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-days",
    "2",
];

/// Make, with `openssl`, a CA (`ca.pem`, `ca.key`) and a server certificate
/// it signs (`server.pem`, `server.key`) in `dir`: P-256 keys, valid 2 days;
/// the server's for `localhost` and `127.0.0.1`, not a CA itself, for server
/// authentication (what webpki, and so rustls, wants of it).
async fn make_tls_certs(dir: &Path) -> anyhow::Result<()> {
    let openssl = |args: &[&str]| {
        let mut command = tokio::process::Command::new("openssl");
        command
            .current_dir(dir)
            .args(OPENSSL_REQ)
            .args(args)
            .stdin(Stdio::null());
        command
    };
    let steps: [(&str, &[&str]); 2] = [
        (
            "CA",
            &[
                "-subj",
                "/CN=idem RabbitNode test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ),
        (
            "server certificate",
            &[
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "extendedKeyUsage=serverAuth",
                "-keyout",
                "server.key",
                "-out",
                "server.pem",
            ],
        ),
    ];
    for (what, args) in steps {
        let output = openssl(args)
            .output()
            .await
            .context("running openssl (apt-get install openssl)")?;
        if !output.status.success() {
            bail!(
                "openssl req ({what}) failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(())
}

/// RabbitMQ's scripts dir: `$IDEM_RABBITMQ_SBIN`, Debian's
/// `/usr/lib/rabbitmq/bin`, `/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin`.
fn rabbit_sbin() -> anyhow::Result<PathBuf> {
    let usable =
        |dir: &Path| dir.join("rabbitmq-server").is_file() && dir.join("rabbitmqctl").is_file();
    if let Some(dir) = std::env::var_os("IDEM_RABBITMQ_SBIN").map(PathBuf::from) {
        if usable(&dir) {
            return Ok(dir);
        }
        bail!(
            "IDEM_RABBITMQ_SBIN={} has no rabbitmq-server/rabbitmqctl",
            dir.display()
        );
    }
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin");
    if usable(&debian) {
        return Ok(debian);
    }
    let mut releases: Vec<PathBuf> = fs::read_dir("/usr/lib/rabbitmq/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("sbin"))
        .filter(|dir| usable(dir))
        .collect();
    releases.sort();
    releases
        .pop()
        .context("no RabbitMQ scripts (/usr/lib/rabbitmq/bin, /usr/lib/rabbitmq/lib/*/sbin)")
}

// ---------------------------------------------------------------------------
// Processes, ports, scratch dirs

/// A scratch dir under the system temp dir, stamped with its owner, removed
/// on drop.
struct Scratch {
    /// Its path.
    path: PathBuf,
}

impl Scratch {
    /// Create `<tmp>/<prefix><random>` with an owner file.
    fn create(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}{}", Uuid::new_v4().simple()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let scratch = Self { path };
        fs::write(scratch.path.join(OWNER_FILE), owner_token())?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), "removing scratch dir: {e}");
        }
    }
}

/// Gracefully stop `child` with `signal`, SIGKILL its tree after
/// [`STOP_TIMEOUT`]; reaps it either way.
async fn stop_child(mut child: Child, signal: Signal, what: &str) -> anyhow::Result<()> {
    let pid = Pid::from_raw(i32::try_from(child.id())?);
    kill(pid, signal).with_context(|| format!("sending {signal} to {what}"))?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            kill_child_tree(child);
            bail!("{what} did not stop within {STOP_TIMEOUT:?} after {signal}; killed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`stop_child`] for `Drop`: blocking, never fails.
fn stop_child_blocking(mut child: Child, signal: Signal, timeout: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_child_tree(child);
}

/// SIGKILL `child` and all its descendants, reap it, and wait (up to 5 s)
/// until the descendants are dead too (they are reparented to pid 1, which
/// reaps them later: a zombie counts as dead, it holds no ports or memory).
fn kill_child_tree(mut child: Child) {
    let Ok(root) = i32::try_from(child.id()) else {
        return;
    };
    let killed = kill_tree(root);
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed.iter().any(|&pid| pid != root && is_alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGSTOP `root` (no more forks), then SIGKILL it and all its descendants.
/// Returns the pids killed.
fn kill_tree(root: i32) -> Vec<i32> {
    let _ = kill(Pid::from_raw(root), Signal::SIGSTOP);
    let mut pids = vec![root];
    pids.extend(descendants(root));
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    pids
}

/// `(state, ppid, start time)` of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

/// Whether `pid` exists and is not a zombie.
fn is_alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _, _)| state != 'Z' && state != 'X')
}

/// Pids of all processes.
fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// All live descendants of `root` (children, grandchildren, ...).
fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for pid in all_pids() {
        if let Some((state, ppid, _)) = proc_stat(pid)
            && state != 'Z'
        {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

/// This test process's owner token: `<pid>:<start time>` (the start time
/// tells a reused pid apart).
fn owner_token() -> String {
    let pid = std::process::id();
    let start = i32::try_from(pid)
        .ok()
        .and_then(proc_stat)
        .map_or(0, |(_, _, start)| start);
    format!("{pid}:{start}")
}

/// Whether the test process of an owner token is still running.
fn owner_alive(token: &str) -> bool {
    let Some((pid, start)) = token.trim().split_once(':') else {
        return true; // not ours to judge
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
        return true;
    };
    proc_stat(pid).is_some_and(|(state, _, s)| state != 'Z' && state != 'X' && s == start)
}

/// Once per test process: SIGKILL processes we started from test processes
/// that are gone (they died without running `Drop`) and remove their dirs.
fn sweep_orphans() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let marker = format!("{OWNER_ENV}=");
        for pid in all_pids() {
            let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let owner = environ
                .split(|&b| b == 0)
                .find_map(|var| var.strip_prefix(marker.as_bytes()))
                .map(|token| String::from_utf8_lossy(token).into_owned());
            if let Some(owner) = owner
                && !owner_alive(&owner)
                && is_alive(pid)
            {
                tracing::warn!(pid, owner, "killing a leftover of a dead test process");
                kill_tree(pid);
            }
        }
        for entry in fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with(PG_PREFIX) || name.starts_with(RABBIT_PREFIX)) {
                continue;
            }
            let owner = fs::read_to_string(entry.path().join(OWNER_FILE)).unwrap_or_default();
            if !owner.is_empty() && !owner_alive(&owner) {
                tracing::warn!(dir = %entry.path().display(), "removing a leftover scratch dir");
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// A free TCP port on 127.0.0.1 for a server to listen on across restarts:
/// below the ephemeral range (so no outgoing connection takes it while the
/// server is down), not RabbitMQ's CLI range 35672-35682, and never handed
/// out twice by this process.
fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap();
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..500 {
        let random = u16::try_from(Uuid::new_v4().as_u128() % 12_000).unwrap_or(0);
        let port = 20_000 + random;
        if handed_out.contains(&port) {
            continue;
        }
        // A wildcard bind fails if any address holds the port.
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port found in 20000-31999")
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
