//! The dispatcher's batch statements (the claim's walk and lease, the group
//! settle, the rescue of a dead holder's rows) `EXPLAIN ANALYZE`d under the
//! plan a replica really runs,
//! and the work a plan did, counted in rows rather than time: for the tests
//! that hold a statement to O(batch) (docs/performance.md, "The settle's
//! join").
//!
//! **Why generic plans.** sqlx prepares every statement on its connection;
//! after five executions PostgreSQL may switch a prepared statement to a
//! generic plan, one made without the parameters' values. For an `unnest` of
//! an array parameter that plan guesses 10 rows, whatever the batch holds, so
//! a join it thinks is 10 × 10 can be 512 × 512. A plain `EXPLAIN` with
//! bound parameters plans with their values (a custom plan) and would not
//! show it: the statement is `PREPARE`d here and run by `EXECUTE` under the
//! plan cache mode asked for.

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::attempt::NewAttempt;
use crate::settle::{self, Chain, Fenced};
use crate::{claim, heads, rescue};

/// Which plan a statement is explained under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Planned without the parameters' values (`force_generic_plan`).
    Generic,
    /// Planned for these values (`force_custom_plan`).
    Custom,
    /// The generic plan this connection holds for the statement already,
    /// made whenever a run of the real statement on it planned it (on the
    /// dispatcher's connections, `crate::db::DISPATCH_SESSION`): what a
    /// replica runs after the table under it has changed. An error if the
    /// connection holds none.
    Cached,
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of `$sql` under `$plan` on `$conn`:
/// prepared (or found, [`Plan::Cached`]), its values stashed by `$bind`, a
/// query on the stash statement's text `$stash` ([`stash_sql`]), then
/// executed.
macro_rules! explain_bound {
    ($conn:ident, $plan:expr, $sql:expr, |$stash:ident| $bind:expr) => {{
        let prepared = prepare($conn, $plan, $sql).await?;
        let $stash = stash_sql(&prepared.types);
        $bind.fetch_one(&mut *$conn).await?;
        execute($conn, &prepared).await
    }};
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of the group settle of `batch`
/// ([`settle::settle_and_chain`], chained when `chain` is given) under
/// `plan`. The settle really runs: the caller runs this in a transaction it
/// rolls back (the plan cache mode is set for that transaction only).
pub async fn settle(
    conn: &mut PgConnection,
    plan: Plan,
    batch: &[Fenced<'_>],
    replica: &str,
    calls: &[NewAttempt],
    chain: Option<Chain>,
) -> Result<serde_json::Value, sqlx::Error> {
    explain_bound!(conn, plan, settle::statement(chain.is_some()), |stash| {
        settle::bind(
            sqlx::query_as::<_, (i32,)>(&stash),
            batch,
            replica,
            calls,
            chain,
        )
    })
}

/// The same of [`rescue::rescue_orphaned`] of `rows`.
pub async fn rescue_orphaned(
    conn: &mut PgConnection,
    plan: Plan,
    rows: &[(i64, Uuid)],
) -> Result<serde_json::Value, sqlx::Error> {
    explain_bound!(conn, plan, rescue::RESCUE_ORPHANED, |stash| {
        rescue::bind_orphaned(
            sqlx::query_scalar::<_, i32>(&stash),
            rows,
            Duration::ZERO,
            false,
        )
    })
}

/// The same of the per-account claim's walk ([`claim::heads`]) from `after`.
pub async fn walk(
    conn: &mut PgConnection,
    plan: Plan,
    after: &str,
    bound: i64,
    limit: i64,
) -> Result<serde_json::Value, sqlx::Error> {
    explain_bound!(conn, plan, claim::claim_sql(true)[0], |stash| {
        sqlx::query_scalar::<_, i32>(&stash)
            .bind(after)
            .bind(bound)
            .bind(limit)
    })
}

/// The same of the unordered claim ([`claim::claim_as`] without a cursor)
/// of up to `limit` due rows for `holder`.
pub async fn claim_unordered(
    conn: &mut PgConnection,
    plan: Plan,
    holder: &claim::Holder<'_>,
    limit: i64,
) -> Result<serde_json::Value, sqlx::Error> {
    explain_bound!(conn, plan, claim::claim_sql(false)[0], |stash| {
        claim::bind_lease(sqlx::query_as::<_, (i32,)>(&stash), holder, limit)
    })
}

/// The same of the lease of walked heads ([`claim::claim_as`]) of `heads`
/// for `holder`.
pub async fn lease(
    conn: &mut PgConnection,
    plan: Plan,
    holder: &claim::Holder<'_>,
    heads: &[i64],
) -> Result<serde_json::Value, sqlx::Error> {
    explain_bound!(conn, plan, claim::claim_sql(true)[1], |stash| {
        claim::bind_lease(sqlx::query_as::<_, (i32,)>(&stash), holder, heads)
    })
}

/// The same of the claim's tidy ([`heads::tidy`]) of `behind`.
pub async fn tidy(
    conn: &mut PgConnection,
    plan: Plan,
    behind: &[heads::Behind],
) -> Result<serde_json::Value, sqlx::Error> {
    explain_bound!(conn, plan, heads::TIDY, |stash| {
        heads::bind_tidy(sqlx::query_scalar::<_, i32>(&stash), behind)
    })
}

/// The claim's tidy, for [`kept_cost`].
pub const TIDY: &str = heads::TIDY;

/// The estimated total cost of the generic plan this connection keeps for
/// `sql` (`EXPLAIN EXECUTE` without running it, every parameter NULL: a
/// kept generic plan does not look at them). The cost is the one figured
/// when the plan was made, so an unchanged cost after the tables changed
/// says the plan was not made again.
pub async fn kept_cost(conn: &mut PgConnection, sql: &str) -> Result<f64, sqlx::Error> {
    let prepared = prepare(conn, Plan::Cached, sql).await?;
    let args = prepared.types.iter().map(|t| format!("NULL::{t}"));
    let (plan,): (serde_json::Value,) =
        sqlx::query_as(&explain_sql(&prepared, "FORMAT JSON", args))
            .fetch_one(&mut *conn)
            .await?;
    plan[0]["Plan"]["Total Cost"]
        .as_f64()
        .ok_or_else(|| sqlx::Error::Protocol(format!("no total cost in {plan}")))
}

/// A statement ready to `EXECUTE`: its name, its parameters' types, and
/// whether it was prepared here (and is deallocated after).
struct Prepared {
    name: String,
    types: Vec<String>,
    ours: bool,
}

/// Set the plan cache mode for the transaction and `PREPARE` `sql`, or, for
/// [`Plan::Cached`], find the connection's own prepared `sql` with a generic
/// plan.
async fn prepare(conn: &mut PgConnection, plan: Plan, sql: &str) -> Result<Prepared, sqlx::Error> {
    let mode = match plan {
        Plan::Generic => "force_generic_plan",
        Plan::Custom => "force_custom_plan",
        Plan::Cached => {
            let found: Option<(String, Vec<String>)> = sqlx::query_as(
                "SELECT name, array(SELECT t::text FROM unnest(parameter_types) t)
                 FROM pg_prepared_statements WHERE statement = $1 AND generic_plans > 0",
            )
            .bind(sql)
            .fetch_optional(&mut *conn)
            .await?;
            let (name, types) = found.ok_or_else(|| {
                sqlx::Error::Protocol("no generic plan of the statement on this connection".into())
            })?;
            return Ok(Prepared {
                name,
                types,
                ours: false,
            });
        }
    };
    sqlx::query(&format!("SET LOCAL plan_cache_mode = {mode}"))
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(&format!("PREPARE idem_explained AS {sql}"))
        .execute(&mut *conn)
        .await?;
    let types = sqlx::query_scalar(
        "SELECT unnest(parameter_types)::text FROM pg_prepared_statements
         WHERE name = 'idem_explained'",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Prepared {
        name: "idem_explained".to_owned(),
        types,
        ours: true,
    })
}

/// `EXECUTE` takes no bound parameters (it is a utility statement), so the
/// values travel as text in settings of the transaction: this statement,
/// bound as the prepared one would be, stores them; [`execute`] reads each
/// back and casts it to its parameter's type. A NULL goes as `\N`, which no
/// array's text and no replica name is.
fn stash_sql(types: &[String]) -> String {
    // Each parameter cast to its type: two statements with as many
    // parameters of other types get two texts, so sqlx's statement cache
    // (keyed by the text) does not bind one's values to the other's types.
    let stash: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let i = i + 1;
            format!("set_config('idem.explain_{i}', coalesce(${i}::{t}::text, '\\N'), true)")
        })
        .collect();
    format!("SELECT num_nonnulls({})", stash.join(", "))
}

/// `EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE` the prepared statement with the
/// stashed values, and deallocate it if it was prepared here.
async fn execute(
    conn: &mut PgConnection,
    prepared: &Prepared,
) -> Result<serde_json::Value, sqlx::Error> {
    let args = prepared.types.iter().enumerate().map(|(i, t)| {
        format!(
            "nullif(current_setting('idem.explain_{}'), '\\N')::{t}",
            i + 1
        )
    });
    let explain = explain_sql(prepared, "ANALYZE, FORMAT JSON", args);
    let (plan,): (serde_json::Value,) = sqlx::query_as(&explain).fetch_one(&mut *conn).await?;
    if prepared.ours {
        sqlx::raw_sql("DEALLOCATE idem_explained")
            .execute(conn)
            .await?;
    }
    Ok(plan)
}

/// `EXPLAIN (<options>) EXECUTE` of `prepared` with `args`.
fn explain_sql(prepared: &Prepared, options: &str, args: impl Iterator<Item = String>) -> String {
    let args: Vec<String> = args.collect();
    format!(
        "EXPLAIN ({options}) EXECUTE \"{}\"({})",
        prepared.name,
        args.join(", ")
    )
}

/// The rows a plan (`EXPLAIN (ANALYZE, FORMAT JSON)`'s output) handled: over
/// every node, its loops × (rows it returned + rows its filters removed).
/// Time depends on the machine and its load; this does not, so a test can
/// compare two batch sizes: linear work grows as the batch, a nested loop
/// over the batch as its square. Trigger bodies are not in the plan.
pub fn work(explained: &serde_json::Value) -> u64 {
    fn node(n: &serde_json::Value) -> f64 {
        let get = |k: &str| n.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        let own = get("Actual Loops")
            * (get("Actual Rows")
                + get("Rows Removed by Filter")
                + get("Rows Removed by Join Filter")
                + get("Rows Removed by Index Recheck"));
        let children = n
            .get("Plans")
            .and_then(serde_json::Value::as_array)
            .map_or(0.0, |plans| plans.iter().map(node).sum());
        own + children
    }
    let total: f64 = explained
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|statement| statement.get("Plan"))
        .map(node)
        .sum();
    // Rows are whole; loops × an average of rows per loop may not be.
    total.round() as u64
}
