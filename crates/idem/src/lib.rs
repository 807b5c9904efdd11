//! # idem
//!
//! The `idem` binary's library: what the daemon, the operator commands and the
//! tests share. The binary (`main.rs`) only parses the command line, sets up
//! logging and signals, and calls [`cli::execute`].
//!
//! ## Layout
//! - `config`: every setting as a flag with its `IDEM_*` variable; validation.
//! - `secrets`: which settings are credentials, their `*_FILE` variables, and
//!   types whose `Debug` never prints them.
//! - `reference`: docs/configuration.md's reference, generated from the CLI.
//! - `daemon`: `idem run` — connect, migrate, run consumer and/or dispatcher.
//! - `health`: `/healthz`, `/readyz` (database, and broker session when
//!   consuming) and `/metrics`.
//! - `metrics`: the Prometheus recorder (one per process, shared by in-process
//!   daemons), metric descriptions, the sampler of the table gauges.
//! - `cli`: subcommands and their handlers (`migrate`, `publish`, `status`, ...).
//! - `admin`: the operators' commands (`idem outbox|quarantine|inbox ...`):
//!   tables or JSON, every change with its audit row.
//! - `retention`: the periodic job deleting rows past their windows
//!   (inbox keys, settled outbox rows, quarantine, key conflicts); its settings.
//! - `reconcile`: the reconciler's settings and `idem reconcile`.
//! - `results`: the result publisher's settings (`IDEM_RESULTS_*`).
//! - `status`: the status table.
//! - `workload`: sample traffic (originals, duplicates, conflicts, malformed)
//!   and publishing with confirms.
//! - `demo`: `idem demo`, the whole pipeline end to end with a report.
//! - `bench`: `idem bench`, throughput, latency and CPU per message of the
//!   pipeline against the baseline, the SQL ceiling and a large backlog.
//! - `telemetry`: logging and the TLS crypto provider.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod health;
pub mod metrics;
pub mod reconcile;
pub mod reference;
pub mod results;
pub mod retention;
pub mod secrets;
pub mod status;
pub mod telemetry;
pub mod workload;

pub use config::{Config, Role, RunArgs};
