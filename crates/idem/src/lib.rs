//! # idem
//!
//! The `idem` binary's library: what the daemon, the operator commands and the
//! tests share. The binary (`main.rs`) only parses the command line, sets up
//! logging and signals, and calls [`cli::execute`].
//!
//! ## Layout
//! - `config`: every setting as a flag with its `IDEM_*` variable; validation.
//! - `daemon`: `idem run` — connect, migrate, run consumer and/or dispatcher.
//! - `health`: `/healthz` and `/readyz`.
//! - `cli`: subcommands and their handlers (`migrate`, `publish`, `status`, ...).
//! - `status`: the status table.
//! - `workload`: sample traffic (originals, duplicates, conflicts, malformed)
//!   and publishing with confirms.
//! - `demo`: `idem demo`, the whole pipeline end to end with a report.
//! - `telemetry`: logging and the TLS crypto provider.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod health;
pub mod status;
pub mod telemetry;
pub mod workload;

pub use config::{Config, Role, RunArgs};
