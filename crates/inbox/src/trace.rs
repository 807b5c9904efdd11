//! Trace context of consumed messages.
//!
//! Each delivery of a batch gets a `message` span, open while its batch is
//! recorded and closed once the decision is known, whose parent is the
//! producer's `traceparent` header (when spans are exported) and which carries
//! the header's `trace_id` as a field.
//!
//! The span is at INFO level while the process exports spans, and at DEBUG
//! otherwise: then, unless debug logs of this module are on, a batch costs one
//! disabled-callsite check and nothing per message. The per-message events
//! logged at `info` and above (conflicts, quarantine) carry `trace_id` as a
//! field of their own (see `batch` and `bulk`).

use idem_message::{ChargeRequest, DEFAULT_SCOPE, trace};
use lapin::BasicProperties;
use lapin::message::Delivery;
use opentelemetry::propagation::Extractor;
use tracing::{Level, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::delivery;

/// The `message` span of one delivery at `$level`.
macro_rules! message_span {
    ($level:expr, $inbound:expr, $trace_id:expr) => {
        tracing::span!(
            $level,
            "message",
            otel.kind = "consumer",
            scope = $inbound.app_id.unwrap_or(DEFAULT_SCOPE),
            message_id = $inbound.message_id,
            trace_id = $trace_id,
            decision = field::Empty,
        )
    };
}

/// One `message` span per delivery of `batch`, in order, parented on each
/// delivery's `traceparent`; empty (no allocation) when the span is disabled.
pub(crate) fn message_spans(batch: &[Delivery]) -> Vec<Span> {
    let exported = trace::exported();
    if !exported && !tracing::enabled!(Level::DEBUG) {
        return Vec::new();
    }
    batch
        .iter()
        .map(|d| {
            let inbound = delivery::inbound(&d.properties, &d.data);
            let header = inbound.traceparent;
            let trace_id = header.and_then(trace::trace_id);
            let span = if exported {
                message_span!(Level::INFO, inbound, trace_id)
            } else {
                message_span!(Level::DEBUG, inbound, trace_id)
            };
            if let (Some(header), Some(_)) = (header, trace_id)
                && exported
            {
                adopt(&span, header);
            }
            span
        })
        .collect()
}

/// Record each message's decision on its span and log it there (DEBUG), then
/// let the spans close. `spans` is empty or one per decision.
pub(crate) fn finish<'a>(spans: Vec<Span>, decisions: impl Iterator<Item = &'a str>) {
    for (span, decision) in spans.into_iter().zip(decisions) {
        span.record("decision", decision);
        span.in_scope(|| tracing::debug!(decision, "message recorded"));
    }
}

/// The trace id of a validated request, for its per-message log fields.
pub(crate) fn of_request(request: &ChargeRequest) -> Option<&str> {
    request.traceparent.as_deref().and_then(trace::trace_id)
}

/// The trace id of a delivery's valid `traceparent` header, if it has one
/// (for messages that did not validate).
pub(crate) fn of_properties(properties: &BasicProperties) -> Option<&str> {
    delivery::inbound(properties, &[])
        .traceparent
        .and_then(trace::trace_id)
}

/// Make the remote span named by a valid `traceparent` the parent of `span`
/// (through the global propagator, W3C trace context once telemetry exports
/// spans). Without the OpenTelemetry layer this does nothing.
fn adopt(span: &Span, traceparent: &str) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&Header(traceparent)));
    // Fails only without the layer (nothing to do) or once the span has
    // started, which these spans have not.
    let _ = span.set_parent(parent);
}

/// A carrier holding just the `traceparent` header.
struct Header<'a>(&'a str);

impl Extractor for Header<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        key.eq_ignore_ascii_case("traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}
