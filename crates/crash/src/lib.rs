//! # idem-crash
//!
//! Named crash points on the data path, for the tests that kill a worker at each
//! step. `IDEM_CRASH_AT=<point>` (or `<point>:<n>`, the n-th time it is reached)
//! makes the process abort there — no destructors, no flush, no acks: as close
//! to SIGKILL as a process can do to itself. Unset, a point costs one atomic
//! load. Points: see [`POINTS`].
//!
//! ## Layout
//! - [`point`]: called at each step; aborts when the environment selects it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a crash point.
pub const ENV: &str = "IDEM_CRASH_AT";

/// Every crash point, in data-path order.
pub const POINTS: [&str; 3] = [
    // The inbox transaction committed; the deliveries are not acked yet.
    "inbox.after_commit",
    // The claim committed (rows in flight, leased); no provider call made yet.
    "dispatch.after_claim",
    // The provider answered; the result is not recorded yet.
    "dispatch.after_answer",
];

struct Armed {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let raw = std::env::var(ENV).ok()?;
            let (name, nth) = match raw.split_once(':') {
                Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
                None => (raw, 1),
            };
            Some(Armed {
                name,
                nth: nth.max(1),
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Abort the process if `name` is the armed crash point (on its n-th hit).
pub fn point(name: &'static str) {
    if let Some(armed) = armed()
        && armed.name == name
        && armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth
    {
        eprintln!("{ENV}={name}: aborting here (crash test)");
        std::process::abort();
    }
}
