//! The binary's contract with an operator: bad configuration fails at start
//! with a message that names what to fix, and never prints a password.
//! (This file also makes `cargo test --workspace` build the `idem` binary that
//! the crash tests under `tests/` run.)

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn idem(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn short_lease_is_refused_with_the_variable_to_fix() {
    let (ok, stderr) = idem(&["run"], &[("IDEM_LEASE_SECS", "1")]);
    assert!(!ok);
    assert!(stderr.contains("IDEM_LEASE_SECS"), "{stderr}");
}

#[test]
fn unreachable_database_names_the_url_without_password() {
    let (ok, stderr) = idem(
        &["migrate"],
        &[(
            "IDEM_DATABASE_URL",
            "postgres://postgres:s3cret-pw@127.0.0.1:1/idem",
        )],
    );
    assert!(!ok);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(
        stderr.contains("check that the server is running"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret-pw"), "password leaked: {stderr}");
}

#[test]
fn unreachable_broker_names_the_url_without_password() {
    let (ok, stderr) = idem(
        &["publish", "--count", "1"],
        &[("IDEM_AMQP_URL", "amqp://guest:hunter2-pw@127.0.0.1:1/%2f")],
    );
    assert!(!ok);
    assert!(
        stderr.contains("RabbitMQ at amqp://guest:***@127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2-pw"), "password leaked: {stderr}");
}

#[test]
fn help_does_not_show_default_credentials() {
    let out = Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("IDEM_LEASE_SECS"), "{help}");
    assert!(!help.contains("guest:guest"), "{help}");
}
