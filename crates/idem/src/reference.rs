//! The configuration reference in docs/configuration.md, generated from the
//! command line's definition (clap's `Command`), so the page lists exactly
//! the flags the binary takes: every subcommand (nested ones too), each flag
//! with its variable, default and help. Secret defaults stay hidden, as in
//! `--help`.
//!
//! Regenerate the page's section with [`REGENERATE`]; without the variable
//! that test fails when the page is out of date.

use std::fmt::Write;

use anyhow::bail;
use clap::{Arg, ArgAction, Command};

use idem_daemon::secrets;

use crate::cli::Cli;

/// First line of the generated section.
pub const BEGIN: &str = "<!-- BEGIN GENERATED: configuration reference. Do not edit by hand; regenerate with `IDEM_UPDATE_DOCS=1 cargo test -p idem configuration_page`. -->";
/// The command that rewrites the page's generated section.
pub const REGENERATE: &str = "IDEM_UPDATE_DOCS=1 cargo test -p idem configuration_page";
/// Last line of the generated section.
pub const END: &str = "<!-- END GENERATED: configuration reference -->";

/// The reference of `idem` as operators see it ([`secrets::command`]).
pub fn generate() -> String {
    markdown(secrets::command::<Cli>())
}

/// The reference of `cmd` and all its subcommands, in Markdown.
pub fn markdown(mut cmd: Command) -> String {
    // Building fills in what clap derives late (defaults of switches, the
    // global flags copied into subcommands).
    cmd.build();
    let mut out = String::new();
    section(&cmd, cmd.get_name(), true, &mut out);
    out
}

/// `page` with the text between [`BEGIN`] and [`END`] replaced by `generated`.
pub fn splice(page: &str, generated: &str) -> anyhow::Result<String> {
    let (Some(begin), Some(end)) = (page.find(BEGIN), page.find(END)) else {
        bail!("the page lacks the markers of the generated section:\n{BEGIN}\n{END}");
    };
    if end < begin {
        bail!("the end marker comes before the begin marker");
    }
    let head = &page[..begin + BEGIN.len()];
    let tail = &page[end..];
    Ok(format!("{head}\n\n{}\n\n{tail}", generated.trim_end()))
}

fn section(cmd: &Command, path: &str, root: bool, out: &mut String) {
    let _ = writeln!(out, "### `{path}`\n");
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        let _ = writeln!(out, "{}\n", one_line(&about.to_string()));
    }
    // A subcommand's copies of the global flags are listed once, at the root.
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .filter(|a| root || !a.is_global_set())
        .collect();
    if args.is_empty() {
        out.push_str("No flags.\n\n");
    } else {
        if root {
            out.push_str("Global flags (every subcommand takes them):\n\n");
        }
        out.push_str("| flag | variable | default | meaning |\n| --- | --- | --- | --- |\n");
        for arg in args {
            row(arg, out);
        }
        out.push('\n');
    }
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        section(sub, &format!("{path} {}", sub.get_name()), false, out);
    }
}

fn row(arg: &Arg, out: &mut String) {
    let flag = match (arg.get_long(), arg.get_short()) {
        (Some(long), Some(short)) => format!("`-{short}`, `--{long}`"),
        (Some(long), None) => format!("`--{long}`"),
        (None, Some(short)) => format!("`-{short}`"),
        (None, None) => {
            let name = arg
                .get_value_names()
                .and_then(|names| names.first())
                .map_or_else(|| arg.get_id().as_str().to_uppercase(), ToString::to_string);
            format!("`<{name}>`")
        }
    };
    let variable = match (arg.get_env(), secrets::file_variable(arg)) {
        (Some(env), Some(file)) => format!("`{}` or `{file}`", env.to_string_lossy()),
        (Some(env), None) => format!("`{}`", env.to_string_lossy()),
        (None, _) => String::new(),
    };
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| format!("`{}`", v.to_string_lossy()))
        .collect();
    let default = if arg.is_hide_default_value_set() && !defaults.is_empty() {
        "(hidden)".to_owned()
    } else {
        defaults.join(", ")
    };
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| one_line(&h.to_string()))
        .unwrap_or_default();
    // clap drops a one-sentence help's final period; the table keeps it.
    let mut meaning = match help.chars().last() {
        Some('.' | '?' | '!') | None => help,
        Some(_) => format!("{help}."),
    };
    let choices: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    let switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    let boolean = choices.len() == 2 && choices.iter().all(|c| c == "`true`" || c == "`false`");
    if !choices.is_empty() && !switch && !boolean && !arg.is_hide_possible_values_set() {
        let _ = write!(meaning, " One of {}.", choices.join(", "));
    }
    let _ = writeln!(
        out,
        "| {flag} | {variable} | {default} | {} |",
        meaning.trim()
    );
}

/// Help text on one table line: paragraphs joined, pipes escaped.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_and_secret_is_listed_without_secret_defaults() {
        let page = generate();
        let mut cmd = secrets::command::<Cli>();
        cmd.build();
        // Nested subcommands included, whatever they are.
        fn walk(cmd: &Command, path: &str, page: &str) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                if sub.get_name() == "help" {
                    continue;
                }
                let path = format!("{path} {}", sub.get_name());
                assert!(page.contains(&format!("### `{path}`")), "{path} missing");
                walk(sub, &path, page);
            }
        }
        walk(&cmd, "idem", &page);
        assert!(page.contains("`IDEM_DATABASE_URL` or `IDEM_DATABASE_URL_FILE`"));
        assert!(page.contains("`IDEM_CHARGE_API_KEY` or `IDEM_CHARGE_API_KEY_FILE`"));
        assert!(!page.contains("guest:guest"), "default credentials shown");
        assert!(page.contains("`IDEM_HTTP_ADDR` | `127.0.0.1:9464`"));
    }

    #[test]
    fn splice_replaces_only_the_generated_section() {
        let page = format!("intro\n{BEGIN}\nold\n{END}\noutro\n");
        let spliced = splice(&page, "new\n").expect("markers");
        assert_eq!(spliced, format!("intro\n{BEGIN}\n\nnew\n\n{END}\noutro\n"));
        assert!(splice("no markers", "x").is_err());
    }

    #[test]
    fn the_configuration_page_matches_the_command_line() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/configuration.md");
        let page = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let expected =
            splice(&page, &generate()).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
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

    #[test]
    fn every_credential_is_a_secret_with_a_file_variable() {
        let mut vars = std::collections::BTreeSet::new();
        secrets::secret_variables(&secrets::command::<Cli>(), &mut vars);
        for var in [
            "IDEM_DATABASE_URL",
            "IDEM_AMQP_URL",
            "IDEM_CHARGE_API_KEY",
            "IDEM_SIM_API_KEY",
        ] {
            assert!(vars.contains(var), "{var} is not a secret: {vars:?}");
        }
        assert!(!vars.contains("IDEM_QUEUE"), "{vars:?}");
    }
}
