//! [`TestEnv`]: the isolated world of one test — its own database on the
//! shared PostgreSQL, its own queue on the shared RabbitMQ (or on the servers
//! a test started for itself, [`Servers`]), its own provider simulator — and
//! what a test does with it (publish, wait, count).

use std::collections::BTreeMap;

use idem_simulator::{Faults, Simulator};
use idem_store::status::Status;
use idem_workload::{self as workload, Outgoing};
use lapin::{BasicProperties, Channel, Connection};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::gate::{self, Ticket};
use crate::rabbit::{self, AMQP_URL};
use crate::{init, pg, sim};

/// The PostgreSQL server and RabbitMQ broker a [`TestEnv`] lives on: the
/// shared ones, or a test's own ([`crate::private::Private`]).
#[derive(Debug, Clone)]
pub struct Servers {
    /// A superuser URL of the server's `postgres` database; the env's
    /// database is made beside it.
    pub pg_admin_url: String,
    /// The broker (guest, default vhost).
    pub amqp_url: String,
}

impl Servers {
    /// The shared PostgreSQL (5432) and RabbitMQ (5672).
    pub fn shared() -> Self {
        Self {
            pg_admin_url: pg::PG_ADMIN_URL.to_owned(),
            amqp_url: AMQP_URL.to_owned(),
        }
    }
}

/// One test's isolated world.
pub struct TestEnv {
    /// Unique name of this test's database and queue.
    pub name: String,
    /// This test's database.
    pub database_url: String,
    /// Pool on this test's database (schema applied).
    pub pool: PgPool,
    /// This test's queue.
    pub queue: String,
    /// The broker this test's queue is on.
    pub amqp_url: String,
    /// The provider simulator.
    pub sim: Simulator,
    /// Its base URL.
    pub sim_url: String,
    /// Stops the simulator when the env is dropped.
    sim_stop: CancellationToken,
    /// Publishing connection and channel (confirms on).
    amqp: (Connection, Channel),
    /// This test's place in the test process (see [`gate`]); workers started
    /// from the env hold it too.
    pub(crate) ticket: Ticket,
}

impl TestEnv {
    /// A fresh database, queue and simulator with `faults`, beside other tests.
    pub async fn new(faults: Faults) -> Self {
        Self::with_ticket(faults, gate::shared().await, Servers::shared()).await
    }

    /// [`TestEnv::new`] on `servers` (a test's own cluster and node) rather
    /// than the shared ones.
    pub async fn on(faults: Faults, servers: &Servers) -> Self {
        Self::with_ticket(faults, gate::shared().await, servers.clone()).await
    }

    /// [`TestEnv::new`] for a test that must have the process to itself
    /// (it reads the process-wide metrics registry): waits until no other
    /// env or in-process worker is left, and keeps new ones waiting.
    pub async fn alone(faults: Faults) -> Self {
        Self::with_ticket(faults, gate::alone().await, Servers::shared()).await
    }

    /// [`TestEnv::alone`] on `servers`: a test that starts servers of its
    /// own and times faults against them.
    pub async fn alone_on(faults: Faults, servers: &Servers) -> Self {
        Self::with_ticket(faults, gate::alone().await, servers.clone()).await
    }

    async fn with_ticket(faults: Faults, ticket: Ticket, servers: Servers) -> Self {
        init();
        let name = format!("idem_t_{}", Uuid::new_v4().simple());
        let database_url = pg::url_on(&servers.pg_admin_url, &name);
        let pool = pg::scratch_database_at(&database_url, 8).await.unwrap();
        let queue = name.replace('_', ".");
        let sim = Simulator::new(faults);
        let (sim_url, sim_stop) = sim::serve(&sim).await.unwrap();
        let (connection, channel) = rabbit::confirming_channel(&servers.amqp_url).await;
        idem_inbox::declare(&connection, &idem_inbox::Topology::for_queue(&queue))
            .await
            .unwrap();
        Self {
            name,
            database_url,
            pool,
            queue,
            amqp_url: servers.amqp_url,
            sim,
            sim_url,
            sim_stop,
            amqp: (connection, channel),
            ticket,
        }
    }

    /// Publish generated messages (confirmed).
    pub async fn publish(&self, messages: &[Outgoing]) {
        workload::publish(&self.amqp.1, &self.queue, messages, 0, |_| {})
            .await
            .unwrap();
    }

    /// Publish one raw message (confirmed).
    pub async fn publish_raw(&self, properties: BasicProperties, body: &[u8]) {
        rabbit::publish_confirmed(&self.amqp.1, &self.queue, properties, body).await;
    }

    /// Counts of this env's tables.
    pub async fn status(&self) -> Status {
        idem_store::status::read(&mut self.pool.acquire().await.unwrap())
            .await
            .unwrap()
    }

    /// Charges at the provider per reference id (gross, not net of refunds).
    pub fn charges_by_reference(&self) -> BTreeMap<String, usize> {
        self.sim.ledger().gross_by_reference()
    }

    /// Messages waiting in this env's queue (not counting unacked ones).
    pub async fn queue_depth(&self) -> u32 {
        rabbit::depth(&self.amqp.1, &self.queue).await.unwrap()
    }

    /// Drop the database and queues (best effort).
    pub async fn cleanup(self) {
        self.sim_stop.cancel();
        let _ = self.amqp.0.close(200, "done".into()).await;
        // Best effort, like the database: the names are unique to this test.
        let _ = idem_workload::scratch::delete_queue(&self.amqp_url, &self.queue).await;
        self.pool.close().await;
        if let Err(e) = idem_store::scratch::drop_database(&self.database_url).await {
            tracing::warn!(database = %self.name, "dropping the test database: {e:#}");
        }
    }
}

/// A workload spec of `distinct` originals with this env's unique prefix.
pub fn spec(prefix: &str, distinct: usize) -> workload::Spec {
    workload::Spec {
        prefix: prefix.to_owned(),
        scope: None,
        distinct,
        duplicates: 0,
        conflicts: 0,
        malformed: 0,
        accounts: workload::DEFAULT_ACCOUNTS,
        seed: 1,
    }
}
