//! The charge API client. Every call ends in a value the dispatcher can act on:
//! the HTTP answer is classified here, once, so the decision "may this have
//! charged?" lives in one place.

use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::Refusal;
use crate::hygiene;
use idem_charge_api::{
    Call, CallKind, Charge, ChargeList, CreateCharge, ErrorBody, IDEMPOTENCY_KEY,
    IDEMPOTENT_REPLAYED, Refund, TRACEPARENT,
};

/// What the provider offers; the dispatcher's strategy follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The provider honours `Idempotency-Key`: a retry under the same key never
    /// charges twice.
    pub idempotency_keys: bool,
    /// The provider answers `GET /v1/charges?reference_id=R`.
    pub lookup: bool,
    /// The provider can refund a charge (the compensating action).
    pub refunds: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            idempotency_keys: true,
            lookup: true,
            refunds: true,
        }
    }
}

/// The outcome of one `POST /v1/charges`, classified by what it means for money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The charge exists (`201`, or `200` replay of a known key).
    Succeeded {
        /// The charge as the provider reports it.
        charge: Charge,
        /// Whether this was a replay of an earlier request under the same key.
        replayed: bool,
    },
    /// `402`: the provider refused the charge; final.
    Declined {
        /// The provider's error type, e.g. `card_declined`.
        code: String,
    },
    /// The provider refused to process the request because of who or where we
    /// are (`401`, `403`, `404`, `429`, connection refused): certainly not
    /// charged, and not about this charge — see [`Refusal`].
    Refused {
        /// What the provider refused.
        refusal: Refusal,
        /// What happened, for the outbox row's `last_error`.
        reason: String,
    },
    /// The provider certainly did not process the request (another `4xx`):
    /// retry later.
    NotProcessed {
        /// What happened, for the outbox row's `last_error`.
        reason: String,
    },
    /// The request may or may not have charged (timeout, reset, `5xx`, `409`
    /// in progress): never treated as "not charged".
    Uncertain {
        /// What happened, for the outbox row's `last_error`.
        reason: String,
    },
    /// The provider rejected the request for good (`400`, `422`):
    /// retrying cannot help; an operator must look.
    Rejected {
        /// HTTP status and error type.
        reason: String,
    },
}

/// A failed lookup, listing or refund call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The provider does not offer this call (capability off).
    #[error("the provider does not support {0}")]
    Unsupported(&'static str),
    /// Transport failure or timeout: try again later.
    #[error("provider unreachable or timed out: {0}")]
    Transport(String),
    /// An HTTP error status.
    #[error("provider answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The body, for the log.
        body: String,
    },
}

impl ClientError {
    /// The refusal this error is, if the provider refused us rather than
    /// failed (see [`Refusal`]).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            ClientError::Status { status, .. } => Refusal::of_status(*status),
            _ => None,
        }
    }
}

/// A fresh record of a `kind` call starting now, and the instant its latency
/// is measured from.
fn start_call(kind: CallKind) -> (Call, std::time::Instant) {
    let call = Call {
        kind,
        started_at: chrono::Utc::now(),
        latency: Duration::ZERO,
        http_status: None,
        error: None,
        provider_id: None,
    };
    (call, std::time::Instant::now())
}

/// HTTP client for the charge API. Cheap to clone.
#[derive(Clone)]
pub struct ChargeClient {
    /// Shared connection pool.
    http: reqwest::Client,
    /// Base URL without trailing slash, e.g. `http://127.0.0.1:8099`.
    base: String,
    /// What the provider offers.
    capabilities: Capabilities,
    /// Sent as `Authorization: Bearer <key>` on every call, when set.
    api_key: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for ChargeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the API key.
        f.debug_struct("ChargeClient")
            .field("base", &self.base)
            .field("capabilities", &self.capabilities)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ChargeClient {
    /// A client for `base_url` whose every call gives up after `timeout`.
    pub fn new(
        base_url: &str,
        timeout: Duration,
        capabilities: Capabilities,
    ) -> Result<Self, ClientError> {
        Self::new_with_roots(base_url, timeout, capabilities, None)
    }

    /// [`ChargeClient::new`], also trusting the CA certificates in
    /// `extra_roots_pem` (a PEM bundle) for `https://`, on top of the
    /// system's roots (the platform verifier; `SSL_CERT_FILE` replaces those).
    pub fn new_with_roots(
        base_url: &str,
        timeout: Duration,
        capabilities: Capabilities,
        extra_roots_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_max_idle_per_host(256);
        if let Some(pem) = extra_roots_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::Transport(format!("bad CA certificates: {e}")))?;
            builder = builder.tls_certs_merge(roots);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            capabilities,
            api_key: None,
        })
    }

    /// Send `key` as a bearer token on every call (`None`: no `Authorization`).
    #[must_use]
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.filter(|k| !k.is_empty()).map(Into::into);
        self
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let call = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(key) => call.bearer_auth(key),
            None => call,
        }
    }

    /// What the provider offers.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// `POST /v1/charges`, keyed by the reference id where keys are honoured,
    /// with `traceparent` passed on; returns the classified outcome and the
    /// call's record for the attempt history.
    pub async fn create_charge(
        &self,
        request: &CreateCharge,
        traceparent: Option<&str>,
    ) -> (Attempt, Call) {
        let (mut call, started) = start_call(CallKind::Charge);
        let (attempt, status) = self.send_charge(request, traceparent).await;
        call.latency = started.elapsed();
        call.http_status = status;
        match &attempt {
            Attempt::Succeeded { charge, .. } => call.provider_id = Some(charge.id.clone()),
            Attempt::Declined { code } => call.error = Some(format!("declined: {code}")),
            Attempt::NotProcessed { reason }
            | Attempt::Refused { reason, .. }
            | Attempt::Uncertain { reason }
            | Attempt::Rejected { reason } => call.error = Some(reason.clone()),
        }
        (attempt, call)
    }

    async fn send_charge(
        &self,
        request: &CreateCharge,
        traceparent: Option<&str>,
    ) -> (Attempt, Option<u16>) {
        let mut call = self
            .request(reqwest::Method::POST, "/v1/charges")
            .json(request);
        if self.capabilities.idempotency_keys {
            call = call.header(IDEMPOTENCY_KEY, &request.reference_id);
        }
        if let Some(t) = traceparent {
            call = call.header(TRACEPARENT, t);
        }
        let response = match call.send().await {
            Ok(response) => response,
            Err(e) => return (classify_transport(&e), None),
        };
        let status = response.status();
        let replayed = response
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let body = match hygiene::read_body(response).await {
            Ok(body) => body,
            // The status line arrived but the body did not (or was too long
            // to read): the provider has decided, we just do not know what.
            // Uncertain.
            Err(e) => {
                let attempt = Attempt::Uncertain {
                    reason: format!("{status}: body lost: {e}"),
                };
                return (attempt, Some(status.as_u16()));
            }
        };
        (
            classify_answer(status, replayed, &body),
            Some(status.as_u16()),
        )
    }

    /// `GET /v1/charges?reference_id=R`: every charge under this reference,
    /// and the call's record (its `provider_id`: the first succeeded charge).
    pub async fn lookup(
        &self,
        reference_id: &str,
        traceparent: Option<&str>,
    ) -> (Result<Vec<Charge>, ClientError>, Call) {
        let (mut call, started) = start_call(CallKind::Lookup);
        let result = if self.capabilities.lookup {
            let mut request = self
                .request(reqwest::Method::GET, "/v1/charges")
                .query(&[("reference_id", reference_id)]);
            if let Some(t) = traceparent {
                request = request.header(TRACEPARENT, t);
            }
            send_json::<ChargeList>(request, &mut call.http_status)
                .await
                .map(|list| usable(list.data))
        } else {
            Err(ClientError::Unsupported("lookup by reference"))
        };
        call.latency = started.elapsed();
        match &result {
            Ok(charges) => {
                call.provider_id = charges
                    .iter()
                    .find(|c| c.status == "succeeded")
                    .map(|c| c.id.clone());
            }
            Err(e) => call.error = Some(e.to_string()),
        }
        (result, call)
    }

    /// One page of the provider's charge listing, for reconciliation.
    pub async fn list_charges(
        &self,
        created_gte: Option<i64>,
        created_lt: Option<i64>,
        limit: u32,
        starting_after: Option<&str>,
    ) -> Result<ChargeList, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(t) = created_gte {
            query.push(("created_gte", t.to_string()));
        }
        if let Some(t) = created_lt {
            query.push(("created_lt", t.to_string()));
        }
        if let Some(id) = starting_after {
            query.push(("starting_after", id.to_owned()));
        }
        let mut page: ChargeList = self.get_json("/v1/charges", &query).await?;
        // The listing's cursor is the last id as listed, unusable ones too.
        let cursor = page.data.last().map(|c| c.id.clone());
        page.data = usable(page.data);
        if page.data.is_empty()
            && page.has_more
            && let Some(cursor) = cursor
        {
            return Box::pin(self.list_charges(created_gte, created_lt, limit, Some(&cursor)))
                .await;
        }
        Ok(page)
    }

    /// `POST /v1/charges/{id}/refunds` under its own idempotency key, and the
    /// call's record (its `provider_id`: the refund's id).
    pub async fn refund(&self, charge_id: &str, key: &str) -> (Result<Refund, ClientError>, Call) {
        let (mut call, started) = start_call(CallKind::Refund);
        let result = if self.capabilities.refunds {
            let request = self
                .request(
                    reqwest::Method::POST,
                    &format!("/v1/charges/{}/refunds", hygiene::path_segment(charge_id)),
                )
                .header(IDEMPOTENCY_KEY, key);
            send_json::<Refund>(request, &mut call.http_status).await
        } else {
            Err(ClientError::Unsupported("refunds"))
        };
        call.latency = started.elapsed();
        match &result {
            Ok(refund) => call.provider_id = Some(refund.id.clone()),
            Err(e) => call.error = Some(e.to_string()),
        }
        (result, call)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let request = self.request(reqwest::Method::GET, path).query(query);
        send_json(request, &mut None).await
    }
}

/// Send `request` and decode a JSON answer; `status` gets the HTTP status
/// when one arrived.
async fn send_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    status: &mut Option<u16>,
) -> Result<T, ClientError> {
    let response = request
        .send()
        .await
        .map_err(|e| ClientError::Transport(error_chain(&e)))?;
    *status = Some(response.status().as_u16());
    decode(response).await
}

async fn decode<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, ClientError> {
    let status = response.status();
    let body = hygiene::read_body(response)
        .await
        .map_err(ClientError::Transport)?;
    let shown = || hygiene::text(&String::from_utf8_lossy(&body), hygiene::MAX_TEXT);
    if !status.is_success() {
        return Err(ClientError::Status {
            status: status.as_u16(),
            body: shown(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Status {
        status: status.as_u16(),
        body: format!("undecodable body ({e}): {}", shown()),
    })
}

/// A transport failure: only a refused connection proves the request was not
/// sent; anything else (timeout, reset mid-request) may have charged.
fn classify_transport(e: &reqwest::Error) -> Attempt {
    let reason = error_chain(e);
    if e.is_connect() && !e.is_timeout() {
        Attempt::Refused {
            refusal: Refusal::Unreachable,
            reason,
        }
    } else {
        Attempt::Uncertain { reason }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    hygiene::text(&text, hygiene::MAX_TEXT)
}

/// The charges of a lookup or listing that are safe to use
/// ([`hygiene::checked`]); the others are logged and left out, so one
/// malformed charge can neither be stored nor stop the rest.
fn usable(charges: Vec<Charge>) -> Vec<Charge> {
    charges
        .into_iter()
        .filter_map(|c| {
            hygiene::checked(c)
                .inspect_err(|why| tracing::warn!(%why, "the provider listed a charge idem cannot use; left out"))
                .ok()
        })
        .collect()
}

/// Map an HTTP answer to what it means for money (`docs/contracts.md`,
/// section "Charge API").
pub fn classify_answer(status: StatusCode, replayed: bool, body: &[u8]) -> Attempt {
    let error_kind = || {
        serde_json::from_slice::<ErrorBody>(body)
            .map(|b| hygiene::code(&b.error.kind))
            .unwrap_or_else(|_| "unknown".to_owned())
    };
    match status.as_u16() {
        200 | 201 => match serde_json::from_slice::<Charge>(body) {
            Ok(charge) => match hygiene::checked(charge) {
                Ok(charge) => Attempt::Succeeded {
                    charge,
                    replayed: replayed || status == StatusCode::OK,
                },
                // A success we cannot use still means money may have moved.
                Err(why) => Attempt::Uncertain {
                    reason: format!("{status} with an unusable charge: {why}"),
                },
            },
            // A success we cannot read still means money may have moved.
            Err(e) => Attempt::Uncertain {
                reason: hygiene::text(
                    &format!("{status} with undecodable body: {e}"),
                    hygiene::MAX_TEXT,
                ),
            },
        },
        402 => Attempt::Declined { code: error_kind() },
        409 => Attempt::Uncertain {
            reason: format!("409 {}: same key in progress", error_kind()),
        },
        // The request timed out at the server or a proxy: it may have run.
        408 | 500..=599 => Attempt::Uncertain {
            reason: format!("{status}"),
        },
        // Our request itself is wrong (bad body, same key other parameters):
        // resending it cannot help.
        400 | 422 => Attempt::Rejected {
            reason: format!("{status} {}", error_kind()),
        },
        // 401/403/404/429: refused before processing, because of us — a
        // rotated API key or a wrong base path must not turn the backlog dead.
        code => match Refusal::of_status(code) {
            Some(refusal) => Attempt::Refused {
                refusal,
                reason: format!("{status} {}", error_kind()),
            },
            None => Attempt::NotProcessed {
                reason: format!("{status} {}", error_kind()),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_answers_by_what_they_mean_for_money() {
        let charge = br#"{"id":"ch_1","reference_id":"r","account_id":"a","amount":5,"currency":"EUR","status":"succeeded","created":1}"#;
        assert!(matches!(
            classify_answer(StatusCode::CREATED, false, charge),
            Attempt::Succeeded {
                replayed: false,
                ..
            }
        ));
        assert!(matches!(
            classify_answer(StatusCode::OK, true, charge),
            Attempt::Succeeded { replayed: true, .. }
        ));
        let declined = br#"{"error":{"type":"card_declined"}}"#;
        assert_eq!(
            classify_answer(StatusCode::PAYMENT_REQUIRED, false, declined),
            Attempt::Declined {
                code: "card_declined".into()
            }
        );
        assert!(matches!(
            classify_answer(StatusCode::CONFLICT, false, b"{}"),
            Attempt::Uncertain { .. }
        ));
        assert!(matches!(
            classify_answer(StatusCode::TOO_MANY_REQUESTS, false, b""),
            Attempt::Refused {
                refusal: Refusal::Throttled,
                ..
            }
        ));
        assert!(matches!(
            classify_answer(StatusCode::NOT_FOUND, false, b""),
            Attempt::Refused {
                refusal: Refusal::NotFound,
                ..
            }
        ));
        assert!(matches!(
            classify_answer(StatusCode::GONE, false, b""),
            Attempt::NotProcessed { .. }
        ));
        assert!(matches!(
            classify_answer(StatusCode::SERVICE_UNAVAILABLE, false, b""),
            Attempt::Uncertain { .. }
        ));
        assert!(matches!(
            classify_answer(StatusCode::UNPROCESSABLE_ENTITY, false, b"{}"),
            Attempt::Rejected { .. }
        ));
        assert!(matches!(
            classify_answer(StatusCode::UNAUTHORIZED, false, b""),
            Attempt::Refused {
                refusal: Refusal::Unauthorized,
                ..
            }
        ));
        assert!(matches!(
            classify_answer(StatusCode::REQUEST_TIMEOUT, false, b""),
            Attempt::Uncertain { .. }
        ));
        // A 201 whose body is garbage may still have charged.
        assert!(matches!(
            classify_answer(StatusCode::CREATED, false, b"garbage"),
            Attempt::Uncertain { .. }
        ));
    }
}
