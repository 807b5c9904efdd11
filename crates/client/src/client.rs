//! The connection to the broker: publishing with confirms, and waiting for
//! a request's result over Direct Reply-To.

use std::time::Duration;

use futures_lite::StreamExt;
use idem_message::ScopeAuth;
use idem_periodic::endpoints::{self, AllFailed};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::outcome::{Kind, Outcome};
use crate::request::Request;

/// How long one endpoint gets to finish the AMQP handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// RabbitMQ's pseudo-queue for replies straight to this channel.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What can go wrong. Only [`Error::Refused`] is certain to have sent
/// nothing; after any other error the message may or may not be with the
/// broker, and the remedy is the same: publish the same request again (same
/// key), which idem deduplicates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// idem would quarantine this request; nothing was sent.
    #[error("request refused before publishing ({code}): {0}", code = .0.code())]
    Refused(idem_message::Rejection),
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to RabbitMQ: {0}")]
    Connect(#[source] lapin::Error),
    /// The broker took the connection but did not finish the handshake.
    #[error("cannot connect to RabbitMQ: no handshake within {0:?}")]
    ConnectTimeout(Duration),
    /// The channel failed while publishing or waiting.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the message (a `nack`): not stored; publish again.
    #[error("the broker did not accept the message (nack); publish it again")]
    Nacked,
    /// No queue of that name: the message was returned, not stored.
    #[error("no queue {queue} on the broker: the message was returned (is idem's queue declared?)")]
    Unroutable {
        /// The queue published to.
        queue: String,
    },
    /// No result within the time given. The request may still be charged;
    /// calling again with the same key gets its result. (If it never comes:
    /// idem may have quarantined it — a key conflict, a deployment rule this
    /// client cannot see — or its `IDEM_REPLY_TO_ALLOW` refuses Direct
    /// Reply-To; the results exchange still has the result.)
    #[error(
        "no result within {0:?}: call again with the same key for it (if none ever comes, look for the key in idem's quarantine, or at the deployment's IDEM_REPLY_TO_ALLOW)"
    )]
    Timeout(Duration),
    /// A reply that is not a result event this client reads.
    #[error("unreadable reply: {0}")]
    BadReply(String),
}

/// A request the broker confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The charge's idempotency key at the provider, UUIDv5 over (scope, key).
    pub reference_id: Uuid,
    /// The correlation id it carried, if any.
    pub correlation_id: Option<String>,
}

/// One connection and one channel (publisher confirms on) to the broker,
/// publishing to idem's work queue. [`Client::call`]s are served one at a
/// time (they share the channel's reply consumer; each call's timeout
/// counts its wait for the others); publishes run freely. A client does not
/// reconnect: after an [`Error::Broker`], make a new one.
pub struct Client {
    /// Kept open for the channel's life.
    _connection: Connection,
    channel: Channel,
    queue: String,
    /// The broker user of the URL, sent as `user_id`.
    user: Option<String>,
    /// The deployment's scope rules, for the reference id and the check.
    auth: ScopeAuth,
    /// The channel's Direct Reply-To consumer, started by the first call.
    replies: Mutex<Option<Consumer>>,
}

/// One endpoint, within [`CONNECT_TIMEOUT`]: a node that takes the TCP
/// connection and never answers the handshake must not hold the caller.
async fn connect_one(url: &str) -> Result<Connection, Error> {
    let connect = Connection::connect(url, ConnectionProperties::default());
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(connected) => connected.map_err(Error::Connect),
        Err(_) => Err(Error::ConnectTimeout(CONNECT_TIMEOUT)),
    }
}

/// An endpoint as logs may show it: host and port, never the credentials.
fn host_of(url: &str) -> String {
    url.parse::<AMQPUri>().map_or_else(
        |_| "<unparseable AMQP URL>".to_owned(),
        |u| format!("{}:{}", u.authority.host, u.authority.port),
    )
}

impl Client {
    /// Connect to `amqp_url` (`amqp://` or `amqps://`) to publish to
    /// `queue` (idem's `IDEM_QUEUE`, `idem.charges` by default). Like
    /// `IDEM_AMQP_URL`, `amqp_url` may name several nodes of one cluster,
    /// comma-separated: the first to answer, from a random one on, is used
    /// (the client does not move to another node by itself later).
    pub async fn connect(amqp_url: &str, queue: &str) -> Result<Self, Error> {
        let (connection, endpoint) = endpoints::first_answering(amqp_url, host_of, connect_one)
            .await
            .map_err(AllFailed::into_last)?;
        let user = endpoint
            .parse::<AMQPUri>()
            .ok()
            .map(|u| u.authority.userinfo.username)
            .filter(|u| !u.is_empty());
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            _connection: connection,
            channel,
            queue: queue.to_owned(),
            user,
            auth: ScopeAuth::Open,
            replies: Mutex::new(None),
        })
    }

    /// The deployment's scope rules (`IDEM_SCOPE_AUTH`; open by default),
    /// so that requests are checked, and their reference ids computed, as
    /// that deployment will.
    pub fn with_scope_auth(mut self, auth: ScopeAuth) -> Self {
        self.auth = auth;
        self
    }

    fn check(&self, request: &Request) -> Result<Uuid, Error> {
        request
            .check_as(&self.auth, self.user.as_deref())
            .map_err(Error::Refused)
    }

    /// Validate `request` and publish it, persistent, `mandatory`, and wait
    /// for the broker's confirm. `Ok` means the broker holds it: idem will
    /// decide it and lose nothing — charge it at most once however often it
    /// is published again, or, for what this client cannot check (a key
    /// already used with another payload, a deployment's smaller body
    /// limit), quarantine it with the reason.
    pub async fn publish(&self, request: &Request) -> Result<Published, Error> {
        let reference_id = self.check(request)?;
        self.send(request).await?;
        Ok(Published {
            reference_id,
            correlation_id: request.correlation_id.clone(),
        })
    }

    /// Publish `request` with its reply sent straight to this channel, and
    /// wait at most `timeout` (in all) for its result. The request's own
    /// `reply_to` is replaced by Direct Reply-To; a correlation id is made
    /// up when it has none; replies to earlier calls that timed out are
    /// skipped. Calling again with the same key after a timeout is the way
    /// to get the result: idem answers a duplicate with the stored one.
    pub async fn call(&self, request: &Request, timeout: Duration) -> Result<Outcome, Error> {
        let mut request = request.clone();
        let correlation = request
            .correlation_id
            .get_or_insert_with(|| Uuid::new_v4().to_string())
            .clone();
        request.reply_to = Some(DIRECT_REPLY_TO.to_owned());
        self.check(&request)?;
        tokio::time::timeout(timeout, self.call_checked(&request, &correlation))
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    async fn call_checked(&self, request: &Request, correlation: &str) -> Result<Outcome, Error> {
        let mut replies = self.replies.lock().await;
        if replies.is_none() {
            // Direct Reply-To: consume (no ack) before the first publish
            // that names it, on the channel that publishes.
            let consumer = self
                .channel
                .basic_consume(
                    DIRECT_REPLY_TO.into(),
                    "idem-client-replies".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            *replies = Some(consumer);
        }
        let consumer = replies
            .as_mut()
            .ok_or_else(|| Error::BadReply("no reply consumer".into()))?;
        self.send(request).await?;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            let matches = delivery
                .properties
                .correlation_id()
                .as_ref()
                .is_some_and(|c| c.as_str() == correlation);
            if !matches {
                continue;
            }
            let kind = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| match h.inner().get("x-idem-kind") {
                    Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
                    Some(AMQPValue::ShortString(s)) => Some(s.as_str()),
                    _ => None,
                })
                .map(str::to_owned);
            return Outcome::parse(&delivery.data, Kind::of(kind.as_deref()))
                .map_err(Error::BadReply);
        }
        Err(Error::BadReply("the reply consumer ended".into()))
    }

    async fn send(&self, request: &Request) -> Result<(), Error> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &request.body,
                request.properties(self.user.as_deref()),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(Error::Unroutable {
                queue: self.queue.clone(),
            }),
            Confirmation::Nack(_) => Err(Error::Nacked),
            // Confirms are selected at connect; a channel without them is
            // not one this client made.
            Confirmation::NotRequested => Err(Error::Nacked),
        }
    }
}
