#![allow(clippy::unwrap_used)]

use super::*;
use crate::raw::table::RawField;

fn all_properties() -> RawProperties {
    RawProperties {
        content_type: Some(b"application/json".to_vec()),
        content_encoding: Some(b"\xc3\x28".to_vec()),
        headers: Some(RawTable(vec![(
            b"\xff".to_vec(),
            RawField::LongString(b"\xfe".to_vec()),
        )])),
        delivery_mode: Some(2),
        priority: Some(9),
        correlation_id: Some(b"\x80".to_vec()),
        reply_to: Some(b"reply\xff".to_vec()),
        expiration: Some(b"60000".to_vec()),
        message_id: Some(b"\xff\xfe".to_vec()),
        timestamp: Some(1_700_000_000),
        kind: Some(b"t\xfe".to_vec()),
        user_id: Some(b"guest".to_vec()),
        app_id: Some(b"\xe2\x82".to_vec()),
        cluster_id: Some(Vec::new()),
    }
}

#[test]
fn every_property_round_trips_as_bytes() {
    let props = all_properties();
    let payload = encode_content_header(42, &props).unwrap();
    let header = parse_content_header(&payload, &Limits::DEFAULT).unwrap();
    assert_eq!(
        (header.class_id, header.weight, header.body_size),
        (60, 0, 42)
    );
    assert_eq!(header.properties, props);
    assert_eq!(body_size(&payload), Ok(42));
}

/// The bytes of a header with only message_id `\xff\xfe`, written by hand.
#[test]
fn a_non_utf8_message_id_parses_from_hand_written_bytes() {
    let payload = b"\x00\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x00\x80\x02\xff\xfe";
    let header = parse_content_header(payload, &Limits::DEFAULT).unwrap();
    assert_eq!(header.body_size, 5);
    assert_eq!(
        header.properties.message_id.as_deref(),
        Some(&b"\xff\xfe"[..])
    );
    assert_eq!(
        encode_content_header(5, &header.properties).unwrap(),
        payload
    );
}

#[test]
fn no_properties_is_an_empty_set() {
    let payload = encode_content_header(0, &RawProperties::default()).unwrap();
    assert_eq!(payload.len(), 14);
    let header = parse_content_header(&payload, &Limits::DEFAULT).unwrap();
    assert_eq!(header.properties, RawProperties::default());
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    let payload = encode_content_header(7, &all_properties()).unwrap();
    for cut in 0..payload.len() {
        assert!(
            parse_content_header(&payload[..cut], &Limits::DEFAULT).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn malformed_headers_are_typed_errors() {
    let mut payload = encode_content_header(0, &RawProperties::default()).unwrap();
    payload[1] = 10;
    assert_eq!(
        parse_content_header(&payload, &Limits::DEFAULT),
        Err(ParseError::NotBasic(10))
    );
    let mut payload = encode_content_header(0, &RawProperties::default()).unwrap();
    payload[13] = 1;
    assert!(matches!(
        parse_content_header(&payload, &Limits::DEFAULT),
        Err(ParseError::UnknownPropertyFlags(_))
    ));
    let mut payload = encode_content_header(0, &RawProperties::default()).unwrap();
    payload.push(0);
    assert_eq!(
        parse_content_header(&payload, &Limits::DEFAULT),
        Err(ParseError::TrailingBytes {
            offset: 14,
            count: 1
        })
    );
}

#[test]
fn a_header_over_the_byte_limit_is_refused_before_parsing() {
    let payload = nested_headers_payload(0, 100);
    let limits = Limits {
        max_bytes: 100,
        ..Limits::DEFAULT
    };
    let err = parse_content_header(&payload, &limits).unwrap_err();
    assert_eq!(
        err,
        ParseError::TooLarge {
            size: payload.len(),
            limit: 100
        }
    );
    assert_eq!(err.limit(), Some("bytes"));
}

/// The test publisher's deep header: well-formed (it parses at the limit)
/// and refused with the depth error past it.
#[test]
fn nested_headers_payload_is_well_formed_at_any_depth() {
    let at_limit = nested_headers_payload(3, 64);
    assert_eq!(
        parse_content_header(&at_limit, &Limits::DEFAULT)
            .unwrap()
            .body_size,
        3
    );
    let deep = nested_headers_payload(3, 12_000);
    assert_eq!(deep.len(), 14 + 7 * 12_000 - 3);
    assert_eq!(
        parse_content_header(&deep, &Limits::DEFAULT),
        Err(ParseError::TooDeep { limit: 64 })
    );
    let lax = Limits {
        max_depth: 20_000,
        ..Limits::DEFAULT
    };
    // Only the depth is wrong: with the bound raised it parses (on the test thread's stack).
    let moderate = nested_headers_payload(3, 500);
    assert!(parse_content_header(&moderate, &lax).is_ok());
}

/// Any bytes give a header or an error, never a panic: a valid header with
/// random bytes overwritten, and random bytes behind a valid prefix
/// (a deterministic xorshift, so a failure reproduces).
#[test]
fn mutated_headers_never_panic() {
    let valid = encode_content_header(9, &all_properties()).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut bytes = valid.clone();
        for _ in 0..(next() % 4 + 1) {
            let at = next() as usize % bytes.len();
            bytes[at] = next() as u8;
        }
        let cut = next() as usize % (bytes.len() + 1);
        let _ = parse_content_header(&bytes[..cut], &Limits::DEFAULT);
        let noise: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
        let _ = parse_content_header(&[&valid[..14], &noise].concat(), &Limits::DEFAULT);
    }
}

#[test]
fn properties_beside_a_refused_headers_table_are_kept() {
    let deep = nested_headers_payload(3, 100);
    assert_eq!(
        parse_content_header(&deep, &Limits::DEFAULT).map(|h| h.properties),
        Err(ParseError::TooDeep { limit: 64 })
    );
    // The same header with a message_id after the table (flag bit 7).
    let mut with_id = deep.clone();
    let flags = u16::from_be_bytes([with_id[12], with_id[13]]) | (1 << 7);
    with_id[12..14].copy_from_slice(&flags.to_be_bytes());
    with_id.extend_from_slice(b"\x02\xff\xfe");
    let beside = properties_beside_headers(&with_id).expect("the rest parses");
    assert_eq!(beside.message_id.as_deref(), Some(&b"\xff\xfe"[..]));
    assert_eq!(beside.headers, None);
    assert_eq!(
        properties_beside_headers(&with_id[..with_id.len() - 1]),
        None,
        "truncated"
    );
}
