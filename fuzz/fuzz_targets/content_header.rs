//! AMQP content header and body bytes -> decision, through the code the
//! inbox runs for a message its client library refuses: idem's own parser
//! (`idem_inbox::raw`), then the salvage verdict (`idem_inbox::salvage::verdict`),
//! then, for a message lapin would have read, the admission every delivery
//! goes through (`idem_inbox::Admission::admit`).
//!
//! Input layout: a little-endian u16 `n`, then `n` bytes of content header
//! payload (class, weight, body size, flags, properties), then the body.
//! Checked: nothing panics or recurses past its depth bound (a crash here is
//! a stack overflow or a panic); a header that parses re-encodes to bytes
//! that parse to the same header; every input gets exactly one decision, the
//! same twice, with a documented reason code when it is refused.

#![no_main]

use idem_inbox::raw::properties::encode_content_header;
use idem_inbox::raw::{Limits, parse_content_header};
use idem_inbox::salvage::{self, Verdict};
use idem_inbox::{Admission, Incoming};
use libfuzzer_sys::fuzz_target;

/// Reason codes a quarantined message may carry (docs/contracts.md).
const CODES: &[&str] = &[
    "missing_message_id",
    "bad_key",
    "scope_not_allowed",
    "header_limits",
    "content_type",
    "too_large",
    "not_json",
    "schema",
    "not_utf8",
    "malformed_header",
];

/// The decision before the database: a reference id to charge, or a code.
fn decide(payload: &[u8], body: &[u8], admission: &Admission) -> Result<String, &'static str> {
    let properties = parse_content_header(payload, &Limits::DEFAULT).map(|h| h.properties);
    match salvage::verdict(&properties, true, body.len() as u64) {
        Verdict::Raw { code, .. } => Err(code),
        Verdict::Batch(properties) => {
            let item = Incoming {
                properties: &properties,
                body,
                redelivered: false,
            };
            admission
                .admit(&item)
                .map(|r| r.reference_id().to_string())
                .map_err(|e| e.code())
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (payload, body) = rest.split_at(n);
    let admission = Admission::open(64 * 1024);
    let decision = decide(payload, body, &admission);
    assert_eq!(decision, decide(payload, body, &admission), "not deterministic");
    if let Err(code) = decision {
        assert!(CODES.contains(&code), "undocumented code {code}");
    }
    if let Ok(header) = parse_content_header(payload, &Limits::DEFAULT) {
        let again = encode_content_header(header.body_size, &header.properties)
            .expect("a parsed header re-encodes");
        let reparsed = parse_content_header(&again, &Limits::DEFAULT).expect("re-encoded parses");
        // Debug, not PartialEq: a NaN float header equals itself only as text.
        assert_eq!(
            format!("{:?}", reparsed.properties),
            format!("{:?}", header.properties)
        );
        assert_eq!(reparsed.body_size, header.body_size);
    }
});
