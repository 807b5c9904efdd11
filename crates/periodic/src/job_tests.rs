//! [`run`] under tokio's paused clock: when runs happen, what failures and
//! shutdown do.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use anyhow::bail;

use super::*;

/// What a probe saw, as (whole seconds since the test started, what).
#[derive(Debug, Clone, Default)]
struct Log(Arc<Mutex<Vec<(u64, &'static str)>>>);

impl Log {
    fn push(&self, origin: Instant, what: &'static str) {
        let secs = (origin.elapsed().as_millis() + 500) / 1000;
        self.0.lock().unwrap().push((secs as u64, what));
    }

    fn take(&self) -> Vec<(u64, &'static str)> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// A job that logs its runs; `DROP` is its [`Job::DROP_ON_SHUTDOWN`].
struct Probe<const DROP: bool> {
    origin: Instant,
    log: Log,
    /// Runs that fail before the others succeed.
    failures: usize,
    /// How long one run takes.
    work: Duration,
    /// Whether a run stops early at shutdown.
    watches_shutdown: bool,
}

impl<const DROP: bool> Probe<DROP> {
    fn new(log: &Log) -> Self {
        Self {
            origin: Instant::now(),
            log: log.clone(),
            failures: 0,
            work: Duration::ZERO,
            watches_shutdown: false,
        }
    }
}

impl<const DROP: bool> Job for Probe<DROP> {
    type Report = ();
    const DROP_ON_SHUTDOWN: bool = DROP;

    fn name(&self) -> &'static str {
        "probe"
    }

    async fn run_once(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        self.log.push(self.origin, "run");
        if self.watches_shutdown {
            pause(self.work, shutdown).await;
        } else {
            tokio::time::sleep(self.work).await;
        }
        if self.failures > 0 {
            self.failures -= 1;
            bail!("the database is away");
        }
        Ok(())
    }

    fn done(&mut self, (): (), _elapsed: Duration) {
        self.log.push(self.origin, "done");
    }

    fn failed(&mut self, _error: &anyhow::Error, retry_in: Duration) {
        assert_eq!(retry_in, Duration::from_secs(10));
        self.log.push(self.origin, "failed");
    }
}

fn every_10s() -> Every {
    Every::new(Duration::from_secs(10)).with_jitter(Duration::ZERO)
}

/// Run `job` on `every`, cancel after `cancel_at`, and return how long after
/// the start [`run`] returned.
async fn run_until<J: Job + 'static>(job: J, every: Every, cancel_at: Duration) -> Duration {
    let origin = Instant::now();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(run(job, every, shutdown.clone()));
    tokio::time::sleep(cancel_at).await;
    shutdown.cancel();
    running.await.unwrap();
    origin.elapsed()
}

#[test]
fn waits_stay_within_the_jitter() {
    let every = Every::new(Duration::from_secs(10));
    assert_eq!(every.jitter, Duration::from_secs(1));
    let waits: Vec<Duration> = (0..1000).map(|_| every.wait()).collect();
    assert!(
        waits
            .iter()
            .all(|w| (Duration::from_secs(9)..=Duration::from_secs(11)).contains(w))
    );
    assert!(waits.iter().any(|w| *w != waits[0]), "no jitter at all");

    // A jitter over the period counts as the period: never a negative wait.
    let wide = Every::new(Duration::from_secs(1)).with_jitter(Duration::from_secs(5));
    assert!((0..1000).all(|_| wide.wait() <= Duration::from_secs(2)));
    assert_eq!(every_10s().wait(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn the_first_run_waits_an_interval_unless_told_to_start_now() {
    let log = Log::default();
    run_until(
        Probe::<false>::new(&log),
        every_10s(),
        Duration::from_secs(35),
    )
    .await;
    let runs = [(10, "run"), (10, "done"), (20, "run"), (20, "done")];
    assert_eq!(
        log.take(),
        [&runs[..], &[(30, "run"), (30, "done")]].concat()
    );

    let now = every_10s().starting(Start::Now);
    run_until(Probe::<false>::new(&log), now, Duration::from_secs(15)).await;
    assert_eq!(
        log.take(),
        [(0, "run"), (0, "done"), (10, "run"), (10, "done")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_is_tried_again_next_interval() {
    let log = Log::default();
    let mut probe = Probe::<false>::new(&log);
    probe.failures = 2;
    run_until(probe, every_10s(), Duration::from_secs(35)).await;
    assert_eq!(
        log.take(),
        [
            (10, "run"),
            (10, "failed"),
            (20, "run"),
            (20, "failed"),
            (30, "run"),
            (30, "done")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_wait_returns_at_once() {
    let log = Log::default();
    let hourly = Every::new(Duration::from_secs(3600));
    let stopped = run_until(Probe::<false>::new(&log), hourly, Duration::from_secs(1)).await;
    assert_eq!(stopped, Duration::from_secs(1));
    assert_eq!(log.take(), []);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drops_a_run_only_if_the_job_allows_it() {
    let log = Log::default();
    let now = every_10s().starting(Start::Now);
    let hour = Duration::from_secs(3600);

    let mut droppable = Probe::<true>::new(&log);
    droppable.work = hour;
    let stopped = run_until(droppable, now, Duration::from_secs(1)).await;
    assert_eq!(stopped, Duration::from_secs(1));
    assert_eq!(log.take(), [(0, "run")]);

    // Not droppable, watching the token: stops at its next safe point.
    let mut watching = Probe::<false>::new(&log);
    watching.work = hour;
    watching.watches_shutdown = true;
    let stopped = run_until(watching, now, Duration::from_secs(1)).await;
    assert_eq!(stopped, Duration::from_secs(1));
    assert_eq!(log.take(), [(0, "run"), (1, "done")]);

    // Not droppable, not watching: awaited to its end, then no other run.
    let mut stubborn = Probe::<false>::new(&log);
    stubborn.work = Duration::from_secs(5);
    let stopped = run_until(stubborn, now, Duration::from_secs(1)).await;
    assert_eq!(stopped, Duration::from_secs(5));
    assert_eq!(log.take(), [(0, "run"), (5, "done")]);
}

#[test]
fn a_zero_period_still_pauses() {
    let zero = Every::new(Duration::ZERO);
    assert_eq!(zero.period, MIN_PERIOD);
    let hand_built = Every {
        period: Duration::ZERO,
        jitter: Duration::ZERO,
        start: Start::Now,
    };
    assert!((0..100).all(|_| hand_built.wait() >= MIN_PERIOD));
}
