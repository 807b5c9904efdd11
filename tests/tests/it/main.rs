//! The end-to-end suites, one test binary: each module was a test binary of
//! its own, and is now a suite of this one (`cargo test -p idem-tests --test
//! it -- <suite>::`). They share one process, and what that means (the
//! process-wide metrics registry, the suites that must run alone) is decided
//! in `idem_tests::gate`. The harness is the `idem_tests` library.
//!
//! ## Layout
//! - `pipeline`, `batch`, `ordering`, `settle`: the data path, message to charge.
//! - `skew`: the per-account claim over backlogs on few accounts: cost, plans, fairness.
//! - `heads`: the per-account floors: no open row below its account's floor, whoever writes and whenever.
//! - `plans`: the group settle and the rescue of a dead holder's rows grow as their batch, generic plan or custom.
//! - `raw_reader`: idem's own AMQP reader takes what lapin's parser refuses.
//! - `outages`: a database that refuses writes, a replica started during an outage.
//! - `failover`: a killed primary, a promoted synchronous standby, a multi-host URL.
//! - `hostile_infra`: a cluster and a node of the test's own made hostile (the
//!   server read-only, both stopped, locks, timeouts, privileges, connection
//!   limits, ended sessions, a renamed table), every charge once.
//! - `dead_letters`: the quorum delivery limit and the dead-letter drain.
//! - `cluster`: a three-node RabbitMQ cluster losing the queue's leader and another node.
//! - `queue_type`: quorum by default; an existing classic queue kept, or refused when quorum is asked for.
//! - `salvage`: what lapin refuses, taken by that reader inside a real replica.
//! - `hostile_body`: oversize and terminal-hostile input, bounded and escaped.
//! - `big_bodies`: a replica's peak RSS within its byte budget while huge bodies arrive.
//! - `hostile_producer`: raw frames of every hostile class, 3 replicas, the table.
//! - `recovery`: a killed replica's rows back in seconds (its liveness lock), a paused one's not.
//! - `faults`, `crash`, `commit_cut`: lost answers, killed workers, cut commits.
//! - `provider_refusals`: refused credentials (the breaker), failing lookups, expired keys.
//! - `results`: result events out.
//! - `tenants`: scope bound to the broker user; `reply_to` kept to the scope.
//! - `reconcile`, `retention`: the provider's books; bounded tables.
//! - `admin`: the operator commands, through the binary.
//! - `bulk_retry`: `idem outbox retry` by filter, batched, one audit row.
//! - `pages`: the list pages: every match once, O(page) plans, hostile cursors.
//! - `run_check`: `idem run --check` against the services, and with each one away.
//! - `observability`, `tracing`: health, metrics, trace context.
//! - `secrets`, `tls`: credentials never printed; TLS to every peer.
//! - `upgrade`: the schema across releases.
//! - `infra`, `chaos`: the chaos suite's own infrastructure, and the suite.
//! - `production_size` (ignored; `--ignored`): the background jobs over ten million rows.
//! - `bench`: `idem bench` end to end, small.
//! - `deploy`: the deployment files and docs name only exported metrics.
//! - `alerts`: the alert rules parse, agree and read exported metrics; build info and process metrics.

#![allow(clippy::unwrap_used)]

mod admin;
mod alerts;
mod asyncapi;
mod batch;
mod bench;
mod big_bodies;
mod browser;
mod bulk_retry;
mod chaos;
mod client;
mod cluster;
mod commit_cut;
mod console;
mod crash;
mod dead_letters;
mod demo;
mod deploy;
mod failover;
mod faults;
mod heads;
mod hostile_body;
mod hostile_infra;
mod hostile_producer;
mod infra;
mod layout;
mod observability;
mod ordering;
mod outages;
mod pages;
mod pipeline;
mod plans;
mod production_size;
mod provider_refusals;
mod queue_type;
mod raw_reader;
mod reconcile;
mod recovery;
mod results;
mod retention;
mod run_check;
mod salvage;
mod schema;
mod secrets;
mod settle;
mod skew;
mod tenants;
mod tls;
mod tracing;
mod upgrade;
