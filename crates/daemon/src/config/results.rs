//! Settings of the result publisher (`IDEM_RESULTS_*`), which runs in every
//! replica with the dispatcher role and sends result events
//! (crates/events) to the broker at `IDEM_AMQP_URL`.

use std::time::Duration;

use anyhow::ensure;
use clap::Args;
use idem_events::PublisherConfig;

/// The result-event settings of `idem run`.
#[derive(Args, Debug, Clone)]
pub struct ResultsArgs {
    /// Topic exchange result events are published to (declared durable);
    /// routing key `charge.<state>`.
    #[arg(long, env = "IDEM_RESULTS_EXCHANGE", default_value = "idem.results")]
    pub results_exchange: String,
    /// Most result events claimed and published per step.
    #[arg(long, env = "IDEM_RESULTS_BATCH", default_value_t = 100)]
    pub results_batch: i64,
}

impl ResultsArgs {
    /// Check the settings; `amqp_url` and `idle_poll` are `idem run`'s.
    pub fn validate(&self, amqp_url: &str, idle_poll: Duration) -> anyhow::Result<PublisherConfig> {
        let name = &self.results_exchange;
        ensure!(
            !name.is_empty() && name.len() <= 255,
            "IDEM_RESULTS_EXCHANGE must be 1..=255 characters (the empty name is the default exchange)"
        );
        ensure!(
            !name.starts_with("amq."),
            "IDEM_RESULTS_EXCHANGE={name:?}: names starting with \"amq.\" are reserved by the broker"
        );
        ensure!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')),
            "IDEM_RESULTS_EXCHANGE={name:?} may hold only letters, digits and . _ - :"
        );
        ensure!(
            (1..=10_000).contains(&self.results_batch),
            "IDEM_RESULTS_BATCH={} must be 1..=10000",
            self.results_batch
        );
        Ok(PublisherConfig {
            amqp_url: amqp_url.to_owned(),
            exchange: name.clone(),
            batch: self.results_batch,
            idle_poll,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        results: ResultsArgs,
    }

    fn validate(args: &[&str]) -> anyhow::Result<PublisherConfig> {
        let mut all = vec!["idem"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .expect("parses")
            .results
            .validate("amqp://h/", Duration::from_millis(50))
    }

    #[test]
    fn defaults_are_valid_and_bad_names_say_what_to_fix() {
        let config = validate(&[]).expect("defaults");
        assert_eq!(config.exchange, "idem.results");
        for bad in ["", "amq.results", "has space", "x/y"] {
            let err = validate(&["--results-exchange", bad]).expect_err(bad);
            assert!(err.to_string().contains("IDEM_RESULTS_EXCHANGE"), "{err}");
        }
        let err = validate(&["--results-batch", "0"]).expect_err("batch");
        assert!(err.to_string().contains("IDEM_RESULTS_BATCH"), "{err}");
    }
}
