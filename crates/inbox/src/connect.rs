//! Reaching the broker: [`connect_amqp`] (lapin) and [`connect_raw`] (idem's
//! own reader) over every endpoint `IDEM_AMQP_URL` names, and
//! [`broker_waiting_helps`], which tells a broker that is away from settings
//! that are wrong.

use std::time::Duration;

use anyhow::Context;
use idem_periodic::endpoints;
use idem_store::redact_url;
use lapin::{Connection, ConnectionProperties};

use crate::raw;

/// Connect to the broker, or say clearly what to check. `list` is one URL or
/// several (the nodes of a cluster, `idem_periodic::endpoints`): the first to
/// answer, from a random one on. When none does, the error is one waiting
/// can fix unless every node refused for good
/// ([`endpoints::AllFailed::into_verdict`]), each node's cause shown before it.
pub async fn connect_amqp(list: &str) -> anyhow::Result<Connection> {
    match endpoints::first_answering(list, redact_url, connect_one).await {
        Ok((connection, _)) => Ok(connection),
        Err(failed) if failed.tried() == 1 => Err(failed.into_last()),
        Err(failed) => {
            let each = failed
                .others
                .iter()
                .chain([&failed.last])
                .map(|(shown, e)| format!("{shown}: {}", e.root_cause()))
                .collect::<Vec<_>>()
                .join("; ");
            let n = failed.tried();
            let error = failed.into_verdict(|e| !broker_waiting_helps(e));
            Err(error.context(format!(
                "none of the {n} endpoints of IDEM_AMQP_URL answered ({each})"
            )))
        }
    }
}

/// [`raw::Connection::connect_with`] over the endpoints of `list`, as
/// [`connect_amqp`] walks them.
pub(crate) async fn connect_raw(
    list: &str,
    options: raw::ConnectOptions,
) -> Result<raw::Connection, raw::RawError> {
    let connect = |url| raw::Connection::connect_with(url, options.clone());
    match endpoints::first_answering(list, redact_url, connect).await {
        Ok((connection, _)) => Ok(connection),
        Err(failed) => Err(failed.into_verdict(|e| !e.is_transient())),
    }
}

async fn connect_one(url: &str) -> anyhow::Result<Connection> {
    let shown = redact_url(url);
    let connect = Connection::connect(url, ConnectionProperties::default());
    match tokio::time::timeout(Duration::from_secs(15), connect).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(e).with_context(|| broker_hint(&shown)),
        Err(_) => Err(ConnectTimedOut {
            hint: broker_hint(&shown),
        }
        .into()),
    }
}

fn broker_hint(shown: &str) -> String {
    format!(
        "cannot connect to RabbitMQ at {shown}: check that the broker is running and reachable, \
         and that IDEM_AMQP_URL (or --amqp-url) has the right host, port, credentials and vhost \
         (amqps://: the broker's certificate must be issued for that host by a CA in the system \
         store, or in SSL_CERT_FILE)"
    )
}

/// Whether a failed session's error is one waiting can fix: the broker is
/// away, restarting or closing connections (`CONNECTION_FORCED`), or cut the
/// connection. Refused credentials or vhost, a queue declared with other
/// arguments, an unknown host and a certificate that does not verify are not.
pub(crate) fn broker_waiting_helps(error: &anyhow::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    error.chain().any(|cause| {
        if cause.downcast_ref::<ConnectTimedOut>().is_some() {
            return true;
        }
        let Some(e) = cause.downcast_ref::<lapin::Error>() else {
            return false;
        };
        match e.kind() {
            lapin::ErrorKind::IOError(io) => idem_store::outage::io_waiting_helps(io),
            lapin::ErrorKind::InvalidConnectionState(_)
            | lapin::ErrorKind::InvalidChannelState(..)
            | lapin::ErrorKind::MissingHeartbeatError => true,
            lapin::ErrorKind::ProtocolError(amqp) => matches!(
                amqp.kind(),
                AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED)
                    | AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR)
                    | AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)
            ),
            _ => false,
        }
    })
}

/// The broker did not finish the AMQP handshake in time.
#[derive(Debug, thiserror::Error)]
#[error("{hint}: timed out after 15 s")]
struct ConnectTimedOut {
    hint: String,
}
