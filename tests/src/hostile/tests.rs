//! The hand-built frames are what they claim to be: idem's own parser
//! (with bounds raised where a test needs them) reads them back.

use idem_inbox::raw::properties::parse_content_header;
use idem_inbox::raw::{Limits, ParseError, RawField, RawTable};

use super::*;

/// A content header of `table`, parsed with `limits`.
fn parse(table: &[u8], limits: Limits) -> Result<RawProperties, ParseError> {
    let header = header_with_table(7, &json_properties(b"m-1"), table);
    parse_content_header(&header, &limits).map(|h| {
        assert_eq!(h.body_size, 7);
        h.properties
    })
}

/// Depth of a chain of single-entry tables and single-element arrays.
fn depth(table: &RawTable) -> usize {
    let mut depth = 1;
    let mut field = &table.0[0].1;
    loop {
        depth += 1;
        field = match field {
            RawField::Table(t) if !t.0.is_empty() => &t.0[0].1,
            RawField::Array(a) if !a.is_empty() => &a[0],
            _ => return depth,
        };
    }
}

const DEEP: Limits = Limits {
    max_depth: 1_000,
    ..Limits::DEFAULT
};

#[test]
fn a_spliced_table_sits_between_content_type_and_delivery_mode() {
    let table = crate::hostile::huge_table(2);
    let mut w = idem_inbox::raw::frame::Writer::default();
    idem_inbox::raw::table::encode_table(&table, &mut w).unwrap();
    let spliced = header_with_table(3, &json_properties(b"m-1"), &w.bytes);
    let encoded = encode_content_header(
        3,
        &RawProperties {
            headers: Some(table),
            ..json_properties(b"m-1")
        },
    )
    .unwrap();
    assert_eq!(spliced, encoded);
}

#[test]
fn chains_have_the_stated_size_and_depth() {
    let tables = table_chain(100);
    assert_eq!(tables.len(), 7 * 100 - 3);
    assert_eq!(table_chain_depth(tables.len()), 100);
    let headers = parse(&tables, DEEP).unwrap().headers.unwrap();
    assert_eq!(depth(&headers), 100);

    let arrays = array_chain(100);
    assert_eq!(arrays.len(), 5 * 100 + 6);
    assert_eq!(array_chain_depth(arrays.len()), 100);
    let headers = parse(&arrays, DEEP).unwrap().headers.unwrap();
    assert_eq!(depth(&headers), 1 + 100, "the table, then 100 arrays");
}

#[test]
fn an_unknown_type_and_a_huge_table_are_refused_by_idems_parser() {
    for type_byte in [b'Z', 0x00, 0xff] {
        assert!(matches!(
            parse(&unknown_type_table(type_byte), Limits::DEFAULT),
            Err(ParseError::UnknownFieldType { type_byte: t, .. }) if t == type_byte
        ));
    }
    let huge = huge_table(120 * 1024 / 9);
    assert!(huge.0.len() > Limits::DEFAULT.max_entries);
    let mut w = idem_inbox::raw::frame::Writer::default();
    idem_inbox::raw::table::encode_table(&huge, &mut w).unwrap();
    assert!((115 * 1024..header_room(128 * 1024)).contains(&w.bytes.len()));
}
