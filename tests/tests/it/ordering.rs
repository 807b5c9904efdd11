//! Per-account ordering: at most one charge per account in flight across all
//! replicas, in arrival order, without serialising unrelated accounts.
//! Concurrency is measured at the provider simulator.

use std::time::Duration;

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_tests::{TestEnv, wait_for};
use lapin::BasicProperties;

const ACCOUNTS: [&str; 4] = ["acc_a", "acc_b", "acc_c", "acc_d"];
const PER_ACCOUNT: usize = 15;

/// Publish PER_ACCOUNT messages per account, interleaved; the amount encodes
/// the message's position within its account.
async fn publish_interleaved(env: &TestEnv) {
    for seq in 0..PER_ACCOUNT {
        for account in ACCOUNTS {
            let body = format!(
                r#"{{"account_id":"{account}","amount":{},"currency":"EUR"}}"#,
                seq + 1
            );
            let props =
                BasicProperties::default().with_message_id(format!("{account}-{seq}").into());
            env.publish_raw(props, body.as_bytes()).await;
        }
    }
}

async fn run(ordering: bool, chain: bool) -> (idem_simulator::Stats, idem_simulator::Ledger) {
    let env = TestEnv::new(Faults {
        latency_ms: 40,
        ..Faults::default()
    })
    .await;
    // Record the whole backlog first, so dispatchers see every row at once.
    let consumer = env.start_worker(&["--role", "consumer"]);
    publish_interleaved(&env).await;
    let total = (ACCOUNTS.len() * PER_ACCOUNT) as i64;
    wait_for("backlog recorded", Duration::from_secs(60), || async {
        env.status().await.outbox_in(OutboxState::Pending) == total
    })
    .await;
    consumer.stop().await.unwrap();

    let (flag, chain) = (ordering.to_string(), chain.to_string());
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            env.start_worker(&[
                "--role",
                "dispatcher",
                "--per-account-ordering",
                &flag,
                "--chain-per-account",
                &chain,
            ])
        })
        .collect();
    wait_for("backlog charged", Duration::from_secs(90), || async {
        env.status().await.outbox_in(OutboxState::Succeeded) == total
    })
    .await;
    for r in replicas {
        r.stop().await.unwrap();
    }
    let result = (env.sim.stats(), env.sim.ledger());
    assert_eq!(
        result.1.charges.len(),
        total as usize,
        "each message charged once"
    );
    env.cleanup().await;
    result
}

/// Invariant: with ordering on, the provider never sees two charges of one
/// account at once, and each account's charges are created in arrival order;
/// unrelated accounts still go concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_charge_per_account_in_flight_in_arrival_order() {
    in_order_one_at_a_time(false).await;
}

/// Invariant: the same with chaining (a settle leases its account's next
/// row), across two replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_charges_keep_one_per_account_in_arrival_order() {
    in_order_one_at_a_time(true).await;
}

async fn in_order_one_at_a_time(chain: bool) {
    let (stats, ledger) = run(true, chain).await;
    assert_eq!(stats.max_account_concurrency, 1, "{stats:?}");
    assert!(
        stats.max_concurrency > 1,
        "unrelated accounts run concurrently: {stats:?}"
    );
    for account in ACCOUNTS {
        let amounts: Vec<i64> = ledger
            .charges
            .iter()
            .filter(|c| c.account_id == account)
            .map(|c| c.amount)
            .collect();
        let expected: Vec<i64> = (1..=PER_ACCOUNT as i64).collect();
        assert_eq!(amounts, expected, "{account} charged in arrival order");
    }
}

/// Control: with ordering off the same workload does put several charges of
/// one account in flight — so the measurement above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ordering_one_account_runs_concurrently() {
    let (stats, _) = run(false, false).await;
    assert!(stats.max_account_concurrency > 1, "{stats:?}");
}
