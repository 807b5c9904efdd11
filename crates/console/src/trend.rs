//! The overview's trends: the console samples the gauges' statement
//! (`idem_store::status::sample`, O(open rows)) every [`PERIOD`] and keeps
//! the last [`KEPT`] samples in memory. A fresh console has a short trend;
//! long histories are Prometheus's job (the Grafana dashboard). The same
//! tick reads the replicas, for the lag's window (`lag`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use idem_store::OutboxState;
use idem_store::status::{self, Sample};
use tokio_util::sync::CancellationToken;

use crate::Console;

/// Between two samples.
pub(crate) const PERIOD: Duration = Duration::from_secs(10);

/// Samples kept: an hour at [`PERIOD`].
pub(crate) const KEPT: usize = 360;

/// How long one sample may take before it is skipped.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The samples, oldest first.
#[derive(Default)]
pub(crate) struct Trend {
    samples: Mutex<VecDeque<(DateTime<Utc>, Sample)>>,
}

impl Trend {
    /// Keep `sample`, dropping the oldest past [`KEPT`].
    pub(crate) fn push(&self, at: DateTime<Utc>, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back((at, sample));
    }

    /// The rows in `state` over the kept samples, oldest first.
    pub(crate) fn series(&self, state: OutboxState) -> Vec<i64> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.iter().map(|(_, s)| s.outbox_in(state)).collect()
    }

    /// When the oldest kept sample was taken.
    pub(crate) fn since(&self) -> Option<DateTime<Utc>> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.front().map(|(at, _)| *at)
    }
}

/// Sample every [`PERIOD`] until `shutdown`; a failed sample is logged and
/// skipped (the database may be away; the pages say so themselves).
pub(crate) async fn keep(console: Console, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match take(&console).await {
            Ok(sample) => console.inner.trend.push(Utc::now(), sample),
            Err(e) => tracing::debug!(error = %e, "console trend sample skipped"),
        }
        // The lag's window needs readings between the overview's visits.
        console.read_replicas().await;
    }
}

async fn take(console: &Console) -> Result<Sample, sqlx::Error> {
    let mut conn = console.pool().acquire().await?;
    status::sample(&mut conn, SAMPLE_TIMEOUT).await
}

/// An inline SVG line of `values` (`width` x `height`), scaled to their own
/// range; empty for fewer than two values. Only numbers reach the markup.
pub(crate) fn sparkline(values: &[i64], width: u32, height: u32) -> String {
    if values.len() < 2 {
        return String::new();
    }
    let (lo, hi) = values
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let span = (hi - lo).max(1) as f64;
    let step = f64::from(width) / (values.len() - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let x = i as f64 * step;
            let y = f64::from(height) - 1.0 - (v - lo) as f64 / span * (f64::from(height) - 2.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        "<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         aria-label=\"trend from {lo} to {hi}\"><polyline fill=\"none\" stroke=\"#2456a6\" \
         stroke-width=\"1.5\" points=\"{}\"/></svg>",
        points.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_samples() {
        let trend = Trend::default();
        for i in 0..(KEPT as i64 + 5) {
            let mut s = Sample::default();
            s.outbox[0] = i;
            trend.push(Utc::now(), s);
        }
        let pending = trend.series(OutboxState::Pending);
        assert_eq!(pending.len(), KEPT);
        assert_eq!(pending.first(), Some(&5));
        assert_eq!(pending.last(), Some(&(KEPT as i64 + 4)));
    }

    #[test]
    fn a_sparkline_spans_its_box() {
        assert_eq!(sparkline(&[3], 100, 20), "");
        let svg = sparkline(&[0, 10, 5], 100, 20);
        assert!(
            svg.contains("points=\"0.0,19.0 50.0,1.0 100.0,10.0\""),
            "{svg}"
        );
        // A flat series is drawn, not divided by zero.
        assert!(sparkline(&[7, 7], 10, 10).contains("points=\"0.0,9.0 10.0,9.0\""));
    }
}
