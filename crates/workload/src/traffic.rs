//! Sample traffic for `idem publish`, the demo and the tests: originals,
//! re-published duplicates, key conflicts and malformed messages, published with
//! publisher confirms.

use std::time::Duration;

use anyhow::{Context, bail};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// What a workload contains.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Prefix of every message id, so runs never collide.
    pub prefix: String,
    /// Scope (`app_id`) of the messages; `None` sends none (scope `default`).
    pub scope: Option<String>,
    /// Distinct valid messages (each one charge).
    pub distinct: usize,
    /// Extra copies of originals (same key, same payload): re-publishes.
    pub duplicates: usize,
    /// Messages reusing an original's key with another amount.
    pub conflicts: usize,
    /// Malformed messages, cycling through every kind of bad input.
    pub malformed: usize,
    /// Accounts the originals are spread over (`acc_<i % accounts>`; at
    /// least 1): few accounts make a skewed workload.
    pub accounts: usize,
    /// Shuffle seed; the same spec and seed give the same messages in the same order.
    pub seed: u64,
}

/// What a message is meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// First of its key.
    Original,
    /// Same key and payload as an original.
    Duplicate,
    /// Same key as an original, other amount.
    Conflict,
    /// Bad input of the named kind.
    Malformed(&'static str),
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `message_id` property, absent for one kind of malformed input.
    pub message_id: Option<String>,
    /// `app_id` property.
    pub app_id: Option<String>,
    /// Raw body.
    pub body: Vec<u8>,
    /// What it exercises.
    pub kind: Kind,
}

impl Outgoing {
    /// Its AMQP properties: persistent JSON with its message id and app id,
    /// stamped now (the `timestamp` a producer should set: the inbox's
    /// publish → recorded lag reads it). Call it when publishing.
    pub fn properties(&self) -> BasicProperties {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(now);
        if let Some(id) = &self.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        if let Some(app) = &self.app_id {
            props = props.with_app_id(app.as_str().into());
        }
        props
    }
}

/// Accounts a workload's originals are spread over unless it says otherwise.
pub const DEFAULT_ACCOUNTS: usize = 1000;

/// The body of the `i`-th original of a workload over [`DEFAULT_ACCOUNTS`].
pub fn original_body(i: usize) -> serde_json::Value {
    original_body_over(i, DEFAULT_ACCOUNTS)
}

/// The body of the `i`-th original of a workload over `accounts` accounts.
pub fn original_body_over(i: usize, accounts: usize) -> serde_json::Value {
    json!({"account_id": format!("acc_{}", i % accounts.max(1)), "amount": 100 + (i % 9_900) as i64, "currency": "EUR"})
}

const MALFORMED: [&str; 5] = [
    "missing_message_id",
    "not_json",
    "schema",
    "too_large",
    "bad_currency",
];

/// Build the messages of `spec`, shuffled.
pub fn generate(spec: &Spec) -> Vec<Outgoing> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let id = |i: usize| format!("{}-{i:07}", spec.prefix);
    let msg = |message_id: Option<String>, body: Vec<u8>, kind| Outgoing {
        message_id,
        app_id: spec.scope.clone(),
        body,
        kind,
    };
    let mut out =
        Vec::with_capacity(spec.distinct + spec.duplicates + spec.conflicts + spec.malformed);
    for i in 0..spec.distinct {
        out.push(msg(
            Some(id(i)),
            original_body_over(i, spec.accounts)
                .to_string()
                .into_bytes(),
            Kind::Original,
        ));
    }
    if spec.distinct > 0 {
        for _ in 0..spec.duplicates {
            let i = rng.random_range(0..spec.distinct);
            out.push(msg(
                Some(id(i)),
                original_body_over(i, spec.accounts)
                    .to_string()
                    .into_bytes(),
                Kind::Duplicate,
            ));
        }
        for _ in 0..spec.conflicts {
            let i = rng.random_range(0..spec.distinct);
            let mut body = original_body_over(i, spec.accounts);
            body["amount"] = json!(1_000_000 + i);
            out.push(msg(
                Some(id(i)),
                body.to_string().into_bytes(),
                Kind::Conflict,
            ));
        }
    }
    for m in 0..spec.malformed {
        let kind = MALFORMED[m % MALFORMED.len()];
        let key = Some(format!("{}-bad-{m:05}", spec.prefix));
        let (message_id, body) = match kind {
            "missing_message_id" => (None, original_body(m).to_string().into_bytes()),
            "not_json" => (key, b"{not json".to_vec()),
            "schema" => (
                key,
                br#"{"account_id":"acc_1","amount":-5,"currency":"EUR"}"#.to_vec(),
            ),
            "too_large" => (key, {
                let mut b = original_body(m);
                b["description"] = json!("x".repeat(70_000));
                b.to_string().into_bytes()
            }),
            _ => (
                key,
                br#"{"account_id":"acc_1","amount":5,"currency":"euro"}"#.to_vec(),
            ),
        };
        out.push(msg(message_id, body, Kind::Malformed(kind)));
    }
    out.shuffle(&mut rng);
    // Originals first within each key keeps "which payload wins" deterministic
    // for conflicts: move every original ahead of the copies of its key.
    out.sort_by_key(|m| !matches!(m.kind, Kind::Original | Kind::Malformed(_)));
    out
}

/// Publish `messages` to `queue` through the default exchange, persistent,
/// waiting for the broker's confirm of each. `rate` caps messages per second
/// (0: as fast as confirms allow). `progress` is called after each confirmed window.
pub async fn publish(
    channel: &Channel,
    queue: &str,
    messages: &[Outgoing],
    rate: u32,
    progress: impl FnMut(usize),
) -> anyhow::Result<()> {
    publish_observed(channel, queue, messages, rate, |_| {}, progress).await
}

/// [`publish`], also calling `sent(i)` just before `messages[i]` is handed
/// to the broker: how `idem bench` timestamps each message. With a `rate`,
/// messages go out in windows of 10 ms, so the pacing is smooth enough for
/// latency measurements.
pub async fn publish_observed(
    channel: &Channel,
    queue: &str,
    messages: &[Outgoing],
    rate: u32,
    mut sent_one: impl FnMut(usize),
    mut progress: impl FnMut(usize),
) -> anyhow::Result<()> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    let started = tokio::time::Instant::now();
    let window = if rate > 0 {
        (rate as usize / 100).clamp(1, 500)
    } else {
        500
    };
    let mut sent = 0usize;
    for chunk in messages.chunks(window) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for (i, m) in chunk.iter().enumerate() {
            sent_one(sent + i);
            let props = m.properties();
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &m.body,
                    props,
                )
                .await
                .context("publishing")?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            if !confirm
                .await
                .context("waiting for a publisher confirm")?
                .is_ack()
            {
                bail!("the broker refused (nacked) a published message");
            }
        }
        sent += chunk.len();
        progress(sent);
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / f64::from(rate));
            tokio::time::sleep_until(started + due).await;
        }
    }
    Ok(())
}
