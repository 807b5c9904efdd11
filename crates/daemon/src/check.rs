//! `idem run --check`: the configuration is valid already (a [`Config`]);
//! this checks that a replica with it could start and work, changing
//! nothing anywhere: the database reachable with this release's schema
//! applied (no migration run), the broker reachable with the configured
//! credentials and the work queue there or declarable (a passive declare,
//! which never creates it), the charge API answering. One line per check,
//! each failure naming the setting to fix. Every check has its own deadline:
//! `--check` never hangs on an address that drops packets.

use std::time::Duration;

use idem_charge::ClientError;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::config::{Config, Role};

/// How long one check may take before it counts as failed.
const DEADLINE: Duration = Duration::from_secs(10);

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked, e.g. `database`.
    pub name: &'static str,
    /// `Ok(what was found)` or `Err(what to fix)`.
    pub outcome: Result<String, String>,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Ok(detail) => write!(f, "{:<10} ok: {detail}", self.name),
            Err(fix) => write!(f, "{:<10} FAILED: {fix}", self.name),
        }
    }
}

/// Run every check `config` calls for (the broker's queue only for a
/// consuming role, the charge API only for a dispatching one), in order.
pub async fn check(config: &Config) -> Vec<Check> {
    let consumes = matches!(config.role, Role::All | Role::Consumer);
    let dispatches = matches!(config.role, Role::All | Role::Dispatcher);
    let mut checks = vec![Check {
        name: "database",
        outcome: bounded(database(config), "IDEM_DATABASE_URL").await,
    }];
    checks.push(Check {
        name: "broker",
        outcome: bounded(broker(config, consumes), "IDEM_AMQP_URL").await,
    });
    checks.push(Check {
        name: "charge API",
        outcome: if dispatches {
            bounded(charge_api(config), "IDEM_CHARGE_API_URL").await
        } else {
            Ok("not called by a consumer-only replica (IDEM_ROLE=consumer)".to_owned())
        },
    });
    checks
}

/// `check` under [`DEADLINE`]; a timeout names `variable`.
async fn bounded(
    check: impl Future<Output = Result<String, String>>,
    variable: &str,
) -> Result<String, String> {
    tokio::time::timeout(DEADLINE, check)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {} s: check {variable} (host, port, a firewall dropping packets)",
                DEADLINE.as_secs()
            ))
        })
}

/// Reachable, and every migration of this release applied (read-only:
/// the same connection the read-only commands make, which creates nothing).
async fn database(config: &Config) -> Result<String, String> {
    let shown = idem_store::redact_url(&config.database_url);
    let pool = idem_store::connect_existing(&config.database_url, 1)
        .await
        .map_err(|e| format!("{e:#} (IDEM_DATABASE_URL)"))?;
    pool.close().await;
    Ok(format!("{shown} reachable, schema current"))
}

/// Reachable with the configured credentials; a consuming role's work queue
/// declared, or absent (then `idem run` declares it).
async fn broker(config: &Config, consumes: bool) -> Result<String, String> {
    let list = &config.inbox.amqp_url;
    // Every endpoint on its own: a node down is worth saying even when the
    // others answer; none answering is the failure.
    let mut answered = None;
    let mut down = Vec::new();
    for endpoint in idem_periodic::endpoints::split(list) {
        match idem_inbox::connect_amqp(endpoint).await {
            Ok(connection) if answered.is_none() => answered = Some((endpoint, connection)),
            Ok(other) => {
                let _ = other.close(200, "idem run --check".into()).await;
            }
            Err(e) => down.push(format!("{e:#}")),
        }
    }
    let Some((endpoint, connection)) = answered else {
        return Err(down.join("; "));
    };
    let shown = idem_store::redact_url(endpoint);
    let mut found = format!("{shown} reachable");
    if consumes {
        let queue = &config.inbox.queue;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a channel on {shown}: {e}"))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => found.push_str(&format!(
                ", queue {queue} declared ({} message(s) ready)",
                q.message_count()
            )),
            Err(e) => found.push_str(&absent_queue(queue, &e.to_string())?),
        }
    }
    let _ = connection.close(200, "idem run --check".into()).await;
    if !down.is_empty() {
        found.push_str(&format!("; not answering: {}", down.join("; ")));
    }
    Ok(found)
}

/// What a refused passive declare of `queue` means: absent (fine: `idem
/// run` declares it), or refused (the user lacks permission: fix it).
fn absent_queue(queue: &str, error: &str) -> Result<String, String> {
    if error.contains("NOT_FOUND") || error.contains("404") {
        Ok(format!(
            ", queue {queue} not declared yet (`idem run` declares it with its dead-letter queue; \
             the broker user needs the configure permission on it)"
        ))
    } else if error.contains("ACCESS_REFUSED") || error.contains("403") {
        Err(format!(
            "the broker refused access to queue {queue}: give the user of IDEM_AMQP_URL the \
             configure, write and read permissions on it, or set IDEM_QUEUE ({error})"
        ))
    } else {
        Err(format!(
            "declaring queue {queue} (passively): {error} (IDEM_QUEUE)"
        ))
    }
}

/// The charge API answers a read with our credentials: a lookup of a
/// reference no charge has (or, without lookups, the first page of the
/// listing). Any answer but a refusal of our key or a server error counts.
async fn charge_api(config: &Config) -> Result<String, String> {
    let client = config.charge_client().map_err(|e| format!("{e:#}"))?;
    let url = &config.charge_api_url;
    let answer = if config.capabilities.lookup {
        client.lookup("idem-run-check", None).await.0.map(drop)
    } else {
        client.list_charges(None, None, 1, None).await.map(drop)
    };
    match answer {
        Ok(()) => Ok(format!("{url} answering")),
        Err(ClientError::Status { status, .. }) if status == 401 || status == 403 => Err(format!(
            "{url} refused our credentials (HTTP {status}): check IDEM_CHARGE_API_KEY"
        )),
        Err(ClientError::Status { status, body }) if status >= 500 => Err(format!(
            "{url} answered HTTP {status} ({}): the provider is failing, or IDEM_CHARGE_API_URL \
             names another service",
            body.chars().take(100).collect::<String>()
        )),
        Err(ClientError::Status { status, .. }) => Ok(format!("{url} answering (HTTP {status})")),
        Err(e) => Err(format!(
            "{e}: check IDEM_CHARGE_API_URL (and IDEM_CHARGE_API_CA_FILE for https)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_queue_names_what_to_fix() {
        assert!(absent_queue("q", "NOT_FOUND - no queue 'q'").is_ok());
        let e =
            absent_queue("q", "ACCESS_REFUSED - access to queue 'q' refused").expect_err("refused");
        assert!(
            e.contains("IDEM_AMQP_URL") && e.contains("IDEM_QUEUE"),
            "{e}"
        );
        let e = absent_queue("q", "PRECONDITION_FAILED").expect_err("refused");
        assert!(e.contains("IDEM_QUEUE"), "{e}");
    }

    #[test]
    fn a_line_says_ok_or_failed() {
        let ok = Check {
            name: "database",
            outcome: Ok("up".into()),
        };
        assert_eq!(ok.to_string(), "database   ok: up");
        let failed = Check {
            name: "broker",
            outcome: Err("fix X".into()),
        };
        assert_eq!(failed.to_string(), "broker     FAILED: fix X");
    }
}
