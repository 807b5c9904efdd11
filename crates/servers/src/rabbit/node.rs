//! [`RabbitNode`]: a private RabbitMQ node its owner (a test, the demo)
//! may stop, restart and crash without touching the shared broker on 5672 —
//! how it is configured and booted, and where to reach it. Stopping and
//! starting it is in `lifecycle`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, DefaultConnectionBuilder};
use uuid::Uuid;

use crate::ca;
use crate::child::{free_port, kill_child_tree};
use crate::scratch::{RABBIT_PREFIX, Scratch, sweep_orphans};

/// A private RabbitMQ node (`idem-node-<random>@localhost`) with its own
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
    pub(super) node: String,
    /// AMQP port on 127.0.0.1, the same across restarts.
    pub(super) amqp_port: u16,
    /// AMQP-over-TLS port on 127.0.0.1 (same across restarts), if any.
    pub(super) tls_port: Option<u16>,
    /// Erlang distribution port (for `rabbitmqctl`), the same across restarts.
    pub(super) dist_port: u16,
    /// RabbitMQ's own scripts dir (not the Debian `/usr/sbin` wrappers, which
    /// `su` to the `rabbitmq` user and drop our environment's `HOME`).
    pub(super) sbin: PathBuf,
    /// The AMQP user and password (`guest` unless started with a password).
    pub(super) login: (String, String),
    /// The running `rabbitmq-server` script (our child; the VM is its child).
    pub(super) server: Mutex<Option<Child>>,
    /// Scratch dir: config, cookie, mnesia, logs; removed on drop (declared
    /// last: dropped after the node is gone).
    pub(super) dir: Scratch,
}

impl RabbitNode {
    /// Configure and boot a fresh node; returns once AMQP connections succeed.
    /// Its user is `guest`, which RabbitMQ lets in from loopback only.
    pub async fn start() -> anyhow::Result<Self> {
        Self::boot(false, None, None, None).await
    }

    /// [`RabbitNode::start`] with a user and password of its own, random, in
    /// place of `guest` (in [`RabbitNode::amqp_url`]): no other user of the
    /// machine can publish to it or read from it.
    pub async fn start_with_password() -> anyhow::Result<Self> {
        let login = (
            format!("idem-{}", &Uuid::new_v4().simple().to_string()[..8]),
            Uuid::new_v4().simple().to_string(),
        );
        Self::boot(false, None, None, Some(login)).await
    }

    /// [`RabbitNode::start`] with a TLS listener as well: a CA and a server
    /// certificate (`localhost`, `127.0.0.1`) are made with `openssl` in the
    /// node's dir. Returns once plain and TLS AMQP connections both succeed.
    pub async fn start_with_tls() -> anyhow::Result<Self> {
        Self::boot(true, None, None, None).await
    }

    /// Configure and boot a fresh node, with a TLS listener if `tls`, with
    /// Erlang cookie `cookie` (nodes of one cluster share theirs) or a new
    /// one, joining the cluster of node `seed` as it boots if given, its
    /// user `login` (name, password) or `guest`.
    pub(super) async fn boot(
        tls: bool,
        cookie: Option<&str>,
        seed: Option<&str>,
        login: Option<(String, String)>,
    ) -> anyhow::Result<Self> {
        sweep_orphans();
        let started = Instant::now();
        let sbin = server_scripts()?;
        let dir = Scratch::create(RABBIT_PREFIX)?;
        let amqp_port = free_port()?;
        let dist_port = free_port()?;
        let tls_port = if tls { Some(free_port()?) } else { None };
        let node = format!(
            "idem-node-{}@localhost",
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
            ca::ca_and_server_cert(&tls_dir).await?;
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
        if let Some(seed) = seed {
            // Peer discovery at boot (no stop_app/join_cluster/start_app
            // round): the node joins the seed's cluster as it starts.
            config.push_str(&format!(
                "cluster_formation.peer_discovery_backend = classic_config\n\
                 cluster_formation.classic_config.nodes.1 = {seed}\n"
            ));
        }
        if let Some((user, password)) = &login {
            config.push_str(&format!(
                "default_user = {user}\ndefault_pass = {password}\n"
            ));
        }
        fs::write(path.join("rabbitmq.conf"), config)?;
        fs::write(path.join("rabbitmq-env.conf"), "")?;
        let cookie_path = path.join(".erlang.cookie");
        let cookie = cookie.map_or_else(new_cookie, str::to_owned);
        fs::write(&cookie_path, cookie)?;
        fs::set_permissions(&cookie_path, fs::Permissions::from_mode(0o400))?;
        let rabbit = Self {
            node,
            amqp_port,
            tls_port,
            dist_port,
            sbin,
            login: login.unwrap_or_else(|| ("guest".to_owned(), "guest".to_owned())),
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

    /// `amqp://<user>:<password>@127.0.0.1:<port>/%2f` (`guest:guest`
    /// unless started with a password).
    pub fn amqp_url(&self) -> String {
        let (user, password) = &self.login;
        format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", self.amqp_port)
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
        self.tls_port.map(|port| {
            let (user, password) = &self.login;
            format!("amqps://{user}:{password}@localhost:{port}/%2f")
        })
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

    /// The node's scratch dir (config, mnesia, logs; removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The node's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path.join("log").join(format!("{}.log", self.node))
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

/// A fresh Erlang cookie: letters only, as Erlang accepts.
pub(super) fn new_cookie() -> String {
    Uuid::new_v4()
        .simple()
        .to_string()
        .to_uppercase()
        .chars()
        .filter(char::is_ascii_alphabetic)
        .chain("IDEMCOOKIE".chars())
        .collect()
}

/// RabbitMQ's scripts dir: `$IDEM_RABBITMQ_SBIN`, Debian's
/// `/usr/lib/rabbitmq/bin`, `/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin`.
pub fn server_scripts() -> anyhow::Result<PathBuf> {
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
