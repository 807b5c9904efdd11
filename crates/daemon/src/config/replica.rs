//! The replica's default name in leases and logs.

/// Host name and pid: unique per process on one host, readable in a lease.
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "idem".to_owned());
    format!("{host}-{}", std::process::id())
}
