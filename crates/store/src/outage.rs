//! Which database errors waiting can fix. A replica started while
//! PostgreSQL restarts, fails over or refuses connections for a while waits
//! for it (`idem_daemon`'s start-up) and a consumer holds its batch; only what
//! waiting cannot fix — refused credentials, an unknown host, a certificate
//! that does not verify, a URL that does not parse — fails at once.

use std::io::ErrorKind;

/// Whether `error` (anywhere in its chain) is one that waiting can fix: the
/// server is down, restarting, refusing connections for now, or cut the
/// connection. Errors about the request itself or about who we are are not.
pub fn waiting_helps(error: &anyhow::Error) -> bool {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return sqlx_waiting_helps(e);
        }
        if let Some(e) = cause.downcast_ref::<sqlx::migrate::MigrateError>() {
            return match e {
                sqlx::migrate::MigrateError::Execute(inner)
                | sqlx::migrate::MigrateError::ExecuteMigration(inner, _) => {
                    sqlx_waiting_helps(inner)
                }
                _ => false,
            };
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return io_waiting_helps(e);
        }
    }
    false
}

fn sqlx_waiting_helps(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io_waiting_helps(io),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        // At start, a missing privilege or table is a setting to fix (the
        // migrations that follow create the tables), not a rollout half-way.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| server_unavailable(&code) && !code.starts_with("42")),
        _ => false,
    }
}

/// SQLSTATE codes that mean "not now" rather than "no": the server is
/// starting or shutting down (57P01..57P03), out of connections or resources
/// (class 53), the connection failed (class 08), it is a standby or was
/// demoted (25006, read-only transaction), or a rollout is half-way (the
/// schema or a privilege the new release expects is not there yet: 42P01,
/// 42703, 42501).
pub fn server_unavailable(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code.starts_with("40")
        || matches!(
            code,
            "25006" | "55P03" | "57014" | "42P01" | "42703" | "42501"
        )
}

/// Whether an I/O error is one waiting can fix (the peer away, refusing,
/// resetting, unreachable); also the broker's, for the inbox consumer.
pub fn io_waiting_helps(e: &std::io::Error) -> bool {
    match e.kind() {
        ErrorKind::ConnectionRefused
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::NotConnected
        | ErrorKind::BrokenPipe
        | ErrorKind::TimedOut
        | ErrorKind::UnexpectedEof
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::NetworkDown => true,
        // "failed to lookup address information": an unknown host is a
        // typo far more often than a DNS outage.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: ErrorKind) -> anyhow::Error {
        anyhow::Error::new(sqlx::Error::Io(std::io::Error::new(kind, "x")))
            .context("cannot connect to PostgreSQL")
    }

    #[test]
    fn a_server_that_is_away_is_waited_for_and_a_wrong_setting_is_not() {
        assert!(waiting_helps(&io(ErrorKind::ConnectionRefused)));
        assert!(waiting_helps(&io(ErrorKind::TimedOut)));
        assert!(!waiting_helps(&io(ErrorKind::Other)), "DNS lookup failure");
        assert!(waiting_helps(&anyhow::Error::new(
            sqlx::Error::PoolTimedOut
        )));
        assert!(!waiting_helps(&anyhow::Error::new(sqlx::Error::Tls(
            "invalid peer certificate".into()
        ))));
        assert!(!waiting_helps(&anyhow::anyhow!("not a URL")));
        for code in [
            "57P03", "57P01", "53300", "08006", "25006", "40001", "42P01",
        ] {
            assert!(server_unavailable(code), "{code}");
        }
        for code in [
            "28P01", "28000", "22P02", "23505", "54001", "3D000", "42601",
        ] {
            assert!(!server_unavailable(code), "{code}");
        }
    }
}
