//! The provider call's trace context.
//!
//! An attempt's span continues the trace of the message it charges: its parent
//! is the `traceparent` stored on the outbox row (the producer's span), it
//! carries that trace's `trace_id` as a field, and the provider call gets a
//! `traceparent` with the same trace id and flags and a new parent id — the
//! attempt span's id when spans are exported, else a fresh span id. A row
//! without one gets the attempt span's own (new root) trace when spans are
//! exported, and no header otherwise.

use idem_message::TraceParent;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Parent `span` (the attempt's, not yet started for OpenTelemetry: the layer
/// runs without context activation) on the row's `stored` traceparent, and
/// return the header for the provider call. The span has a `trace_id` field:
/// set from `stored` by its creator, recorded here for a new root trace.
pub(crate) fn outgoing(span: &Span, stored: Option<&str>) -> Option<String> {
    let parent = stored.and_then(TraceParent::parse);
    if let (Some(header), Some(_)) = (stored, parent)
        && !span.is_disabled()
    {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Header(header)));
        // Fails only without the layer: nothing to parent then.
        let _ = span.set_parent(cx);
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if own.is_valid() {
        let header = TraceParent {
            trace_id: own.trace_id().to_bytes(),
            parent_id: own.span_id().to_bytes(),
            flags: own.trace_flags().to_u8(),
        };
        if parent.is_none() {
            span.record("trace_id", header.trace_id_hex());
        }
        return Some(header.to_string());
    }
    parent.map(|p| p.new_child().to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn without_exported_spans_the_call_is_a_fresh_child_of_the_stored_parent() {
        let span = tracing::info_span!("attempt", trace_id = tracing::field::Empty);
        let sent = outgoing(&span, Some(STORED)).expect("a header");
        let sent = TraceParent::parse(&sent).expect("valid");
        let stored = TraceParent::parse(STORED).expect("valid");
        assert_eq!(sent.trace_id, stored.trace_id);
        assert_eq!(sent.flags, stored.flags);
        assert_ne!(sent.parent_id, stored.parent_id);
        assert_eq!(outgoing(&span, None), None);
        assert_eq!(outgoing(&span, Some("garbage")), None);
    }
}
