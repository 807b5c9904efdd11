//! The run's throughput second by second (charges recorded per second of
//! wall clock, from each row's `settled_at`), its median, and its longest
//! stall: the longest run of seconds under half the median.

use serde::Serialize;

/// The per-second trace of one run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Trace {
    /// Charges recorded in each whole second from the first publish (the
    /// last, partial second left out).
    pub per_second: Vec<u32>,
    /// The median of `per_second`.
    pub median_per_s: f64,
    /// The longest run of seconds under half the median.
    pub longest_stall_s: usize,
    /// Where it began, seconds from the first publish.
    pub stall_began_at_s: Option<usize>,
}

impl Trace {
    /// From the first publish (µs since the epoch) and each recorded
    /// charge's time (µs since the epoch).
    pub fn of(first_publish_us: i64, recorded_us: impl IntoIterator<Item = i64>) -> Self {
        let mut per_second: Vec<u32> = Vec::new();
        let mut last = 0;
        for at in recorded_us {
            let second = usize::try_from((at - first_publish_us).max(0) / 1_000_000).unwrap_or(0);
            if per_second.len() <= second {
                per_second.resize(second + 1, 0);
            }
            per_second[second] += 1;
            last = last.max(second);
        }
        // The last second is partial: the run ended inside it.
        per_second.truncate(last);
        let mut sorted = per_second.clone();
        sorted.sort_unstable();
        let median_per_s = sorted.get(sorted.len() / 2).copied().unwrap_or(0) as f64;
        let (mut longest, mut began, mut run) = (0, None, 0);
        for (i, n) in per_second.iter().enumerate() {
            if f64::from(*n) < median_per_s / 2.0 {
                run += 1;
                if run > longest {
                    longest = run;
                    began = Some(i + 1 - run);
                }
            } else {
                run = 0;
            }
        }
        Self {
            per_second,
            median_per_s,
            longest_stall_s: longest,
            stall_began_at_s: began,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64, n: usize) -> impl Iterator<Item = i64> {
        (0..n).map(move |i| second * 1_000_000 + i as i64)
    }

    #[test]
    fn a_run_of_slow_seconds_is_the_stall() {
        let times = at(0, 100)
            .chain(at(1, 100))
            .chain(at(2, 10))
            .chain(at(3, 20))
            .chain(at(4, 100))
            .chain(at(5, 100))
            .chain(at(6, 3));
        let t = Trace::of(0, times);
        assert_eq!(t.per_second, [100, 100, 10, 20, 100, 100]);
        assert_eq!(t.median_per_s, 100.0);
        assert_eq!(t.longest_stall_s, 2);
        assert_eq!(t.stall_began_at_s, Some(2));
    }

    #[test]
    fn a_steady_run_has_no_stall() {
        let t = Trace::of(0, (0..10).flat_map(|s| at(s, 50)));
        assert_eq!(t.longest_stall_s, 0);
        assert_eq!(t.stall_began_at_s, None);
    }
}
