//! docs/configuration.md's reference section is what the command line
//! defines: every subcommand, flag, variable, default and help text. When a
//! flag changes, regenerate the page:
//!
//! ```sh
//! IDEM_UPDATE_DOCS=1 cargo test -p idem --test config_reference
//! ```

use std::path::PathBuf;

const REGENERATE: &str = "IDEM_UPDATE_DOCS=1 cargo test -p idem --test config_reference";

#[test]
fn the_configuration_page_matches_the_command_line() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let page = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let expected = idem::reference::splice(&page, &idem::reference::generate())
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    if expected == page {
        return;
    }
    if std::env::var_os("IDEM_UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &expected)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("rewrote {}", path.display());
        return;
    }
    let first_difference = page
        .lines()
        .zip(expected.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| page.lines().count().min(expected.lines().count()));
    panic!(
        "docs/configuration.md is out of date with the command line (first difference at \
         line {}):\n  page:      {}\n  generated: {}\nRegenerate it with:\n  {REGENERATE}",
        first_difference + 1,
        page.lines()
            .nth(first_difference)
            .unwrap_or("<end of page>"),
        expected
            .lines()
            .nth(first_difference)
            .unwrap_or("<end of page>"),
    );
}
