//! What a delivery must satisfy to be recorded: the body size limit, the
//! scope rule and the `reply_to` rule (`docs/contracts.md#tenants`), in one
//! value every way of recording a batch takes by reference, so the set-based
//! path, the message-by-message path and the dead-letter drain decide alike.
//!
//! **Why the `reply_to` check is here, at intake, and not in the result
//! publisher** (`idem_events`), which is where the address is used: intake is
//! where the scope is known (derived from this delivery's `user_id` and
//! `app_id`) and where these settings live (the consumer's). A refused
//! address is dropped from the request before anything is written, so no
//! outbox row, owed reply or result event ever holds it, and the publisher
//! stays a dumb sender of what the database says. Checked at publish time
//! instead, the outcome would depend on the settings of whichever replica
//! publishes (dispatcher-only replicas have no inbox settings), a row written
//! under one setting would be judged under another, and the refusal would
//! surface far from the producer that caused it. Results owed before the
//! setting changed keep their address.

use idem_message::{ChargeRequest, Rejection, ReplyToAllow, ScopeAuth};
use lapin::BasicProperties;

use crate::decision::{Decision, Incoming};
use crate::raw::Limits;
use crate::{delivery, limits, metrics};

/// The rules a delivery is admitted by. Cheap to share by reference; clone
/// it into each consumer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Body size limit in bytes; larger bodies are quarantined.
    max_body: usize,
    /// How the scope is authenticated.
    scope: ScopeAuth,
    /// Which queues a scope may have its results replied to.
    reply_to: ReplyToAllow,
    /// The work queue: it and every `<queue>.…` name (its dead-letter queue,
    /// …) are never a reply target under patterns, whatever they say, so a
    /// producer cannot feed result events back into idem's own queues.
    work_queue: Option<String>,
}

impl Admission {
    /// Rules for a consumer of `work_queue`.
    pub fn new(
        max_body: usize,
        scope: ScopeAuth,
        reply_to: ReplyToAllow,
        work_queue: &str,
    ) -> Self {
        Self {
            max_body,
            scope,
            reply_to,
            work_queue: Some(work_queue.to_owned()),
        }
    }

    /// Any scope, any `reply_to`: the rules before tenancy, with this body
    /// limit (benchmarks, tests of the data path).
    pub fn open(max_body: usize) -> Self {
        Self {
            max_body,
            scope: ScopeAuth::Open,
            reply_to: ReplyToAllow::Any,
            work_queue: None,
        }
    }

    /// Body size limit in bytes.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// How the scope is authenticated.
    pub fn scope_auth(&self) -> &ScopeAuth {
        &self.scope
    }

    /// Which queues a scope may have its results replied to.
    pub fn reply_to_allow(&self) -> &ReplyToAllow {
        &self.reply_to
    }

    /// Validate `item` into a request, or the reason to quarantine it. A
    /// `reply_to` the rules refuse is dropped: the charge and its result on
    /// the results exchange go ahead, only the reply is not sent. Pure, so a
    /// batch retried after a failed transaction decides the same again;
    /// [`Admission::report_refused_replies`] counts after the commit.
    pub fn admit(&self, item: &Incoming<'_>) -> Result<ChargeRequest, Rejection> {
        // First, as idem's own reader refuses such a header before anything
        // else: the decision never depends on which reader took the message.
        if let Some(headers) = item.properties.headers() {
            limits::check_headers(headers, &Limits::DEFAULT).map_err(Rejection::HeaderLimits)?;
        }
        let mut request = delivery::inbound(item.properties, item.body).parse_as(
            self.max_body,
            &self.scope,
            user_id(item.properties),
        )?;
        if let Some(reply_to) = &request.reply_to
            && self.refuses(request.scope(), reply_to)
        {
            request.reply_to = None;
        }
        Ok(request)
    }

    /// Whether a message of `scope` may not have its result sent to `reply_to`.
    fn refuses(&self, scope: &str, reply_to: &str) -> bool {
        if self.reply_to == ReplyToAllow::Any {
            return false;
        }
        let own = self.work_queue.as_deref().is_some_and(|q| {
            reply_to == q || reply_to.strip_prefix(q).is_some_and(|r| r.starts_with('.'))
        });
        own || !self.reply_to.allows(scope, reply_to)
    }

    /// The `reply_to` that [`Admission::admit`] dropped from `item`, if it
    /// did (`None` also for a delivery it refused altogether).
    pub fn refused_reply_to<'a>(&self, item: &Incoming<'a>) -> Option<&'a str> {
        let properties: &'a BasicProperties = item.properties;
        let reply_to = properties
            .reply_to()
            .as_ref()
            .map(|r| r.as_str())
            .filter(|r| !r.is_empty())?;
        let app_id = properties.app_id().as_ref().map(|a| a.as_str());
        let scope = self.scope.scope(user_id(properties), app_id).ok()?;
        self.refuses(scope, reply_to).then_some(reply_to)
    }

    /// After the commit that recorded `items` as `decisions`: count and log
    /// each refused `reply_to` of a charge or duplicate (whose result would
    /// have been replied), once per committed delivery.
    pub fn report_refused_replies(&self, items: &[Incoming<'_>], decisions: &[Decision]) {
        if self.reply_to == ReplyToAllow::Any {
            return;
        }
        for (item, decision) in items.iter().zip(decisions) {
            if !matches!(decision, Decision::New { .. } | Decision::Duplicate) {
                continue;
            }
            let Some(reply_to) = self.refused_reply_to(item) else {
                continue;
            };
            ::metrics::counter!(metrics::REPLY_TO_REFUSED).increment(1);
            let p = item.properties;
            // Producer bytes, Debug-formatted: escaped, never raw to a terminal.
            tracing::warn!(
                ?reply_to,
                app_id = ?p.app_id().as_ref().map(|a| a.as_str()),
                user_id = ?user_id(p),
                message_id = ?p.message_id().as_ref().map(|m| m.as_str()),
                allowed = %self.reply_to,
                "reply_to refused by IDEM_REPLY_TO_ALLOW: charged, result on the results exchange only"
            );
        }
    }
}

/// The broker-validated `user_id` property.
fn user_id(properties: &BasicProperties) -> Option<&str> {
    properties.user_id().as_ref().map(|u| u.as_str())
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
