//! Progress while a measurement runs: a bar on a terminal, a plain line every
//! 5 s otherwise (logs, CI). Always on stderr, so `--json` stays clean.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

/// Progress of one measurement.
pub struct Progress {
    /// The bar, when stderr is a terminal.
    bar: Option<ProgressBar>,
    /// What is measured, for the plain lines.
    label: String,
    /// When the last plain line was printed.
    last_line: Instant,
    /// When the measurement started.
    started: Instant,
}

impl Progress {
    /// Progress towards `total` units of `label`.
    pub fn new(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix:>10} [{elapsed_precise}] {bar:30} {pos:>7}/{len:7} {msg}",
            ) {
                bar.set_style(style);
            }
            bar.set_prefix(label.to_owned());
            bar
        });
        Self {
            bar,
            label: label.to_owned(),
            last_line: Instant::now(),
            started: Instant::now(),
        }
    }

    /// `done` units so far; `detail` says more (e.g. how many were published).
    pub fn update(&mut self, done: u64, detail: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(detail.to_owned());
            }
            None if self.last_line.elapsed() >= Duration::from_secs(5) => {
                self.last_line = Instant::now();
                eprintln!(
                    "  {} {:>6.1} s: {done} {detail}",
                    self.label,
                    self.started.elapsed().as_secs_f64()
                );
            }
            None => {}
        }
    }

    /// Remove the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Wait for every task of `loops` (the first failure or panic ends the wait
/// with it), updating `progress` with `status()` — units done and a detail —
/// every 250 ms meanwhile.
pub async fn drive(
    progress: &mut Progress,
    what: &str,
    loops: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    mut status: impl FnMut() -> (u64, String),
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            joined = loops.join_next() => match joined {
                Some(result) => result.with_context(|| format!("a {what} loop panicked"))??,
                None => return Ok(()),
            },
            _ = ticker.tick() => {
                let (done, detail) = status();
                progress.update(done, &detail);
            }
        }
    }
}
