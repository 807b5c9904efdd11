//! # idem-servers
//!
//! Private servers started from the installed server binaries, each in a
//! scratch dir of its own, on free ports of 127.0.0.1, as child processes of
//! whoever starts them: the demo's PostgreSQL and RabbitMQ when the local
//! services do not answer, and the suites' servers that a test stops,
//! restarts, crashes or joins into a cluster without touching the shared
//! ones. Everything here goes when its value is dropped.
//!
//! ## Layout
//! - [`pg`]: [`pg::PgCluster`], an `initdb`'d cluster (and a streaming
//!   standby of it).
//! - [`rabbit`]: [`rabbit::RabbitNode`], a node with its own name, ports and
//!   cookie (TLS optional), and [`rabbit::RabbitCluster`], several joined.
//! - [`ca`]: a private CA and certificates, made with `openssl`.
//! - `child`: the servers as child processes: stopping them, killing them
//!   with every process they forked, free ports, log tails.
//! - `scratch`: scratch dirs stamped with their owner, and the sweep of what
//!   an owner that died without unwinding left behind.

pub mod ca;
mod child;
pub mod pg;
pub mod rabbit;
mod scratch;
