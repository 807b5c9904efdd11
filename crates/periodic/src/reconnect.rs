//! The pacing of a loop that rebuilds a lost broker session: exponential
//! backoff with jitter, reset after a healthy session.
//!
//! Why jitter: a broker restart cuts every replica's session at the same
//! instant. With a plain doubling schedule they all come back at the same
//! instants too (200 ms, 400 ms, ...), in step, for as long as the outage
//! lasts. Here each delay is drawn from the upper half of a ceiling that
//! doubles from `2 × min` up to `max` ("equal jitter", in the AWS Architecture
//! Blog's "Exponential Backoff And Jitter"): the n-th delay lies between the
//! plain schedule's n-th delay and twice it, never under `min` nor over `max`
//! (at the cap, between `max / 2` and `max`), and the replicas' attempts
//! spread out from the first retry on. A replica in a long outage tries about
//! a third more often than with the plain schedule; nothing else changes.
//!
//! Why not `backon` (1.6): its jitter adds up to one more delay on top of the
//! capped one, so delays reach twice the cap (30 s for a 15 s cap), and its
//! schedule is an iterator made for `retry()` around one call; our loops are
//! explicit (a session is not one call) and reset after a healthy session,
//! which there means rebuilding the iterator. The dozen lines below keep the
//! bounds exact.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::pause::pause;

/// Exponential backoff with jitter: every delay within `[min, max]`; the
/// n-th since the start (or since [`Backoff::reset`]) within
/// `[min × 2ⁿ, min × 2ⁿ⁺¹]`, capped at `[max / 2, max]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The shortest delay, and where a reset starts again.
    min: Duration,
    /// The longest delay.
    max: Duration,
    /// The top of the next delay's range; the range is its upper half (never
    /// under `min`). Doubles per delay, up to `max`.
    ceiling: Duration,
}

impl Backoff {
    /// Delays between `min` and `max` (a `max` under `min` counts as `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            ceiling: min.saturating_mul(2).min(max),
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let floor = (self.ceiling / 2).max(self.min);
        let delay = rand::rng().random_range(floor..=self.ceiling);
        self.ceiling = self.ceiling.saturating_mul(2).min(self.max);
        delay
    }

    /// Start again from `min`: the last session was healthy, so the next
    /// outage is a new one.
    pub fn reset(&mut self) {
        self.ceiling = self.min.saturating_mul(2).min(self.max);
    }
}

/// The reconnect loop's step between two sessions, the same for the inbox
/// consumer and the result publisher: reset the backoff if the lost session
/// was healthy, log the loss with the delay, wait the delay out unless
/// shutdown comes first.
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// Who reconnects, in the log line ("inbox", "result publisher").
    who: &'static str,
    /// The delays between attempts.
    backoff: Backoff,
}

impl Reconnect {
    /// `who` reconnects with delays from `backoff`.
    pub fn new(who: &'static str, backoff: Backoff) -> Self {
        Self { who, backoff }
    }

    /// A session ended with `error`. `healthy`: it did useful work (the
    /// caller decides what counts), so the backoff starts again from its
    /// minimum. Logs a warning with the delay, then waits it out. `true`:
    /// reconnect now; `false`: shutdown fired, stop.
    pub async fn after_loss(
        &mut self,
        error: &anyhow::Error,
        healthy: bool,
        shutdown: &CancellationToken,
    ) -> bool {
        if healthy {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        tracing::warn!(error = format!("{error:#}"), retry_in = ?delay, "{} lost its broker session; reconnecting", self.who);
        pause(delay, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use anyhow::anyhow;
    use tokio::time::Instant;

    use super::*;

    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(15);

    /// The range of the `n`-th delay since the start or a reset.
    fn range(n: u32) -> std::ops::RangeInclusive<Duration> {
        let plain = MIN.saturating_mul(2u32.saturating_pow(n));
        plain.min(MAX / 2)..=plain.saturating_mul(2).min(MAX)
    }

    #[test]
    fn each_delay_is_between_the_plain_one_and_twice_it_up_to_the_cap() {
        let mut backoff = Backoff::new(MIN, MAX);
        for n in 0..40 {
            let delay = backoff.next_delay();
            assert!(range(n).contains(&delay), "delay {n}: {delay:?}");
            assert!((MIN..=MAX).contains(&delay));
        }
        assert_eq!(range(0), MIN..=MIN * 2);
        assert_eq!(range(10), MAX / 2..=MAX);
    }

    #[test]
    fn delays_are_spread_from_the_first_one_on() {
        // Replicas cut off together do not all retry at the same instant.
        let firsts: Vec<Duration> = (0..1000)
            .map(|_| Backoff::new(MIN, MAX).next_delay())
            .collect();
        assert!(firsts.iter().any(|d| *d < MIN * 5 / 4));
        assert!(firsts.iter().any(|d| *d > MIN * 7 / 4));

        let mut backoff = Backoff::new(MIN, MAX);
        for _ in 0..20 {
            backoff.next_delay();
        }
        let capped: Vec<Duration> = (0..1000).map(|_| backoff.next_delay()).collect();
        assert!(capped.iter().any(|d| *d < MAX * 5 / 8));
        assert!(capped.iter().any(|d| *d > MAX * 7 / 8));
    }

    #[test]
    fn a_reset_starts_again_from_the_minimum() {
        let mut backoff = Backoff::new(MIN, MAX);
        for _ in 0..20 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(range(0).contains(&backoff.next_delay()));
        assert!(range(1).contains(&backoff.next_delay()));
    }

    #[test]
    fn narrow_bounds_hold() {
        let mut same = Backoff::new(MIN, Duration::ZERO);
        assert!((0..100).all(|_| same.next_delay() == MIN));
        let mut narrow = Backoff::new(MIN, MIN * 3 / 2);
        assert!((0..100).all(|_| (MIN..=MIN * 3 / 2).contains(&narrow.next_delay())));
    }

    #[tokio::test(start_paused = true)]
    async fn after_loss_waits_the_delay_and_resets_after_a_healthy_session() {
        let shutdown = CancellationToken::new();
        let error = anyhow!("connection reset");
        let mut reconnect = Reconnect::new("test", Backoff::new(MIN, MAX));
        let started = Instant::now();
        assert!(reconnect.after_loss(&error, false, &shutdown).await);
        assert!(range(0).contains(&started.elapsed()));
        let started = Instant::now();
        assert!(reconnect.after_loss(&error, false, &shutdown).await);
        assert!(range(1).contains(&started.elapsed()));
        let started = Instant::now();
        assert!(reconnect.after_loss(&error, true, &shutdown).await);
        assert!(range(0).contains(&started.elapsed()));
    }

    #[tokio::test(start_paused = true)]
    async fn after_loss_returns_at_once_on_shutdown() {
        let shutdown = CancellationToken::new();
        let error = anyhow!("connection reset");
        let mut reconnect = Reconnect::new("test", Backoff::new(MAX, MAX));
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        assert!(!reconnect.after_loss(&error, false, &shutdown).await);
        assert_eq!(started.elapsed(), Duration::from_millis(10));
    }
}
