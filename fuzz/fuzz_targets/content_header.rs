//! AMQP content header and body bytes -> decision, through idem's own raw
//! reader (`idem_inbox::raw`), the path for messages the client library refuses.
//!
//! Input layout: a little-endian u16 `n`, then `n` bytes of content header
//! payload (class, weight, body size, flags, properties), then the body.
//! Checked: parsing never panics and never recurses past its depth bound
//! (a crash here is a stack overflow or a panic); a header that parses
//! re-encodes to bytes that parse to the same header; and its properties
//! with the body always get exactly one decision from the message contract.
//! Until the inbox exposes its raw-delivery decision, this target maps bytes
//! to the contract itself: short strings that are not UTF-8 are a
//! quarantine, as any header that does not parse is.

#![no_main]

use idem_inbox::raw::properties::encode_content_header;
use idem_inbox::raw::{Limits, RawField, RawProperties, parse_content_header};
use idem_message::Inbound;
use libfuzzer_sys::fuzz_target;

fn text(v: &Option<Vec<u8>>) -> Result<Option<&str>, ()> {
    v.as_deref()
        .map(std::str::from_utf8)
        .transpose()
        .map_err(|_| ())
}

fn traceparent(p: &RawProperties) -> Option<&str> {
    let headers = p.headers.as_ref()?;
    headers.0.iter().find_map(|(k, v)| match v {
        RawField::LongString(s) if k == b"traceparent" => std::str::from_utf8(s).ok(),
        _ => None,
    })
}

/// The contract's decision for parsed properties, or `None` (quarantine) if
/// a property the contract reads is not UTF-8.
fn decide(p: &RawProperties, body: &[u8]) -> Option<Result<String, &'static str>> {
    let inbound = Inbound {
        message_id: text(&p.message_id).ok()?,
        app_id: text(&p.app_id).ok()?,
        content_type: text(&p.content_type).ok()?,
        reply_to: text(&p.reply_to).ok()?,
        correlation_id: text(&p.correlation_id).ok()?,
        traceparent: traceparent(p),
        body,
    };
    Some(
        inbound
            .parse(64 * 1024)
            .map(|r| r.reference_id().to_string())
            .map_err(|e| e.code()),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let n = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (payload, body) = rest.split_at(n);
    let Ok(header) = parse_content_header(payload, &Limits::DEFAULT) else {
        return;
    };
    let again = encode_content_header(header.body_size, &header.properties)
        .expect("a parsed header re-encodes");
    let reparsed = parse_content_header(&again, &Limits::DEFAULT).expect("re-encoded parses");
    // Debug, not PartialEq: a NaN float header equals itself only as text.
    assert_eq!(
        format!("{:?}", reparsed.properties),
        format!("{:?}", header.properties)
    );
    assert_eq!(reparsed.body_size, header.body_size);
    let decision = decide(&header.properties, body);
    assert_eq!(
        decision,
        decide(&header.properties, body),
        "not deterministic"
    );
});
