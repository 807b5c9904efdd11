//! AMQP field tables and arrays as a bounded tree of bytes.
//!
//! Keys and strings stay `Vec<u8>`: a producer may put any bytes there, and
//! refusing them is what stops lapin (see `docs/upstream/lapin-utf8-short-strings.md`).
//! Nesting is counted on the way down and refused past [`Limits::max_depth`]
//! before the next level is entered, so the recursion (and the tree a caller
//! later drops, recursively) is never deeper than that bound whatever the input.
//! The field types are RabbitMQ's (its 0-9-1 errata), plus `L` (u64), which
//! other clients send.

use super::ParseError;
use super::frame::{Cursor, Writer};

/// Hard bounds on what one content header may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tables and arrays inside one another, the headers table itself being 1.
    pub max_depth: usize,
    /// Table entries plus array elements, over the whole tree.
    pub max_entries: usize,
    /// The content header payload, in bytes.
    pub max_bytes: usize,
}

impl Limits {
    /// Deep enough for any header a real producer sends; shallow enough that
    /// parsing and dropping the tree needs a few KiB of stack.
    pub const DEFAULT: Limits = Limits {
        max_depth: 64,
        max_entries: 10_000,
        max_bytes: 128 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One field value, as sent.
#[derive(Debug, Clone, PartialEq)]
pub enum RawField {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s` (RabbitMQ: a signed 16-bit integer, not a short string)
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `L`
    U64(u64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: `value / 10^scale`
    Decimal { scale: u8, value: u32 },
    /// `S`: a long string, any bytes
    LongString(Vec<u8>),
    /// `x`: a byte array
    Bytes(Vec<u8>),
    /// `A`
    Array(Vec<RawField>),
    /// `T`: seconds since the epoch
    Timestamp(u64),
    /// `F`
    Table(RawTable),
    /// `V`
    Void,
}

/// A field table: entries in wire order, keys as bytes (duplicates kept).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawTable(pub Vec<(Vec<u8>, RawField)>);

/// What is left of the limits while one header is parsed.
struct Budget {
    limits: Limits,
    entries: usize,
}

impl Budget {
    fn entry(&mut self) -> Result<(), ParseError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ParseError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn enter(&self, depth: usize) -> Result<(), ParseError> {
        if depth > self.limits.max_depth {
            return Err(ParseError::TooDeep {
                limit: self.limits.max_depth,
            });
        }
        Ok(())
    }
}

/// Parse a field table (its u32 length first) at the cursor.
pub fn parse_table(cursor: &mut Cursor<'_>, limits: &Limits) -> Result<RawTable, ParseError> {
    let mut budget = Budget {
        limits: *limits,
        entries: 0,
    };
    table(cursor, &mut budget, 1)
}

fn table(
    cursor: &mut Cursor<'_>,
    budget: &mut Budget,
    depth: usize,
) -> Result<RawTable, ParseError> {
    budget.enter(depth)?;
    let mut inner = Cursor::new(cursor.long_bytes()?);
    let base = cursor.offset() - inner.remaining();
    let mut entries = Vec::new();
    while inner.remaining() > 0 {
        budget.entry()?;
        let parsed = inner
            .short_bytes()
            .map(<[u8]>::to_vec)
            .and_then(|key| Ok((key, field(&mut inner, budget, depth)?)));
        entries.push(parsed.map_err(|e| e.shifted(base))?);
    }
    Ok(RawTable(entries))
}

fn array(
    cursor: &mut Cursor<'_>,
    budget: &mut Budget,
    depth: usize,
) -> Result<Vec<RawField>, ParseError> {
    budget.enter(depth)?;
    let mut inner = Cursor::new(cursor.long_bytes()?);
    let base = cursor.offset() - inner.remaining();
    let mut items = Vec::new();
    while inner.remaining() > 0 {
        budget.entry()?;
        items.push(field(&mut inner, budget, depth).map_err(|e| e.shifted(base))?);
    }
    Ok(items)
}

/// One typed value; `depth` is that of the table or array holding it.
fn field(
    cursor: &mut Cursor<'_>,
    budget: &mut Budget,
    depth: usize,
) -> Result<RawField, ParseError> {
    let at = cursor.offset();
    let kind = cursor.u8()?;
    Ok(match kind {
        b't' => RawField::Bool(cursor.u8()? != 0),
        b'b' => RawField::I8(cursor.u8()? as i8),
        b'B' => RawField::U8(cursor.u8()?),
        b's' => RawField::I16(cursor.u16()? as i16),
        b'u' => RawField::U16(cursor.u16()?),
        b'I' => RawField::I32(cursor.u32()? as i32),
        b'i' => RawField::U32(cursor.u32()?),
        b'l' => RawField::I64(cursor.u64()? as i64),
        b'L' => RawField::U64(cursor.u64()?),
        b'f' => RawField::F32(f32::from_bits(cursor.u32()?)),
        b'd' => RawField::F64(f64::from_bits(cursor.u64()?)),
        b'D' => RawField::Decimal {
            scale: cursor.u8()?,
            value: cursor.u32()?,
        },
        b'S' => RawField::LongString(cursor.long_bytes()?.to_vec()),
        b'x' => RawField::Bytes(cursor.long_bytes()?.to_vec()),
        b'A' => RawField::Array(array(cursor, budget, depth + 1)?),
        b'T' => RawField::Timestamp(cursor.u64()?),
        b'F' => RawField::Table(table(cursor, budget, depth + 1)?),
        b'V' => RawField::Void,
        other => {
            return Err(ParseError::UnknownFieldType {
                type_byte: other,
                offset: at,
            });
        }
    })
}

/// Encode a table (length first). Recursive: meant for the shallow tables
/// idem and its tests build, not for trees read off the wire.
pub fn encode_table(table: &RawTable, out: &mut Writer) -> Result<(), ParseError> {
    let mut inner = Writer::default();
    for (key, value) in &table.0 {
        inner.short_bytes(key)?;
        encode_field(value, &mut inner)?;
    }
    out.long_bytes(&inner.bytes);
    Ok(())
}

fn encode_field(value: &RawField, out: &mut Writer) -> Result<(), ParseError> {
    match value {
        RawField::Bool(v) => out.u8(b't').u8(u8::from(*v)),
        RawField::I8(v) => out.u8(b'b').u8(*v as u8),
        RawField::U8(v) => out.u8(b'B').u8(*v),
        RawField::I16(v) => out.u8(b's').u16(*v as u16),
        RawField::U16(v) => out.u8(b'u').u16(*v),
        RawField::I32(v) => out.u8(b'I').u32(*v as u32),
        RawField::U32(v) => out.u8(b'i').u32(*v),
        RawField::I64(v) => out.u8(b'l').u64(*v as u64),
        RawField::U64(v) => out.u8(b'L').u64(*v),
        RawField::F32(v) => out.u8(b'f').u32(v.to_bits()),
        RawField::F64(v) => out.u8(b'd').u64(v.to_bits()),
        RawField::Decimal { scale, value } => out.u8(b'D').u8(*scale).u32(*value),
        RawField::LongString(v) => out.u8(b'S').long_bytes(v),
        RawField::Bytes(v) => out.u8(b'x').long_bytes(v),
        RawField::Timestamp(v) => out.u8(b'T').u64(*v),
        RawField::Void => out.u8(b'V'),
        RawField::Array(items) => {
            let mut inner = Writer::default();
            for item in items {
                encode_field(item, &mut inner)?;
            }
            out.u8(b'A').long_bytes(&inner.bytes)
        }
        RawField::Table(t) => {
            out.u8(b'F');
            return encode_table(t, out);
        }
    };
    Ok(())
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
