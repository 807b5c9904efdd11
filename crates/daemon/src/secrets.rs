//! Credentials: which settings carry them, how they may be given (the variable
//! itself, or `<VARIABLE>_FILE` naming a file that holds the value), and types
//! that never print them.
//!
//! A setting is a **secret** when its flag hides its environment value in
//! `--help` (`hide_env_values`): the database and broker URLs, the provider's
//! API key, the simulator's key. The list is read from the command line's
//! definition, so a new secret flag gets its `_FILE` variable by being marked.
//!
//! `_FILE` is resolved once, before clap parses: the file's content becomes the
//! flag's (hidden) default, so the precedence stays clap's own — a flag on the
//! command line wins over either variable — and everything downstream sees one
//! value. Giving both `X` and `X_FILE` is refused at start.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, bail};
use clap::{Arg, Command, CommandFactory, FromArgMatches};

/// Appended to a secret variable's name: the variable naming its file.
pub const FILE_SUFFIX: &str = "_FILE";

/// Whether `arg` carries a credential: it has a variable whose value `--help`
/// hides.
pub fn is_secret(arg: &Arg) -> bool {
    arg.is_hide_env_values_set() && arg.get_env().is_some()
}

/// The `_FILE` variable of a secret `arg`, e.g. `IDEM_DATABASE_URL_FILE`.
pub fn file_variable(arg: &Arg) -> Option<String> {
    is_secret(arg)
        .then(|| arg.get_env())
        .flatten()
        .map(|env| format!("{}{FILE_SUFFIX}", env.to_string_lossy()))
}

/// Command line `C` as operators see it: every secret flag's help names
/// its `_FILE` variable. Reads no environment (the configuration reference
/// is generated from it).
pub fn command<C: CommandFactory>() -> Command {
    teach(C::command(), &BTreeMap::new())
}

/// Parse the process's command line, with every secret's `_FILE` variable
/// resolved from the environment. Exits like [`clap::Parser::parse`] on
/// `--help` or a usage error; returns an error when a `_FILE` variable
/// cannot be used.
pub fn parse<C: CommandFactory + FromArgMatches>() -> anyhow::Result<C> {
    let mut cmd = command_from::<C>(|var| std::env::var_os(var))?;
    let matches = cmd.get_matches_mut();
    Ok(C::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit()))
}

/// [`command`] with the `_FILE` variables that `env` sets resolved into the
/// secret flags' defaults.
pub fn command_from<C: CommandFactory>(
    env: impl Fn(&str) -> Option<OsString>,
) -> anyhow::Result<Command> {
    let cli = C::command();
    let mut variables = BTreeSet::new();
    secret_variables(&cli, &mut variables);
    let mut values = BTreeMap::new();
    for var in variables {
        if let Some(value) = resolve(&var, &env)? {
            values.insert(var, value);
        }
    }
    Ok(teach(cli, &values))
}

/// The value of secret `var` given as a file: `None` when `<var>_FILE` is
/// unset or empty. Refuses `var` (even empty) and `<var>_FILE` both set, an
/// unreadable file (naming the variable and the path, never the content) and
/// an empty one. One trailing line ending is not part of the value (`echo`
/// adds it).
pub fn resolve(
    var: &str,
    env: impl Fn(&str) -> Option<OsString>,
) -> anyhow::Result<Option<String>> {
    let file_var = format!("{var}{FILE_SUFFIX}");
    let Some(path) = env(&file_var).filter(|p| !p.is_empty()).map(PathBuf::from) else {
        return Ok(None);
    };
    // Set even to "" counts: clap would take the empty value over the file's.
    if env(var).is_some() {
        bail!("{var} and {file_var} are both set: give the value one way only (unset one of them)");
    }
    let shown = path.display();
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {file_var}={shown}"))?;
    let Ok(text) = String::from_utf8(bytes) else {
        bail!("{file_var}={shown} is not UTF-8 text");
    };
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if value.is_empty() {
        bail!("{file_var}={shown} is empty: it must hold the value of {var}");
    }
    Ok(Some(value.to_owned()))
}

/// Every secret variable of `cmd` and its subcommands.
pub fn secret_variables(cmd: &Command, out: &mut BTreeSet<String>) {
    for arg in cmd.get_arguments().filter(|a| is_secret(a)) {
        if let Some(env) = arg.get_env() {
            out.insert(env.to_string_lossy().into_owned());
        }
    }
    for sub in cmd.get_subcommands() {
        secret_variables(sub, out);
    }
}

/// `cmd` with each secret flag's help naming its `_FILE` variable and, where
/// `values` holds its variable, that value as the flag's hidden default.
/// Flags and subcommands keep their order.
fn teach(cmd: Command, values: &BTreeMap<String, String>) -> Command {
    cmd.mut_args(|arg| teach_arg(arg, values))
        .mut_subcommands(|sub| teach(sub, values))
}

fn teach_arg(arg: Arg, values: &BTreeMap<String, String>) -> Arg {
    let (Some(env), Some(file_var)) = (arg.get_env(), file_variable(&arg)) else {
        return arg;
    };
    let value = values.get(env.to_string_lossy().as_ref()).cloned();
    let note = |help: String| {
        let end = if help.ends_with(['.', '?', '!']) {
            " "
        } else {
            ". "
        };
        format!("{help}{end}Or give {file_var}: a file holding the value")
    };
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    let long = arg.get_long_help().map(ToString::to_string);
    let mut arg = arg.help(note(help));
    if let Some(long) = long {
        arg = arg.long_help(note(long));
    }
    match value {
        Some(value) => arg.default_value(value).hide_default_value(true),
        None => arg,
    }
}

/// A credential such as an API key. `Debug` prints `<redacted>`; the value is
/// read with [`Secret::expose`], where it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The credential itself: hand it to the client that sends it, nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A URL that may carry a password. `Debug` and `Display` print it with the
/// password replaced by `***` ([`idem_store::redact_url`]); the real URL is
/// [`SecretUrl::expose`] (or `Deref`, for the functions that connect).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its password: for connecting, nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        idem_store::redact_url(&self.0)
    }
}

impl std::ops::Deref for SecretUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::{Parser, Subcommand};

    use super::*;
    use crate::RunArgs;

    /// The part of `idem`'s command line these tests need.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Subcommand, Debug)]
    enum Sub {
        Run(Box<RunArgs>),
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn scratch(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("idem-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write");
        path
    }

    #[test]
    fn a_file_gives_the_value_without_its_line_ending() {
        for (name, content) in [
            ("lf", "s3cret\n"),
            ("crlf", "s3cret\r\n"),
            ("none", "s3cret"),
        ] {
            let path = scratch(name, content.as_bytes());
            let path = path.to_str().expect("utf-8 path");
            let value = resolve("IDEM_X", env(&[("IDEM_X_FILE", path)])).expect("resolves");
            assert_eq!(value.as_deref(), Some("s3cret"), "{name}");
        }
        // Only one line ending goes: a value may end in whitespace on purpose.
        let path = scratch("two", b"s3cret \n\n");
        let value = resolve(
            "IDEM_X",
            env(&[("IDEM_X_FILE", path.to_str().expect("utf-8"))]),
        );
        assert_eq!(value.expect("resolves").as_deref(), Some("s3cret \n"));
        assert_eq!(resolve("IDEM_X", env(&[])).expect("unset"), None);
        assert_eq!(
            resolve("IDEM_X", env(&[("IDEM_X_FILE", "")])).expect("empty"),
            None
        );
    }

    #[test]
    fn both_set_is_refused() {
        let path = scratch("both", b"from-file");
        let err = resolve(
            "IDEM_X",
            env(&[
                ("IDEM_X", "from-env"),
                ("IDEM_X_FILE", path.to_str().expect("utf-8")),
            ]),
        )
        .expect_err("both set");
        let msg = format!("{err:#}");
        assert!(msg.contains("IDEM_X and IDEM_X_FILE are both set"), "{msg}");
        assert!(
            !msg.contains("from-file") && !msg.contains("from-env"),
            "{msg}"
        );
        let path = path.to_str().expect("utf-8");
        resolve("IDEM_X", env(&[("IDEM_X", ""), ("IDEM_X_FILE", path)])).expect_err("empty set");
    }

    #[test]
    fn a_bad_file_names_the_variable_and_path_not_the_content() {
        let err = resolve("IDEM_X", env(&[("IDEM_X_FILE", "/nonexistent/idem-key")]))
            .expect_err("missing file");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("cannot read IDEM_X_FILE=/nonexistent/idem-key"),
            "{msg}"
        );
        let path = scratch("binary", b"\xff\xfesecret");
        let err = resolve(
            "IDEM_X",
            env(&[("IDEM_X_FILE", path.to_str().expect("utf-8"))]),
        )
        .expect_err("not utf-8");
        assert!(format!("{err:#}").contains("is not UTF-8"), "{err:#}");
        let path = scratch("empty", b"\n");
        let err = resolve(
            "IDEM_X",
            env(&[("IDEM_X_FILE", path.to_str().expect("utf-8"))]),
        )
        .expect_err("empty");
        assert!(format!("{err:#}").contains("is empty"), "{err:#}");
    }

    #[test]
    fn the_secrets_are_the_hidden_variables_and_files_fill_them() {
        let mut vars = BTreeSet::new();
        secret_variables(&Cli::command(), &mut vars);
        for var in ["IDEM_DATABASE_URL", "IDEM_AMQP_URL", "IDEM_CHARGE_API_KEY"] {
            assert!(vars.contains(var), "{var} is not a secret: {vars:?}");
        }
        assert!(!vars.contains("IDEM_QUEUE"), "{vars:?}");

        let db = scratch("db", b"postgres://u:pw-from-file@h/db\n");
        let key = scratch("key", b"key-from-file\n");
        let cmd = command_from::<Cli>(env(&[
            ("IDEM_DATABASE_URL_FILE", db.to_str().expect("utf-8")),
            ("IDEM_CHARGE_API_KEY_FILE", key.to_str().expect("utf-8")),
        ]))
        .expect("resolves");
        let matches = cmd.try_get_matches_from(["idem", "run"]).expect("parses");
        let cli = Cli::from_arg_matches(&matches).expect("a Cli");
        let Sub::Run(run) = cli.command;
        assert_eq!(
            run.database.database_url.expose(),
            "postgres://u:pw-from-file@h/db"
        );
        let api_key = run.charge_api_key.as_ref().map(Secret::expose);
        assert_eq!(api_key, Some("key-from-file"));
        let debug = format!("{run:?}");
        assert!(
            !debug.contains("pw-from-file") && !debug.contains("key-from-file"),
            "{debug}"
        );
    }

    #[test]
    fn help_names_the_file_variables_and_hides_their_values() {
        let path = scratch("help-db", b"postgres://u:pw-in-help@h/db");
        let mut cmd = command_from::<Cli>(env(&[(
            "IDEM_DATABASE_URL_FILE",
            path.to_str().expect("utf-8"),
        )]))
        .expect("resolves");
        let run = cmd.find_subcommand_mut("run").expect("run");
        let help = run.render_long_help().to_string();
        assert!(help.contains("IDEM_DATABASE_URL_FILE"), "{help}");
        assert!(help.contains("IDEM_CHARGE_API_KEY_FILE"), "{help}");
        assert!(!help.contains("pw-in-help"), "{help}");
    }

    #[test]
    fn debug_prints_no_secret() {
        let url: SecretUrl = "amqp://u:hunter2@h:5672/%2f".parse().expect("infallible");
        assert_eq!(format!("{url:?}"), "\"amqp://u:***@h:5672/%2f\"");
        assert_eq!(url.to_string(), "amqp://u:***@h:5672/%2f");
        assert_eq!(url.expose(), "amqp://u:hunter2@h:5672/%2f");
        let key: Secret = "k-123".parse().expect("infallible");
        assert!(!format!("{key:?}").contains("k-123"));
    }
}
