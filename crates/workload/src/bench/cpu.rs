//! CPU time per process, from `/proc`: what each part of the pipeline spent
//! while a configuration ran.
//!
//! - **PostgreSQL and RabbitMQ** are found by the TCP port they listen on
//!   (from the URLs), not by name: the machine may run other clusters and
//!   nodes.
//! - **PostgreSQL** is shared with whatever else uses the server, so its time
//!   is the postmaster's own, its background processes' (WAL writer,
//!   checkpointer, background writer: they work for every database) and the
//!   client backends' *of the measured database only* (the process title
//!   names the database). The bench's pools keep their connections for the
//!   whole measurement, so no backend of ours exits unseen.
//! - **RabbitMQ** is one `beam.smp`: its own time, its waited-for children's
//!   and its live children's. Other queues' traffic on the node would be
//!   counted too.
//! - **This process** (`idem bench`) holds the daemon replicas, the provider
//!   simulator and the publisher. The simulator and the publisher run on
//!   runtimes of their own whose threads are named ([`SIMULATOR_THREADS`],
//!   [`PUBLISHER_THREADS`]), so their time is read per thread and taken out
//!   of the process's: what remains is the daemon's (plus the bench's own
//!   bookkeeping: a counter read every 250 ms).

use std::collections::BTreeMap;
use std::fs;

use serde::Serialize;

/// Thread name (prefix) of the simulator's runtime.
pub const SIMULATOR_THREADS: &str = "bench-sim";
/// Thread name (prefix) of the publisher's runtime.
pub const PUBLISHER_THREADS: &str = "bench-pub";

/// CPU seconds so far, per part.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// This whole process.
    process: f64,
    /// Threads of the simulator's runtime.
    simulator: f64,
    /// Threads of the publisher's runtime.
    publisher: f64,
    /// The PostgreSQL server (None: not found on this machine).
    postgres: Option<f64>,
    /// The RabbitMQ node (None: not found on this machine).
    rabbitmq: Option<f64>,
    /// Of PostgreSQL's, the server process of the bench's emulated
    /// autovacuum (None: none given, or not local).
    upkeep: Option<f64>,
}

/// The processes to watch.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The PostgreSQL postmaster, if local.
    postgres: Option<i32>,
    /// The RabbitMQ `beam.smp`, if local.
    rabbitmq: Option<i32>,
    /// Clock ticks per second of `/proc` times.
    ticks: f64,
}

impl Watch {
    /// Find the servers listening on these ports of this machine.
    pub fn new(postgres_port: Option<u16>, rabbitmq_port: Option<u16>) -> Self {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .map_or(100.0, |t| t as f64);
        Self {
            postgres: postgres_port.and_then(listener_pid),
            rabbitmq: rabbitmq_port.and_then(listener_pid),
            ticks,
        }
    }

    /// Whether each server was found (PostgreSQL, RabbitMQ).
    pub fn found(&self) -> (bool, bool) {
        (self.postgres.is_some(), self.rabbitmq.is_some())
    }

    /// CPU seconds so far; PostgreSQL's for `database` (and the server's
    /// background processes), and of those the server process `upkeep`'s.
    pub fn sample(&self, database: &str, upkeep: Option<i32>) -> Sample {
        let secs = |ticks: u64| ticks as f64 / self.ticks;
        let (mut simulator, mut publisher) = (0, 0);
        for (name, ticks) in threads() {
            if name.starts_with(SIMULATOR_THREADS) {
                simulator += ticks;
            } else if name.starts_with(PUBLISHER_THREADS) {
                publisher += ticks;
            }
        }
        let own = stat("self").map_or(0, |s| s.utime + s.stime);
        Sample {
            process: secs(own),
            simulator: secs(simulator),
            publisher: secs(publisher),
            postgres: self
                .postgres
                .map(|pid| secs(tree_ticks(pid, Some(database)))),
            rabbitmq: self.rabbitmq.map(|pid| secs(tree_ticks(pid, None))),
            upkeep: self
                .postgres
                .and(upkeep)
                .and_then(|pid| stat(&pid.to_string()).map(|s| secs(s.utime + s.stime))),
        }
    }
}

/// CPU spent between two samples, in microseconds per message.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PerMessage {
    /// The daemon replicas (this process less the simulator and publisher).
    pub idem_us: f64,
    /// The PostgreSQL server, all processes.
    pub postgres_us: Option<f64>,
    /// Of `postgres_us`, the bench's emulated autovacuum (`VACUUM`,
    /// `ANALYZE`): what a real autovacuum would spend depends on its
    /// settings (docs/performance.md, "Upkeep").
    pub postgres_upkeep_us: Option<f64>,
    /// The RabbitMQ node.
    pub rabbitmq_us: Option<f64>,
    /// idem + PostgreSQL + RabbitMQ: the pipeline's cost.
    pub pipeline_us: f64,
    /// The provider simulator (not part of the pipeline's cost).
    pub simulator_us: f64,
    /// The publisher (the producer; not part of the pipeline's cost).
    pub publisher_us: f64,
}

impl PerMessage {
    /// Per message of `messages`, between `before` and `after`.
    pub fn between(before: &Sample, after: &Sample, messages: usize) -> Self {
        let per = |secs: f64| secs.max(0.0) * 1e6 / messages.max(1) as f64;
        let simulator = after.simulator - before.simulator;
        let publisher = after.publisher - before.publisher;
        let idem = per(after.process - before.process - simulator - publisher);
        let diff = |a: Option<f64>, b: Option<f64>| Some(per(a? - b?));
        let postgres_us = diff(after.postgres, before.postgres);
        let rabbitmq_us = diff(after.rabbitmq, before.rabbitmq);
        // A vacuum connection that began after `before` began at zero.
        let postgres_upkeep_us = after.upkeep.map(|a| per(a - before.upkeep.unwrap_or(0.0)));
        Self {
            idem_us: idem,
            postgres_us,
            postgres_upkeep_us,
            rabbitmq_us,
            pipeline_us: idem + postgres_us.unwrap_or(0.0) + rabbitmq_us.unwrap_or(0.0),
            simulator_us: per(simulator),
            publisher_us: per(publisher),
        }
    }
}

/// Fields of `/proc/<pid>/stat` this module reads, in clock ticks.
struct Stat {
    ppid: i32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses: the fields after it start after its last `)`.
fn stat(pid: &str) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): field n is rest[n - 3].
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// Name and utime+stime of every thread of this process.
fn threads() -> Vec<(String, u64)> {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|task| {
            let path = task.path();
            let name = fs::read_to_string(path.join("comm")).ok()?;
            let stat = parse_stat(&fs::read_to_string(path.join("stat")).ok()?)?;
            Some((name.trim().to_owned(), stat.utime + stat.stime))
        })
        .collect()
}

/// Ticks of `root` and its live children (and theirs). Without `database`,
/// also the waited-for children's. With it (a postmaster), only the client
/// backends connected to `database` count, and the background processes.
fn tree_ticks(root: i32, database: Option<&str>) -> u64 {
    let mut children: BTreeMap<i32, Vec<(i32, u64)>> = BTreeMap::new();
    let mut root_ticks = 0;
    for pid in all_pids() {
        let Some(s) = stat(&pid.to_string()) else {
            continue;
        };
        let own = s.utime + s.stime;
        if pid == root {
            root_ticks = match database {
                Some(_) => own,
                None => own + s.cutime + s.cstime,
            };
        } else if s.ppid != 0 && s.ppid != 1 {
            let counted = match database {
                Some(db) => backend_of(pid).is_none_or(|of| of == db),
                None => true,
            };
            let ticks = if counted {
                own + s.cutime + s.cstime
            } else {
                0
            };
            children.entry(s.ppid).or_default().push((pid, ticks));
        }
    }
    let mut total = root_ticks;
    let mut stack = vec![root];
    while let Some(parent) = stack.pop() {
        for &(pid, ticks) in children.get(&parent).map_or(&[][..], |c| c.as_slice()) {
            total += ticks;
            stack.push(pid);
        }
    }
    total
}

/// The database of a PostgreSQL client backend, from its process title
/// (`postgres: [cluster: ]user database host(port) state`); None for the
/// server's background processes.
fn backend_of(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    database_in_title(&String::from_utf8_lossy(&raw).replace('\0', " "))
}

fn database_in_title(title: &str) -> Option<String> {
    let tokens: Vec<&str> = title.split_whitespace().collect();
    let at = tokens
        .iter()
        .position(|t| *t == "[local]" || (t.ends_with(')') && t.contains('(')))?;
    tokens.get(at.checked_sub(1)?).map(|db| (*db).to_owned())
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The process holding the socket that listens on TCP `port` (IPv4 or IPv6).
fn listener_pid(port: u16) -> Option<i32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|table| listening_inodes(&table, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    all_pids().into_iter().find(|pid| {
        fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                fs::read_link(fd.path())
                    .is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
            })
        })
    })
}

/// Inodes of sockets in a `/proc/net/tcp*` table that listen on `port`.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let listening =
                u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == LISTEN;
            listening.then(|| f.get(9).map(|s| (*s).to_owned()))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let line = "42 (post gres: (x)) S 7 42 42 0 -1 4194560 100 0 0 0 11 22 33 44 20 0 1 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!(
            (s.ppid, s.utime, s.stime, s.cutime, s.cstime),
            (7, 11, 22, 33, 44)
        );
    }

    #[test]
    fn backends_are_told_by_database() {
        let db = |t: &str| database_in_title(t);
        assert_eq!(
            db("postgres: 15/main: postgres idem_bench_1 127.0.0.1(58574) idle").as_deref(),
            Some("idem_bench_1")
        );
        assert_eq!(
            db("postgres: app other [local] SELECT").as_deref(),
            Some("other")
        );
        assert_eq!(db("postgres: 15/main: walwriter"), None);
        assert_eq!(db("postgres: 15/main: logical replication launcher"), None);
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   104        0 5151 1\n   \
            1: 0100007F:1538 0100007F:9C40 01 00000000:00000000 00:00000000 00000000   104        0 6262 1\n";
        assert_eq!(listening_inodes(table, 5432), vec!["5151".to_owned()]);
        assert!(listening_inodes(table, 5672).is_empty());
    }

    #[test]
    fn this_process_is_sampled() {
        let watch = Watch::new(None, None);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let s = watch.sample("none", None);
        assert!(s.process >= 0.0);
        assert_eq!(s.postgres, None);
    }
}
