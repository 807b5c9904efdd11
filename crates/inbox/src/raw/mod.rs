//! idem's own small AMQP 0-9-1 reader, for the messages lapin refuses.
//!
//! lapin (through amq-protocol) refuses a content header whose short strings
//! are not UTF-8 inside its I/O loop, and parses field tables recursively
//! without a bound; either way idem never sees the delivery, and the broker
//! hands the same message back first, forever
//! (`docs/upstream/lapin-utf8-short-strings.md`). This reader takes such a
//! message off the head of a queue with `basic.get` on a connection of its
//! own and parses its content header as bytes, never as strings, with hard
//! bounds on frame size, nesting depth, entries and bytes.
//!
//! - `frame`: frames and AMQP primitives; sizes checked before allocation.
//! - `table`: field tables and arrays as a bounded tree of [`RawField`]s.
//! - `properties`: a Basic content header into [`RawProperties`].
//! - `connection`: a minimal client: connect (PLAIN), ack, reject,
//!   close, and `publish_raw` for tests that must send what no client will.
//! - `get`: `basic_get` into a [`RawDelivery`], the body bounded in memory.
//! - `error`: [`RawError`], how the client fails.
//! - `target`: the broker address, user, password, vhost and TLS of a URL.
//! - `transport`: the stream under it: TCP, or TLS with lapin's trust.

pub mod connection;
mod error;
pub mod frame;
mod get;
pub mod properties;
pub mod table;
mod target;
mod transport;

pub use connection::{ConnectOptions, Connection};
pub use error::{FrameError, ParseError, RawError};
pub use get::RawDelivery;
pub use properties::{ContentHeader, RawProperties, parse_content_header};
pub use table::{Limits, RawField, RawTable};
