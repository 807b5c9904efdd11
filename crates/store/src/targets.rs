//! Which PostgreSQL server to talk to: the hosts of a libpq-style URL
//! (`postgres://u@h1:5432,h2:5433/db`), tried in order, and whether a server
//! is one idem may use (a primary, not a standby in recovery).
//!
//! sqlx 0.8's `PgConnectOptions` takes one host and ignores
//! `target_session_attrs`, so both are done here: the URL is split into one
//! `PgConnectOptions` per host (everything else — user, password, database,
//! TLS settings — shared), and a server is checked after connect with
//! `pg_is_in_recovery()`.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

/// Stands for the host list while the rest of the URL is parsed (or
/// redacted) by a one-host parser; `.invalid` never resolves.
const PLACEHOLDER: &str = "idem-hosts.invalid";

/// libpq's default port, for a host given without one.
const DEFAULT_PORT: u16 = 5432;

/// How long one probe of one host may take (connect and check).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a URL's host list or `target_session_attrs` was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error("host {0:?} in the host list has no valid port")]
    BadPort(String),
    #[error("the host list has an empty entry")]
    EmptyHost,
    #[error("target_session_attrs={0:?} is not supported (read-write, primary or any)")]
    SessionAttrs(String),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// The servers of one URL, in the order given, and the one in use.
#[derive(Debug)]
pub struct Targets {
    /// One set of options per host, all else equal.
    hosts: Vec<PgConnectOptions>,
    /// `false` for `target_session_attrs=any`: any server will do.
    read_write: bool,
    /// Index into `hosts` of the server in use (the last primary found).
    current: AtomicUsize,
}

impl Targets {
    /// Parse `url`. Several hosts (`h1:p1,h2:p2`, `[::1]:p` for IPv6) make
    /// one target each; `target_session_attrs` is taken out of the query
    /// (`read-write` and `primary` mean "not in recovery", the default, since
    /// every idem replica writes; `any` turns the check off).
    pub fn parse(url: &str) -> Result<Self, TargetsError> {
        let (url, read_write) = take_session_attrs(url)?;
        let Some((template, list)) = split_hosts(&url) else {
            let options = PgConnectOptions::from_str(&url)?;
            return Ok(Self::new(vec![options], read_write));
        };
        let base = PgConnectOptions::from_str(&template)?;
        let hosts = parse_host_list(&list)?
            .into_iter()
            .map(|(host, port)| base.clone().host(&host).port(port.unwrap_or(DEFAULT_PORT)))
            .collect();
        Ok(Self::new(hosts, read_write))
    }

    fn new(hosts: Vec<PgConnectOptions>, read_write: bool) -> Self {
        Self {
            hosts,
            read_write,
            current: AtomicUsize::new(0),
        }
    }

    /// How many hosts the URL names.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the URL names no host (never: parsing needs one).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Whether a server in recovery (a standby) is refused.
    pub fn read_write(&self) -> bool {
        self.read_write
    }

    /// The options of the server in use.
    pub fn current(&self) -> PgConnectOptions {
        self.hosts[self.current_index()].clone()
    }

    /// Index of the server in use.
    pub fn current_index(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The order to try hosts in after the one in use failed: the next one
    /// first, round the list, the failed one last (it may be back).
    pub fn rotation(&self) -> Vec<usize> {
        rotation_from(self.current_index(), self.hosts.len())
    }

    /// Try the hosts in [`Targets::rotation`] order (all of them, starting at
    /// the first, when `from_start`) and return the first that is usable,
    /// making it the one in use, with an open connection to it. `None` when
    /// none is (all down, or all standbys).
    pub async fn find(&self, from_start: bool) -> Option<(usize, PgConnection)> {
        let order = if from_start {
            (0..self.hosts.len()).collect()
        } else {
            self.rotation()
        };
        for index in order {
            let options = &self.hosts[index];
            let probe = async {
                let mut conn = connect_to_server(options).await?;
                let usable = !self.read_write || !in_recovery(&mut conn).await?;
                Ok::<_, sqlx::Error>(usable.then_some(conn))
            };
            match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(Some(conn))) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Some((index, conn));
                }
                Ok(Ok(None)) => {
                    tracing::debug!(host = %describe(options), "PostgreSQL host is a standby")
                }
                Ok(Err(e)) => {
                    tracing::debug!(host = %describe(options), "PostgreSQL host refused: {e}")
                }
                Err(_) => tracing::debug!(host = %describe(options), "PostgreSQL host timed out"),
            }
        }
        None
    }
}

/// A connection to the server of `options`: to its database, or, when that
/// does not exist yet (3D000: `idem run` creates it on the primary it
/// picks), to the `postgres` database of the same server.
async fn connect_to_server(options: &PgConnectOptions) -> Result<PgConnection, sqlx::Error> {
    match PgConnection::connect_with(options).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            PgConnection::connect_with(&options.clone().database("postgres")).await
        }
        other => other,
    }
}

/// `host:port` of `options`, for logs (never credentials).
pub fn describe(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

/// Whether the server of `conn` is in recovery (a standby, or a primary
/// being demoted): it cannot take writes.
pub async fn in_recovery(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(conn)
        .await
}

/// Whether `conn` may be handed out again: its server is not in recovery and
/// its session would not start a read-only transaction (the cause of SQLSTATE
/// 25006: a fenced or demoted primary, or a pooler now pointing at a standby).
pub async fn writable(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT (pg_is_in_recovery() OR current_setting('transaction_read_only')::bool)",
    )
    .fetch_one(conn)
    .await
}

fn rotation_from(current: usize, len: usize) -> Vec<usize> {
    (1..=len).map(|step| (current + step) % len).collect()
}

/// The URL without `target_session_attrs`, and whether it asks for a
/// read-write server (the default).
fn take_session_attrs(url: &str) -> Result<(String, bool), TargetsError> {
    let Some((head, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), true));
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let mut read_write = true;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => {
                read_write = match value {
                    "read-write" | "primary" => true,
                    "any" => false,
                    other => return Err(TargetsError::SessionAttrs(other.to_owned())),
                }
            }
            _ => kept.push(pair),
        }
    }
    let mut out = head.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Ok((out, read_write))
}

/// When `url` names several hosts: the URL with the host list replaced by
/// one placeholder host (so a one-host parser reads the rest), and the list.
pub(crate) fn split_hosts(url: &str) -> Option<(String, String)> {
    let scheme_end = url.find("://")? + 3;
    let rest = &url[scheme_end..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let hosts_start = authority.rfind('@').map_or(0, |at| at + 1);
    let list = &authority[hosts_start..];
    if !list.contains(',') {
        return None;
    }
    let start = scheme_end + hosts_start;
    let end = scheme_end + authority_len;
    let template = format!("{}{PLACEHOLDER}{}", &url[..start], &url[end..]);
    Some((template, list.to_owned()))
}

/// `url` with a host list (`h1:p1,h2:p2`) replaced by one placeholder host,
/// for checks written for one-host URLs (scheme, host present, no password
/// in the query); a one-host URL unchanged.
pub fn one_host_form(url: &str) -> String {
    split_hosts(url).map_or_else(|| url.to_owned(), |(template, _)| template)
}

/// Put the host list back into a URL made by [`split_hosts`] (after
/// redaction, which leaves the placeholder alone).
pub(crate) fn restore_hosts(template: &str, list: &str) -> String {
    template.replacen(PLACEHOLDER, list, 1)
}

/// `h1:5432,[::1]:5433,h3` → hosts and ports (a missing port: the default).
fn parse_host_list(list: &str) -> Result<Vec<(String, Option<u16>)>, TargetsError> {
    list.split(',')
        .map(|entry| {
            let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| TargetsError::BadPort(entry.to_owned()))?;
                (host, after.strip_prefix(':'))
            } else {
                match entry.rsplit_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (entry, None),
                }
            };
            if host.is_empty() {
                return Err(TargetsError::EmptyHost);
            }
            let port = port
                .map(|p| {
                    p.parse()
                        .map_err(|_| TargetsError::BadPort(entry.to_owned()))
                })
                .transpose()?;
            Ok((host.to_owned(), port))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hosts(targets: &Targets) -> Vec<String> {
        targets.hosts.iter().map(describe).collect()
    }

    #[test]
    fn several_hosts_share_everything_else() {
        let t = Targets::parse("postgres://u:pw@h1:5432,h2:5433,h3/db?sslmode=disable").unwrap();
        assert_eq!(hosts(&t), ["h1:5432", "h2:5433", "h3:5432"]);
        for options in &t.hosts {
            assert_eq!(options.get_username(), "u");
            assert_eq!(options.get_database(), Some("db"));
        }
        assert!(t.read_write());
    }

    #[test]
    fn one_host_is_one_target() {
        let t = Targets::parse("postgres://u@db.example:6543/idem").unwrap();
        assert_eq!(hosts(&t), ["db.example:6543"]);
        let t = Targets::parse("postgres://u@h/idem").unwrap();
        assert_eq!(hosts(&t), ["h:5432"]);
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets_apart() {
        let t = Targets::parse("postgres://u@[::1]:5433,127.0.0.1:5434/db").unwrap();
        assert_eq!(hosts(&t), ["::1:5433", "127.0.0.1:5434"]);
    }

    #[test]
    fn session_attrs_are_taken_out_of_the_query() {
        let (url, rw) =
            take_session_attrs("postgres://h/db?sslmode=disable&target_session_attrs=any").unwrap();
        assert_eq!(url, "postgres://h/db?sslmode=disable");
        assert!(!rw);
        let (url, rw) = take_session_attrs("postgres://h/db?target_session_attrs=primary").unwrap();
        assert_eq!(url, "postgres://h/db");
        assert!(rw);
        assert!(matches!(
            Targets::parse("postgres://h/db?target_session_attrs=standby"),
            Err(TargetsError::SessionAttrs(_))
        ));
    }

    #[test]
    fn bad_host_lists_are_refused() {
        assert!(matches!(
            Targets::parse("postgres://u@h1:x,h2/db"),
            Err(TargetsError::BadPort(_))
        ));
        assert!(matches!(
            Targets::parse("postgres://u@h1,,h2/db"),
            Err(TargetsError::EmptyHost)
        ));
    }

    #[test]
    fn rotation_starts_after_the_failed_host_and_ends_with_it() {
        assert_eq!(rotation_from(0, 3), [1, 2, 0]);
        assert_eq!(rotation_from(2, 3), [0, 1, 2]);
        assert_eq!(rotation_from(0, 1), [0]);
        let t = Targets::parse("postgres://h1,h2,h3/db").unwrap();
        t.current.store(1, Ordering::Relaxed);
        assert_eq!(t.rotation(), [2, 0, 1]);
        assert_eq!(describe(&t.current()), "h2:5432");
    }

    #[test]
    fn the_host_list_goes_back_after_redaction() {
        let (template, list) = split_hosts("postgres://u:pw@h1:1,h2:2/db?x=1").unwrap();
        assert_eq!(template, format!("postgres://u:pw@{PLACEHOLDER}/db?x=1"));
        assert_eq!(list, "h1:1,h2:2");
        assert_eq!(
            restore_hosts(&template, &list),
            "postgres://u:pw@h1:1,h2:2/db?x=1"
        );
        assert!(split_hosts("postgres://u@h1:1/db").is_none());
        assert!(url::Url::parse(&one_host_form("postgres://u@h1:1,h2:2/db")).is_ok());
        assert_eq!(one_host_form("postgres://u@h/db"), "postgres://u@h/db");
    }
}
