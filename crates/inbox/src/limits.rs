//! The bounds on a delivery's headers, the same whichever reader parsed
//! them: lapin (for a delivery it could hand over) or idem's own
//! (`raw::Limits`, for one it could not). A header past them is quarantined
//! with code `header_limits`, never charged, so whether a message is charged
//! never depends on which reader took it.
//!
//! lapin has already built the tree, however deep (the thread stack is sized
//! for that, `crate::stack`); this walk is iterative, so checking it needs no
//! stack, and it stops at the first bound crossed.

use lapin::types::{AMQPValue, FieldTable};

use crate::raw::Limits;

/// Which bound a header crossed, in words for the quarantine reason.
pub fn check_headers(headers: &FieldTable, limits: &Limits) -> Result<(), String> {
    // (value, depth of the table or array holding it)
    let mut pending: Vec<(&AMQPValue, usize)> = Vec::new();
    let mut entries = 0usize;
    // 4 bytes of table length, then per entry a key and a typed value.
    let mut bytes = 4usize;
    for (key, value) in headers.inner() {
        entries += 1;
        bytes += 1 + key.as_str().len();
        pending.push((value, 1));
    }
    while let Some((value, depth)) = pending.pop() {
        within(entries, bytes, limits)?;
        bytes += 1 + scalar_size(value);
        match value {
            AMQPValue::FieldTable(t) => {
                enter(depth, limits)?;
                for (key, inner) in t.inner() {
                    entries += 1;
                    bytes += 1 + key.as_str().len();
                    pending.push((inner, depth + 1));
                }
            }
            AMQPValue::FieldArray(a) => {
                enter(depth, limits)?;
                for inner in a.as_slice() {
                    entries += 1;
                    pending.push((inner, depth + 1));
                }
            }
            _ => {}
        }
    }
    within(entries, bytes, limits)
}

/// Whether the entries and bytes counted so far are within the bounds.
fn within(entries: usize, bytes: usize, limits: &Limits) -> Result<(), String> {
    if entries > limits.max_entries {
        return Err(format!(
            "headers hold more than {} entries",
            limits.max_entries
        ));
    }
    if bytes > limits.max_bytes {
        return Err(format!("headers are over {} bytes", limits.max_bytes));
    }
    Ok(())
}

/// A table or array held at `depth` is itself at `depth + 1`.
fn enter(depth: usize, limits: &Limits) -> Result<(), String> {
    if depth + 1 > limits.max_depth {
        return Err(format!(
            "headers nest tables or arrays deeper than {}",
            limits.max_depth
        ));
    }
    Ok(())
}

/// The bytes a value takes on the wire after its type octet (its length
/// prefix only, for a table or an array: their contents are counted entry
/// by entry).
fn scalar_size(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => 4,
        AMQPValue::Void => 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use lapin::types::{FieldArray, LongString, ShortString};

    use super::*;

    fn nested(depth: usize) -> FieldTable {
        let mut t = FieldTable::default();
        for _ in 1..depth {
            let mut outer = FieldTable::default();
            outer.insert(ShortString::from("a"), AMQPValue::FieldTable(t));
            t = outer;
        }
        t
    }

    #[test]
    fn depth_entries_and_bytes_are_bounded_like_the_raw_reader() {
        let limits = Limits::DEFAULT;
        assert_eq!(check_headers(&nested(limits.max_depth), &limits), Ok(()));
        let err = check_headers(&nested(limits.max_depth + 1), &limits).unwrap_err();
        assert!(err.contains("deeper than 64"), "{err}");

        let mut wide = FieldTable::default();
        for i in 0..=limits.max_entries {
            wide.insert(ShortString::from(format!("k{i}")), AMQPValue::Void);
        }
        assert!(
            check_headers(&wide, &limits)
                .unwrap_err()
                .contains("entries")
        );

        let mut big = FieldTable::default();
        big.insert(
            ShortString::from("blob"),
            AMQPValue::LongString(LongString::from(vec![b'x'; limits.max_bytes])),
        );
        assert!(check_headers(&big, &limits).unwrap_err().contains("bytes"));

        let mut arrays = AMQPValue::Void;
        for _ in 0..limits.max_depth {
            arrays = AMQPValue::FieldArray(FieldArray::from(vec![arrays]));
        }
        let mut t = FieldTable::default();
        t.insert(ShortString::from("x"), arrays);
        assert!(check_headers(&t, &limits).unwrap_err().contains("deeper"));
    }

    /// A tree far past the bounds is refused, its depth named, by a walk
    /// that does not recurse.
    #[test]
    fn a_tree_thousands_deep_is_checked_iteratively() {
        let deep = nested(5_000);
        let err = check_headers(&deep, &Limits::DEFAULT).unwrap_err();
        assert!(err.contains("deeper"), "{err}");
    }
}
