//! The recorder: group commit of attempt results. Every attempt hands its
//! result to one task, which writes whatever has queued up meanwhile in one
//! fenced statement ([`idem_store::settle::settle_many`]) and tells each
//! attempt whether its lease still held. Under light load a result is written
//! alone, at once; under heavy load results share round trips, batched by
//! the time the previous statement took — no linger, no added latency. With
//! per-account ordering, a result that ends its row also leases the account's
//! next head to this replica in the same statement (chaining), handed back to
//! the attempt that settled it.

use std::time::{Duration, Instant};

use idem_charge::Call;
use idem_periodic::Backoff;
use idem_store::Claimed;
use idem_store::Settlement;
use idem_store::attempt::NewAttempt;
use idem_store::settle::{self, Chain, Fenced, Settled};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::metrics;

/// Most results written in one statement.
const MAX_BATCH: usize = 256;

/// One result waiting to be written.
struct Job {
    /// Outbox row id.
    id: i64,
    /// The lease token it was obtained under.
    token: Uuid,
    /// The result.
    settlement: Settlement,
    /// The provider calls the attempt made, for the history.
    calls: Vec<Call>,
    /// Lease the account's next head to this replica if the row ends final.
    chain: Option<Chain>,
    /// Where to say whether the fence accepted it, and the next row leased
    /// (or why it was not written).
    done: oneshot::Sender<Result<Recorded, String>>,
}

/// What the recorder did with one result.
#[derive(Debug)]
pub(crate) struct Recorded {
    /// The fence accepted it.
    pub(crate) written: bool,
    /// The account's next head, leased to this replica (chaining).
    pub(crate) next: Option<Claimed>,
}

/// A handle on the recorder task; the task ends when every handle is gone.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    /// The task's queue.
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Start the recorder task on `pool` (inside a tokio runtime); `replica`
    /// names this replica in the attempt history.
    pub(crate) fn spawn(pool: PgPool, replica: String, retry_for: Duration) -> Self {
        let (jobs, queue) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run(pool, replica, retry_for, queue));
        Self { jobs }
    }

    /// Record `settlement` for row `id` if its lease `token` still holds:
    /// `written` or refused by the fence, and with `chain`, the account's
    /// next head leased to this replica; `Err` not written (database error:
    /// the lease rescuer resolves the row).
    pub(crate) async fn record(
        &self,
        id: i64,
        token: Uuid,
        settlement: Settlement,
        calls: Vec<Call>,
        chain: Option<Chain>,
    ) -> Result<Recorded, String> {
        let (done, answer) = oneshot::channel();
        let job = Job {
            id,
            token,
            settlement,
            calls,
            chain,
            done,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| "the recorder stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the recorder dropped the result".to_owned())?
    }
}

/// Most calls kept for the next write after failed ones (the oldest go first).
const MAX_CARRIED: usize = 100_000;

/// The first and the longest wait before writing a failed group again.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

async fn run(pool: PgPool, replica: String, retry_for: Duration, mut queue: mpsc::Receiver<Job>) {
    // Calls of groups whose write failed: their results are left to the lease
    // rescuer, but the calls happened; they go with the next write.
    let mut carried: Vec<NewAttempt> = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        ::metrics::histogram!(metrics::SETTLE_BATCH_ROWS).record(jobs.len() as f64);
        let written = write(&pool, &replica, &jobs, &mut carried, retry_for).await;
        let mut written = written.map(|settled| {
            settled
                .into_iter()
                .map(|s| (s.id, s.next))
                .collect::<std::collections::HashMap<_, _>>()
        });
        for job in jobs {
            let answer = match &mut written {
                Ok(settled) => Ok(match settled.remove(&job.id) {
                    Some(next) => Recorded {
                        written: true,
                        next,
                    },
                    None => Recorded {
                        written: false,
                        next: None,
                    },
                }),
                Err(e) => Err(e.clone()),
            };
            // The attempt may have given up waiting (shutdown): nothing to tell.
            let _ = job.done.send(answer);
        }
    }
}

/// Write the group, and write it again while the database refuses it, for
/// up to `retry_for` (the lease): a result the provider gave is never thrown
/// away for one failed statement. Retrying is safe because the statement is
/// fenced: once the lease is gone (the rescuer took the row) it accepts
/// nothing, and the answer says so.
async fn write(
    pool: &PgPool,
    replica: &str,
    jobs: &[Job],
    carried: &mut Vec<NewAttempt>,
    retry_for: Duration,
) -> Result<Vec<Settled>, String> {
    let batch: Vec<Fenced<'_>> = jobs
        .iter()
        .map(|j| Fenced {
            id: j.id,
            token: j.token,
            settlement: &j.settlement,
            chain: j.chain.is_some(),
        })
        .collect();
    let chain = jobs.iter().find_map(|j| j.chain);
    let mut calls = std::mem::take(carried);
    calls.extend(
        jobs.iter()
            .flat_map(|j| j.calls.iter().map(|c| NewAttempt::of_call(j.id, c))),
    );
    let started = Instant::now();
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let written = loop {
        let written = match pool.acquire().await {
            Ok(mut conn) => settle::settle_and_chain(&mut conn, &batch, replica, &calls, chain)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match written {
            Ok(ids) => break Ok(ids),
            Err(e) if started.elapsed() < retry_for => {
                let delay = backoff.next_delay();
                ::metrics::counter!(metrics::SETTLE_RETRIES).increment(1);
                tracing::warn!(error = %e, rows = jobs.len(), retry_in = ?delay, "writing results failed; writing them again (fenced by the lease)");
                tokio::time::sleep(delay).await;
            }
            Err(e) => break Err(e),
        }
    };
    if written.is_err() {
        if calls.len() > MAX_CARRIED {
            let dropped = calls.len() - MAX_CARRIED;
            tracing::warn!(
                dropped,
                "attempt history: dropping the oldest calls kept for the database's return"
            );
            calls.drain(..dropped);
        }
        *carried = calls;
    }
    written
}
