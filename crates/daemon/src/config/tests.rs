//! Validation of `idem run`'s settings: every bad value names its variable.

use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

fn parse(args: &[&str]) -> RunArgs {
    let mut all = vec!["idem"];
    all.extend_from_slice(args);
    Cli::try_parse_from(all).expect("parses").run
}

#[test]
fn defaults_are_valid() {
    let config = parse(&[]).validate().expect("defaults must validate");
    assert_eq!(config.dispatch.lease, Duration::from_secs(30));
    assert!(config.capabilities.idempotency_keys);
}

#[test]
fn bad_settings_say_what_to_fix() {
    let err = parse(&["--lease-secs", "1"])
        .validate()
        .expect_err("lease too short");
    assert!(err.to_string().contains("IDEM_LEASE_SECS"), "{err}");
    let err = parse(&["--database-url", "mysql://x/y"])
        .validate()
        .expect_err("scheme");
    assert!(err.to_string().contains("IDEM_DATABASE_URL"), "{err}");
    let err = parse(&["--prefetch", "10", "--inbox-batch-size", "50"])
        .validate()
        .expect_err("prefetch");
    assert!(err.to_string().contains("IDEM_PREFETCH"), "{err}");
    let err = parse(&["--prefetch-bytes", "1048576"])
        .validate()
        .expect_err("a byte budget under one full batch");
    assert!(err.to_string().contains("IDEM_PREFETCH_BYTES"), "{err}");
    let err = parse(&["--lease-secs", "18446744073709551615"])
        .validate()
        .expect_err("absurd lease");
    assert!(err.to_string().contains("IDEM_LEASE_SECS"), "{err}");
    let err = parse(&["--amqp-url", "amqp:u:hunter2@h/"])
        .validate()
        .expect_err("no host");
    assert!(err.to_string().contains("IDEM_AMQP_URL"), "{err}");
    assert!(
        !err.to_string().contains("hunter2"),
        "password leaked: {err}"
    );
    let err = parse(&["--amqp-url", "amqp://u:hunter2@h:99999/"])
        .validate()
        .expect_err("bad url");
    assert!(
        !err.to_string().contains("hunter2"),
        "password leaked: {err}"
    );
}

#[test]
fn debug_prints_no_credential() {
    let args = parse(&[
        "--database-url",
        "postgres://u:pg-pw-1@h/db",
        "--amqp-url",
        "amqp://u:amqp-pw-2@h/%2f",
        "--charge-api-key",
        "api-key-3",
    ]);
    let config = args.validate().expect("valid");
    assert_eq!(
        config.charge_api_key.as_ref().map(Secret::expose),
        Some("api-key-3")
    );
    assert_eq!(config.inbox.amqp_url, "amqp://u:amqp-pw-2@h/%2f");
    let shown = format!("{args:?}\n{config:?}\n{config:#?}");
    for secret in ["pg-pw-1", "amqp-pw-2", "api-key-3"] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
    assert!(shown.contains("postgres://u:***@h/db"), "{shown}");
    assert!(shown.contains("amqp://u:***@h/%2f"), "{shown}");
}

#[test]
fn credentials_where_they_would_be_printed_are_refused() {
    let err = parse(&["--charge-api-url", "https://u:pw-1@provider.example/"])
        .validate()
        .expect_err("credentials in the provider URL");
    assert!(err.to_string().contains("IDEM_CHARGE_API_KEY"), "{err}");
    assert!(!err.to_string().contains("pw-1"), "{err}");
    let err = parse(&["--database-url", "postgres://u@h/db?password=pw-2"])
        .validate()
        .expect_err("password in the query");
    assert!(err.to_string().contains("IDEM_DATABASE_URL"), "{err}");
    assert!(!err.to_string().contains("pw-2"), "{err}");
}

#[test]
fn the_charge_api_ca_file_must_hold_certificates() {
    let dir = std::env::temp_dir().join(format!("idem-config-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let missing = dir.join("missing.pem");
    let err = parse(&["--charge-api-ca-file", missing.to_str().expect("utf-8")])
        .validate()
        .expect_err("missing file");
    assert!(
        format!("{err:#}").contains("cannot read IDEM_CHARGE_API_CA_FILE="),
        "{err:#}"
    );
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let err = parse(&["--charge-api-ca-file", empty.to_str().expect("utf-8")])
        .validate()
        .expect_err("no certificate");
    assert!(
        format!("{err:#}").contains("holds no certificate"),
        "{err:#}"
    );
}

#[test]
fn retention_shorter_than_the_horizon_is_refused() {
    let config = parse(&[]).validate().expect("defaults");
    assert_eq!(config.retention.inbox, Duration::from_secs(168 * 3600));
    let err = parse(&["--inbox-retention-hours", "0"])
        .validate()
        .expect_err("zero window");
    assert!(
        err.to_string().contains("IDEM_INBOX_RETENTION_HOURS"),
        "{err}"
    );
    // A day-long retry delay puts the floor at 10 days: the default
    // 7-day inbox window is refused, naming the variable to raise.
    let err = parse(&["--retry-max-ms", "86400000"])
        .validate()
        .expect_err("window under 10 x retry max");
    assert!(
        err.to_string().contains("IDEM_INBOX_RETENTION_HOURS=168"),
        "{err}"
    );
    assert!(err.to_string().contains("at least 240"), "{err}");
    let err = parse(&["--outbox-retention-hours", "1", "--lease-secs", "600"])
        .validate()
        .expect_err("window under 10 x lease");
    assert!(
        err.to_string().contains("IDEM_OUTBOX_RETENTION_HOURS"),
        "{err}"
    );
    let err = parse(&[
        "--outbox-retention-hours",
        "24",
        "--reconcile-lookback-hours",
        "48",
    ])
    .validate()
    .expect_err("outbox window under the reconciler's lookback");
    assert!(
        err.to_string().contains("IDEM_RECONCILE_LOOKBACK_HOURS=48"),
        "{err}"
    );
    let err = parse(&["--retention-batch", "0"])
        .validate()
        .expect_err("batch");
    assert!(err.to_string().contains("IDEM_RETENTION_BATCH"), "{err}");
    parse(&[
        "--inbox-retention-hours",
        "1",
        "--quarantine-retention-hours",
        "1",
    ])
    .validate()
    .expect("an hour is the floor at default lease and retry");
}

#[test]
fn a_grace_over_a_week_is_refused() {
    let err = parse(&["--reconcile-grace-secs", "604801"])
        .validate()
        .expect_err("over a week");
    assert!(
        err.to_string().contains("IDEM_RECONCILE_GRACE_SECS"),
        "{err}"
    );
    parse(&["--reconcile-grace-secs", "604800"])
        .validate()
        .expect("a week is accepted");
}

/// The pool must leave the result publisher a connection of its own: it
/// holds one for the length of a publish (its claim is that transaction's
/// row locks), beside the consumer's and the dispatcher's.
#[test]
fn a_pool_too_small_for_the_three_roles_is_refused() {
    let err = parse(&["--db-max-connections", "2"])
        .validate()
        .expect_err("two connections");
    assert!(
        err.to_string()
            .contains("IDEM_DB_MAX_CONNECTIONS must be at least 3"),
        "{err}"
    );
    assert!(err.to_string().contains("publisher"), "{err}");
    parse(&["--db-max-connections", "3"])
        .validate()
        .expect("three are enough");
}

/// The console on a replica's listener follows the console's rule: off
/// loopback only with a token, and a short token is refused; the settings
/// never print the token.
#[test]
fn a_console_on_a_public_listener_needs_a_token() {
    let err = parse(&["--console", "true", "--http-addr", "0.0.0.0:9464"])
        .validate()
        .expect_err("no token");
    let text = format!("{err:#}");
    assert!(text.contains("IDEM_HTTP_ADDR 0.0.0.0:9464"), "{text}");
    assert!(text.contains("IDEM_CONSOLE_TOKEN"), "{text}");
    let short = parse(&[
        "--console",
        "true",
        "--http-addr",
        "0.0.0.0:9464",
        "--console-token",
        "abc",
    ])
    .validate()
    .expect_err("short token");
    assert!(format!("{short:#}").contains("at least 16"), "{short:#}");
    let token = "0123456789abcdef0123";
    let config = parse(&[
        "--console",
        "true",
        "--http-addr",
        "0.0.0.0:9464",
        "--console-token",
        token,
    ])
    .validate()
    .expect("a token");
    assert!(config.console.is_some());
    assert!(!format!("{config:?}").contains(token));
    let off = parse(&["--http-addr", "0.0.0.0:9464"])
        .validate()
        .expect("no console");
    assert!(off.console.is_none(), "the console is off unless asked for");
}

#[test]
fn a_broker_list_is_checked_node_by_node_and_never_printed_with_passwords() {
    let ok = "amqp://u:p1@a:5672/%2f,amqps://u:p,2@b:5671/%2f";
    check_amqp_urls(ok).expect("two nodes, a comma in a password");
    for (bad, says) in [
        ("", "IDEM_AMQP_URL is empty"),
        ("amqp://u:p@a/%2f,", "ends in a comma"),
        ("amqp://u:p@a/%2famqp://u:s3cret@b/%2f", "holds another URL"),
        ("amqp://u:p@a/%2f,http://b/", "holds another URL"),
        (
            "amqp://u:p@a/%2f,AMQP://u:p@b/%2f,http://c",
            "endpoint 2 of 2",
        ),
    ] {
        let error = check_amqp_urls(bad).expect_err(bad).to_string();
        assert!(error.contains(says), "{bad}: {error}");
        assert!(
            !error.contains("s3cret") && !error.contains("u:p@"),
            "{error}"
        );
    }
}

/// A boolean setting given as a bare flag means `true`, as the docs write
/// `idem run --console`; `--flag false` still turns one off.
#[test]
fn a_bare_boolean_flag_is_true() {
    let run = parse(&[
        "--console",
        "--console-read-only",
        "--provider-lookup",
        "false",
    ]);
    assert!(run.console && run.console_args.console_read_only);
    assert!(!run.provider_lookup, "--provider-lookup false");
    assert!(!parse(&[]).console, "off unless asked for");
}
