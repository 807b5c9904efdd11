//! One test process for every suite, and what must not run beside what.
//!
//! The `metrics` registry is process-wide: every in-process daemon of every
//! suite counts into the same counters and sets the same gauges, so a test
//! that checks exact counts must have the process to itself. So must the
//! chaos suite, whose fault timings and deadlines assume a machine not shared
//! with other suites. Everything else shares the process.
//!
//! Every [`TestEnv`](crate::TestEnv) and every in-process worker holds a
//! [`shared`] ticket, and so does each suite that loads the machine without
//! one (private clusters, `idem bench`); [`alone`] waits until no shared
//! ticket is out and keeps new ones waiting until it is dropped. A shared
//! ticket waits only for an `alone` that *holds* the process, never for one
//! that is waiting, so a test may hold several (two envs) without deadlock;
//! a waiting `alone` gets the process in the moment between two tests.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Who holds the process now.
struct State {
    /// Shared tickets out.
    shared: usize,
    /// Whether an `alone` ticket is out.
    alone: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    shared: 0,
    alone: false,
});
/// Woken whenever a ticket is given back.
static GIVEN_BACK: Notify = Notify::const_new();

/// A place in the test process, shared or alone. Clones hold the same place;
/// it is given back when the last clone is dropped.
#[derive(Clone)]
pub struct Ticket {
    /// Gives the place back on drop.
    _held: Arc<Held>,
}

/// The kinds of place.
#[derive(Clone, Copy)]
enum Kind {
    Shared,
    Alone,
}

/// A place taken; dropping it gives it back.
struct Held(Kind);

/// A place beside other tests (any number of shared tickets at once).
pub async fn shared() -> Ticket {
    take(Kind::Shared).await
}

/// [`shared`] for a synchronous test.
pub fn shared_blocking() -> Ticket {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime to wait for the gate on")
        .block_on(shared())
}

/// The process to this test alone: waits until every shared ticket is back.
pub async fn alone() -> Ticket {
    take(Kind::Alone).await
}

async fn take(kind: Kind) -> Ticket {
    loop {
        // Registered before the check, so a ticket given back in between
        // still wakes us.
        let given_back = GIVEN_BACK.notified();
        tokio::pin!(given_back);
        given_back.as_mut().enable();
        {
            let mut state = state();
            let free = match kind {
                Kind::Shared => !state.alone,
                Kind::Alone => !state.alone && state.shared == 0,
            };
            if free {
                match kind {
                    Kind::Shared => state.shared += 1,
                    Kind::Alone => state.alone = true,
                }
                // Built only once taken: a cancelled wait gives nothing back.
                return Ticket {
                    _held: Arc::new(Held(kind)),
                };
            }
        }
        given_back.await;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        {
            let mut state = state();
            match self.0 {
                Kind::Shared => state.shared -= 1,
                Kind::Alone => state.alone = false,
            }
        }
        GIVEN_BACK.notify_waiters();
    }
}

fn state() -> MutexGuard<'static, State> {
    // Nothing panics while holding it; a poisoned lock still counts right.
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `future` finishes within a moment.
    async fn finishes<F: std::future::Future>(future: F) -> bool {
        tokio::time::timeout(Duration::from_millis(100), future)
            .await
            .is_ok()
    }

    /// Invariant: `alone` waits for every shared ticket (clones included);
    /// a waiting `alone` lets more shared tickets through (no deadlock for a
    /// test holding two); a held `alone` keeps them waiting until dropped.
    #[tokio::test]
    async fn alone_excludes_shared_and_waits_without_blocking_them() {
        let first = shared().await;
        let clone = first.clone();
        let waiting = tokio::spawn(alone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = shared().await;
        drop((first, second));
        assert!(!waiting.is_finished(), "a clone still holds a place");
        drop(clone);
        let held = waiting.await.unwrap();
        assert!(!finishes(shared()).await, "shared while alone is held");
        let next = tokio::spawn(shared());
        drop(held);
        assert!(finishes(next).await, "shared once alone is given back");
    }
}
