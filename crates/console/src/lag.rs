//! The overview's publish → recorded lag. The replicas observe it
//! (`idem_inbox_publish_lag_seconds`, a cumulative histogram since each
//! replica started); the console keeps a minute of their readings (taken
//! with the trends every `trend::PERIOD`, and by each overview) and shows
//! the quantiles of what changed in that minute, over all replicas. Before
//! it holds two readings of a replica, it shows the replicas' totals since
//! they started, and says so.
//!
//! A replica's histogram is input: at most [`MAX_BUCKETS`] buckets, finite
//! non-negative counts, and only replicas with the same bucket bounds are
//! added together (a fleet half upgraded may differ): those of the first
//! replica by URL, and the page says how many of the replicas it covers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::view::seconds;

/// The most buckets read from one replica's histogram.
pub(crate) const MAX_BUCKETS: usize = 64;

/// How far back the window reaches.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// A reading closer than this to the newest replaces it (page reloads do
/// not grow the ring).
const MIN_GAP: Duration = Duration::from_secs(5);

/// A cumulative histogram: `(upper bound, observations at or under it)` by
/// rising bound, the last bound `+Inf`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Histogram {
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// Add the bucket `le` (a bound as Prometheus writes it) with `count`;
    /// refused (false) past [`MAX_BUCKETS`] or for values no histogram has.
    pub(crate) fn add(&mut self, le: &str, count: f64) -> bool {
        let bound = match le {
            "+Inf" => f64::INFINITY,
            _ => match le.parse::<f64>() {
                Ok(b) if b.is_finite() => b,
                _ => return false,
            },
        };
        if self.buckets.len() >= MAX_BUCKETS || !count.is_finite() || count < 0.0 {
            return false;
        }
        let at = self.buckets.partition_point(|(b, _)| *b < bound);
        if self.buckets.get(at).is_some_and(|(b, _)| *b == bound) {
            return false;
        }
        self.buckets.insert(at, (bound, count));
        true
    }

    /// Observations in all.
    pub(crate) fn count(&self) -> f64 {
        match self.buckets.last() {
            Some((b, c)) if b.is_infinite() => *c,
            _ => 0.0,
        }
    }

    fn same_bounds(&self, other: &Self) -> bool {
        self.buckets.len() == other.buckets.len()
            && self
                .buckets
                .iter()
                .zip(&other.buckets)
                .all(|(a, b)| a.0 == b.0)
    }

    /// `self - earlier`, or `None` when a count went down (the replica
    /// restarted between the two) or the bounds differ.
    fn since(&self, earlier: &Self) -> Option<Self> {
        if !self.same_bounds(earlier) {
            return None;
        }
        let buckets = self
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|(now, then)| (now.1 >= then.1).then_some((now.0, now.1 - then.1)))
            .collect::<Option<_>>()?;
        Some(Self { buckets })
    }

    /// Add `other`'s counts when it has the same bounds; whether it did.
    fn absorb(&mut self, other: &Self) -> bool {
        if self.buckets.is_empty() {
            *self = other.clone();
        } else if self.same_bounds(other) {
            for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
                mine.1 += theirs.1;
            }
        } else {
            return false;
        }
        true
    }

    /// The `q` quantile as Prometheus's `histogram_quantile` estimates it
    /// (linear within the bucket); `Err(bound)` when it falls past the last
    /// finite bound. `None` without observations or with counts that do not
    /// rise (not a histogram).
    pub(crate) fn quantile(&self, q: f64) -> Option<Result<f64, f64>> {
        let total = self.count();
        // Hostile counts can add up to infinity: no quantile then.
        if !total.is_finite() || total <= 0.0 || self.buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            return None;
        }
        let rank = q * total;
        let mut below = (0.0, 0.0);
        for &(bound, cumulative) in &self.buckets {
            if cumulative >= rank {
                if bound.is_infinite() {
                    return Some(Err(below.0));
                }
                let share = cumulative - below.1;
                let into = if share > 0.0 {
                    (rank - below.1) / share
                } else {
                    1.0
                };
                return Some(Ok(below.0 + (bound - below.0) * into));
            }
            below = (bound, cumulative);
        }
        None
    }
}

/// The lag as the overview shows it.
pub(crate) struct LagView {
    /// What the figures cover, e.g. "last 50 s" or "since the replicas started".
    pub(crate) over: String,
    /// Messages observed over it.
    pub(crate) messages: u64,
    /// Replicas whose readings it adds up, of those that reported one.
    pub(crate) replicas: (usize, usize),
    pub(crate) p50: String,
    pub(crate) p99: String,
}

/// Each replica's recent readings, by its URL (in order, so which replicas
/// are added up is the same on every view), oldest first.
#[derive(Default)]
pub(crate) struct Readings {
    by_replica: Mutex<BTreeMap<String, VecDeque<(Instant, Histogram)>>>,
}

impl Readings {
    /// Keep `histogram` as `replica`'s reading at `at`.
    pub(crate) fn push(&self, replica: &str, at: Instant, histogram: Histogram) {
        let mut all = self.by_replica.lock().unwrap_or_else(|p| p.into_inner());
        let ring = all.entry(replica.to_owned()).or_default();
        if ring
            .back()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) < MIN_GAP)
            && ring.len() > 1
        {
            ring.pop_back();
        }
        ring.push_back((at, histogram));
        while ring
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > WINDOW)
        {
            ring.pop_front();
        }
    }

    /// The lag over the window (all replicas with two readings in it), or
    /// over the newest readings' totals when none has two.
    pub(crate) fn view(&self, now: Instant) -> Option<LagView> {
        let all = self.by_replica.lock().unwrap_or_else(|p| p.into_inner());
        let (mut window, mut totals) = (Histogram::default(), Histogram::default());
        let (mut in_window, mut in_totals, mut reporting) = (0, 0, 0);
        let mut span = Duration::ZERO;
        for ring in all.values() {
            let (Some((first_at, first)), Some((last_at, last))) = (ring.front(), ring.back())
            else {
                continue;
            };
            reporting += 1;
            in_totals += usize::from(totals.absorb(last));
            if ring.len() > 1 && now.saturating_duration_since(*last_at) <= WINDOW {
                // A restart between the two: all it counted is recent.
                let delta = last.since(first).unwrap_or_else(|| last.clone());
                if window.absorb(&delta) {
                    in_window += 1;
                    span = span.max(last_at.saturating_duration_since(*first_at));
                }
            }
        }
        let (over, h, counted) = if window.buckets.is_empty() {
            ("since the replicas started".to_owned(), totals, in_totals)
        } else {
            (format!("last {} s", span.as_secs()), window, in_window)
        };
        if h.buckets.is_empty() {
            return None;
        }
        let shown = |q: f64| match h.quantile(q) {
            None => "-".to_owned(),
            Some(Ok(s)) => seconds(&Some(s)),
            Some(Err(bound)) => format!("over {}", seconds(&Some(bound))),
        };
        Some(LagView {
            over,
            messages: h.count() as u64,
            replicas: (counted, reporting),
            p50: shown(0.5),
            p99: shown(0.99),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(pairs: &[(&str, f64)]) -> Histogram {
        let mut h = Histogram::default();
        for (le, c) in pairs {
            assert!(h.add(le, *c), "{le}");
        }
        h
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_prometheus() {
        let h = histogram(&[("+Inf", 100.0), ("1", 50.0), ("10", 100.0), ("0.1", 0.0)]);
        assert_eq!(h.quantile(0.5), Some(Ok(1.0)));
        assert_eq!(h.quantile(0.75), Some(Ok(5.5)));
        let tail = histogram(&[("1", 10.0), ("+Inf", 20.0)]);
        assert_eq!(tail.quantile(0.99), Some(Err(1.0)));
        assert_eq!(histogram(&[("1", 0.0), ("+Inf", 0.0)]).quantile(0.5), None);
        // Counts that fall are not a cumulative histogram.
        assert_eq!(histogram(&[("1", 9.0), ("+Inf", 3.0)]).quantile(0.5), None);
    }

    #[test]
    fn hostile_buckets_are_refused() {
        let mut h = Histogram::default();
        assert!(!h.add("NaN", 1.0) && !h.add("inf", 1.0) && !h.add("x", 1.0));
        assert!(!h.add("1", f64::NAN) && !h.add("1", -1.0) && !h.add("1", f64::INFINITY));
        assert!(h.add("1", 1.0) && !h.add("1.0", 2.0), "a bound twice");
        for i in 0..(MAX_BUCKETS + 10) {
            h.add(&format!("{}", i + 2), 1.0);
        }
        assert_eq!(h.buckets.len(), MAX_BUCKETS);
    }

    #[test]
    fn the_window_is_what_changed_and_a_restart_counts_whole() {
        let r = Readings::default();
        let t0 = Instant::now();
        let old = histogram(&[("1", 1000.0), ("+Inf", 1000.0)]);
        r.push("a", t0, old.clone());
        let first = r.view(t0).expect("a view");
        assert_eq!(first.over, "since the replicas started");
        assert_eq!(first.messages, 1000);
        r.push(
            "a",
            t0 + Duration::from_secs(20),
            histogram(&[("1", 1000.0), ("+Inf", 1010.0)]),
        );
        // Replica b restarted: its second reading is below its first.
        r.push("b", t0, histogram(&[("1", 50.0), ("+Inf", 50.0)]));
        r.push(
            "b",
            t0 + Duration::from_secs(20),
            histogram(&[("1", 0.0), ("+Inf", 5.0)]),
        );
        let v = r.view(t0 + Duration::from_secs(20)).expect("a view");
        assert_eq!((v.over.as_str(), v.messages), ("last 20 s", 15));
        assert_eq!(v.replicas, (2, 2));
        assert_eq!(v.p50, "over 1.0 s");
        // Readings past the window are dropped; close ones replace the newest.
        r.push("a", t0 + Duration::from_secs(90), old.clone());
        r.push("a", t0 + Duration::from_secs(91), old.clone());
        r.push("a", t0 + Duration::from_secs(92), old);
        assert_eq!(r.by_replica.lock().expect("not poisoned")["a"].len(), 2);
    }

    #[test]
    fn replicas_with_other_buckets_are_left_out_and_counted_so() {
        let r = Readings::default();
        let t0 = Instant::now();
        r.push("a", t0, histogram(&[("1", 4.0), ("+Inf", 4.0)]));
        r.push("b", t0, histogram(&[("2", 4.0), ("+Inf", 4.0)]));
        let v = r.view(t0).expect("a view");
        assert_eq!((v.messages, v.replicas), (4, (1, 2)));
        // Counts that add up to infinity give no quantile, not NaN.
        let huge = Readings::default();
        huge.push("a", t0, histogram(&[("1", f64::MAX), ("+Inf", f64::MAX)]));
        huge.push("b", t0, histogram(&[("1", f64::MAX), ("+Inf", f64::MAX)]));
        assert_eq!(huge.view(t0).expect("a view").p50, "-");
    }
}
