//! # idem-daemon
//!
//! One replica of idem: its validated configuration and
//! [`run`]`(config, shutdown)`, which the binary's `idem run`, the demo, the
//! benchmark and the tests all call. The binary decides where and until when;
//! this crate decides what runs.
//!
//! ## Layout
//! - `config`: every setting of `idem run` as a flag with its `IDEM_*`
//!   variable, validated into a [`Config`] whose errors name what to fix.
//! - `secrets`: which settings are credentials, their `*_FILE` variables, and
//!   types whose `Debug` never prints them.
//! - `replica`: [`run`] — connect, migrate, run the roles until shutdown.
//! - `check`: `idem run --check` — the database, broker and charge API a
//!   configuration names, checked without changing anything.
//! - `health`: `/healthz`, `/readyz` (database, and broker session when
//!   consuming), `/metrics`, and with `--console` the operator console
//!   (`idem_console`) under `/console`.
//! - `metrics`: the Prometheus recorder (one per process, shared by in-process
//!   replicas), every crate's metric descriptions, the table-gauge sampler.
//! - `telemetry`: logging, OTLP export, and the TLS crypto provider.

pub mod check;
pub mod config;
pub mod health;
pub mod metrics;
mod replica;
pub mod secrets;
pub mod telemetry;

pub use config::{Config, Role, RunArgs};
pub use replica::{run, run_with};
