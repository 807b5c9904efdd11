//! A charge request: the producer's key, scope and body, checked by idem's
//! own rules, and the AMQP properties idem's contract asks for.

use std::time::{SystemTime, UNIX_EPOCH};

use idem_message::{Inbound, Rejection, ScopeAuth};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use uuid::Uuid;

/// The most bytes of body idem accepts by default (`IDEM_MAX_BODY_BYTES`);
/// a deployment may allow less, and idem quarantines what it refuses.
pub const MAX_BODY: usize = 1 << 20;

/// One charge request. Build it with [`Request::new`] and the setters;
/// [`Request::check`] (called by every publish) applies idem's validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub(crate) key: String,
    pub(crate) scope: Option<String>,
    pub(crate) body: Vec<u8>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) reply_to: Option<String>,
    pub(crate) traceparent: Option<String>,
}

impl Request {
    /// A request with idempotency key `key` (the AMQP `message_id`: publish
    /// the same key again for a retry, never a new one) and JSON `body`
    /// (`{"account_id", "amount", "currency", "description"?}`).
    pub fn new(key: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            scope: None,
            body: body.into(),
            correlation_id: None,
            reply_to: None,
            traceparent: None,
        }
    }

    /// The key's scope (the AMQP `app_id`; without it, `default`). Two
    /// scopes never share a key.
    pub fn in_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Echoed on the result event (a [`crate::Client::call`] sets its own
    /// when there is none).
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// A queue that gets the result event too (if `IDEM_REPLY_TO_ALLOW`
    /// allows it for the scope).
    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.reply_to = Some(queue.into());
        self
    }

    /// W3C trace context, carried to the provider call.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Validate as idem will under its default scope rules
    /// (`IDEM_SCOPE_AUTH=open`; key, scope, body, reply_to, correlation_id;
    /// bodies up to [`MAX_BODY`]) and return the charge's reference id: the
    /// idempotency key idem sends the provider, UUIDv5 over (scope, key).
    pub fn check(&self) -> Result<Uuid, Rejection> {
        self.check_as(&ScopeAuth::Open, None)
    }

    /// [`Request::check`] under the deployment's scope rules `auth`
    /// (`IDEM_SCOPE_AUTH`), publishing as broker user `user_id`: under
    /// `user_id` the scope is the user, under `allow_list` the scope must be
    /// listed for it; the reference id is computed from the scope idem will
    /// use. What it cannot see: a deployment's smaller `IDEM_MAX_BODY_BYTES`,
    /// and a key already used with another payload (a conflict).
    pub fn check_as(&self, auth: &ScopeAuth, user_id: Option<&str>) -> Result<Uuid, Rejection> {
        let parsed = Inbound {
            message_id: Some(&self.key),
            app_id: self.scope.as_deref(),
            content_type: Some("application/json"),
            reply_to: self.reply_to.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            traceparent: self.traceparent.as_deref(),
            body: &self.body,
        }
        .parse_as(MAX_BODY, auth, user_id)?;
        Ok(parsed.reference_id())
    }

    /// The AMQP properties: persistent JSON, the key, the scope, the broker
    /// user publishing (`user_id`, which RabbitMQ checks against the
    /// connection: the scope's proof under `IDEM_SCOPE_AUTH=user_id` or
    /// `allow_list`), stamped now (the `timestamp` idem's publish → recorded
    /// lag reads), the correlation id, the reply queue and the trace context.
    pub(crate) fn properties(&self, user_id: Option<&str>) -> BasicProperties {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut p = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(self.key.as_str().into())
            .with_timestamp(now);
        if let Some(scope) = &self.scope {
            p = p.with_app_id(scope.as_str().into());
        }
        if let Some(user) = user_id {
            p = p.with_user_id(user.into());
        }
        if let Some(c) = &self.correlation_id {
            p = p.with_correlation_id(c.as_str().into());
        }
        if let Some(r) = &self.reply_to {
            p = p.with_reply_to(r.as_str().into());
        }
        if let Some(t) = &self.traceparent {
            let mut headers = FieldTable::default();
            headers.insert(
                ShortString::from("traceparent"),
                AMQPValue::LongString(t.as_str().into()),
            );
            p = p.with_headers(headers);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"account_id":"acc_1","amount":1250,"currency":"EUR"}"#;

    #[test]
    fn a_request_is_refused_here_for_what_idem_would_quarantine() {
        let ok = Request::new("order-1", BODY).in_scope("shop-a");
        assert_eq!(
            ok.check(),
            Ok(idem_message::reference_id("shop-a", "order-1"))
        );
        let no_key = Request::new("", BODY);
        assert_eq!(no_key.check(), Err(Rejection::MissingMessageId));
        let bad = Request::new(
            "order-2",
            &br#"{"account_id":"a","amount":0,"currency":"EUR"}"#[..],
        );
        assert_eq!(bad.check().map_err(|r| r.code()), Err("schema"));
        let not_json = Request::new("order-3", &b"amount=1"[..]);
        assert_eq!(not_json.check().map_err(|r| r.code()), Err("not_json"));
        let long_scope = Request::new("order-4", BODY).in_scope("s".repeat(256));
        assert!(long_scope.check().is_err());
    }

    #[test]
    fn the_properties_are_the_contracts() {
        let p = Request::new("order-1", BODY)
            .in_scope("shop-a")
            .correlation_id("c-1")
            .reply_to("shop-a.replies")
            .properties(Some("alice"));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("order-1"));
        assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("shop-a"));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("c-1"));
        assert_eq!(
            p.reply_to().as_ref().map(|s| s.as_str()),
            Some("shop-a.replies")
        );
        assert!(p.timestamp().is_some_and(|t| t > 1_700_000_000));
        assert_eq!(p.user_id().as_ref().map(|s| s.as_str()), Some("alice"));
        // Without a scope there is no app_id: idem's default scope.
        let bare = Request::new("k", BODY).properties(None);
        assert_eq!((bare.app_id(), bare.user_id()), (&None, &None));
    }

    #[test]
    fn the_reference_id_follows_the_deployments_scope_rules() {
        let r = Request::new("order-1", BODY).in_scope("shop-a");
        // Under user_id the scope is the broker user; another app_id is refused.
        assert_eq!(
            Request::new("order-1", BODY).check_as(&ScopeAuth::UserId, Some("alice")),
            Ok(idem_message::reference_id("alice", "order-1"))
        );
        assert!(r.check_as(&ScopeAuth::UserId, Some("alice")).is_err());
        assert!(r.check_as(&ScopeAuth::UserId, None).is_err());
    }
}
