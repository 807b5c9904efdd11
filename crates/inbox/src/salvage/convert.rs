//! A raw delivery read as lapin would have read it, when it can be; else
//! why it cannot, in words an operator can act on.
//!
//! The conversion accepts exactly what lapin's own parser accepts within
//! idem's bounds: every short string (property, header key) UTF-8, every
//! field type one lapin knows. Whatever converts is decided like any
//! delivery lapin handed over; whatever does not is quarantined with its raw
//! bytes (`super::record`).

use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString, ShortString};

use crate::raw::{RawField, RawProperties, RawTable};

/// Why a raw delivery's properties cannot be read as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The property, or the header key path, that holds the bytes.
    pub field: String,
    /// What is wrong with them.
    pub problem: &'static str,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.problem)
    }
}

const NOT_UTF8: &str = "is not UTF-8";

/// `properties` as lapin's type, or the first field that lapin would refuse.
pub fn to_lapin(p: &RawProperties) -> Result<BasicProperties, Unreadable> {
    let text = |name: &str, v: &Option<Vec<u8>>| -> Result<Option<ShortString>, Unreadable> {
        v.as_deref()
            .map(|bytes| short(bytes, || name.to_owned()))
            .transpose()
    };
    let mut out = BasicProperties::default();
    if let Some(v) = text("content_type", &p.content_type)? {
        out = out.with_content_type(v);
    }
    if let Some(v) = text("content_encoding", &p.content_encoding)? {
        out = out.with_content_encoding(v);
    }
    if let Some(h) = &p.headers {
        out = out.with_headers(table(h, "headers")?);
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = text("correlation_id", &p.correlation_id)? {
        out = out.with_correlation_id(v);
    }
    if let Some(v) = text("reply_to", &p.reply_to)? {
        out = out.with_reply_to(v);
    }
    if let Some(v) = text("expiration", &p.expiration)? {
        out = out.with_expiration(v);
    }
    if let Some(v) = text("message_id", &p.message_id)? {
        out = out.with_message_id(v);
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = text("type", &p.kind)? {
        out = out.with_type(v);
    }
    if let Some(v) = text("user_id", &p.user_id)? {
        out = out.with_user_id(v);
    }
    if let Some(v) = text("app_id", &p.app_id)? {
        out = out.with_app_id(v);
    }
    if let Some(v) = text("cluster_id", &p.cluster_id)? {
        out = out.with_cluster_id(v);
    }
    Ok(out)
}

fn short(bytes: &[u8], field: impl FnOnce() -> String) -> Result<ShortString, Unreadable> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(ShortString::from(s)),
        Err(_) => Err(Unreadable {
            field: field(),
            problem: NOT_UTF8,
        }),
    }
}

/// The raw tree is already bounded (`raw::Limits`: depth 64), so this
/// recursion is too. The path of a refused key is built on the way out of
/// the error only: a wide, deep header of valid keys costs no formatting.
fn table(t: &RawTable, path: &str) -> Result<FieldTable, Unreadable> {
    inner_table(t).map_err(|inner| Unreadable {
        field: format!("{path}{}", inner.field),
        problem: inner.problem,
    })
}

/// As [`table`], the error's `field` relative to this table (`.key…`, or
/// ` key <bytes>`).
fn inner_table(t: &RawTable) -> Result<FieldTable, Unreadable> {
    let mut out = FieldTable::default();
    for (key, value) in &t.0 {
        let name = short(key, || format!(" key {}", shown(key)))?;
        let converted = field(value).map_err(|inner| Unreadable {
            field: format!(".{name}{}", inner.field),
            problem: inner.problem,
        })?;
        out.insert(name, converted);
    }
    Ok(out)
}

fn field(value: &RawField) -> Result<AMQPValue, Unreadable> {
    Ok(match value {
        RawField::Bool(v) => AMQPValue::Boolean(*v),
        RawField::I8(v) => AMQPValue::ShortShortInt(*v),
        RawField::U8(v) => AMQPValue::ShortShortUInt(*v),
        RawField::I16(v) => AMQPValue::ShortInt(*v),
        RawField::U16(v) => AMQPValue::ShortUInt(*v),
        RawField::I32(v) => AMQPValue::LongInt(*v),
        RawField::U32(v) => AMQPValue::LongUInt(*v),
        RawField::I64(v) => AMQPValue::LongLongInt(*v),
        // lapin (like RabbitMQ) reads `L` as a signed 64-bit integer: the
        // same eight bytes, so the same bits.
        RawField::U64(v) => AMQPValue::LongLongInt(i64::from_be_bytes(v.to_be_bytes())),
        RawField::F32(v) => AMQPValue::Float(*v),
        RawField::F64(v) => AMQPValue::Double(*v),
        RawField::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        RawField::LongString(v) => AMQPValue::LongString(LongString::from(v.clone())),
        RawField::Bytes(v) => AMQPValue::ByteArray(v.clone().into()),
        RawField::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(field(item).map_err(|inner| Unreadable {
                    field: format!("[{i}]{}", inner.field),
                    problem: inner.problem,
                })?);
            }
            AMQPValue::FieldArray(FieldArray::from(out))
        }
        RawField::Timestamp(v) => AMQPValue::Timestamp(*v),
        RawField::Table(t) => AMQPValue::FieldTable(inner_table(t)?),
        RawField::Void => AMQPValue::Void,
    })
}

/// Bytes for a message: printable ASCII as is, the rest `\xNN`.
pub fn shown(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> RawProperties {
        RawProperties {
            message_id: Some(b"m-1".to_vec()),
            app_id: Some(b"shop".to_vec()),
            content_type: Some(b"application/json".to_vec()),
            headers: Some(RawTable(vec![
                (b"n".to_vec(), RawField::U64(u64::MAX)),
                (
                    b"t".to_vec(),
                    RawField::Table(RawTable(vec![(
                        b"s".to_vec(),
                        RawField::LongString(b"\xff ok in a long string".to_vec()),
                    )])),
                ),
            ])),
            ..RawProperties::default()
        }
    }

    #[test]
    fn text_properties_convert_with_their_values() {
        let p = to_lapin(&props()).expect("converts");
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
        assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("shop"));
        let headers = p.headers().as_ref().expect("headers");
        assert_eq!(
            headers.inner().get("n"),
            Some(&AMQPValue::LongLongInt(-1)),
            "L reads as lapin reads it"
        );
        let Some(AMQPValue::FieldTable(t)) = headers.inner().get("t") else {
            panic!("nested table kept")
        };
        assert_eq!(
            t.inner().get("s"),
            Some(&AMQPValue::LongString(
                b"\xff ok in a long string".to_vec().into()
            )),
            "long strings are bytes: any byte is fine there"
        );
    }

    #[test]
    fn the_first_non_utf8_short_string_is_named() {
        let mut p = props();
        p.reply_to = Some(b"q\xfe".to_vec());
        p.kind = Some(b"\xff".to_vec());
        let err = to_lapin(&p).expect_err("refused");
        assert_eq!(err.field, "reply_to");
        assert_eq!(err.to_string(), "reply_to is not UTF-8");

        let mut p = props();
        p.headers = Some(RawTable(vec![(
            b"outer".to_vec(),
            RawField::Array(vec![RawField::Table(RawTable(vec![(
                b"k\xff\x1b".to_vec(),
                RawField::Void,
            )]))]),
        )]));
        let err = to_lapin(&p).expect_err("refused");
        assert_eq!(err.field, "headers.outer[0] key k\\xff\\x1b");
    }
}
