//! The consumer's prefetch, bounded in bytes as well as in messages.
//!
//! What a consumer holds is what the broker may push ahead of its acks: the
//! prefetch count times the sizes of those bodies. RabbitMQ refuses a
//! `basic.qos` `prefetch_size` (not implemented), and lapin reads every
//! delivery's whole body into memory as it arrives, whether or not the
//! consumer polls; so the only lever on the bytes is the count, set from what
//! the bodies weigh.
//!
//! [`Credit`] (pure) is the count that keeps `count × (largest body seen
//! recently) <= IDEM_PREFETCH_BYTES`, within `1..=IDEM_PREFETCH`: a large
//! body shrinks it at once; batches of small bodies double it back. Applying
//! a count to a live consumer is `crate::window`'s.
//!
//! The bound this gives, and what it does not cover, is in
//! `docs/performance.md` ("Memory per replica").

/// RabbitMQ's default `max_message_size` (128 MiB): what a session assumes
/// of the bodies it has not seen yet, so that its first window is as small as
/// the budget demands of the largest message the broker accepts by default.
pub const BROKER_MAX_MESSAGE: u64 = 128 * 1024 * 1024;

/// The prefetch count for a byte budget, from the bodies seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    /// Most body bytes the broker may push ahead (`IDEM_PREFETCH_BYTES`).
    budget: u64,
    /// Most deliveries the broker may push ahead (`IDEM_PREFETCH`).
    ceiling: u16,
    /// The largest body seen recently, in bytes: the last batch's largest
    /// body or half the previous value, whichever is larger (so it forgets a
    /// large body by halves, one batch at a time).
    recent: u64,
    /// The count to apply.
    count: u16,
}

impl Credit {
    /// A session's credit: as if its first bodies were [`BROKER_MAX_MESSAGE`]
    /// bytes (a count of 1 under the default budget).
    pub fn new(budget: u64, ceiling: u16) -> Self {
        let recent = BROKER_MAX_MESSAGE;
        Self {
            budget,
            ceiling,
            recent,
            count: limit(budget, ceiling, recent),
        }
    }

    /// The count to apply now.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// A batch whose largest body is `largest` bytes has arrived; returns the
    /// count the deliveries after it should get.
    pub fn observe(&mut self, largest: u64) -> u16 {
        self.recent = largest.max(self.recent / 2);
        self.count = step(
            self.count,
            limit(self.budget, self.ceiling, self.recent),
            self.ceiling,
        );
        self.count
    }
}

/// The most deliveries of `recent` bytes each that fit in `budget`, within
/// `1..=ceiling`: one body is always allowed, however large.
pub fn limit(budget: u64, ceiling: u16, recent: u64) -> u16 {
    let fits = budget / recent.max(1);
    u16::try_from(fits)
        .unwrap_or(u16::MAX)
        .clamp(1, ceiling.max(1))
}

/// From `count` towards `limit`: down at once, up only by doubling (or the
/// last step to the ceiling), so that bodies near the edge do not change the
/// count, and re-create the consumer, on every batch.
pub fn step(count: u16, limit: u16, ceiling: u16) -> u16 {
    let doubled = count.saturating_mul(2);
    if limit < count {
        limit
    } else if limit >= doubled {
        doubled
    } else if limit == ceiling {
        ceiling
    } else {
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const BUDGET: u64 = 64 * MIB;

    /// The counts of successive batches whose largest bodies are `sizes`.
    fn counts(credit: &mut Credit, sizes: &[u64]) -> Vec<u16> {
        sizes.iter().map(|&size| credit.observe(size)).collect()
    }

    #[test]
    fn limit_is_the_budget_over_the_body_within_one_and_the_ceiling() {
        assert_eq!(limit(BUDGET, 200, MIB), 64);
        assert_eq!(limit(BUDGET, 200, 100 * MIB), 1, "one body, however large");
        assert_eq!(limit(BUDGET, 200, 200), 200, "capped at IDEM_PREFETCH");
        assert_eq!(limit(BUDGET, 200, 0), 200, "an empty body costs nothing");
        assert_eq!(limit(u64::MAX, u16::MAX, 1), u16::MAX, "no overflow");
        assert_eq!(limit(0, 200, MIB), 1);
    }

    #[test]
    fn step_shrinks_at_once_and_grows_by_doubling() {
        assert_eq!(step(200, 1, 200), 1);
        assert_eq!(step(4, 100, 200), 8);
        assert_eq!(step(64, 100, 200), 64, "no grow short of a doubling");
        assert_eq!(step(128, 200, 200), 200, "the last step to the ceiling");
        assert_eq!(step(200, 200, 200), 200);
        assert_eq!(step(u16::MAX, u16::MAX, u16::MAX), u16::MAX);
    }

    /// Invariant: a session starts as small as the broker's largest message
    /// demands, and small bodies take it to IDEM_PREFETCH within ten batches
    /// (doubling each), where it stays.
    #[test]
    fn small_bodies_reach_the_ceiling_within_ten_batches() {
        let mut credit = Credit::new(BUDGET, 200);
        assert_eq!(credit.count(), 1);
        let seen = counts(&mut credit, &[200; 12]);
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 64, 128, 200, 200, 200, 200]);
        let mut tuned = Credit::new(BUDGET, 4000);
        let seen = counts(&mut tuned, &[200; 14]);
        assert_eq!(seen.iter().position(|&c| c == 4000), Some(12));
    }

    /// Invariant: one large body brings the count to what the budget allows
    /// at once; small bodies after it double it back batch by batch.
    #[test]
    fn a_large_body_shrinks_at_once_then_small_ones_grow_it_back() {
        let mut credit = Credit::new(BUDGET, 200);
        counts(&mut credit, &[200; 12]);
        assert_eq!(credit.observe(100 * MIB), 1);
        assert_eq!(credit.observe(16 * MIB), 1, "still remembered (50 MiB)");
        let seen = counts(&mut credit, &[200; 10]);
        assert_eq!(seen, [2, 4, 8, 16, 32, 64, 128, 200, 200, 200]);
    }

    /// Invariant: steady bodies keep a steady count (no consumer re-created
    /// per batch), and count × body stays within the budget.
    #[test]
    fn steady_bodies_keep_a_steady_count_within_the_budget() {
        let mut credit = Credit::new(BUDGET, 200);
        let seen = counts(&mut credit, &[16 * MIB; 8]);
        assert_eq!(seen, [1, 2, 4, 4, 4, 4, 4, 4]);
        let mut credit = Credit::new(BUDGET, 200);
        let seen = counts(&mut credit, &[100 * MIB; 4]);
        assert_eq!(seen, [1, 1, 1, 1]);
        let mut credit = Credit::new(BUDGET, 200);
        for size in [3 * MIB, 5 * MIB, 700 * 1024, 2 * MIB].repeat(20) {
            let count = credit.observe(size);
            assert!(u64::from(count) * size <= BUDGET, "{count} x {size}");
        }
    }

    /// A budget of IDEM_PREFETCH × the broker's largest message turns the
    /// controller off: the count is IDEM_PREFETCH from the start, whatever
    /// the bodies (idem's behaviour before the budget existed).
    #[test]
    fn a_budget_of_prefetch_times_the_largest_message_is_no_limit() {
        let mut credit = Credit::new(200 * BROKER_MAX_MESSAGE, 200);
        assert_eq!(credit.count(), 200);
        assert_eq!(counts(&mut credit, &[100 * MIB, 200]), [200, 200]);
    }
}
