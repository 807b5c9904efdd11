//! W3C trace context: the `traceparent` a producer may send with a message,
//! and the one idem sends on the provider call that continues its trace.
//!
//! `version-traceid-parentid-flags` in lower-case hex (`00-` + 32 + `-` + 16 +
//! `-` + 2). A child keeps the trace id and flags and names a new parent id:
//! the span making the call. Nothing here depends on OpenTelemetry, so the
//! header is carried (and logged) the same way whether or not spans are
//! exported.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// A valid `traceparent` header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace the message belongs to; never all zeros.
    pub trace_id: [u8; 16],
    /// The span that sent the message (the caller's span); never all zeros.
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header as W3C version `00` lays it out (any version but the
    /// invalid `ff`, in that layout); `None` for anything else, which W3C says
    /// to ignore.
    pub fn parse(header: &str) -> Option<Self> {
        let b = header.as_bytes();
        if b.len() != 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex_bytes::<1>(&b[0..2])?;
        let trace_id = hex_bytes::<16>(&b[3..35])?;
        let parent_id = hex_bytes::<8>(&b[36..52])?;
        let flags = hex_bytes::<1>(&b[53..55])?;
        if version == [0xff] || trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }

    /// A header for a call made by span `span_id` inside this trace: same trace
    /// id and flags, `span_id` as the parent. An all-zero id is replaced by a
    /// random one (it would make the header invalid).
    pub fn child(&self, span_id: [u8; 8]) -> Self {
        let parent_id = if span_id == [0; 8] {
            new_span_id()
        } else {
            span_id
        };
        Self { parent_id, ..*self }
    }

    /// [`TraceParent::child`] with a freshly generated span id: the call's
    /// own span when no span is exported.
    pub fn new_child(&self) -> Self {
        self.child(new_span_id())
    }

    /// The trace id as 32 lower-case hex digits, as logs carry it.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The parent id as 16 lower-case hex digits.
    pub fn parent_id_hex(&self) -> String {
        hex::encode(self.parent_id)
    }

    /// Whether the caller sampled the trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl fmt::Display for TraceParent {
    /// Always version `00`: the version idem speaks when it propagates.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }
}

/// The trace id part of a valid `traceparent`, borrowed (no allocation: log
/// fields of per-message events use it).
pub fn trace_id(header: &str) -> Option<&str> {
    TraceParent::parse(header).map(|_| &header[3..35])
}

/// Whether this process exports spans (see [`set_exported`]).
static EXPORTED: AtomicBool = AtomicBool::new(false);

/// Declare whether this process exports spans (its telemetry set-up does, at
/// start-up). Per-message spans are made at INFO level while spans are
/// exported, and at DEBUG otherwise, where they cost nothing unless logged.
pub fn set_exported(exported: bool) {
    EXPORTED.store(exported, Ordering::Relaxed);
}

/// Whether this process exports spans.
pub fn exported() -> bool {
    EXPORTED.load(Ordering::Relaxed)
}

/// A random, non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let (high, _) = uuid::Uuid::new_v4().as_u64_pair();
        if high != 0 {
            return high.to_be_bytes();
        }
    }
}

/// `N` bytes from exactly `2N` lower-case hex digits.
fn hex_bytes<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if !s.iter().all(|b| matches!(*b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_a_valid_header() {
        let tp = TraceParent::parse(GOOD).expect("valid");
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id_hex(), "00f067aa0ba902b7");
        assert_eq!(tp.flags, 1);
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), GOOD);
        assert_eq!(trace_id(GOOD), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        // A later version in the 00 layout is read as 00 and sent on as 00.
        let v1 = GOOD.replacen("00-", "01-", 1);
        assert_eq!(
            TraceParent::parse(&v1).map(|t| t.to_string()),
            Some(GOOD.into())
        );
    }

    #[test]
    fn rejects_what_w3c_says_to_ignore() {
        let zeros_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zeros_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        let upper = GOOD.to_uppercase();
        let version_ff = GOOD.replacen("00-", "ff-", 1);
        let longer = format!("{GOOD}-extra");
        for bad in [
            "",
            "garbage",
            "00-xyz-00f067aa0ba902b7-01",
            zeros_trace,
            zeros_parent,
            &upper,
            &version_ff,
            &longer,
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "\0",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
            assert_eq!(trace_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_child_keeps_trace_and_flags_and_names_a_new_parent() {
        let parent = TraceParent::parse(GOOD).expect("valid");
        let child = parent.new_child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_ne!(child.parent_id, parent.parent_id);
        assert_ne!(child.parent_id, [0; 8]);
        assert_eq!(TraceParent::parse(&child.to_string()), Some(child));
        let fixed = parent.child([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            fixed.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_ne!(parent.child([0; 8]).parent_id, [0; 8]);
        // Unsampled stays unsampled.
        let unsampled = TraceParent { flags: 0, ..parent };
        assert!(!unsampled.new_child().sampled());
    }

    #[test]
    fn span_ids_are_random_and_non_zero() {
        let ids: std::collections::HashSet<[u8; 8]> = (0..100).map(|_| new_span_id()).collect();
        assert_eq!(ids.len(), 100);
        assert!(!ids.contains(&[0; 8]));
    }
}
