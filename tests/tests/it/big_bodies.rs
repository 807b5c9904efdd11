//! Big bodies: a replica's memory stays within what its configuration allows
//! while messages far over the body limit arrive, on the real broker,
//! database and binary. Every big message ends as a bounded `too_large`
//! quarantine row and the valid charges published after them are charged
//! once each.
//!
//! The bound checked (`docs/performance.md`, "Memory per replica"): with a
//! byte budget `B` (`IDEM_PREFETCH_BYTES`), bodies of `S` bytes and
//! `IDEM_PREFETCH` = `P`, the broker may push `W = clamp(B / S, 1, P)` bodies
//! ahead, so
//!
//! ```text
//! peak RSS <= idle RSS + (W + 1) × S + 64 MiB
//! ```
//!
//! (one more body for the one arriving while a batch is decided, 64 MiB for
//! the allocator's slack and the transaction's buffers). `idle RSS` is the
//! same binary with the same flags, consuming an empty queue.
//!
//! Each run starts with a backlog in the queue and the database stalled (the
//! quarantine table locked) until the replica has taken in all its window
//! allows: the worst case, where the consumer cannot settle and lapin still
//! reads every delivery the broker sends.
//!
//! - `bounded_while_big_bodies_arrive` (CI): 20 × 16 MiB published before the
//!   replica starts, `B` = 32 MiB; `bounded_on_a_quorum_queue` the same with
//!   10 on a quorum queue.
//! - `full_profile` (ignored: 30 GB through the broker): 300 × 100 MiB with
//!   the default budget, published while the replica consumes, at most
//!   `IDEM_BIG_BODIES_BACKLOG` (16) unsettled at a time so the broker's
//!   memory stays small; run with `cargo test -p idem-tests --test it --
//!   --ignored --nocapture big_bodies::full_profile` (`IDEM_BIN` = a release
//!   build for speed). `IDEM_BIG_BODIES_COUNT`, `_MIB`, `_BUDGET` (bytes;
//!   `IDEM_PREFETCH` × 128 MiB turns the controller off), `_BACKLOG` and
//!   `_QUEUE_TYPE` (`quorum`) change it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use idem_simulator::Faults;
use idem_store::OutboxState;
use idem_store::quarantine::MAX_KEPT_BODY;
use idem_tests::binary::{run, run_flags_without};
use idem_tests::{AMQP_URL, TestEnv, rabbit, spec, wait_for};
use idem_workload as workload;
use lapin::BasicProperties;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Child;

const MIB: u64 = 1024 * 1024;
/// `IDEM_PREFETCH` in these runs (the default).
const PREFETCH: u64 = 200;
/// The allowance over the bodies (allocator slack, the batch's buffers).
const SLACK: u64 = 64 * MIB;

/// One run's shape.
#[derive(Debug, Clone, Copy)]
struct Profile {
    /// Big messages.
    count: usize,
    /// Their body size, MiB.
    mib: u64,
    /// `IDEM_PREFETCH_BYTES`.
    budget: u64,
    /// Most big messages published and not yet quarantined; this many are
    /// published before the replica starts.
    backlog: usize,
    /// Valid charges published after the big messages.
    valid: usize,
}

impl Profile {
    fn body(&self) -> u64 {
        self.mib * MIB
    }

    /// Bodies the broker may push ahead under the budget.
    fn window(&self) -> u64 {
        (self.budget / self.body()).clamp(1, PREFETCH)
    }

    /// The peak RSS allowed over the idle one.
    fn allowance(&self) -> u64 {
        (self.window() + 1) * self.body() + SLACK
    }
}

/// Invariant: 20 bodies of 16 MiB waiting in the queue when the replica
/// starts, under a 32 MiB budget, keep its peak RSS within idle + (2 + 1) ×
/// 16 MiB + 64 MiB (without the byte budget the broker pushes all 20,
/// 320 MiB); each is quarantined `too_large` as a bounded row; the 500 valid
/// charges behind them are charged once each, and take the prefetch count
/// back to IDEM_PREFETCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_while_big_bodies_arrive() {
    measure(Kind::Classic, CI).await;
}

/// The same on a quorum queue, where a cancelled consumer's deliveries are
/// settled through the queue's Raft log: the consumer re-created to change
/// its count loses, repeats and charges nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_on_a_quorum_queue() {
    measure(Kind::Quorum, Profile { count: 10, ..CI }).await;
}

/// The CI profile.
const CI: Profile = Profile {
    count: 20,
    mib: 16,
    budget: 32 * MIB,
    backlog: 20,
    valid: 500,
};

/// The issue's measurement: 300 bodies of 100 MiB with the default budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "30 GB through the broker, minutes: run with --ignored --nocapture"]
async fn full_profile() {
    let setting = |name: &str, default: u64| -> u64 {
        std::env::var(format!("IDEM_BIG_BODIES_{name}"))
            .ok()
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let kind = match std::env::var("IDEM_BIG_BODIES_QUEUE_TYPE").as_deref() {
        Ok("quorum") => Kind::Quorum,
        _ => Kind::Classic,
    };
    let profile = Profile {
        count: setting("COUNT", 300) as usize,
        mib: setting("MIB", 100),
        budget: setting("BUDGET", 64 * MIB),
        backlog: setting("BACKLOG", 16) as usize,
        valid: 500,
    };
    measure(kind, profile).await;
}

/// Which work queue the replica consumes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A classic queue beside the env's, declared by the replica.
    Classic,
    /// A quorum queue beside it, declared by the replica.
    Quorum,
}

/// The work queue of a run and a confirmed publisher on it.
struct Queue {
    name: String,
    /// `idem run` flags: the env's, this queue's, the budget.
    flags: Vec<String>,
    connection: lapin::Connection,
    channel: lapin::Channel,
}

impl Queue {
    async fn new(env: &TestEnv, kind: Kind, budget: u64) -> Self {
        let (name, mut flags) = match kind {
            Kind::Classic => {
                let name = format!("{}.classic", env.queue);
                let mut flags = run_flags_without(env, &["--queue"]);
                let own = ["--queue", &name, "--queue-type", "classic"];
                flags.extend(own.map(str::to_owned));
                (name, flags)
            }
            Kind::Quorum => {
                let name = format!("{}.quorum", env.queue);
                let mut flags = run_flags_without(env, &["--queue"]);
                let own = ["--queue", &name, "--queue-type", "quorum"];
                flags.extend(own.map(str::to_owned));
                (name, flags)
            }
        };
        flags.extend(["--prefetch-bytes".to_owned(), budget.to_string()]);
        let (connection, channel) = rabbit::confirming_channel(AMQP_URL).await;
        Self {
            name,
            flags,
            connection,
            channel,
        }
    }

    /// Publish big message `i` (confirmed).
    async fn publish_big(&self, i: usize, body: &[u8]) {
        let properties = BasicProperties::default().with_message_id(format!("big-{i}").into());
        rabbit::publish_confirmed(&self.channel, &self.name, properties, body).await;
    }

    /// Messages ready (not counting those pushed to the consumer).
    async fn depth(&self) -> u32 {
        rabbit::depth(&self.channel, &self.name).await.unwrap()
    }

    /// Consumers on the queue (0 while it does not exist yet). On a channel
    /// of its own: a passive declare of a missing queue closes its channel.
    async fn consumers(&self) -> u32 {
        rabbit::consumers(&self.connection, &self.name).await
    }

    async fn delete(self, env: &TestEnv) {
        let _ = self.connection.close(200, "done".into()).await;
        if self.name != env.queue {
            let _ = workload::scratch::delete_queue(AMQP_URL, &self.name).await;
        }
    }
}

async fn measure(kind: Kind, profile: Profile) {
    let env = TestEnv::new(Faults::default()).await;
    let queue = Queue::new(&env, kind, profile.budget).await;
    let log = std::env::temp_dir().join(format!("{}.log", env.name));
    let idle = idle_rss(&queue, &log).await;

    let body = vec![b' '; profile.body() as usize];
    let started = Instant::now();
    let ahead = profile.backlog.min(profile.count);
    for i in 0..ahead {
        queue.publish_big(i, &body).await;
    }
    let mut replica = Replica::start(&queue.flags, &log);
    let stalled = stall_database(&env, &queue, &replica, ahead).await;
    for i in ahead..profile.count {
        while i - quarantined(&env).await >= profile.backlog {
            assert!(replica.running(), "the replica died:\n{}", tail(&log));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        queue.publish_big(i, &body).await;
    }
    drop(body);
    let published = started.elapsed();
    let valid = workload::generate(&spec("big", profile.valid));
    workload::publish(&queue.channel, &queue.name, &valid, 0, |_| {})
        .await
        .unwrap();
    let settle = Duration::from_secs(60) + Duration::from_millis(profile.count as u64 * 500);
    let what = format!("{} quarantined, {} charged", profile.count, valid.len());
    wait_for(&what, settle, || async {
        let st = env.status().await;
        st.quarantined == profile.count as i64
            && st.outbox_in(OutboxState::Succeeded) == valid.len() as i64
    })
    .await;
    let settled = started.elapsed();
    let peak = replica.kib("VmHWM:") * 1024;
    replica.stop().await;
    // Unacked deliveries return to the queue when the replica's channel
    // closes: none may, including those of the consumers cancelled to change
    // the count.
    assert_eq!(queue.depth().await, 0, "every delivery was acked");

    let line = format!(
        "big_bodies: {} x {} MiB on a {kind:?} queue, IDEM_PREFETCH_BYTES={} (window {}), backlog {}: \
         peak RSS {} MiB (idle {} MiB, allowed {} MiB); published in {:.1} s (the database \
         stalled {:.1} s of it), all settled in {:.1} s",
        profile.count,
        profile.mib,
        profile.budget,
        profile.window(),
        profile.backlog,
        peak / MIB,
        idle / MIB,
        (idle + profile.allowance()) / MIB,
        published.as_secs_f64(),
        stalled.as_secs_f64(),
        settled.as_secs_f64(),
    );
    let counts = prefetch_counts(&log);
    println!("{line}; prefetch counts {counts:?}");
    check_rows(&env, &profile, &valid).await;
    assert_eq!(
        counts.iter().max(),
        Some(&(PREFETCH as u16)),
        "the valid messages after the big ones took the count back to IDEM_PREFETCH"
    );
    assert!(peak <= idle + profile.allowance(), "{line}");
    let _ = std::fs::remove_file(&log);
    queue.delete(&env).await;
    env.cleanup().await;
}

/// The RSS of a replica with the run's flags consuming the empty queue (it
/// declares the queue, too).
async fn idle_rss(queue: &Queue, log: &PathBuf) -> u64 {
    let replica = Replica::start(&queue.flags, log);
    wait_for("the replica consumes", Duration::from_secs(30), || async {
        queue.consumers().await > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = replica.kib("VmRSS:") * 1024;
    replica.stop().await;
    idle
}

/// Every big message is one bounded `too_large` row; every valid charge was
/// charged once at the provider.
async fn check_rows(env: &TestEnv, profile: &Profile, valid: &[workload::Outgoing]) {
    let (rows, sized, longest): (i64, i64, i32) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE body_size = $1),
                coalesce(max(octet_length(body)), 0)
         FROM quarantine WHERE reason_code = 'too_large' AND body_truncated",
    )
    .bind(profile.body() as i64)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        rows, profile.count as i64,
        "one truncated too_large row each"
    );
    assert_eq!(sized, rows, "each keeps the whole body's size");
    assert!(
        longest as usize <= MAX_KEPT_BODY,
        "rows bounded: {longest} bytes"
    );
    let charges = env.charges_by_reference();
    assert_eq!(
        charges.len(),
        valid.len(),
        "only the valid messages charged"
    );
    for m in valid {
        let id = m.message_id.as_deref().unwrap();
        let reference = idem_message::reference_id("default", id).to_string();
        assert_eq!(charges.get(&reference), Some(&1), "{id} charged once");
    }
}

/// Hold the quarantine table against writes until the replica has taken in
/// all the broker will push it: its first batch waits in its transaction (as
/// behind a slow or locked database) while lapin reads every delivery the
/// window allows. The broker counts a delivery as sent long before its bytes
/// arrive (they queue in its writer), so the end is read off the replica:
/// its RSS has not grown for 2 s (at most 2 minutes).
async fn stall_database(env: &TestEnv, queue: &Queue, replica: &Replica, ahead: usize) -> Duration {
    let started = Instant::now();
    let mut stall = env.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE quarantine IN SHARE MODE")
        .execute(&mut *stall)
        .await
        .unwrap();
    let ahead = ahead as u32;
    wait_for("a first big delivery", Duration::from_secs(30), || async {
        queue.depth().await < ahead
    })
    .await;
    let mut highest = replica.kib("VmRSS:");
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(2) && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = replica.kib("VmRSS:");
        if now > highest + 1024 {
            (highest, since) = (now, Instant::now());
        }
    }
    stall.commit().await.unwrap();
    started.elapsed()
}

/// Big messages quarantined so far.
async fn quarantined(env: &TestEnv) -> usize {
    env.status().await.quarantined as usize
}

/// An `idem run` child whose output goes to a file (its memory is what is
/// measured, so nothing of it is kept in the test process).
struct Replica {
    child: Child,
    pid: u32,
}

impl Replica {
    fn start(flags: &[String], log: &PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = run(flags, &[("RUST_LOG", "info,idem_inbox::window=debug")])
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("idem run starts");
        let pid = child.id().unwrap();
        Self { child, pid }
    }

    /// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:` the peak).
    fn kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid))
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn stop(mut self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("stops within 60 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "idem run exited with {status}");
    }
}

/// The prefetch counts the replica applied after its first, in order (its
/// `inbox prefetch changed` debug lines, JSON).
fn prefetch_counts(log: &PathBuf) -> Vec<u16> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m == "inbox prefetch changed")
        })
        .filter_map(|v| v["fields"]["to"].as_u64())
        .map(|to| to as u16)
        .collect()
}

/// The end of the replicas' log, for a failure message.
fn tail(log: &PathBuf) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
