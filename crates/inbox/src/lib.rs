//! # idem-inbox
//!
//! The AMQP side of idem: take deliveries, decide each one inside a PostgreSQL
//! transaction, commit, and only then ack.
//!
//! ## Layout
//! - `topology`: the durable queue (quorum unless told or found otherwise)
//!   and its dead-letter exchange and queue.
//! - `connect`: reaching the broker over every endpoint of `IDEM_AMQP_URL`
//!   (lapin's connection and the raw reader's), and which failures waiting
//!   fixes.
//! - `delivery`: read a lapin delivery into the message contract's raw parts,
//!   and its properties as JSON for quarantine.
//! - `admission`: the rules a delivery is admitted by ([`Admission`]: body
//!   limit, scope bound to the broker's `user_id`, allowed `reply_to`).
//! - `decision`: one delivery as recording sees it ([`Incoming`]), and what
//!   happened to it ([`Decision`]).
//! - `batch`: record a batch of deliveries in one transaction.
//!   Set-based when the database accepts the batch, else message by message,
//!   each behind its own savepoint, so one bad message never poisons the others.
//! - `bulk`: the set-based path: validate in Rust, group copies of a key, a
//!   handful of statements over arrays for the whole batch.
//! - `trace`: a `message` span per delivery, parented on its `traceparent`
//!   header, with its `trace_id` (DEBUG: free unless logged or exported).
//! - `replay`: a quarantined message's properties rebuilt, published again
//!   with a confirm (`idem quarantine replay`).
//! - `lag`: publish → recorded lag, read from a delivery's stamp (broker
//!   header in ms, or the AMQP timestamp) when its transaction commits.
//! - `metrics`: the names and help texts of the metrics the consumer records.
//! - `credit`: the prefetch count, kept within a byte budget
//!   (`IDEM_PREFETCH_BYTES`) by the sizes of the bodies seen.
//! - `window`: the session's consumer, re-created to apply a new count, and
//!   the batches read from it.
//! - `consumer`: the loop — connect, declare, consume, batch, commit, ack —
//!   that reconnects by itself (jittered backoff, `idem_periodic::Reconnect`)
//!   and stops on the shutdown token.
//! - `raw`: idem's own bounded AMQP reader (`basic.get`, content header as
//!   bytes) for the head message lapin's parser refuses.
//! - `limits`: the bounds on a delivery's headers (depth, entries, bytes),
//!   the same for lapin's deliveries as for the raw reader's.
//! - `salvage`: what that reader takes off a queue's head (after lapin's
//!   parse error, and from the dead-letter queue), decided in one transaction:
//!   readable messages like any delivery, the rest quarantined raw.
//! - `drain`: the dead-letter queue's reader, a periodic job over `salvage`.
//! - `stack`: the thread stack lapin's recursive parser needs for the
//!   deepest header the broker's frame size allows, and the start-up check.

pub mod admission;
pub mod batch;
mod bulk;
pub mod connect;
pub mod consumer;
pub mod credit;
mod decision;
pub mod delivery;
pub mod drain;
pub mod lag;
pub mod limits;
pub mod metrics;
pub mod raw;
pub mod replay;
pub mod salvage;
pub mod stack;
pub mod topology;
mod trace;
mod window;

pub use admission::Admission;
pub use batch::{record_batch, record_one_by_one};
pub use connect::connect_amqp;
pub use consumer::{InboxConfig, run};
pub use decision::{Decision, Incoming};
pub use topology::{QueueType, Topology, declare};
