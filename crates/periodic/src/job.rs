//! One shape for periodic jobs (after River's maintenance services,
//! `internal/maintenance/job_cleaner.go`): the job says what one run does and
//! what its report means; [`run`] owns the timing, the shutdown and the
//! failures, the same way for every job.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pause::pause;

/// A job that [`run`] runs every interval.
pub trait Job: Send {
    /// What one run did: handed to [`Job::done`].
    type Report: Debug;

    /// Whether [`run`] may drop a run in progress when shutdown fires. `false`
    /// (the default): the run is awaited, and it should watch the token it
    /// gets and return at its next safe point. `true` only for a job whose
    /// every write stands on its own (one guarded statement, nothing half
    /// done between two of them), so that a run cut anywhere is resumed by the
    /// next one.
    const DROP_ON_SHUTDOWN: bool = false;

    /// The job's name in logs ("lease rescue", "reconciliation").
    fn name(&self) -> &'static str;

    /// One run. `shutdown` fires when the process stops: a long run checks it
    /// between steps and returns what it did so far.
    fn run_once(
        &mut self,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = anyhow::Result<Self::Report>> + Send;

    /// A run succeeded. The default logs the report at DEBUG; a job overrides
    /// it to log what an operator should see, or to record metrics.
    fn done(&mut self, report: Self::Report, elapsed: Duration) {
        let name = self.name();
        tracing::debug!(job = name, ?report, ?elapsed, "{name} done");
    }

    /// A run failed; the next one starts after `retry_in`. The default logs a
    /// warning naming the job; a job that overrides it (to count the failure,
    /// say) should still log.
    fn failed(&mut self, error: &anyhow::Error, retry_in: Duration) {
        let name = self.name();
        tracing::warn!(
            job = name,
            error = format!("{error:#}"),
            ?retry_in,
            "{name} failed; retrying next interval"
        );
    }
}

/// When the first run happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At once: for a job whose first run is wanted on start-up (rescuing the
    /// leases a crashed predecessor left, filling gauges).
    Now,
    /// After one (jittered) interval: start-up does nothing but serve, and a
    /// fleet restarting at once does not run the job at once.
    AfterInterval,
}

/// How often a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every {
    /// The mean time from the end of one run to the start of the next.
    pub period: Duration,
    /// Each wait is drawn uniformly from `period ± jitter` (a jitter over the
    /// period counts as the period), so replicas that started together drift
    /// apart instead of running in step for ever.
    pub jitter: Duration,
    /// When the first run happens.
    pub start: Start,
}

/// The shortest period a job runs at: a zero period (a configuration built
/// by hand, a lease of zero) must not become a loop that never pauses.
pub const MIN_PERIOD: Duration = Duration::from_millis(10);

impl Every {
    /// Every `period` (at least [`MIN_PERIOD`]), ± a tenth of it, first
    /// after one interval.
    pub fn new(period: Duration) -> Self {
        let period = period.max(MIN_PERIOD);
        Self {
            period,
            jitter: period / 10,
            start: Start::AfterInterval,
        }
    }

    /// The same, with the first run at `start`.
    pub fn starting(self, start: Start) -> Self {
        Self { start, ..self }
    }

    /// The same, with waits drawn from `period ± jitter`.
    pub fn with_jitter(self, jitter: Duration) -> Self {
        Self { jitter, ..self }
    }

    /// One wait, drawn from `period ± jitter`, never under [`MIN_PERIOD`]
    /// (the fields are public: a hand-built `Every` is clamped here too).
    pub fn wait(&self) -> Duration {
        let jitter = self.jitter.min(self.period);
        rand::rng()
            .random_range(self.period - jitter..=self.period + jitter)
            .max(MIN_PERIOD)
    }
}

/// Run `job` every `every` until `shutdown`: wait, run once, hand the report
/// to [`Job::done`] or the error to [`Job::failed`], wait again. A failed run
/// never ends the loop; the next interval tries again. Returns once shutdown
/// fired: at once during a wait, or during a run as soon as the run returns
/// (or at once, for a job that is [`Job::DROP_ON_SHUTDOWN`]).
pub async fn run<J: Job>(mut job: J, every: Every, shutdown: CancellationToken) {
    let mut wait = match every.start {
        Start::Now => Duration::ZERO,
        Start::AfterInterval => every.wait(),
    };
    while pause(wait, &shutdown).await {
        let started = Instant::now();
        let outcome = if J::DROP_ON_SHUTDOWN {
            let name = job.name();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    tracing::info!(job = name, "shutdown during a {name} run; the next run resumes its work");
                    return;
                }
                outcome = job.run_once(&shutdown) => outcome,
            }
        } else {
            job.run_once(&shutdown).await
        };
        wait = every.wait();
        match outcome {
            Ok(report) => job.done(report, started.elapsed()),
            Err(error) => job.failed(&error, wait),
        }
    }
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
