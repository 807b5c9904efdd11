//! The simulator over real HTTP, one test binary: `api` (the charge API's
//! rules), `faults` (what goes wrong on purpose), and `harness` (a simulator
//! on a free port and a reqwest client for it).
#![allow(clippy::unwrap_used)]

mod api;
mod faults;
mod harness;
