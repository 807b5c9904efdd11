//! A delivery's raw parts, and their validation into a charge request.
//!
//! Validation never panics and never loses the input: a [`Rejection`] carries a
//! stable machine code and a human reason, and the caller stores both with the
//! raw bytes in quarantine.

use serde::Deserialize;
use uuid::Uuid;

use crate::identity::{fingerprint, reference_id};
use crate::rejection::{Rejection, check_key};
use crate::tenancy::ScopeAuth;

const MAX_ACCOUNT_LEN: usize = 255;
const MAX_DESCRIPTION_LEN: usize = 1024;

/// The parts of an AMQP delivery that idem reads, borrowed from the delivery.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inbound<'a> {
    /// Property `message_id`: the producer's idempotency key.
    pub message_id: Option<&'a str>,
    /// Property `app_id`: the key's scope.
    pub app_id: Option<&'a str>,
    /// Property `content_type`; absent means JSON.
    pub content_type: Option<&'a str>,
    /// Property `reply_to`: where to send the result event.
    pub reply_to: Option<&'a str>,
    /// Property `correlation_id`, echoed on the result event.
    pub correlation_id: Option<&'a str>,
    /// Header `traceparent` (W3C trace context).
    pub traceparent: Option<&'a str>,
    /// The raw body.
    pub body: &'a [u8],
}

/// The JSON body of a charge message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeBody {
    /// The account to charge.
    pub account_id: String,
    /// Amount in minor units, > 0.
    pub amount: i64,
    /// ISO 4217 code: three upper-case ASCII letters.
    pub currency: String,
    /// Free text, not part of the fingerprint.
    #[serde(default)]
    pub description: Option<String>,
}

/// A validated message, ready to be recorded. Only [`Inbound::parse`] makes
/// one, and the key, the body and the values derived from them are read-only:
/// no crate can hold a request whose fingerprint or reference id does not
/// match its key and body.
///
/// ```compile_fail,E0616
/// # fn retarget(request: &mut idem_message::ChargeRequest) {
/// request.reference_id = uuid::Uuid::nil(); // private: does not compile
/// # }
/// ```
/// ```compile_fail,E0616
/// # fn rescope(request: &mut idem_message::ChargeRequest) {
/// request.scope = "other-tenant".to_owned(); // private: does not compile
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Dedup scope (`app_id`, or [`DEFAULT_SCOPE`]).
    scope: String,
    /// The producer's idempotency key.
    message_id: String,
    /// The business fields.
    body: ChargeBody,
    /// SHA-256 of the business fields.
    fingerprint: [u8; 32],
    /// UUIDv5 over (scope, message_id): the provider's idempotency key.
    reference_id: Uuid,
    /// Where to publish the result event, if anywhere.
    pub reply_to: Option<String>,
    /// Echoed on the result event.
    pub correlation_id: Option<String>,
    /// W3C trace context to carry to the provider call.
    pub traceparent: Option<String>,
}

impl ChargeRequest {
    /// Dedup scope (`app_id`, or [`DEFAULT_SCOPE`]).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The producer's idempotency key.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// The business fields.
    pub fn body(&self) -> &ChargeBody {
        &self.body
    }

    /// SHA-256 of the business fields ([`fingerprint`]).
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// UUIDv5 over (scope, message_id) ([`reference_id`]): the provider's
    /// idempotency key.
    pub fn reference_id(&self) -> Uuid {
        self.reference_id
    }
}

impl Inbound<'_> {
    /// Validate into a [`ChargeRequest`] with an unchecked scope
    /// ([`ScopeAuth::Open`]); `max_body` is the size limit in bytes.
    pub fn parse(&self, max_body: usize) -> Result<ChargeRequest, Rejection> {
        self.parse_as(max_body, &ScopeAuth::Open, None)
    }

    /// Validate into a [`ChargeRequest`] whose scope `auth` derives from the
    /// broker-validated `user_id` property and `app_id`; the scope is checked
    /// right after the key's own parts, before anything in the body.
    /// `user_id` is not part of [`Inbound`] so that every caller that builds
    /// one by hand (fuzzers, tests) keeps compiling: only the inbox knows
    /// whether the broker validated it.
    pub fn parse_as(
        &self,
        max_body: usize,
        auth: &ScopeAuth,
        user_id: Option<&str>,
    ) -> Result<ChargeRequest, Rejection> {
        let message_id = match self.message_id {
            None | Some("") => return Err(Rejection::MissingMessageId),
            Some(id) => check_key("message_id", id)?,
        };
        let scope = auth.scope(user_id, self.app_id)?;
        if let Some(ct) = self.content_type {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.is_empty() && !essence.eq_ignore_ascii_case("application/json") {
                return Err(Rejection::ContentType(ct.to_owned()));
            }
        }
        if self.body.len() > max_body {
            return Err(Rejection::TooLarge {
                size: self.body.len(),
                limit: max_body,
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(self.body).map_err(|e| Rejection::NotJson(e.to_string()))?;
        let body: ChargeBody =
            serde_json::from_value(value).map_err(|e| Rejection::Schema(e.to_string()))?;
        check_body(&body)?;
        Ok(ChargeRequest {
            scope: scope.to_owned(),
            message_id: message_id.to_owned(),
            fingerprint: fingerprint(&body.account_id, body.amount, &body.currency),
            reference_id: reference_id(scope, message_id),
            body,
            reply_to: optional_property("reply_to", self.reply_to)?,
            correlation_id: optional_property("correlation_id", self.correlation_id)?,
            // Trace context is advisory: an invalid one is dropped (W3C says
            // to ignore it), never a reason to refuse a charge.
            traceparent: self
                .traceparent
                .filter(|t| valid_traceparent(t))
                .map(str::to_owned),
        })
    }
}

fn optional_property(
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<String>, Rejection> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => check_key(field, v).map(|v| Some(v.to_owned())),
    }
}

/// `version-traceid-parentid-flags`, lower-case hex, version `00` layout.
fn valid_traceparent(t: &str) -> bool {
    crate::trace::TraceParent::parse(t).is_some()
}

fn check_body(body: &ChargeBody) -> Result<(), Rejection> {
    let schema = |m: String| Err(Rejection::Schema(m));
    if body.account_id.is_empty() || body.account_id.len() > MAX_ACCOUNT_LEN {
        return schema(format!("account_id must be 1..={MAX_ACCOUNT_LEN} bytes"));
    }
    if body.account_id.contains('\0') {
        return schema("account_id contains a NUL byte".into());
    }
    if body.amount <= 0 {
        return schema(format!(
            "amount must be > 0 (minor units), got {}",
            body.amount
        ));
    }
    if body.currency.len() != 3 || !body.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return schema(format!(
            "currency must be 3 upper-case letters (ISO 4217), got {:?}",
            body.currency
        ));
    }
    if let Some(d) = &body.description
        && (d.len() > MAX_DESCRIPTION_LEN || d.contains('\0'))
    {
        return schema(format!(
            "description must be at most {MAX_DESCRIPTION_LEN} bytes without NUL"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_SCOPE;

    const OK: &[u8] = br#"{"account_id":"acc_1","amount":1250,"currency":"EUR"}"#;

    fn inbound(body: &[u8]) -> Inbound<'_> {
        Inbound {
            message_id: Some("m-1"),
            body,
            ..Inbound::default()
        }
    }

    #[test]
    fn valid_message_gets_default_scope_and_reference() {
        let req = inbound(OK).parse(1024).expect("valid");
        assert_eq!(req.scope, DEFAULT_SCOPE);
        assert_eq!(req.body.amount, 1250);
        assert_eq!(req.reference_id, crate::reference_id("default", "m-1"));
        let scoped = Inbound {
            app_id: Some("tenant-a"),
            ..inbound(OK)
        }
        .parse(1024)
        .expect("valid");
        assert_ne!(scoped.reference_id, req.reference_id);
    }

    #[test]
    fn each_kind_of_bad_input_has_its_code() {
        let cases: Vec<(Inbound<'_>, &str)> = vec![
            (
                Inbound {
                    message_id: None,
                    ..inbound(OK)
                },
                "missing_message_id",
            ),
            (
                Inbound {
                    message_id: Some("a\0b"),
                    ..inbound(OK)
                },
                "bad_key",
            ),
            (
                Inbound {
                    content_type: Some("text/plain"),
                    ..inbound(OK)
                },
                "content_type",
            ),
            (inbound(b"not json"), "not_json"),
            (
                inbound(br#"{"account_id":"a","amount":0,"currency":"EUR"}"#),
                "schema",
            ),
            (
                inbound(br#"{"account_id":"a","amount":1.5,"currency":"EUR"}"#),
                "schema",
            ),
            (
                inbound(br#"{"account_id":"a","amount":1,"currency":"eur"}"#),
                "schema",
            ),
            (
                inbound(br#"{"account_id":"","amount":1,"currency":"EUR"}"#),
                "schema",
            ),
            (inbound(br#"{"amount":1,"currency":"EUR"}"#), "schema"),
            (
                inbound(br#"{"account_id":"a","amount":1,"currency":"EUR","x":1}"#),
                "schema",
            ),
            (inbound(br#"[1,2]"#), "schema"),
        ];
        for (input, code) in cases {
            let err = input.parse(1024).expect_err("must be rejected");
            assert_eq!(err.code(), code, "{err}");
        }
        let err = inbound(OK).parse(10).expect_err("too large");
        assert_eq!(err.code(), "too_large");
    }

    #[test]
    fn metadata_properties_are_checked_and_bad_trace_context_dropped() {
        let bad_reply = Inbound {
            reply_to: Some("q\0"),
            ..inbound(OK)
        };
        assert_eq!(bad_reply.parse(1024).expect_err("NUL").code(), "bad_key");
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let with_trace = |t| Inbound {
            traceparent: Some(t),
            correlation_id: Some("c-1"),
            ..inbound(OK)
        };
        let req = with_trace(good).parse(1024).expect("valid");
        assert_eq!(req.traceparent.as_deref(), Some(good));
        assert_eq!(req.correlation_id.as_deref(), Some("c-1"));
        for bad in ["garbage", "00-xyz-00f067aa0ba902b7-01", "\0"] {
            assert_eq!(
                with_trace(bad)
                    .parse(1024)
                    .expect("still valid")
                    .traceparent,
                None
            );
        }
    }

    #[test]
    fn json_content_type_with_parameters_is_accepted() {
        let ok = Inbound {
            content_type: Some("application/json; charset=utf-8"),
            ..inbound(OK)
        };
        assert!(ok.parse(1024).is_ok());
    }
}
