//! The end-to-end suites, one test binary: each module was a test binary of
//! its own, and is now a suite of this one (`cargo test -p idem-tests --test
//! it -- <suite>::`). They share one process, and what that means (the
//! process-wide metrics registry, the suites that must run alone) is decided
//! in `idem_tests::gate`. The harness is the `idem_tests` library.
//!
//! ## Layout
//! - `pipeline`, `batch`, `ordering`, `settle`: the data path, message to charge.
//! - `raw_reader`: idem's own AMQP reader takes what lapin's parser refuses.
//! - `hostile_body`: oversize and terminal-hostile input, bounded and escaped.
//! - `faults`, `crash`, `commit_cut`: lost answers, killed workers, cut commits.
//! - `results`: result events out.
//! - `reconcile`, `retention`: the provider's books; bounded tables.
//! - `admin`: the operator commands, through the binary.
//! - `observability`, `tracing`: health, metrics, trace context.
//! - `secrets`, `tls`: credentials never printed; TLS to every peer.
//! - `upgrade`: the schema across releases.
//! - `infra`, `chaos`: the chaos suite's own infrastructure, and the suite.
//! - `bench`: `idem bench` end to end, small.
//! - `deploy`: the deployment files and docs name only exported metrics.

#![allow(clippy::unwrap_used)]

mod admin;
mod batch;
mod bench;
mod chaos;
mod commit_cut;
mod crash;
mod deploy;
mod faults;
mod hostile_body;
mod infra;
mod layout;
mod observability;
mod ordering;
mod pipeline;
mod raw_reader;
mod reconcile;
mod results;
mod retention;
mod secrets;
mod settle;
mod tls;
mod tracing;
mod upgrade;
