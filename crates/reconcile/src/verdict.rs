//! What the reconciler decides for one reference, as a pure function of our
//! row and the provider's charges for it ([`judge`]); the reconciler then
//! applies the [`Verdict`]. Only evidence that cannot be read two ways is
//! acted on; the rest is reported for a person.

use chrono::{DateTime, TimeDelta, Utc};
use idem_charge::Charge;
use idem_store::OutboxState;
use idem_store::reconcile::RowView;

use crate::report::{Finding, FindingKind};

/// Clock skew allowed between our database and the provider when deciding
/// that a row's charge must be inside a window.
pub(crate) const SKEW: TimeDelta = TimeDelta::seconds(60);

/// Which of a reference's charges is kept when there are several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepRule {
    /// The one our row recorded: the answer our dispatcher acted on.
    Recorded,
    /// The first created (then the smallest id): the one a lookup by
    /// reference resolves to as well.
    FirstCreated,
}

impl KeepRule {
    /// The rule in words, as the compensation's evidence records it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeepRule::Recorded => "keep the charge our row recorded",
            KeepRule::FirstCreated => "keep the first created",
        }
    }
}

/// What to do about one reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<'a> {
    /// The books agree, or it is too early to tell.
    Nothing,
    /// A replica holds the row's lease and may be charging right now: the
    /// next run looks again.
    InFlight,
    /// A mismatch no rule settles safely: reported, nothing touched.
    Report(Finding),
    /// One charge is the reference's: settle the row with it if need be,
    /// refund the others.
    Keep(Keep<'a>),
    /// A `declined` row the provider holds charges for (an earlier attempt
    /// did charge, without idempotency keys, or a row resolved by hand):
    /// the producer was told no charge, so every charge is refunded and the
    /// row stays declined.
    RefundDeclined {
        /// Our row.
        row: &'a RowView,
        /// The reference's charges, all to refund.
        charges: &'a [Charge],
    },
    /// An `unknown` row whose charge the provider does not list, quiet since
    /// before `quiet_since`: back to `pending` (the statement re-checks both).
    Requeue {
        /// Our row.
        row: &'a RowView,
        /// Untouched since before this.
        quiet_since: DateTime<Utc>,
    },
}

/// A reference with a charge we asked for: `kept` is the one that stands;
/// settle `row` with it when `settle` (the row is not succeeded yet), and
/// refund every charge in `refund`.
#[derive(Debug, Clone, PartialEq)]
pub struct Keep<'a> {
    /// Our row.
    pub row: &'a RowView,
    /// All the reference's charges (the compensation's evidence).
    pub charges: &'a [Charge],
    /// The charge kept.
    pub kept: &'a Charge,
    /// Why that one.
    pub rule: KeepRule,
    /// Whether the row is to be settled as succeeded with `kept`.
    pub settle: bool,
    /// The extra charges, to refund.
    pub refund: Vec<&'a Charge>,
}

/// The verdict on `reference`: our `row` for it (if any) against the
/// provider's succeeded `charges` under it. Empty `charges` means an open
/// window's listing (one up to `now`, the run's start) had none for our row;
/// only then do `now` and `grace` (how long an `unknown` row must have been
/// left alone) matter.
pub fn judge<'a>(
    reference: &str,
    row: Option<&'a RowView>,
    charges: &'a [Charge],
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> Verdict<'a> {
    let finding = |kind, detail: &str| report(kind, reference, row, ids(charges), detail);
    let Some(first) = charges.first() else {
        return match row {
            Some(row) => judge_unlisted(reference, row, now, grace),
            None => Verdict::Nothing,
        };
    };
    let Some(row) = row else {
        return finding(
            FindingKind::ForeignCharge,
            "no outbox row has this reference: never asked for by us (or removed by retention)",
        );
    };
    match row.state {
        OutboxState::InFlight => return Verdict::InFlight,
        OutboxState::Declined => return Verdict::RefundDeclined { row, charges },
        _ => {}
    }
    let (kept, rule) = match row.provider_charge_id.as_deref() {
        Some(id) => match charges.iter().find(|c| c.id == id) {
            Some(kept) => (kept, KeepRule::Recorded),
            None => {
                return finding(
                    FindingKind::ChargeMismatch,
                    &format!("our row recorded charge {id}, which the provider does not list here"),
                );
            }
        },
        // First created wins: the one a lookup resolves to as well.
        None => {
            let oldest = charges
                .iter()
                .min_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
            (oldest.unwrap_or(first), KeepRule::FirstCreated)
        }
    };
    Verdict::Keep(Keep {
        row,
        charges,
        kept,
        rule,
        settle: row.state != OutboxState::Succeeded,
        refund: charges.iter().filter(|c| c.id != kept.id).collect(),
    })
}

/// Our row, of a reference the open window's listing lacks: a succeeded row
/// settled well before the run (beyond clock skew) should have been listed;
/// an `unknown` row quiet for longer than `grace` caused no charge.
fn judge_unlisted<'a>(
    reference: &str,
    row: &'a RowView,
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> Verdict<'a> {
    // A grace too long to subtract (a hand-built config) means never quiet
    // enough: the safe side, as a requeue may send a charge again.
    let quiet_since = now
        .checked_sub_signed(grace)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    match row.state {
        OutboxState::Succeeded if row.settled_at.is_some_and(|t| t < now - SKEW) => report(
            FindingKind::MissingAtProvider,
            reference,
            Some(row),
            row.provider_charge_id.clone().into_iter().collect(),
            "our row is succeeded, but the provider lists no charge for it",
        ),
        OutboxState::Unknown if row.updated_at < quiet_since => {
            Verdict::Requeue { row, quiet_since }
        }
        _ => Verdict::Nothing,
    }
}

/// A finding for `reference`: reported, nothing touched.
fn report(
    kind: FindingKind,
    reference: &str,
    row: Option<&RowView>,
    charge_ids: Vec<String>,
    detail: &str,
) -> Verdict<'static> {
    Verdict::Report(Finding {
        kind,
        reference_id: reference.to_owned(),
        outbox_id: row.map(|r| r.id),
        charge_ids,
        detail: detail.to_owned(),
    })
}

fn ids(charges: &[Charge]) -> Vec<String> {
    charges.iter().map(|c| c.id.clone()).collect()
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
