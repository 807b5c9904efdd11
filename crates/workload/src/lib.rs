//! # idem-workload
//!
//! The tools that drive idem rather than being it: sample traffic for
//! `idem publish`, the demo and the tests; throw-away databases and queues;
//! `idem demo` (the pipeline end to end with a report) and `idem bench`
//! (throughput, latency and CPU per message). Nothing here runs in a replica.
//!
//! ## Layout
//! - `traffic`: sample messages (originals, duplicates, key conflicts,
//!   malformed) and publishing them with confirms.
//! - `scratch`: a database and a queue dropped and made afresh.
//! - `demo`: `idem demo`.
//! - `bench`: `idem bench`.

pub mod bench;
pub mod demo;
pub mod scratch;
pub mod traffic;

pub use traffic::{
    DEFAULT_ACCOUNTS, Kind, Outgoing, Spec, generate, original_body, original_body_over, publish,
    publish_observed,
};
