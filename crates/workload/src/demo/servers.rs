//! The demo's servers: the local PostgreSQL and RabbitMQ when they answer,
//! else private ones started from the installed server binaries in a
//! temporary directory (`idem_servers`), gone when the demo ends. A fresh
//! laptop with the packages installed but no service running gets a demo;
//! one without the packages gets one line saying what to install.
//!
//! Only a URL on this machine's loopback is replaced: a remote server that
//! does not answer is the user's to fix, and the demo says so.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use idem_daemon::secrets::SecretUrl;
use idem_servers::pg::{self, PgCluster};
use idem_servers::rabbit::{self, RabbitNode};

/// How long an answer from a local server may take before it counts as
/// absent (a loopback connect is refused or accepted in well under this).
const PROBE: Duration = Duration::from_secs(2);

/// What the demo runs against; private servers stop when this is dropped.
pub struct DemoServers {
    /// The demo database's URL.
    pub database_url: String,
    /// The broker's URL (or list of nodes).
    pub amqp_url: SecretUrl,
    /// A private cluster, when the local server did not answer.
    _pg: Option<PgCluster>,
    /// A private node, when the local broker did not answer.
    _rabbit: Option<RabbitNode>,
}

impl DemoServers {
    /// The servers at `database_url` and `amqp_url` when they answer;
    /// private ones in their place when they are local and do not.
    pub async fn find_or_start(database_url: &str, amqp_url: &SecretUrl) -> anyhow::Result<Self> {
        let (database_url, pg) = postgres(database_url).await?;
        let (amqp_url, rabbit) = broker(amqp_url).await?;
        Ok(Self {
            database_url,
            amqp_url,
            _pg: pg,
            _rabbit: rabbit,
        })
    }
}

async fn postgres(url: &str) -> anyhow::Result<(String, Option<PgCluster>)> {
    let parsed = url::Url::parse(url).context("--database-url is not a URL")?;
    let Some(addr) = silent_local(&parsed, 5432).await else {
        return Ok((url.to_owned(), None));
    };
    if let Err(e) = pg::server_binaries() {
        bail!(
            "PostgreSQL does not answer at {addr} and no server is installed to start a private one ({e:#}): install PostgreSQL (Debian/Ubuntu: apt-get install postgresql) or set --database-url"
        );
    }
    println!("PostgreSQL does not answer at {addr}: starting a private cluster");
    let cluster = PgCluster::start()
        .await
        .context("starting a private PostgreSQL cluster")?;
    let database = parsed.path().trim_start_matches('/');
    let database = if database.is_empty() {
        "idem_demo"
    } else {
        database
    };
    let private = cluster.url(database);
    println!(
        "  private PostgreSQL at 127.0.0.1:{} (data in {}; removed when the demo ends)",
        cluster.port(),
        cluster.data_dir().display()
    );
    Ok((private, Some(cluster)))
}

async fn broker(urls: &SecretUrl) -> anyhow::Result<(SecretUrl, Option<RabbitNode>)> {
    let nodes = idem_periodic::endpoints::split(urls.expose());
    let mut silent = Vec::new();
    for node in &nodes {
        let parsed = url::Url::parse(node).context("--amqp-url is not a URL")?;
        let port = if parsed.scheme().eq_ignore_ascii_case("amqps") {
            5671
        } else {
            5672
        };
        match silent_local(&parsed, port).await {
            Some(addr) => silent.push(addr),
            // One node that answers, or one that is not ours to replace.
            None => return Ok((urls.clone(), None)),
        }
    }
    let Some(addr) = silent.first() else {
        return Ok((urls.clone(), None));
    };
    if let Err(e) = rabbit::server_scripts() {
        bail!(
            "RabbitMQ does not answer at {addr} and no server is installed to start a private one ({e:#}): install RabbitMQ (Debian/Ubuntu: apt-get install rabbitmq-server) or set --amqp-url"
        );
    }
    println!("RabbitMQ does not answer at {addr}: starting a private node");
    let node = RabbitNode::start()
        .await
        .context("starting a private RabbitMQ node")?;
    println!(
        "  private RabbitMQ at 127.0.0.1:{} (node {}; removed when the demo ends)",
        node.port(),
        node.node_name()
    );
    Ok((SecretUrl::from(node.amqp_url()), Some(node)))
}

/// The address of `url` when it is on this machine's loopback and nothing
/// accepts a connection there; `None` when it answers or is elsewhere.
async fn silent_local(url: &url::Url, default_port: u16) -> Option<SocketAddr> {
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port().unwrap_or(default_port);
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().ok()?.collect();
    if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
        return None;
    }
    for addr in &addrs {
        if let Ok(Ok(_)) = tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(addr)).await {
            return None;
        }
    }
    addrs.first().copied()
}
