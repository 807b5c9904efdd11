//! The workload of a run: every kind of duplicate, key conflicts, declines
//! and malformed messages, and what each distinct key must end as.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use idem_message::reference_id;
use idem_workload::{self as workload, Kind, Outgoing};
use rand::Rng;

use super::publisher::Publisher;
use super::world::{Profile, SCOPE, World};

/// The workload and what it must end as.
pub(super) struct Plan {
    /// First wave: originals, re-publishes, concurrent pairs, malformed, declines.
    pub(super) first: Vec<Outgoing>,
    /// Keys published twice at once (each pair = two identical messages).
    pub(super) pairs: Vec<Outgoing>,
    /// Second wave, after the originals are recorded: key conflicts.
    pub(super) conflicts: Vec<Outgoing>,
    /// reference id -> (amount, declined?) of every distinct valid key.
    pub(super) expected: HashMap<String, (i64, bool)>,
    /// Malformed bodies, each must be in quarantine.
    pub(super) malformed: Vec<Vec<u8>>,
    /// Duplicates injected by kind (the producer's own retries are added later).
    pub(super) duplicates: BTreeMap<&'static str, usize>,
}

impl Plan {
    pub(super) fn new(p: &Profile) -> Self {
        let spec = workload::Spec {
            prefix: "chaos".into(),
            scope: Some(SCOPE.into()),
            distinct: p.distinct,
            duplicates: p.duplicates,
            conflicts: 0,
            malformed: p.malformed,
            accounts: workload::DEFAULT_ACCOUNTS,
            seed: 99,
        };
        let mut first = workload::generate(&spec);
        let mut expected = HashMap::new();
        for m in first.iter().filter(|m| m.kind == Kind::Original) {
            let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap_or_default();
            let id = m.message_id.as_deref().unwrap_or_default();
            expected.insert(
                reference_id(SCOPE, id).to_string(),
                (body["amount"].as_i64().unwrap_or(0), false),
            );
        }
        let declined = |i: usize| Outgoing {
            message_id: Some(format!("chaos-decline-{i:05}")),
            app_id: Some(SCOPE.into()),
            body: format!(
                r#"{{"account_id":"acc_decline_{i}","amount":{},"currency":"EUR"}}"#,
                100 + i
            )
            .into_bytes(),
            kind: Kind::Original,
        };
        for i in 0..p.declines {
            let m = declined(i);
            expected.insert(
                reference_id(SCOPE, m.message_id.as_deref().unwrap_or_default()).to_string(),
                (100 + i as i64, true),
            );
            first.push(m);
        }
        let pairs: Vec<Outgoing> = (0..p.concurrent_pairs)
            .map(|i| Outgoing {
                message_id: Some(format!("chaos-pair-{i:05}")),
                app_id: Some(SCOPE.into()),
                body: format!(
                    r#"{{"account_id":"acc_pair_{}","amount":{},"currency":"EUR"}}"#,
                    i % 50,
                    500 + i
                )
                .into_bytes(),
                kind: Kind::Original,
            })
            .collect();
        for (i, m) in pairs.iter().enumerate() {
            expected.insert(
                reference_id(SCOPE, m.message_id.as_deref().unwrap_or_default()).to_string(),
                (500 + i as i64, false),
            );
        }
        let mut rng = rand::rng();
        let originals: Vec<&Outgoing> = first
            .iter()
            .filter(|m| {
                m.kind == Kind::Original && !m.body.windows(11).any(|w| w == b"acc_decline")
            })
            .collect();
        let conflicts: Vec<Outgoing> = (0..p.conflicts)
            .map(|_| {
                let m = originals[rng.random_range(0..originals.len())];
                let mut body: serde_json::Value =
                    serde_json::from_slice(&m.body).unwrap_or_default();
                body["amount"] = serde_json::json!(1_000_000 + rng.random_range(0..1000));
                Outgoing {
                    body: body.to_string().into_bytes(),
                    kind: Kind::Conflict,
                    ..m.clone()
                }
            })
            .collect();
        let malformed = first
            .iter()
            .filter(|m| matches!(m.kind, Kind::Malformed(_)))
            .map(|m| m.body.clone())
            .collect();
        let duplicates = BTreeMap::from([
            ("re-published", p.duplicates),
            ("same key at once", p.concurrent_pairs),
        ]);
        Self {
            first,
            pairs,
            conflicts,
            expected,
            malformed,
            duplicates,
        }
    }

    /// Publish everything straight to the chaos node (not through the proxy),
    /// surviving its restarts; returns the deliveries published and how many
    /// of them were the producer's own re-publishes.
    pub(super) async fn publish(
        &self,
        world: &World,
        p: &Profile,
    ) -> anyhow::Result<(usize, usize)> {
        let url = world.rabbit.amqp_url();
        let mut publisher = Publisher::new(&url, &world.queue);
        let half = self.first.len() / 2;
        publisher
            .publish(&self.first[..half], p.publish_rate)
            .await?;
        publisher.publish_pairs(&self.pairs).await?;
        publisher
            .publish(&self.first[half..], p.publish_rate)
            .await?;
        // Conflicts only once their originals are recorded, so which payload
        // wins is never in doubt.
        wait_until(Duration::from_secs(300), || async {
            let keys: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM inbox")
                .fetch_one(&world.pool)
                .await;
            keys.is_ok_and(|k| k as usize >= self.expected.len())
        })
        .await
        .context("the originals were not all recorded")?;
        publisher.publish(&self.conflicts, p.publish_rate).await?;
        Ok((publisher.published(), publisher.republished()))
    }
}

async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
