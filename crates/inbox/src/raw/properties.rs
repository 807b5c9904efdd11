//! The content header of a Basic message (AMQP 0-9-1 §4.2.6.1): class,
//! weight, body size, property flags, then the properties present, every
//! short string kept as bytes and the headers a bounded [`RawTable`].

use super::ParseError;
use super::frame::{Cursor, Writer};
use super::table::{Limits, RawTable, encode_table, parse_table};

/// The Basic class; a content header of any other class is refused.
pub const BASIC_CLASS: u16 = 60;

/// Property flag bits, most significant first, in wire order.
mod flag {
    pub const CONTENT_TYPE: u16 = 1 << 15;
    pub const CONTENT_ENCODING: u16 = 1 << 14;
    pub const HEADERS: u16 = 1 << 13;
    pub const DELIVERY_MODE: u16 = 1 << 12;
    pub const PRIORITY: u16 = 1 << 11;
    pub const CORRELATION_ID: u16 = 1 << 10;
    pub const REPLY_TO: u16 = 1 << 9;
    pub const EXPIRATION: u16 = 1 << 8;
    pub const MESSAGE_ID: u16 = 1 << 7;
    pub const TIMESTAMP: u16 = 1 << 6;
    pub const TYPE: u16 = 1 << 5;
    pub const USER_ID: u16 = 1 << 4;
    pub const APP_ID: u16 = 1 << 3;
    pub const CLUSTER_ID: u16 = 1 << 2;
    /// Basic has 14 properties: a second flags word is never needed.
    pub const CONTINUATION: u16 = 1;
}

/// Basic properties as sent: `None` when the flag is clear.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawProperties {
    pub content_type: Option<Vec<u8>>,
    pub content_encoding: Option<Vec<u8>>,
    pub headers: Option<RawTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<Vec<u8>>,
    pub reply_to: Option<Vec<u8>>,
    pub expiration: Option<Vec<u8>>,
    pub message_id: Option<Vec<u8>>,
    pub timestamp: Option<u64>,
    pub kind: Option<Vec<u8>>,
    pub user_id: Option<Vec<u8>>,
    pub app_id: Option<Vec<u8>>,
    pub cluster_id: Option<Vec<u8>>,
}

/// A parsed content header.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    /// Always 0 in 0-9-1; kept, not checked.
    pub weight: u16,
    /// What the body frames that follow add up to.
    pub body_size: u64,
    pub properties: RawProperties,
}

/// The body size from the first 12 bytes, even when the properties after
/// them do not parse: a reader needs it to drain the body frames.
pub fn body_size(payload: &[u8]) -> Result<u64, ParseError> {
    let mut c = Cursor::new(payload);
    c.take(4)?;
    c.u64()
}

/// Parse a content header frame's payload. Never panics, whatever the bytes.
pub fn parse_content_header(payload: &[u8], limits: &Limits) -> Result<ContentHeader, ParseError> {
    if payload.len() > limits.max_bytes {
        return Err(ParseError::TooLarge {
            size: payload.len(),
            limit: limits.max_bytes,
        });
    }
    let mut c = Cursor::new(payload);
    let class_id = c.u16()?;
    if class_id != BASIC_CLASS {
        return Err(ParseError::NotBasic(class_id));
    }
    let weight = c.u16()?;
    let body_size = c.u64()?;
    let flags = c.u16()?;
    if flags & flag::CONTINUATION != 0 {
        return Err(ParseError::UnknownPropertyFlags(flags));
    }
    let properties = parse_properties(&mut c, flags, Some(limits))?;
    if c.remaining() > 0 {
        return Err(ParseError::TrailingBytes {
            offset: c.offset(),
            count: c.remaining(),
        });
    }
    Ok(ContentHeader {
        class_id,
        weight,
        body_size,
        properties,
    })
}

/// The properties of a content header whose headers table does not parse
/// (past a bound, an unknown type inside): every other property, the table
/// skipped by its length, so a quarantined message keeps its `message_id`.
/// `None` if even that fails.
pub fn properties_beside_headers(payload: &[u8]) -> Option<RawProperties> {
    let mut c = Cursor::new(payload);
    if c.u16().ok()? != BASIC_CLASS {
        return None;
    }
    c.take(10).ok()?;
    let flags = c.u16().ok()?;
    if flags & flag::CONTINUATION != 0 {
        return None;
    }
    let properties = parse_properties(&mut c, flags, None).ok()?;
    (c.remaining() == 0).then_some(properties)
}

/// The properties after the flags; the headers table parsed within
/// `limits`, or skipped by its length when `limits` is `None`.
fn parse_properties(
    c: &mut Cursor<'_>,
    flags: u16,
    limits: Option<&Limits>,
) -> Result<RawProperties, ParseError> {
    let short = |c: &mut Cursor<'_>, bit: u16| -> Result<Option<Vec<u8>>, ParseError> {
        if flags & bit == 0 {
            return Ok(None);
        }
        c.short_bytes().map(|b| Some(b.to_vec()))
    };
    let octet = |c: &mut Cursor<'_>, bit: u16| (flags & bit != 0).then(|| c.u8()).transpose();
    Ok(RawProperties {
        content_type: short(c, flag::CONTENT_TYPE)?,
        content_encoding: short(c, flag::CONTENT_ENCODING)?,
        headers: match (flags & flag::HEADERS != 0, limits) {
            (false, _) => None,
            (true, Some(limits)) => Some(parse_table(c, limits)?),
            (true, None) => {
                c.long_bytes()?;
                None
            }
        },
        delivery_mode: octet(c, flag::DELIVERY_MODE)?,
        priority: octet(c, flag::PRIORITY)?,
        correlation_id: short(c, flag::CORRELATION_ID)?,
        reply_to: short(c, flag::REPLY_TO)?,
        expiration: short(c, flag::EXPIRATION)?,
        message_id: short(c, flag::MESSAGE_ID)?,
        timestamp: (flags & flag::TIMESTAMP != 0)
            .then(|| c.u64())
            .transpose()?,
        kind: short(c, flag::TYPE)?,
        user_id: short(c, flag::USER_ID)?,
        app_id: short(c, flag::APP_ID)?,
        cluster_id: short(c, flag::CLUSTER_ID)?,
    })
}

/// Encode a Basic content header payload (for publishing; the frame around
/// it is the caller's).
pub fn encode_content_header(body_size: u64, p: &RawProperties) -> Result<Vec<u8>, ParseError> {
    let mut flags = 0u16;
    let mut w = Writer::default();
    let mut short = |w: &mut Writer, bit: u16, v: &Option<Vec<u8>>| -> Result<(), ParseError> {
        if let Some(v) = v {
            flags |= bit;
            w.short_bytes(v)?;
        }
        Ok(())
    };
    short(&mut w, flag::CONTENT_TYPE, &p.content_type)?;
    short(&mut w, flag::CONTENT_ENCODING, &p.content_encoding)?;
    if let Some(h) = &p.headers {
        encode_table(h, &mut w)?;
    }
    if let Some(v) = p.delivery_mode {
        w.u8(v);
    }
    if let Some(v) = p.priority {
        w.u8(v);
    }
    short(&mut w, flag::CORRELATION_ID, &p.correlation_id)?;
    short(&mut w, flag::REPLY_TO, &p.reply_to)?;
    short(&mut w, flag::EXPIRATION, &p.expiration)?;
    short(&mut w, flag::MESSAGE_ID, &p.message_id)?;
    if let Some(v) = p.timestamp {
        w.u64(v);
    }
    short(&mut w, flag::TYPE, &p.kind)?;
    short(&mut w, flag::USER_ID, &p.user_id)?;
    short(&mut w, flag::APP_ID, &p.app_id)?;
    short(&mut w, flag::CLUSTER_ID, &p.cluster_id)?;
    flags |= [
        (p.headers.is_some(), flag::HEADERS),
        (p.delivery_mode.is_some(), flag::DELIVERY_MODE),
        (p.priority.is_some(), flag::PRIORITY),
        (p.timestamp.is_some(), flag::TIMESTAMP),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .fold(0, |acc, (_, bit)| acc | bit);
    let mut out = Writer::default();
    out.u16(BASIC_CLASS).u16(0).u64(body_size).u16(flags);
    out.bytes.extend_from_slice(&w.bytes);
    Ok(out.bytes)
}

/// A content header whose headers table nests `depth` tables, each the only
/// value (key `a`) of the one around it; built without recursion, so tests
/// can make one as deep as a frame allows. Each level costs 7 bytes.
pub fn nested_headers_payload(body_size: u64, depth: usize) -> Vec<u8> {
    let mut out = Writer::default();
    out.u16(BASIC_CLASS)
        .u16(0)
        .u64(body_size)
        .u16(flag::HEADERS);
    for level in 0..depth {
        // The tables inside this one: 7 bytes each (key, type, length).
        out.u32((7 * (depth - 1 - level)) as u32);
        if level + 1 < depth {
            out.u8(1).u8(b'a').u8(b'F');
        }
    }
    out.bytes
}

#[cfg(test)]
#[path = "properties_tests.rs"]
mod tests;
