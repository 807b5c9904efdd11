//! Where and as whom to connect, from an `amqp://` or `amqps://` URL.

use percent_encoding::percent_decode_str;
use url::Url;

use super::error::RawError;

/// Host, port, credentials and vhost, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Percent-decoded; bytes, since PLAIN sends them as such.
    pub user: Vec<u8>,
    pub password: Vec<u8>,
    /// The path after the first `/`, percent-decoded (`%2f` is `/`); `/` when absent.
    pub vhost: Vec<u8>,
    /// `amqps://`: TLS to `host`, verified against the trusted roots.
    pub tls: bool,
}

impl Target {
    /// The URL itself is never echoed: it may hold a password.
    pub fn parse(url: &str) -> Result<Self, RawError> {
        let parsed = Url::parse(url).map_err(|e| RawError::Url(format!("not a URL: {e}")))?;
        let tls = match parsed.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => {
                return Err(RawError::Url(format!(
                    "scheme {other}: expected amqp or amqps"
                )));
            }
        };
        let decode = |s: &str| percent_decode_str(s).collect::<Vec<u8>>();
        let user = match parsed.username() {
            "" => b"guest".to_vec(),
            name => decode(name),
        };
        let password = parsed.password().map_or_else(|| b"guest".to_vec(), decode);
        let vhost = match parsed.path() {
            "" | "/" => b"/".to_vec(),
            path => decode(&path[1..]),
        };
        Ok(Self {
            // `host_str` keeps an IPv6 literal's brackets; a socket address wants none.
            host: parsed
                .host_str()
                .unwrap_or("localhost")
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: parsed.port().unwrap_or(if tls { 5671 } else { 5672 }),
            user,
            password,
            vhost,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn user_password_and_vhost_are_percent_decoded() {
        let t = Target::parse("amqp://us%40er:p%3Ass@rabbit:5673/%2f").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("rabbit", 5673));
        assert_eq!(
            (&t.user[..], &t.password[..], &t.vhost[..]),
            (&b"us@er"[..], &b"p:ss"[..], &b"/"[..])
        );
        let t = Target::parse("amqp://localhost").unwrap();
        assert_eq!(
            (&t.user[..], &t.vhost[..], t.port),
            (&b"guest"[..], &b"/"[..], 5672)
        );
        assert_eq!(Target::parse("amqp://h/prod").unwrap().vhost, b"prod");
        assert_eq!(Target::parse("amqp://[::1]:5672/").unwrap().host, "::1");
    }

    #[test]
    fn amqps_means_tls_on_5671_and_other_schemes_are_refused_without_echoing_the_url() {
        let t = Target::parse("amqps://u:secret@h/").unwrap();
        assert!(t.tls && t.port == 5671);
        assert!(!Target::parse("amqp://h/").unwrap().tls);
        let err = Target::parse("http://u:secret@h/").unwrap_err().to_string();
        assert!(err.contains("http") && !err.contains("secret"), "{err}");
    }
}
