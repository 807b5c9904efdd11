//! # idem-periodic
//!
//! The two shapes of background work: a periodic job, and a reconnect loop with
//! jittered backoff. Both wait in [`pause`], so every wait ends at the shutdown
//! token, and both draw their waits at random, so replicas started (or cut off)
//! together drift apart instead of hitting the database or the broker in step.
//!
//! ## Layout
//! - `pause`: [`pause`], the sleep that ends at the shutdown token.
//! - `job`: [`Job`] (a name and `run_once`) and [`run`], which runs it every
//!   jittered [`Every`] until shutdown, logging failures and trying again next
//!   interval (after River's maintenance services).
//! - `batches`: [`in_batches`], bounded batches until a short one, with a
//!   cancellable pause between them (the inside of a bounded-delete job).
//! - `reconnect`: [`Backoff`] (exponential, jittered, reset) and
//!   [`Reconnect`], the pacing of a loop that rebuilds a lost broker session.
//! - `endpoints`: a broker given as several nodes (`IDEM_AMQP_URL` as a
//!   list): [`endpoints::split`], and [`endpoints::first_answering`], which
//!   tries them from a random one on.

mod batches;
pub mod endpoints;
mod job;
mod pause;
mod reconnect;

pub use batches::{Batches, Ended, in_batches};
pub use job::{Every, Job, MIN_PERIOD, Start, run};
pub use pause::pause;
pub use reconnect::{Backoff, Reconnect};
