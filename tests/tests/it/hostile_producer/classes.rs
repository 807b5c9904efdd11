//! The hostile classes: each message built as bytes, a valid charge in all
//! but what makes it hostile.

use idem_inbox::raw::properties::{RawProperties, encode_content_header};
use idem_inbox::raw::{RawField, RawTable};
use idem_tests::hostile::{self, Class, Expect, HostileMessage};

/// Bytes that are not UTF-8 (an invalid start byte, then a BOM half).
const NOT_UTF8: &[u8] = b"\xff\xfe";
/// The oversize body: 48 times `IDEM_MAX_BODY_BYTES` (64 KiB by default).
const HUGE_BODY: usize = 3 * 1024 * 1024;

/// `NOT_UTF8` followed by `tail`.
fn not_utf8(tail: &str) -> Vec<u8> {
    [NOT_UTF8, tail.as_bytes()].concat()
}

/// One message: a valid charge with `marker`'s account, its properties
/// `json_properties(marker)` changed by `edit`.
fn message(marker: String, edit: impl FnOnce(&mut RawProperties)) -> HostileMessage {
    let mut properties = hostile::json_properties(marker.as_bytes());
    edit(&mut properties);
    let body = hostile::charge_body(&marker);
    HostileMessage {
        header: encode_content_header(body.len() as u64, &properties).unwrap(),
        message_id: properties.message_id.clone(),
        marker,
        body,
    }
}

/// A valid charge with `marker`'s account whose headers are the table
/// `table` builds to fit the bytes it is given (what a frame of `room`
/// bytes leaves of the content header); returns the message and the table's
/// size.
fn with_table(
    marker: String,
    table: impl FnOnce(usize) -> Vec<u8>,
    room: usize,
) -> (HostileMessage, usize) {
    let properties = hostile::json_properties(marker.as_bytes());
    let body = hostile::charge_body(&marker);
    let bare = hostile::header_with_table(body.len() as u64, &properties, &[0; 4]).len() - 4;
    let table = table(room - bare);
    let message = HostileMessage {
        header: hostile::header_with_table(body.len() as u64, &properties, &table),
        message_id: properties.message_id,
        marker,
        body,
    };
    (message, table.len())
}

/// A class of one message: non-UTF-8 bytes, put in by `edit`, in one short
/// string (or header) of an otherwise valid charge.
fn short_strings(name: &'static str, edit: fn(&mut RawProperties)) -> Class {
    Class {
        name,
        detail: String::new(),
        messages: vec![message(format!("hostile-{name}-0"), edit)],
        expect: Expect::Quarantined {
            reasons: &[],
            keeps_message_id: true,
        },
    }
}

/// Non-UTF-8 bytes in each property that is a short string, in a header
/// key, and in a header's long string.
fn encoding_classes() -> Vec<Class> {
    vec![
        short_strings("message_id", |p| {
            p.message_id = Some(not_utf8("hostile-message_id-0"))
        }),
        short_strings("app_id", |p| p.app_id = Some(not_utf8("shop"))),
        short_strings("reply_to", |p| p.reply_to = Some(not_utf8("shop.replies"))),
        short_strings("correlation_id", |p| {
            p.correlation_id = Some(not_utf8("corr-1"))
        }),
        short_strings("content_type", |p| {
            p.content_type = Some(not_utf8("application/json"))
        }),
        short_strings("type", |p| p.kind = Some(not_utf8("charge"))),
        short_strings("header_key", |p| {
            p.headers = Some(RawTable(vec![(
                not_utf8("x-key"),
                RawField::LongString(b"v".to_vec()),
            )]))
        }),
        // A long string is bytes to AMQP and to lapin, so this one is read
        // and decided like any delivery: charged (docs/contracts.md,
        // "Messages no library reads"); its header is kept nowhere.
        Class {
            expect: Expect::ChargedOnce,
            ..short_strings("header_long_string", |p| {
                p.headers = Some(RawTable(vec![(
                    b"x-bin".to_vec(),
                    RawField::LongString(not_utf8("value")),
                )]))
            })
        },
    ]
}

/// A header table that fills the frame: tables nested in tables, arrays
/// in arrays, 13,000+ entries; and field types nobody defines.
fn structure_classes(room: usize) -> Vec<Class> {
    let expect = Expect::Quarantined {
        reasons: &[],
        keeps_message_id: false,
    };
    let deep = |name: &'static str, chain: fn(usize) -> Vec<u8>, depth: fn(usize) -> usize| {
        let (message, size) = with_table(format!("hostile-{name}-0"), chain, room);
        Class {
            name,
            detail: format!("{} deep, {size} B", depth(size)),
            messages: vec![message],
            expect: expect.clone(),
        }
    };
    let entries = 120 * 1024 / 9; // 9 bytes an entry: ~120 KiB, one frame
    vec![
        deep(
            "deep_tables",
            |budget| hostile::table_chain(hostile::table_chain_depth(budget)),
            hostile::table_chain_depth,
        ),
        deep(
            "deep_arrays",
            |budget| hostile::array_chain(hostile::array_chain_depth(budget)),
            hostile::array_chain_depth,
        ),
        Class {
            name: "huge_table",
            detail: format!("{entries} entries"),
            messages: vec![message("hostile-huge_table-0".into(), |p| {
                p.headers = Some(hostile::huge_table(entries));
            })],
            expect: expect.clone(),
        },
        Class {
            name: "unknown_type",
            detail: "Z, 0x00, 0xff".into(),
            messages: [b'Z', 0x00, 0xff]
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    let marker = format!("hostile-unknown_type-{i}");
                    with_table(marker, |_| hostile::unknown_type_table(t), room).0
                })
                .collect(),
            expect,
        },
    ]
}

/// A valid charge padded (in its description) to [`HUGE_BODY`].
fn too_large_class() -> Class {
    let marker = "hostile-too_large-0";
    let mut body = hostile::charge_body(marker);
    body.truncate(body.len() - 1);
    body.extend_from_slice(br#","description":""#);
    body.resize(HUGE_BODY - 2, b'x');
    body.extend_from_slice(br#""}"#);
    let properties = hostile::json_properties(marker.as_bytes());
    Class {
        name: "too_large",
        detail: format!("{} MiB body", HUGE_BODY >> 20),
        messages: vec![HostileMessage {
            marker: marker.into(),
            header: encode_content_header(body.len() as u64, &properties).unwrap(),
            body,
            message_id: properties.message_id,
        }],
        expect: Expect::Quarantined {
            reasons: &["too_large"],
            keeps_message_id: true,
        },
    }
}

/// Every hostile class, sized for a broker whose `frame_max` is `frame_max`.
pub fn classes(frame_max: u32) -> Vec<Class> {
    let mut all = encoding_classes();
    all.extend(structure_classes(hostile::header_room(frame_max)));
    all.push(too_large_class());
    // Tenants (issue 12, "Tenants"): the scope/reply_to class is added here
    // by the tenants work (`Expect::ChargedOnce` for a refused reply_to).
    all
}
