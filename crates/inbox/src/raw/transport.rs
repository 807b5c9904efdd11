//! The byte stream under the raw client: plain TCP for `amqp://`, TLS for
//! `amqps://` with the same trust as lapin's (the system's roots, or
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`, through `rustls-native-certs`), so the
//! raw reader reaches every broker the consumer reaches.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::error::RawError;
use super::target::Target;

/// The reading half of a connection.
pub(super) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection.
pub(super) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Open the stream `target` names within `timeout` (TCP connect and TLS
/// handshake each).
pub(super) async fn open(
    target: &Target,
    timeout: Duration,
) -> Result<(ReadHalf, WriteHalf), RawError> {
    let tcp = tokio::time::timeout(
        timeout,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| RawError::Timeout(timeout))??;
    tcp.set_nodelay(true)?;
    if !target.tls {
        let (read, write) = tcp.into_split();
        return Ok((Box::new(read), Box::new(write)));
    }
    let name = ServerName::try_from(target.host.clone())
        .map_err(|_| RawError::Url(format!("{}: not a TLS server name", target.host)))?;
    let connector = tokio_rustls::TlsConnector::from(client_config()?);
    let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| RawError::Timeout(timeout))?
        .map_err(|e| RawError::Tls(e.to_string()))?;
    let (read, write) = tokio::io::split(tls);
    Ok((Box::new(read), Box::new(write)))
}

fn client_config() -> Result<Arc<rustls::ClientConfig>, RawError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), |e| e.to_string());
        return Err(RawError::Tls(format!(
            "no trusted CA certificates (system store, SSL_CERT_FILE, SSL_CERT_DIR): {why}"
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RawError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
