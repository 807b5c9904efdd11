//! The overview's cost does not grow with the history.

use idem_simulator::Faults;
use idem_tests::TestEnv;

/// Shared buffers `sql` (binding `COUNT_CAP`, `LAG_SAMPLE`) reads, from
/// `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`, and its plan as text.
async fn buffers(env: &TestEnv) -> (i64, String) {
    let (plan,): (serde_json::Value,) = sqlx::query_as(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        idem_store::overview::FLOW_SQL
    ))
    .bind(idem_store::overview::COUNT_CAP)
    .bind(idem_store::overview::LAG_SAMPLE)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let top = &plan[0]["Plan"];
    let read =
        top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap();
    (read, serde_json::to_string_pretty(&plan).unwrap())
}

/// The tables `plan` scans sequentially.
fn seq_scans(plan: &serde_json::Value, out: &mut Vec<String>) {
    match plan {
        serde_json::Value::Object(node) => {
            if node.get("Node Type").and_then(|t| t.as_str()) == Some("Seq Scan") {
                let table = node
                    .get("Relation Name")
                    .and_then(|t| t.as_str())
                    .unwrap_or("?");
                out.push(table.to_owned());
            }
            node.values().for_each(|v| seq_scans(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| seq_scans(v, out)),
        _ => {}
    }
}

/// Invariant: the overview's statement reads about as many buffers over
/// 200,000 settled rows of history (settled two days ago, analyzed) as over
/// 2,000, and never scans the outbox or the inbox sequentially (the small tables
/// of bad input may be, while they are small).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_reads_the_same_whatever_the_history() {
    let env = TestEnv::new(Faults::default()).await;
    let mut conn = env.pool.acquire().await.unwrap();
    let old = "UPDATE outbox SET settled_at = now() - interval '2 days',
                                created_at = now() - interval '2 days' - interval '1 second'";
    idem_store::bench::load_backlog(&mut conn, "small", 2_000, true)
        .await
        .unwrap();
    sqlx::query(old).execute(&mut *conn).await.unwrap();
    idem_store::bench::vacuum_outbox(&mut conn).await.unwrap();
    let (small, _) = buffers(&env).await;
    idem_store::bench::load_backlog(&mut conn, "large", 198_000, true)
        .await
        .unwrap();
    sqlx::query(old).execute(&mut *conn).await.unwrap();
    idem_store::bench::vacuum_outbox(&mut conn).await.unwrap();
    let (large, plan) = buffers(&env).await;
    let mut scans = Vec::new();
    seq_scans(&serde_json::from_str(&plan).unwrap(), &mut scans);
    assert!(
        !scans.iter().any(|t| t == "outbox" || t == "inbox"),
        "a sequential scan of {scans:?}: {plan}"
    );
    assert!(
        large <= small + 50,
        "the overview read {small} buffers over 2,000 settled rows and {large} over 200,000: {plan}"
    );
    drop(conn);
    env.cleanup().await;
}
