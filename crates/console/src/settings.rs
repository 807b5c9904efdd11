//! What a console is started with, validated once: a console reachable from
//! other hosts without a token would hand anyone on the network the retry
//! and resolve buttons, so that configuration is refused at start.

use std::fmt;
use std::net::SocketAddr;

use url::Url;

/// The shortest token accepted: shorter ones can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// The console's access token. Its `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token's bytes, for the guard's comparisons.
    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where replays are published: the broker and the work queue.
#[derive(Clone)]
pub struct Replay {
    /// The broker's URL (a credential: never printed).
    pub amqp_url: String,
    /// The work queue.
    pub queue: String,
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// A console's validated settings. Built by [`Settings::new`] only.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None`: only loopback clients, and no login.
    pub(crate) token: Option<Token>,
    /// Pages only: every change is refused.
    pub(crate) read_only: bool,
    /// The `/metrics` of the replicas whose breaker and broker session the
    /// overview shows.
    pub(crate) replicas: Vec<Url>,
    /// `None`: replays are refused, saying which settings they need.
    pub(crate) replay: Option<Replay>,
}

/// A console configuration that must not start, and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSettings {
    /// Off loopback without a token.
    #[error(
        "{variable} {addr} is reachable from other hosts, and the console there would let anyone \
         retry or resolve charges: set IDEM_CONSOLE_TOKEN (or IDEM_CONSOLE_TOKEN_FILE) to a secret \
         of at least {MIN_TOKEN_LEN} characters, or listen on 127.0.0.1"
    )]
    NeedsToken {
        /// The listener's variable.
        variable: &'static str,
        /// Its address.
        addr: SocketAddr,
    },
    /// A guessable token.
    #[error(
        "IDEM_CONSOLE_TOKEN is {len} characters; it needs at least {MIN_TOKEN_LEN} (e.g. `openssl \
         rand -hex 32`)"
    )]
    ShortToken {
        /// Its length.
        len: usize,
    },
    /// A replica address that is no URL.
    #[error(
        "IDEM_CONSOLE_REPLICAS: {given:?} is not an http(s) URL of a replica's metrics (e.g. \
         http://10.0.0.5:9464/metrics): {why}"
    )]
    BadReplica {
        /// As given.
        given: String,
        /// Why not.
        why: String,
    },
}

impl Settings {
    /// Validate: `listen` (named by `variable` in errors) off loopback needs
    /// a `token` of at least [`MIN_TOKEN_LEN`]; `replicas` are http(s) URLs.
    pub fn new(
        variable: &'static str,
        listen: SocketAddr,
        token: Option<String>,
        read_only: bool,
        replicas: &[String],
        replay: Option<Replay>,
    ) -> Result<Self, BadSettings> {
        // Surrounding whitespace is a file's newline, not part of the secret.
        let token = token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        if let Some(t) = &token
            && t.chars().count() < MIN_TOKEN_LEN
        {
            return Err(BadSettings::ShortToken {
                len: t.chars().count(),
            });
        }
        if token.is_none() && !listen.ip().is_loopback() {
            return Err(BadSettings::NeedsToken {
                variable,
                addr: listen,
            });
        }
        let replicas = replicas
            .iter()
            .filter(|r| !r.trim().is_empty())
            .map(|r| parse_replica(r.trim()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            token: token.map(Token),
            read_only,
            replicas,
            replay,
        })
    }

    /// Add this process's own replica (`idem run --console`): its metrics
    /// on `listen`, through loopback when it listens on every address.
    pub fn with_own_replica(mut self, listen: SocketAddr) -> Self {
        let mut addr = listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        if let Ok(url) = Url::parse(&format!("http://{addr}/metrics"))
            && !self.replicas.contains(&url)
        {
            self.replicas.insert(0, url);
        }
        self
    }
}

fn parse_replica(given: &str) -> Result<Url, BadSettings> {
    let bad = |why: String| BadSettings::BadReplica {
        given: given.to_owned(),
        why,
    };
    let url = Url::parse(given).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("only http:// and https:// with a host".to_owned()));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_console_off_loopback_needs_a_long_enough_token() {
        let open = Settings::new(
            "IDEM_CONSOLE_ADDR",
            addr("0.0.0.0:9465"),
            None,
            false,
            &[],
            None,
        );
        let e = open.expect_err("no token off loopback").to_string();
        assert!(e.contains("IDEM_CONSOLE_ADDR 0.0.0.0:9465"), "{e}");
        assert!(e.contains("IDEM_CONSOLE_TOKEN_FILE"), "{e}");
        let short = Settings::new(
            "IDEM_CONSOLE_ADDR",
            addr("0.0.0.0:9465"),
            Some("short".into()),
            false,
            &[],
            None,
        );
        assert_eq!(
            short.expect_err("short"),
            BadSettings::ShortToken { len: 5 }
        );
        let ok = Settings::new(
            "IDEM_CONSOLE_ADDR",
            addr("0.0.0.0:9465"),
            Some(" 0123456789abcdef\n".into()),
            false,
            &[],
            None,
        )
        .expect("a token");
        assert_eq!(
            ok.token.as_ref().map(Token::expose),
            Some(&b"0123456789abcdef"[..])
        );
        assert!(!format!("{ok:?}").contains("0123456789abcdef"));
        let local = Settings::new(
            "IDEM_CONSOLE_ADDR",
            addr("127.0.0.1:9465"),
            Some(String::new()),
            false,
            &[],
            None,
        )
        .expect("loopback needs no token");
        assert!(local.token.is_none());
        Settings::new("IDEM_HTTP_ADDR", addr("[::1]:9465"), None, false, &[], None)
            .expect("IPv6 loopback");
    }

    #[test]
    fn replicas_are_http_urls_and_the_own_one_goes_through_loopback() {
        let bad = Settings::new(
            "IDEM_CONSOLE_ADDR",
            addr("127.0.0.1:1"),
            None,
            false,
            &["file:///etc/passwd".into()],
            None,
        );
        assert!(matches!(bad, Err(BadSettings::BadReplica { .. })));
        let s = Settings::new(
            "IDEM_CONSOLE_ADDR",
            addr("127.0.0.1:1"),
            None,
            false,
            &["http://10.0.0.5:9464/metrics".into(), " ".into()],
            None,
        )
        .expect("settings")
        .with_own_replica(addr("0.0.0.0:9464"));
        let urls: Vec<_> = s.replicas.iter().map(Url::as_str).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:9464/metrics",
                "http://10.0.0.5:9464/metrics"
            ]
        );
    }
}
