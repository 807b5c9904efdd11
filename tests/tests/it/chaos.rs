//! The chaos suite: the guarantees of `docs/contracts.md` while everything
//! around idem breaks. Its own PostgreSQL cluster and RabbitMQ node (the shared services
//! are never touched), TCP proxies for connection cuts, the provider simulator
//! with faults, three `idem run` processes; see `idem_tests::chaos`.
//!
//! Invariant (checked at the provider's ledger and in the run's database
//! after quiescence): every valid distinct message charged exactly once or
//! declined, zero double charges, zero missing, conflicts and malformed
//! messages never charged, every published message accounted for (inbox,
//! conflict or quarantine row; nothing left in the queue or its dead-letter
//! queue), no row left open, no account slot held.
//!
//! - `cargo test --workspace`: includes the short profile (CI, ~2 min), with
//!   the test process to itself (no other suite runs meanwhile).
//! - `cargo build -p idem && cargo test -p idem-tests --test it -- --ignored
//!   --nocapture chaos::chaos_soak`: the soak profile (100,000 messages, ~35
//!   minutes of faults). The suite runs the built `idem` binary: build it
//!   first.

use idem_tests::chaos::{self, FaultKind, Profile, Report};

fn assert_passed(report: &Report) {
    println!("{}", report.table());
    for kind in FaultKind::ALL {
        let injected = report.faults.get(kind.name()).copied().unwrap_or(0);
        assert!(injected >= 1, "fault never injected: {}", kind.name());
    }
    for (kind, n) in &report.provider_faults {
        assert!(*n >= 1, "provider fault never happened: {kind}");
    }
    assert!(
        report.violations.is_empty(),
        "chaos run violated its invariants (worker logs in {}):\n{}",
        report.logs.display(),
        report.violations.join("\n")
    );
    assert!(report.charges > 0, "the run charged nothing at all");
    let _ = std::fs::remove_dir_all(&report.logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_short_profile_keeps_every_guarantee() {
    let report = chaos::run(Profile::short()).await.unwrap();
    assert_passed(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak profile: about 30 minutes; run with --ignored"]
async fn chaos_soak() {
    let report = chaos::run(Profile::soak()).await.unwrap();
    assert_passed(&report);
}
