//! The dispatcher: claim, attempt, settle — once (`dispatch_once`) or in a loop
//! with bounded concurrency (`run`, in `run_loop.rs`). A refused call (see
//! `crate::breaker`) puts its row back with the attempt given back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idem_charge::{Call, ChargeClient};
use idem_store::attempt::NewAttempt;
use idem_store::claim::{self, AccountCursor};
use idem_store::settle::Chain;
use idem_store::{Claimed, Settlement, outbox};
use sqlx::PgPool;
use tokio::task::JoinSet;

use crate::breaker::{Admit, Breaker, BreakerConfig};
use crate::liveness::Liveness;
use crate::metrics;
use crate::recorder::{Recorded, Recorder};
use crate::rescue::LeaseRescue;
use crate::strategy::{self, Backoff, CallLog, Policy, Step};

#[path = "run_loop.rs"]
mod run_loop;

/// Settings of a dispatcher replica.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// This replica's name, stored as the lease owner (for operators).
    pub owner: String,
    /// How long a claim holds a row before another replica may rescue it.
    /// Must comfortably exceed a lookup plus a charge call.
    pub lease: Duration,
    /// Most rows claimed in one round trip.
    pub claim_batch: i64,
    /// At most one charge per account in flight, in outbox order.
    pub per_account_ordering: bool,
    /// With ordering, a final settle leases the account's next row.
    pub chain_per_account: bool,
    /// Most provider calls in flight at once in this replica.
    pub concurrency: usize,
    /// Claims after which a still-failing row becomes `dead`.
    pub max_attempts: i32,
    /// Retry delays for transient failures.
    pub backoff: Backoff,
    /// The per-call timeout of the charge client.
    pub charge_timeout: Duration,
    /// Sleep between claims when nothing is due.
    pub idle_poll: Duration,
    /// How long shutdown waits for calls in flight before abandoning them to
    /// the lease rescuer.
    pub shutdown_grace: Duration,
    /// When the provider refuses us: the circuit breaker's settings.
    pub breaker: BreakerConfig,
    /// How long the provider keeps an idempotency key (Stripe: 24 h): an
    /// uncertain row older than that is never re-sent under its key blindly.
    pub key_ttl: Duration,
}

/// One row's attempt as `dispatch_once` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatched {
    /// Outbox row id.
    pub id: i64,
    /// What was recorded (or would have been).
    pub settlement: Settlement,
    /// `false` if the fence refused the write: the lease had been lost.
    pub recorded: bool,
    /// The provider refused the call because of us (the row went back with
    /// its attempt given back; `settlement` is the retry it amounts to).
    pub refused: bool,
    /// The account's next row, leased to this replica by the settle
    /// (chaining, in the dispatch loop only): the caller attempts it next.
    pub next: Option<Claimed>,
}

/// A dispatcher replica. Cheap to clone (shares the pool and HTTP client).
#[derive(Debug, Clone)]
pub struct Dispatcher {
    /// The database.
    pool: PgPool,
    /// Where the claim runs (and the recorder writes): the pool, or one of
    /// the dispatcher's own ([`Dispatcher::with_dispatch_pool`]).
    claims: PgPool,
    /// The charge API.
    client: ChargeClient,
    /// Settings.
    config: Arc<DispatchConfig>,
    /// Writes results in groups (shared by the clones).
    recorder: Recorder,
    /// Pauses claiming while the provider refuses us (shared by the clones).
    breaker: Breaker,
    /// Where the per-account claim's walk over the accounts resumes (shared
    /// by the clones, so the replica goes round its accounts once).
    cursor: Arc<std::sync::Mutex<AccountCursor>>,
    /// The liveness lock whose key claims store (shared by the clones; held
    /// while `run` runs).
    liveness: Liveness,
    /// Set when the dispatch loop stops claiming: settles stop chaining.
    draining: Arc<AtomicBool>,
    /// Raised when new rows may be due (the replica's inbox committed some):
    /// an idle loop claims at once instead of at the end of its poll.
    new_work: Arc<tokio::sync::Notify>,
}

impl Dispatcher {
    /// A dispatcher over `pool` calling `client` (starts its recorder task:
    /// call inside a tokio runtime).
    pub fn new(pool: PgPool, client: ChargeClient, config: DispatchConfig) -> Self {
        Self {
            recorder: Recorder::spawn(pool.clone(), config.owner.clone(), config.lease),
            breaker: Breaker::new(config.breaker),
            cursor: Arc::default(),
            liveness: Liveness::new(),
            draining: Arc::default(),
            new_work: Arc::default(),
            claims: pool.clone(),
            pool,
            client,
            config: Arc::new(config),
        }
    }

    /// This dispatcher with `breaker` (e.g. one `/readyz` already watches)
    /// instead of its own.
    #[must_use]
    pub fn with_breaker(mut self, breaker: Breaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// This dispatcher woken by `new_work` (the replica's inbox raises it
    /// after committing new outbox rows) as well as by its idle poll, which
    /// remains for work the signal does not cover: rows another replica
    /// recorded, retries coming due.
    #[must_use]
    pub fn with_new_work(mut self, new_work: Arc<tokio::sync::Notify>) -> Self {
        self.new_work = new_work;
        self
    }

    /// This dispatcher claiming and writing its results on `pool`: one of
    /// [`idem_store::connect_dispatch`], whose connections plan each
    /// statement once (`idem_store::db::DISPATCH_SESSION`). The rest (lease
    /// rescue, refusals, late successes) stays on the shared pool.
    #[must_use]
    pub fn with_dispatch_pool(mut self, pool: PgPool) -> Self {
        // The recorder started by `new` ends when its handle is dropped here.
        self.recorder = Recorder::spawn(pool.clone(), self.config.owner.clone(), self.config.lease);
        self.claims = pool;
        self
    }

    /// The replica's provider breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    fn policy(&self) -> Policy {
        Policy {
            max_attempts: self.config.max_attempts,
            backoff: self.config.backoff,
            charge_timeout: self.config.charge_timeout,
            // `uncertain_since` is set when the uncertain attempt is recorded
            // (or its lease rescued): up to about two leases after the call
            // the provider stored the key under.
            key_trusted_for: self
                .config
                .key_ttl
                .saturating_sub(self.config.lease.saturating_mul(2)),
        }
    }

    /// Claim up to `limit` due rows (one short transaction).
    pub async fn claim(&self, limit: i64) -> Result<Vec<Claimed>, sqlx::Error> {
        let started = std::time::Instant::now();
        let mut conn = self.claims.acquire().await?;
        let holder = claim::Holder {
            owner: &self.config.owner,
            lease: self.config.lease,
            lock: self.liveness.key(),
        };
        let rows = if self.config.per_account_ordering {
            // A claim's walk is short: the cursor is copied out and back
            // rather than held locked across the await.
            let mut cursor = self.lock_cursor().clone();
            let rows = claim::claim_as(&mut conn, &holder, limit, Some(&mut cursor)).await;
            *self.lock_cursor() = cursor;
            rows?
        } else {
            claim::claim_as(&mut conn, &holder, limit, None).await?
        };
        ::metrics::histogram!(metrics::CLAIM_SECONDS).record(started.elapsed().as_secs_f64());
        ::metrics::counter!(metrics::CLAIMED_ROWS).increment(rows.len() as u64);
        if !rows.is_empty() {
            idem_crash::point("dispatch.after_claim");
        }
        Ok(rows)
    }

    /// Whether the last per-account claim stopped at its bound on accounts
    /// with accounts left to walk: claim again at once instead of idling.
    pub(crate) fn more_accounts(&self) -> bool {
        self.config.per_account_ordering && self.lock_cursor().cut_short()
    }

    fn lock_cursor(&self) -> std::sync::MutexGuard<'_, AccountCursor> {
        // The cursor is only a place to resume; one a panicking holder left
        // is as good as any.
        self.cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claim the breaker's probe: one row (or none, and the next claim
    /// probes).
    async fn claim_probe(&self) -> Result<Vec<Claimed>, sqlx::Error> {
        let rows = self.claim(1).await;
        if !matches!(&rows, Ok(r) if !r.is_empty()) {
            self.breaker.probe_unused();
        }
        rows
    }

    /// Put rows with expired leases back in play; returns how many.
    pub async fn rescue(&self) -> Result<u64, sqlx::Error> {
        let mut rescuer = self.rescuer();
        rescuer.rescue().await
    }

    fn rescuer(&self) -> LeaseRescue {
        LeaseRescue::new(self.pool.clone(), &self.client, self.config.charge_timeout)
    }

    /// Attempt one claimed row and record the outcome, fenced by its lease.
    /// The provider calls are bounded by 90% of the lease, so a holder stops
    /// calling before another replica may rescue the row; an attempt cut off
    /// by the bound counts as uncertain. The result is then offered to the
    /// fenced write whatever happened meanwhile: if the lease was lost (this
    /// process was frozen, or the database was away), the fence refuses it.
    pub async fn process(&self, row: Claimed) -> anyhow::Result<Dispatched> {
        self.attempt(row, false).await
    }

    /// [`Dispatcher::process`], then, while the settle leases the account's
    /// next row to this replica (per-account ordering, breaker closed, not
    /// draining), that row too: an account's charges follow one another
    /// without a claim in between. Returns the last row's outcome.
    pub(crate) async fn process_chain(&self, row: Claimed) -> anyhow::Result<Dispatched> {
        let mut row = row;
        loop {
            let chain = self.config.per_account_ordering
                && self.config.chain_per_account
                && self.breaker.status().is_none()
                && !self.draining.load(Ordering::Acquire);
            let done = self.attempt(row, chain).await?;
            match done.next.clone() {
                Some(next) => {
                    ::metrics::counter!(metrics::CLAIMED_ROWS).increment(1);
                    row = next;
                }
                None => return Ok(done),
            }
        }
    }

    /// Stop chaining: the loop stopped claiming (shutdown).
    pub(crate) fn drain_chains(&self) {
        self.draining.store(true, Ordering::Release);
    }

    async fn attempt(&self, row: Claimed, chain: bool) -> anyhow::Result<Dispatched> {
        let started = std::time::Instant::now();
        let bound = self.config.lease.mul_f64(0.9);
        let policy = self.policy();
        let calls = CallLog::default();
        let attempt = strategy::attempt(&self.client, &policy, &row, &calls);
        let step = match tokio::time::timeout(bound, attempt).await {
            Ok(step) => step,
            Err(_) => {
                ::metrics::counter!(metrics::OVERRAN).increment(1);
                tracing::warn!(outbox_id = row.id, reference_id = %row.reference_id, budget = ?bound, "attempt outlived its lease budget; recording it as uncertain");
                Step::Settle(strategy::overran(&self.client, &policy, &row, bound))
            }
        };
        let calls = calls.take("cut off: no answer within the lease budget");
        let settlement = match step {
            Step::Refused {
                cause,
                error,
                delay,
            } => {
                self.breaker.refused(cause);
                ::metrics::counter!(metrics::PROVIDER_RESPONSES, "class" => "refused").increment(1);
                return self.release(row, error, delay, calls).await;
            }
            Step::Settle(settlement) => settlement,
        };
        self.observed(&calls);
        let class = response_class(&settlement);
        ::metrics::counter!(metrics::PROVIDER_RESPONSES, "class" => class).increment(1);
        idem_crash::point("dispatch.after_answer");
        let (id, reference) = (row.id, row.reference_id);
        match self.settle(row, settlement, calls, chain).await {
            Ok(done) => {
                ::metrics::histogram!(metrics::ATTEMPT_SECONDS, "class" => class)
                    .record(started.elapsed().as_secs_f64());
                Ok(done)
            }
            Err(e) => {
                ::metrics::counter!(metrics::ABANDONED).increment(1);
                Err(e.context(format!(
                    "recording the result of outbox row {id} (reference {reference}); the rescuer will resolve the row"
                )))
            }
        }
    }

    /// Tell the breaker what the calls of a settled attempt showed: an HTTP
    /// answer means the provider takes our calls; none (cut off, transport
    /// failure) tells nothing.
    fn observed(&self, calls: &[Call]) {
        if calls.iter().any(|c| c.http_status.is_some()) {
            self.breaker.answered();
        } else {
            self.breaker.inconclusive();
        }
    }

    /// Put a refused row back with its attempt given back (fenced by its
    /// lease), and keep the refused calls in its history.
    async fn release(
        &self,
        row: Claimed,
        error: String,
        delay: Duration,
        calls: Vec<Call>,
    ) -> anyhow::Result<Dispatched> {
        let mut conn = self.pool.acquire().await?;
        let history: Vec<NewAttempt> = calls
            .iter()
            .map(|c| NewAttempt::of_call(row.id, c))
            .collect();
        idem_store::attempt::record(&mut conn, &self.config.owner, &history).await?;
        let recorded =
            outbox::release_refused(&mut conn, row.id, row.lease_token, &error, delay).await?;
        if !recorded {
            ::metrics::counter!(metrics::FENCE_REFUSALS).increment(1);
        }
        Ok(Dispatched {
            id: row.id,
            settlement: Settlement::Retry {
                uncertain: false,
                error,
                delay,
            },
            recorded,
            refused: true,
            next: None,
        })
    }

    /// Record `settlement` for `row`, fenced by its lease token (through the
    /// recorder, which groups concurrent results into one statement); a
    /// success the fence refuses is still kept as evidence on the row.
    async fn settle(
        &self,
        row: Claimed,
        settlement: Settlement,
        calls: Vec<Call>,
        chain: bool,
    ) -> anyhow::Result<Dispatched> {
        let chain = chain.then(|| Chain {
            lease: self.config.lease,
            lock: self.liveness.key(),
        });
        let Recorded {
            written: recorded,
            next,
        } = self
            .recorder
            .record(row.id, row.lease_token, settlement.clone(), calls, chain)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !recorded {
            ::metrics::counter!(metrics::FENCE_REFUSALS).increment(1);
            let kept = match &settlement {
                Settlement::Succeeded { charge_id, result } => {
                    let mut conn = self.pool.acquire().await?;
                    outbox::record_late_success(&mut conn, row.id, charge_id, result).await?
                }
                _ => false,
            };
            tracing::warn!(outbox_id = row.id, reference_id = %row.reference_id, late_success_recorded = kept, "result refused by the lease fence: the lease expired during the call");
        }
        Ok(Dispatched {
            id: row.id,
            settlement,
            recorded,
            refused: false,
            next,
        })
    }

    /// One step: claim a batch, attempt every row concurrently, settle each.
    /// Returns what happened per row (empty when nothing was due).
    /// While the breaker is open nothing is claimed; half-open, one row.
    pub async fn dispatch_once(&self) -> anyhow::Result<Vec<Dispatched>> {
        let rows = match self.breaker.admit() {
            Admit::Claim => self.claim(self.config.claim_batch).await?,
            Admit::Probe => self.claim_probe().await?,
            Admit::Wait(_) => Vec::new(),
        };
        let mut tasks = JoinSet::new();
        for row in rows {
            let this = self.clone();
            tasks.spawn(async move { this.process(row).await });
        }
        let mut done = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            done.push(joined??);
        }
        done.sort_by_key(|d| d.id);
        Ok(done)
    }
}

/// The `class` label of [`metrics::PROVIDER_RESPONSES`], one of
/// [`metrics::RESPONSE_CLASSES`]: what the attempt's last answer meant, read
/// back from the settlement the strategy chose
/// (`Retry` tells an uncertain outcome from a certain non-charge; a `Dead` row
/// is either a permanent rejection or the attempt limit on a retryable answer).
fn response_class(settlement: &Settlement) -> &'static str {
    match settlement {
        Settlement::Succeeded { .. } => "succeeded",
        Settlement::Declined { .. } => "declined",
        Settlement::Retry {
            uncertain: false, ..
        } => "not_processed",
        Settlement::Retry {
            uncertain: true, ..
        } => "uncertain",
        Settlement::Dead { error } if error.starts_with("provider rejected") => "rejected",
        Settlement::Dead { error } if error.contains("(never charged)") => "not_processed",
        Settlement::Dead { .. } => "uncertain",
    }
}
