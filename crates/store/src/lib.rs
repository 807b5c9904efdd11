//! # idem-store
//!
//! All of idem's SQL, and nothing else. Every function runs one statement and
//! takes `&mut PgConnection`, so the caller decides where a transaction begins
//! and ends (the inbox records a whole batch in one; the dispatcher claims in
//! one short transaction and settles in another).
//!
//! ## Layout
//! - `admin`: the operators' reads and hand changes (retry, resolve, replay),
//!   each change in one transaction with its audit row; one module per table.
//! - `attempt`: the attempt history, every provider call per outbox row.
//! - `batch`: a whole inbox batch set-based, one statement per kind of row
//!   over arrays (keys, outbox rows, recalls, counters, conflicts,
//!   quarantine, duplicates' result events).
//! - `claim`: due rows leased, oldest first, or per account: a bounded walk
//!   over the accounts with open work, each account's oldest row.
//! - `bench`: `idem bench`'s own statements: a backlog loaded straight into
//!   the outbox, when each message was recorded, the claim's plan.
//! - `db`: connecting (creating the database if missing, or only to an
//!   existing one with this release's schema), following a primary that
//!   moves, URL redaction for messages; the dispatcher's own connections,
//!   which plan each statement once (`DISPATCH_SESSION`).
//! - `event`: result events to publish (written by the settle trigger, and
//!   here for a duplicate of a settled charge); claim, delete once confirmed,
//!   back off.
//! - `explain`: the hot path's statements `EXPLAIN ANALYZE`d under the plan
//!   a replica runs (generic, custom, or the one a connection keeps), and
//!   the rows a plan handled.
//! - `heads`: `account_head`, a lower bound of each account's open ids, so
//!   that head lookups start at the head: what keeps it true, and the
//!   claim's tidy of what a walk found behind.
//! - `inbox`: record a message's key once; tell new, duplicate and conflict apart.
//! - `outage`: which database errors waiting fixes (start-up, held batches).
//! - `outbox`: enqueue, settle fenced by the lease.
//! - `overview`: the console overview's windowed figures (rates, waiting,
//!   recent quarantine and conflicts) and the reconciliation runs' record.
//! - `quarantine`: keep bad input, bounded (a long body as prefix, size, SHA-256), with its reason.
//! - `reconcile`: our rows for the provider's listed references, settling
//!   and re-queuing found/missing charges, compensations (refunds).
//! - `rescue`: in-flight rows back in play when the lease expired or the
//!   holder's session ended (its liveness lock released).
//! - `retention`: delete keys, settled outbox rows, quarantine and conflict
//!   records past their windows, in bounded `SKIP LOCKED` batches.
//! - `schema`: the embedded migrator, applying it, and checking a database's
//!   migrations without changing them (read-only commands never migrate).
//! - `scratch`: dropping a throw-away database (demo, bench, tests).
//! - `settle`: many attempts' results in one fenced statement (group commit),
//!   leasing each finished account's next head in it (chaining).
//! - `status`: exact counts for operators and the demo; the table gauges'
//!   sample (open work exactly through partial indexes, history estimated).
//! - `targets`: the hosts of a URL (`h1:p1,h2:p2`), tried in order, and
//!   whether a server is a primary (`pg_is_in_recovery()`).

pub mod admin;
pub mod attempt;
pub mod batch;
pub mod bench;
pub mod claim;
pub mod db;
pub mod event;
pub mod explain;
pub mod heads;
pub mod inbox;
pub mod outage;
pub mod outbox;
pub mod overview;
pub mod quarantine;
pub mod reconcile;
pub mod rescue;
pub mod retention;
pub mod schema;
pub mod scratch;
pub mod settle;
pub mod status;
pub mod targets;

pub use db::{connect, connect_dispatch, connect_existing, redact_url};
pub use inbox::Recorded;
pub use outbox::{Claimed, OutboxState, Settlement};
pub use schema::{MIGRATOR, SchemaBehind, check_schema, migrate};

/// The server the unit tests use: `IDEM_TEST_DATABASE_URL` (a superuser URL
/// of its `postgres` database) when they were built, else the local one.
#[cfg(test)]
pub(crate) mod test_server {
    const ADMIN_URL: &str = match option_env!("IDEM_TEST_DATABASE_URL") {
        Some(url) => url,
        None => "postgres://postgres@127.0.0.1:5432/postgres",
    };

    /// `postgres://user@host:port`, without the database.
    pub fn server() -> &'static str {
        ADMIN_URL
            .rsplit_once('/')
            .map_or(ADMIN_URL, |(server, _)| server)
    }
}
