//! PostgreSQL: [`PgCluster`], a private cluster that its owner may stop,
//! restart and crash, and a streaming standby of it.

mod cluster;
mod standby;

pub use cluster::{PgCluster, server_binaries};
