//! Rolling upgrades: a replica meets a schema that a newer release already
//! migrated (it restarts mid-rollout, or after a rollback). It must start —
//! the expand/contract rules make the expanded schema safe for it — while a
//! migration whose file changed after it was applied is still refused.

use idem_simulator::Faults;
use idem_tests::TestEnv;

/// Invariant: `migrate` accepts versions it does not know (applied by a
/// newer release) and refuses a modified applied migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_binary_starts_against_a_newer_schema_but_not_a_modified_one() {
    let env = TestEnv::new(Faults::default()).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000000, 'from a newer release', true, '\\x00'::bytea, 1)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    idem_store::migrate(&env.pool)
        .await
        .expect("a newer release's migration is accepted");

    sqlx::query(
        "UPDATE _sqlx_migrations SET checksum = '\\x01'::bytea
         WHERE version = (SELECT min(version) FROM _sqlx_migrations)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let err = idem_store::migrate(&env.pool)
        .await
        .expect_err("a modified migration is refused");
    assert!(format!("{err:#}").contains("modified"), "{err:#}");
    env.cleanup().await;
}
