//! [`RabbitCluster`]: private [`RabbitNode`]s joined into one RabbitMQ
//! cluster (each joins node 0 as it boots, by classic peer discovery: the
//! effect of `rabbitmqctl join_cluster` without a stop and start of the
//! app), for tests that stop the node leading a quorum queue while idem and
//! its producers keep going.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::RabbitNode;
use super::node::new_cookie;

/// Nodes of one cluster, sharing an Erlang cookie; node 0 is the one the
/// others joined (any of them serves clients).
pub struct RabbitCluster {
    /// The nodes, in the order they joined.
    pub nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Boot node 0, then nodes 1.. at once, each joining node 0's cluster
    /// as it boots (peer discovery, `classic_config`); returns once a node
    /// lists all `n` as running.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let started = Instant::now();
        let cookie = new_cookie();
        let seed = RabbitNode::boot(false, Some(&cookie), None, None).await?;
        let seed_name = seed.node_name().to_owned();
        let mut boots = tokio::task::JoinSet::new();
        for i in 1..n {
            let (cookie, seed) = (cookie.clone(), seed_name.clone());
            boots.spawn(async move {
                (
                    i,
                    RabbitNode::boot(false, Some(&cookie), Some(&seed), None).await,
                )
            });
        }
        let mut nodes = Vec::new();
        while let Some(booted) = boots.join_next().await {
            let (i, node) = booted.context("a node's boot task")?;
            nodes.push((i, node?));
        }
        nodes.sort_by_key(|(i, _)| *i);
        let nodes: Vec<RabbitNode> = [seed]
            .into_iter()
            .chain(nodes.into_iter().map(|(_, node)| node))
            .collect();
        let cluster = Self { nodes };
        cluster.await_running(n).await?;
        tracing::info!(n, took = ?started.elapsed(), "RabbitCluster formed");
        Ok(cluster)
    }

    /// Every node's AMQP URL, comma-separated: an `IDEM_AMQP_URL` list.
    pub fn amqp_urls(&self) -> String {
        self.nodes
            .iter()
            .map(RabbitNode::amqp_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node that leads quorum queue `queue` now, asked of
    /// any running node.
    pub async fn leader_of(&self, queue: &str) -> anyhow::Result<usize> {
        let listing = self
            .ask(&[
                "list_queues",
                "name",
                "leader",
                "--quiet",
                "--no-table-headers",
            ])
            .await?;
        let leader = listing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(name, _)| name.trim() == queue)
            .map(|(_, leader)| leader.trim().to_owned())
            .with_context(|| format!("queue {queue} not listed: {listing}"))?;
        self.nodes
            .iter()
            .position(|node| node.node_name() == leader)
            .with_context(|| format!("leader {leader} of {queue} is not one of ours"))
    }

    /// `rabbitmqctl` on the first node whose VM runs and answers.
    async fn ask(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut errors = Vec::new();
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            match node.ctl(args).await {
                Ok(out) => return Ok(out),
                Err(e) => errors.push(format!("{}: {e:#}", node.node_name())),
            }
        }
        bail!("no node answered {args:?}: {}", errors.join("; "))
    }

    /// Wait until a node reports `n` running cluster members.
    pub async fn await_running(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self
                .ask(&["cluster_status", "--formatter", "json"])
                .await
                .unwrap_or_default();
            let running = serde_json::from_str::<serde_json::Value>(&status)
                .ok()
                .and_then(|v| v.get("running_nodes")?.as_array().map(Vec::len));
            if running == Some(n) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the cluster did not report {n} running nodes: {status}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
