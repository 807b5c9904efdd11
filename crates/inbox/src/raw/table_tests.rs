#![allow(clippy::unwrap_used)]

use super::*;
use crate::raw::frame::{Cursor, Writer};

fn parse(bytes: &[u8]) -> Result<RawTable, ParseError> {
    parse_table(&mut Cursor::new(bytes), &Limits::DEFAULT)
}

fn encoded(table: &RawTable) -> Vec<u8> {
    let mut w = Writer::default();
    encode_table(table, &mut w).unwrap();
    w.bytes
}

/// One value of every type RabbitMQ sends, keys and strings not UTF-8.
fn every_type() -> RawTable {
    let fields = vec![
        RawField::Bool(true),
        RawField::I8(-2),
        RawField::U8(250),
        RawField::I16(-300),
        RawField::U16(60_000),
        RawField::I32(-70_000),
        RawField::U32(4_000_000_000),
        RawField::I64(-5),
        RawField::U64(u64::MAX),
        RawField::F32(1.5),
        RawField::F64(-2.25),
        RawField::Decimal {
            scale: 2,
            value: 1234,
        },
        RawField::LongString(b"\xff\xfe long".to_vec()),
        RawField::Bytes(vec![0, 1, 0xff]),
        RawField::Array(vec![RawField::Void, RawField::U8(1)]),
        RawField::Timestamp(1_700_000_000),
        RawField::Table(RawTable(vec![(b"in\xc3".to_vec(), RawField::Bool(false))])),
        RawField::Void,
    ];
    RawTable(
        fields
            .into_iter()
            .enumerate()
            .map(|(i, f)| (vec![b'k', i as u8, 0xff], f))
            .collect(),
    )
}

#[test]
fn every_field_type_round_trips_with_non_utf8_bytes_kept() {
    let table = every_type();
    assert_eq!(parse(&encoded(&table)).unwrap(), table);
}

/// Each type's wire bytes, pinned independently of the encoder.
#[test]
fn field_types_parse_from_hand_written_bytes() {
    let cases: [(&[u8], RawField); 6] = [
        (b"t\x01", RawField::Bool(true)),
        (b"s\xff\xfe", RawField::I16(-2)),
        (b"I\xff\xff\xff\xfe", RawField::I32(-2)),
        (
            b"D\x02\x00\x00\x04\xd2",
            RawField::Decimal {
                scale: 2,
                value: 1234,
            },
        ),
        (
            b"S\x00\x00\x00\x02\xff\xfe",
            RawField::LongString(vec![0xff, 0xfe]),
        ),
        (b"T\x00\x00\x00\x00\x00\x00\x00\x07", RawField::Timestamp(7)),
    ];
    for (value, expected) in cases {
        let entry = [&b"\x01k"[..], value].concat();
        let bytes = [&(entry.len() as u32).to_be_bytes()[..], &entry].concat();
        assert_eq!(parse(&bytes).unwrap().0, vec![(b"k".to_vec(), expected)]);
    }
}

#[test]
fn an_unknown_type_byte_is_an_error_naming_it() {
    let bytes = b"\x00\x00\x00\x03\x01kZ";
    assert_eq!(
        parse(bytes),
        Err(ParseError::UnknownFieldType {
            type_byte: b'Z',
            offset: 6
        })
    );
}

/// Cut anywhere, the input gives an error (never a panic, never a wrong value).
#[test]
fn truncation_at_every_offset_is_an_error() {
    let bytes = encoded(&every_type());
    for cut in 0..bytes.len() {
        assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

/// Nesting of a given depth made of tables (`F`) or arrays (`A`), built
/// without recursion.
fn nested(depth: usize, kind: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for level in 0..depth {
        let per_level = if kind == b'F' { 7 } else { 5 };
        out.extend_from_slice(&((per_level * (depth - 1 - level)) as u32).to_be_bytes());
        if level + 1 < depth {
            if kind == b'F' {
                out.extend_from_slice(b"\x01a");
            }
            out.push(kind);
        }
    }
    // Arrays: the outermost value is a table holding one array entry.
    if kind == b'A' {
        let mut table = Vec::new();
        table.extend_from_slice(&((out.len() + 3) as u32).to_be_bytes());
        table.extend_from_slice(b"\x01aA");
        table.extend_from_slice(&out);
        return table;
    }
    out
}

#[test]
fn depth_up_to_the_limit_parses_and_one_more_does_not() {
    let limits = Limits::DEFAULT;
    assert!(parse(&nested(limits.max_depth, b'F')).is_ok());
    let too_deep = parse(&nested(limits.max_depth + 1, b'F')).unwrap_err();
    assert_eq!(too_deep, ParseError::TooDeep { limit: 64 });
    assert_eq!(too_deep.limit(), Some("depth"));
}

/// Ten thousand levels, on a thread with a 256 KiB stack: the depth error
/// comes back at once, with no stack growth past the 64-level bound.
#[test]
fn ten_thousand_levels_give_the_depth_error_on_a_small_stack() {
    for kind in [b'F', b'A'] {
        let bytes = nested(10_000, kind);
        let started = std::time::Instant::now();
        let result = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || parse(&bytes))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(result, Err(ParseError::TooDeep { limit: 64 }));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}

#[test]
fn too_many_entries_is_its_own_error() {
    let table = RawTable((0..11).map(|i| (vec![i], RawField::Void)).collect());
    let limits = Limits {
        max_entries: 10,
        ..Limits::DEFAULT
    };
    let err = parse_table(&mut Cursor::new(&encoded(&table)), &limits).unwrap_err();
    assert_eq!(err, ParseError::TooManyEntries { limit: 10 });
    assert_eq!(err.limit(), Some("entries"));
}

#[test]
fn a_table_length_past_the_input_is_truncation() {
    assert_eq!(
        parse(b"\xff\xff\xff\xff\x01"),
        Err(ParseError::Truncated {
            offset: 4,
            needed: u32::MAX as usize
        })
    );
}
