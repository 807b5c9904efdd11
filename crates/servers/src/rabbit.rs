//! RabbitMQ: [`RabbitNode`], a private node that its owner may stop,
//! restart and crash, and [`RabbitCluster`], several of them joined into one
//! cluster.

mod cluster;
mod lifecycle;
mod node;

pub use cluster::RabbitCluster;
pub use node::{RabbitNode, server_scripts};
