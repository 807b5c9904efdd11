//! [`PgCluster`]: a private PostgreSQL cluster its owner (a test, the
//! demo) may stop, restart and crash without touching the shared service on
//! 5432: its own `initdb`'d cluster in a scratch dir, on its own TCP port and Unix socket dir, run as
//! the `postgres` user when we are root.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use nix::unistd::{User, geteuid};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

use crate::child::{
    START_TIMEOUT, free_port, kill_child_tree, still_running, stop_child, stop_child_blocking, tail,
};
use crate::scratch::{OWNER_ENV, PG_PREFIX, Scratch, owner_token, sweep_orphans};

/// A private PostgreSQL cluster (the newest installed version, or
/// `IDEM_PG_BINDIR`'s), on `127.0.0.1:<port()>`, user `postgres`: trust
/// authentication ([`PgCluster::start`], for the suites), or a random
/// password on TCP and a socket dir only its owner may enter
/// ([`PgCluster::start_with_password`], for a machine with other users).
///
/// `fsync=off` (throw-away data; a process crash keeps the OS page cache, so
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
    /// The superuser's password on TCP, if it needs one.
    password: Option<String>,
    /// The running postmaster (our direct child); `None` while stopped.
    postmaster: Mutex<Option<Child>>,
    /// Scratch dir: `data/`, the Unix socket, `postgres.log`; removed on drop
    /// (declared last: dropped after the server is gone).
    dir: Scratch,
}

impl PgCluster {
    /// `initdb` a fresh cluster in a scratch dir and start it on a free port,
    /// trusting every local connection.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_as(None).await
    }

    /// [`PgCluster::start`] with a random password for TCP logins (in
    /// [`PgCluster::url`]) and the Unix socket in a dir only the server's
    /// user may enter: a superuser on a free port is code execution for
    /// whoever reaches it (`COPY ... TO PROGRAM`), so no other user of the
    /// machine may.
    pub async fn start_with_password() -> anyhow::Result<Self> {
        Self::start_as(Some(uuid::Uuid::new_v4().simple().to_string())).await
    }

    async fn start_as(password: Option<String>) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut cluster = Self::unstarted()?;
        let data = cluster.data_dir();
        let mut initdb = tokio::process::Command::from(cluster.command("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"]);
        if let Some(password) = &password {
            fs::set_permissions(&cluster.dir.path, fs::Permissions::from_mode(0o700))
                .context("closing the cluster's dir to other users")?;
            let file = cluster.dir.path.join("pwfile");
            fs::write(&file, password).context("writing the password file")?;
            if let Some((uid, gid)) = cluster.run_as {
                std::os::unix::fs::chown(&file, Some(uid), Some(gid))
                    .context("chown the password file to postgres")?;
            }
            initdb
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", file.display()));
        } else {
            initdb.args(["-A", "trust"]);
        }
        cluster.password = password;
        let output = initdb.output().await.context("running initdb")?;
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

    /// A cluster with a scratch dir (owned by the server's user) and a free
    /// port, but no data dir yet and no server: `initdb` or a base backup
    /// ([`PgCluster::standby_of`]) fills it.
    pub(super) fn unstarted() -> anyhow::Result<Self> {
        sweep_orphans();
        let bindir = server_binaries()?;
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
        Ok(Self {
            bindir,
            port: free_port()?,
            run_as,
            password: None,
            postmaster: Mutex::new(None),
            dir,
        })
    }

    /// URL of database `db` (as user `postgres`, over TCP; with the
    /// password when it has one).
    pub fn url(&self, db: &str) -> String {
        let password = self
            .password
            .as_ref()
            .map_or_else(String::new, |p| format!(":{p}"));
        format!("postgres://postgres{password}@127.0.0.1:{}/{db}", self.port)
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
        self.postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(Child::id)
    }

    /// Whether the postmaster is running (it may still be starting up).
    pub fn is_running(&self) -> bool {
        still_running(&self.postmaster)
    }

    /// Stop in fast mode (SIGINT: roll back open transactions, disconnect
    /// clients, checkpoint). A no-op when already stopped.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let child = self
            .postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
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
        let child = self
            .postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(child) = child {
            kill_child_tree(child);
            tracing::info!(port = self.port, "PgCluster killed (SIGKILL)");
        }
    }

    /// A `Command` for program `name` of the bindir, as the server's user,
    /// marked with our owner token.
    pub(super) fn command(&self, name: &str) -> Command {
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
    pub(super) fn spawn(&self) -> anyhow::Result<()> {
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
            .stderr(log)
            // A group of its own: a terminal's ctrl-c (SIGINT is a fast
            // shutdown to postgres) reaches its owner, which stops it in
            // order, not the server behind its back.
            .process_group(0);
        let child = command.spawn().context("spawning postgres")?;
        *self
            .postmaster
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(child);
        Ok(())
    }

    /// Wait until a connection succeeds; fail early if the postmaster exits.
    pub(super) async fn wait_ready(&self) -> anyhow::Result<()> {
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
pub fn server_binaries() -> anyhow::Result<PathBuf> {
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
