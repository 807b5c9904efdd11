//! The HTTP surface: the charge API of `docs/contracts.md` (section "Charge
//! API"; faulted, delayed) and the admin endpoints under `/_sim` (neither).
//!
//! Every `/v1` request goes the same way: count it and roll the dice
//! ([`Simulator::enter`]); a dropped request resets the connection at once and a
//! 5xx/429 is answered without processing; otherwise the synchronous first half
//! runs under the lock (validate, resolve or reserve the idempotency key), the
//! latency passes, the reserved work is finished, and the answer is sent — or,
//! for a dropped response, the connection is reset although the work is done.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use idem_charge_api::{CreateCharge, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, TRACEPARENT};
use tracing::debug;

use crate::Simulator;
use crate::answer::{Answer, Step};
use crate::faults::{Fate, Faults};
use crate::ledger::SeenRequest;
use crate::server::ConnKill;
use crate::state::{ListQuery, validate_charge};

/// How long a handler hangs for "no answer" when it cannot reset its
/// connection (the router served by something other than [`Simulator::serve`]).
const HANG: Duration = Duration::from_secs(120);

/// The simulator's routes.
pub(crate) fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/v1/charges", post(create_charge).get(list_charges))
        .route("/v1/charges/{id}/refunds", post(refund))
        // Only the routes above: `/_sim/*` and `/healthz` need no key.
        .route_layer(axum::middleware::from_fn_with_state(
            sim.clone(),
            crate::auth::require,
        ))
        // Outermost of the two: every `/v1` request is remembered as
        // received, a refused one too.
        .route_layer(axum::middleware::from_fn_with_state(sim.clone(), remember))
        .route("/_sim/ledger", get(ledger))
        .route("/_sim/requests", get(requests))
        .route("/_sim/stats", get(stats))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(sim)
}

/// The connection's kill switch, when served by our accept loop.
type Kill = Option<Extension<ConnKill>>;

/// `POST /v1/charges`.
async fn create_charge(
    State(sim): State<Simulator>,
    kill: Kill,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (faults, fate) = sim.enter();
    let step = early(fate).unwrap_or_else(|| {
        let key = match idempotency_key(&headers) {
            Ok(key) => key,
            Err(answer) => return Step::Now(answer),
        };
        let request: CreateCharge = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => return Step::Now(invalid(format!("invalid body: {e}"))),
        };
        if let Err(reason) = validate_charge(&request) {
            return Step::Now(invalid(reason));
        }
        let key = key.filter(|_| faults.idempotency_keys);
        sim.lock().begin_charge(key, request, &faults)
    });
    conclude(&sim, kill, &faults, fate, "POST /v1/charges", step).await
}

/// `GET /v1/charges`: lookup by reference, or a page of the listing.
async fn list_charges(
    State(sim): State<Simulator>,
    kill: Kill,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let (faults, fate) = sim.enter();
    let step = early(fate).unwrap_or_else(|| match query {
        Ok(Query(query)) if faults.fail_lookups && query.reference_id.is_some() => {
            sim.lock().stats.failed_lookups += 1;
            Step::Now(Answer::error(
                503,
                "api_error",
                "simulated lookup failure (fail_lookups)",
            ))
        }
        Ok(Query(query)) => Step::Now(sim.lock().list(&query, faults.lookup)),
        Err(e) => Step::Now(invalid(e.body_text())),
    });
    conclude(&sim, kill, &faults, fate, "GET /v1/charges", step).await
}

/// `POST /v1/charges/{id}/refunds`.
async fn refund(
    State(sim): State<Simulator>,
    kill: Kill,
    Path(charge): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (faults, fate) = sim.enter();
    let step = early(fate).unwrap_or_else(|| {
        if !faults.refunds {
            return Step::Now(Answer::error(
                404,
                "not_supported",
                "refunds are not offered",
            ));
        }
        match idempotency_key(&headers) {
            Ok(key) => sim.lock().begin_refund(key, charge),
            Err(answer) => Step::Now(answer),
        }
    });
    conclude(
        &sim,
        kill,
        &faults,
        fate,
        "POST /v1/charges/{id}/refunds",
        step,
    )
    .await
}

/// What the dice decided before any processing: `None` means "process".
fn early(fate: Fate) -> Option<Step> {
    match fate {
        Fate::Normal | Fate::DropResponse => None,
        Fate::DropRequest => Some(Step::NoAnswer),
        Fate::ServerError(status) => Some(Step::Now(Answer::error(
            status,
            "api_error",
            "simulated server error",
        ))),
        Fate::RateLimited => Some(Step::Now(Answer::error(
            429,
            "rate_limited",
            "simulated rate limit",
        ))),
        Fate::Refused(status) => Some(Step::Now(Answer::error(
            status,
            match status {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found",
                429 => "rate_limited",
                _ => "api_error",
            },
            "simulated refusal (refuse_status)",
        ))),
    }
}

/// The `Idempotency-Key` header: absent or empty is no key.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Answer> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok("") => Ok(None),
            Ok(key) => Ok(Some(key.to_owned())),
            Err(_) => Err(invalid("Idempotency-Key must be visible ASCII")),
        },
    }
}

/// `400 invalid_request`.
fn invalid(reason: impl Into<String>) -> Answer {
    Answer::error(400, "invalid_request", reason)
}

/// Second half of every `/v1` request: wait the latency, finish reserved work
/// (in a task of its own, so it completes even if the client goes away), then
/// answer or reset the connection.
async fn conclude(
    sim: &Simulator,
    kill: Kill,
    faults: &Faults,
    fate: Fate,
    route: &'static str,
    step: Step,
) -> Response {
    let latency = faults.latency();
    let answer = match step {
        Step::NoAnswer => {
            debug!(route, ?fate, "request dropped");
            return no_answer(kill).await;
        }
        Step::Now(answer) => {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            answer
        }
        Step::Later(ticket) if latency.is_zero() => sim.lock().finish(ticket),
        Step::Later(ticket) => {
            let sim = sim.clone();
            let work = tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                sim.lock().finish(ticket)
            });
            match work.await {
                Ok(answer) => answer,
                Err(e) => Answer::error(500, "api_error", format!("simulator task failed: {e}")),
            }
        }
    };
    debug!(
        route,
        ?fate,
        status = answer.status,
        replayed = answer.replayed,
        latency_ms = latency.as_millis(),
        "processed"
    );
    if fate == Fate::DropResponse {
        return no_answer(kill).await;
    }
    respond(answer)
}

/// Turns an [`Answer`] into an HTTP response.
fn respond(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        answer.body,
    )
        .into_response();
    if answer.replayed
        && let Ok(name) = HeaderName::try_from(IDEMPOTENT_REPLAYED)
    {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static("true"));
    }
    response
}

/// The client gets no HTTP answer: the connection is reset. The future never
/// completes; the connection task drops it with the connection.
async fn no_answer(kill: Kill) -> Response {
    match kill {
        Some(Extension(ConnKill(kill))) => {
            kill.cancel();
            std::future::pending().await
        }
        None => {
            // Not served by our accept loop: hang until any client gave up.
            tokio::time::sleep(HANG).await;
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONNECTION, "close")],
            )
                .into_response()
        }
    }
}

/// `GET /_sim/ledger`.
async fn ledger(State(sim): State<Simulator>) -> Response {
    Json(sim.ledger()).into_response()
}

/// `GET /_sim/stats`.
async fn stats(State(sim): State<Simulator>) -> Response {
    Json(sim.stats()).into_response()
}

/// `GET /_sim/faults`.
async fn get_faults(State(sim): State<Simulator>) -> Response {
    Json(sim.faults()).into_response()
}

/// `PUT /_sim/faults`: replaces the faults (missing fields take defaults).
async fn put_faults(State(sim): State<Simulator>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(e) => return respond(invalid(format!("invalid faults: {e}"))),
    };
    if let Err(reason) = faults.validate() {
        return respond(invalid(reason));
    }
    debug!(?faults, "faults replaced");
    sim.set_faults(faults.clone());
    Json(faults).into_response()
}

/// Middleware of the `/v1` routes: remember the request (method, path,
/// reference, `traceparent`) in the bounded list of `/_sim/requests`.
async fn remember(
    State(sim): State<Simulator>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let seen = seen(&request);
    sim.lock().saw(seen);
    next.run(request).await
}

/// What `/_sim/requests` keeps of a request.
fn seen(request: &axum::extract::Request) -> SeenRequest {
    let text = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let reference_id = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("reference_id="))
            .map(str::to_owned)
    });
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    SeenRequest {
        method: request.method().as_str().to_owned(),
        path: request.uri().path().to_owned(),
        reference_id,
        idempotency_key: text(IDEMPOTENCY_KEY),
        traceparent: text(TRACEPARENT),
        at_ms,
    }
}

/// `GET /_sim/requests`: the most recent `/v1` requests, oldest first.
async fn requests(State(sim): State<Simulator>) -> Response {
    Json(sim.requests()).into_response()
}
