//! Bounded batches until a short one (River's `job_cleaner.go`, `runOnce`):
//! many short transactions rather than one long one, with a pause between
//! them that leaves the database room and ends at shutdown.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::pause::pause;

/// Why [`in_batches`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A batch came back short: nothing is left.
    Exhausted,
    /// A batch declined to run (`Ok(None)`: another replica holds the lock),
    /// so the work is left to whoever is doing it.
    Yielded,
    /// Shutdown fired, before a batch or during a pause.
    Interrupted,
}

/// What [`in_batches`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batches {
    /// Rows the batches reported (deleted, say), summed.
    pub rows: u64,
    /// Batches that ran (a declined one does not count).
    pub batches: u32,
    /// Why it stopped.
    pub ended: Ended,
}

/// Run `batch` again and again until one reports fewer than `size` rows,
/// declines (`Ok(None)`), or `shutdown` fires, pausing `pause` between two
/// batches. Shutdown is checked before every batch; a batch itself is awaited
/// (it is one short transaction: cut mid-way, it would roll back anyway). An
/// error ends the run at once: what earlier batches did stays done.
pub async fn in_batches<F, Fut>(
    size: u64,
    pause_between: Duration,
    shutdown: &CancellationToken,
    mut batch: F,
) -> anyhow::Result<Batches>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<u64>>>,
{
    let mut done = Batches {
        rows: 0,
        batches: 0,
        ended: Ended::Interrupted,
    };
    loop {
        if shutdown.is_cancelled() {
            return Ok(done);
        }
        let Some(rows) = batch().await? else {
            done.ended = Ended::Yielded;
            return Ok(done);
        };
        done.batches += 1;
        done.rows += rows;
        if rows < size {
            done.ended = Ended::Exhausted;
            return Ok(done);
        }
        pause(pause_between, shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;

    use anyhow::anyhow;
    use tokio::time::Instant;

    use super::*;

    /// Batches answering `answers` in turn; returns what `in_batches` said
    /// and how long it took.
    async fn drain(
        answers: Vec<anyhow::Result<Option<u64>>>,
        shutdown: &CancellationToken,
    ) -> (anyhow::Result<Batches>, Duration) {
        let mut answers = VecDeque::from(answers);
        let started = Instant::now();
        let pause = Duration::from_millis(100);
        let done = in_batches(10, pause, shutdown, || {
            let answer = answers.pop_front().unwrap();
            async move { answer }
        })
        .await;
        (done, started.elapsed())
    }

    fn ended(rows: u64, batches: u32, ended: Ended) -> Batches {
        Batches {
            rows,
            batches,
            ended,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_run_until_a_short_one_with_a_pause_between() {
        let running = CancellationToken::new();
        let (done, took) = drain(vec![Ok(Some(10)), Ok(Some(10)), Ok(Some(3))], &running).await;
        assert_eq!(done.unwrap(), ended(23, 3, Ended::Exhausted));
        assert_eq!(took, Duration::from_millis(200));

        let (done, took) = drain(vec![Ok(Some(0))], &running).await;
        assert_eq!(done.unwrap(), ended(0, 1, Ended::Exhausted));
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_declined_batch_yields_and_an_error_ends_the_run() {
        let running = CancellationToken::new();
        let (done, _) = drain(vec![Ok(Some(10)), Ok(None)], &running).await;
        assert_eq!(done.unwrap(), ended(10, 1, Ended::Yielded));

        let (done, _) = drain(vec![Ok(Some(10)), Err(anyhow!("timed out"))], &running).await;
        assert_eq!(done.unwrap_err().to_string(), "timed out");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_before_the_next_batch() {
        let stopped = CancellationToken::new();
        stopped.cancel();
        let (done, _) = drain(vec![], &stopped).await;
        assert_eq!(done.unwrap(), ended(0, 0, Ended::Interrupted));

        // Cancelled during the pause after a full batch: no second batch.
        let shutdown = CancellationToken::new();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cancel.cancel();
        });
        let (done, took) = drain(vec![Ok(Some(10))], &shutdown).await;
        assert_eq!(done.unwrap(), ended(10, 1, Ended::Interrupted));
        assert_eq!(took, Duration::from_millis(50));
    }
}
