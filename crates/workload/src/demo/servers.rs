//! The demo's servers: the local PostgreSQL and RabbitMQ when they answer,
//! else private ones started from the installed server binaries in a
//! temporary directory (`idem_servers`), gone when the demo ends. A fresh
//! laptop with the packages installed but no service running gets a demo;
//! one without the packages gets one line saying what to install.
//!
//! Only a plain URL on this machine's loopback is replaced: a remote server,
//! or an `amqps://` one (a private node has no TLS), is the user's, and the
//! demo fails on it with the driver's own error.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use idem_daemon::secrets::SecretUrl;
use idem_servers::pg::{self, PgCluster};
use idem_servers::rabbit::{self, RabbitNode};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// How long a local server may take to answer before it counts as absent
/// (on loopback a connect is refused or accepted in well under this).
const PROBE: Duration = Duration::from_secs(5);

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
    /// private ones in their place when they are local and do not. Both are
    /// looked at before anything starts, so a machine missing both servers
    /// hears it once, in one line.
    pub async fn find_or_start(database_url: &str, amqp_url: &SecretUrl) -> anyhow::Result<Self> {
        let pg_why = postgres_absent(database_url).await?;
        let rabbit_why = broker_absent(amqp_url).await?;
        let mut uninstalled = Vec::new();
        if let Some(why) = &pg_why
            && let Err(e) = pg::server_binaries()
        {
            uninstalled.push(Uninstalled::new(why, e, POSTGRES));
        }
        if let Some(why) = &rabbit_why
            && let Err(e) = rabbit::server_scripts()
        {
            uninstalled.push(Uninstalled::new(why, e, RABBITMQ));
        }
        if !uninstalled.is_empty() {
            bail!("{}", Uninstalled::line(&uninstalled));
        }
        let (database_url, pg) = match pg_why {
            None => (database_url.to_owned(), None),
            Some(why) => {
                let cluster = start_postgres(&why).await?;
                (private_database_url(&cluster, database_url), Some(cluster))
            }
        };
        let (amqp_url, rabbit) = match rabbit_why {
            None => (amqp_url.clone(), None),
            Some(why) => {
                let node = start_rabbit(&why).await?;
                (SecretUrl::from(node.amqp_url()), Some(node))
            }
        };
        Ok(Self {
            database_url,
            amqp_url,
            _pg: pg,
            _rabbit: rabbit,
        })
    }
}

/// A server's package, the demo's setting for another one, and the variable
/// that names its binaries elsewhere.
type Server = (&'static str, &'static str, &'static str);
const POSTGRES: Server = ("postgresql", "--database-url", "IDEM_PG_BINDIR");
const RABBITMQ: Server = ("rabbitmq-server", "--amqp-url", "IDEM_RABBITMQ_SBIN");

/// A server the demo needs, cannot reach, and cannot start.
struct Uninstalled {
    why: String,
    package: &'static str,
    /// The demo's setting that points it at another server instead.
    setting: &'static str,
    /// The variable that named binaries which are not there, if one did.
    variable: Option<&'static str>,
}

impl Uninstalled {
    fn new(why: &str, error: anyhow::Error, (package, setting, variable): Server) -> Self {
        let named = std::env::var_os(variable).is_some() && format!("{error:#}").contains(variable);
        Self {
            why: why.to_owned(),
            package,
            setting,
            variable: named.then_some(variable),
        }
    }

    /// One line for all of them: what is wrong, and what to install.
    fn line(all: &[Self]) -> String {
        let why: Vec<&str> = all.iter().map(|u| u.why.as_str()).collect();
        let packages: Vec<&str> = all.iter().map(|u| u.package).collect();
        let settings: Vec<&str> = all.iter().map(|u| u.setting).collect();
        let variables: Vec<String> = all
            .iter()
            .filter_map(|u| u.variable.map(|v| format!("{v} names no server there")))
            .collect();
        let fix_variables = if variables.is_empty() {
            String::new()
        } else {
            format!(" ({})", variables.join(", "))
        };
        let (none, it) = if all.len() == 1 {
            ("no server is installed to start a private one", "it")
        } else {
            ("no servers are installed to start private ones", "them")
        };
        format!(
            "{}; {none}{fix_variables}: install {it} (Debian/Ubuntu: apt-get install {}), or set {}",
            why.join("; "),
            packages.join(" "),
            settings.join(" and "),
        )
    }
}

/// Why the demo needs a private PostgreSQL in place of `url`, or `None`
/// when `url` is to be used as it is.
async fn postgres_absent(url: &str) -> anyhow::Result<Option<String>> {
    let parsed = url::Url::parse(url).context("--database-url is not a URL")?;
    let Some(addr) = local_address(&parsed, 5432).await else {
        return Ok(None);
    };
    let options: PgConnectOptions = url.parse().context("--database-url")?;
    let login = tokio::time::timeout(
        PROBE,
        PgConnection::connect_with(&options.database("postgres")),
    )
    .await;
    Ok(match login {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            None
        }
        Err(_) | Ok(Err(sqlx::Error::Io(_))) => {
            Some(format!("PostgreSQL does not answer at {addr}"))
        }
        // Debian's own cluster asks for a password on TCP; the demo's URL
        // has none to give.
        Ok(Err(sqlx::Error::Database(e)))
            if e.code().is_some_and(|c| c == "28P01" || c == "28000") =>
        {
            Some(format!(
                "PostgreSQL at {addr} refuses the demo's login ({})",
                e.message()
            ))
        }
        Ok(Err(_)) => None,
    })
}

/// Why the demo needs a private RabbitMQ node in place of `urls`, or `None`
/// when one of its nodes answers or is not this machine's to replace.
async fn broker_absent(urls: &SecretUrl) -> anyhow::Result<Option<String>> {
    let mut first = None;
    for node in idem_periodic::endpoints::split(urls.expose()) {
        let parsed = url::Url::parse(node).context("--amqp-url is not a URL")?;
        if !parsed.scheme().eq_ignore_ascii_case("amqp") {
            return Ok(None);
        }
        let Some(addr) = local_address(&parsed, 5672).await else {
            return Ok(None);
        };
        if answers(addr).await {
            return Ok(None);
        }
        first.get_or_insert(addr);
    }
    Ok(first.map(|addr| format!("RabbitMQ does not answer at {addr}")))
}

async fn start_postgres(why: &str) -> anyhow::Result<PgCluster> {
    println!("{why}: starting a private cluster");
    let cluster = PgCluster::start_with_password()
        .await
        .context("starting a private PostgreSQL cluster")?;
    println!(
        "  private PostgreSQL at 127.0.0.1:{} (data in {}; removed when the demo ends)",
        cluster.port(),
        cluster.data_dir().display()
    );
    Ok(cluster)
}

async fn start_rabbit(why: &str) -> anyhow::Result<RabbitNode> {
    println!("{why}: starting a private node");
    let node = RabbitNode::start_with_password()
        .await
        .context("starting a private RabbitMQ node")?;
    println!(
        "  private RabbitMQ at 127.0.0.1:{} (node {}, files in {}; removed when the demo ends)",
        node.port(),
        node.node_name(),
        node.dir().display()
    );
    Ok(node)
}

/// The URL of the demo's database on `cluster`: the database `url` named.
fn private_database_url(cluster: &PgCluster, url: &str) -> String {
    let database = url::Url::parse(url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "idem_demo".to_owned());
    cluster.url(&database)
}

/// The address of `url` when every address its host has is on this
/// machine's loopback; `None` when it is elsewhere or does not resolve.
async fn local_address(url: &url::Url, default_port: u16) -> Option<SocketAddr> {
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port().unwrap_or(default_port);
    let addrs: Vec<SocketAddr> = tokio::time::timeout(PROBE, tokio::net::lookup_host((host, port)))
        .await
        .ok()?
        .ok()?
        .collect();
    let local = !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback());
    local.then(|| addrs[0])
}

/// Whether something accepts a TCP connection at `addr`.
async fn answers(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> url::Url {
        url::Url::parse(text).expect("a URL")
    }

    #[tokio::test]
    async fn only_loopback_hosts_are_local() {
        for (text, local) in [
            ("amqp://h@127.0.0.1:1/", true),
            ("amqp://localhost/", true),
            ("amqp://[::1]:7/", true),
            ("amqp://192.0.2.1/", false),
            ("amqp://no-such-host.invalid/", false),
        ] {
            let found = local_address(&url(text), 5672).await;
            assert_eq!(found.is_some(), local, "{text}");
        }
    }

    /// A list with a remote node, an `amqps` node or a node that answers is
    /// never replaced; a list of silent local nodes is.
    #[tokio::test]
    async fn a_broker_list_is_replaced_only_when_every_node_is_local_and_silent() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open = open.local_addr().expect("addr").port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let silent = |list: String| async move { broker_absent(&SecretUrl::from(list)).await };
        let c = format!("amqp://g:g@127.0.0.1:{closed}/%2f");
        assert!(silent(c.clone()).await.expect("ok").is_some());
        assert!(silent(format!("{c},{c}")).await.expect("ok").is_some());
        for keep in [
            format!("{c},amqp://g:g@127.0.0.1:{open}/%2f"),
            format!("{c},amqp://g:g@192.0.2.1:5672/%2f"),
            format!("amqps://g:g@127.0.0.1:{closed}/%2f"),
        ] {
            assert!(silent(keep.clone()).await.expect("ok").is_none(), "{keep}");
        }
    }

    #[test]
    fn one_line_names_every_package_and_the_setting() {
        let both = [
            Uninstalled {
                why: "PostgreSQL does not answer at 127.0.0.1:5432".into(),
                package: "postgresql",
                setting: "--database-url",
                variable: None,
            },
            Uninstalled {
                why: "RabbitMQ does not answer at 127.0.0.1:5672".into(),
                package: "rabbitmq-server",
                setting: "--amqp-url",
                variable: Some("IDEM_RABBITMQ_SBIN"),
            },
        ];
        let line = Uninstalled::line(&both);
        assert!(!line.contains('\n'), "{line}");
        for part in [
            "127.0.0.1:5432",
            "127.0.0.1:5672",
            "apt-get install postgresql rabbitmq-server",
            "IDEM_RABBITMQ_SBIN names no server there",
            "--database-url and --amqp-url",
        ] {
            assert!(line.contains(part), "{part:?} in {line}");
        }
    }
}
