//! Which dead rows a bulk retry takes (`idem outbox retry --error/--account/
//! --since/--until/--all`): the filter, built only from what an operator may
//! ask for, and the times its flags accept. The statements are in `bulk`.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use crate::outbox::OutboxState;

/// Which dead rows a bulk retry takes. Built by [`RetryFilter::new`] only,
/// which refuses a state no retry is for and a filter that names nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryFilter {
    /// Case-insensitive substring of the last error, as given.
    error: Option<String>,
    /// Only this account's rows.
    pub(super) account: Option<String>,
    /// Went dead at or after this time.
    pub(super) since: Option<DateTime<Utc>>,
    /// Went dead before this time.
    pub(super) until: Option<DateTime<Utc>>,
    /// The operator asked for every dead row.
    all: bool,
}

/// A filter no bulk retry runs with, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadFilter {
    /// Only dead rows are retried by hand.
    #[error("--state {state}: {why}; only dead rows are retried by hand")]
    State {
        /// The state asked for.
        state: &'static str,
        /// Why a retry means nothing there.
        why: &'static str,
    },
    /// No filter: every dead row would be retried.
    #[error(
        "no filter given: this would retry every dead row. Narrow it (--error, --account, \
         --since, --until; try --dry-run first) or say --all"
    )]
    MatchesEverything,
    /// The time range holds no instant.
    #[error("--since {since} is not before --until {until}: the range is empty")]
    EmptyRange {
        /// From.
        since: DateTime<Utc>,
        /// To.
        until: DateTime<Utc>,
    },
    /// An empty text matches every row.
    #[error("--error and --account must not be empty (an empty text matches every row)")]
    EmptyText,
}

impl RetryFilter {
    /// The filter of rows in `state` (which must be `dead`) whose last error
    /// contains `error` (case-insensitive), of `account`, that went dead in
    /// `[since, until)`. With none of those, `all` must say so.
    pub fn new(
        state: OutboxState,
        error: Option<String>,
        account: Option<String>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        all: bool,
    ) -> Result<Self, BadFilter> {
        if let Some(why) = no_retry_for(state) {
            return Err(BadFilter::State {
                state: state.as_str(),
                why,
            });
        }
        if [&error, &account].iter().any(|t| t.as_deref() == Some("")) {
            return Err(BadFilter::EmptyText);
        }
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Err(BadFilter::EmptyRange { since, until });
        }
        let narrowed = error.is_some() || account.is_some() || since.is_some() || until.is_some();
        if !narrowed && !all {
            return Err(BadFilter::MatchesEverything);
        }
        Ok(Self {
            error,
            account,
            since,
            until,
            all,
        })
    }

    /// The filter as the audit row and `--json` record it.
    pub fn describe(&self) -> serde_json::Value {
        json!({
            "state": "dead", "error": self.error, "account": self.account,
            "since": self.since, "until": self.until, "all": self.all,
        })
    }

    /// The `ILIKE` pattern of the error text: its own `%`, `_` and `\` are
    /// matched literally.
    pub(super) fn pattern(&self) -> Option<String> {
        self.error.as_deref().map(contains_pattern)
    }
}

/// The `ILIKE` pattern "contains `text`", its own `%`, `_` and `\` matched
/// literally. Shared by the bulk retry's filter and the list pages'.
pub(crate) fn contains_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Why a row in `state` is not retried by hand (`None`: it is).
fn no_retry_for(state: OutboxState) -> Option<&'static str> {
    match state {
        OutboxState::Dead => None,
        OutboxState::Pending | OutboxState::Unknown => Some(
            "the dispatcher retries these already (an unknown row is resolved by lookup or a \
             keyed retry first); to settle one by hand, `idem outbox resolve`",
        ),
        OutboxState::InFlight => Some("a replica holds their lease and is calling the provider"),
        OutboxState::Succeeded => {
            Some("they are charged already: a retry would ask to charge again")
        }
        OutboxState::Declined => Some(
            "the provider declined them, and answers a retry under the same key alike; \
             a new charge needs a new message",
        ),
    }
}

/// A time as the filter flags take it: RFC 3339, or an age (`<n>s|m|h|d`)
/// before `now`.
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || format!("{s:?}: expected RFC 3339 (2026-12-01T10:00:00Z) or an age (90m, 2h, 1d)");
    let (n, unit) = [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
        .into_iter()
        .find_map(|(suffix, secs)| s.strip_suffix(suffix).map(|n| (n, secs)))
        .ok_or_else(bad)?;
    let age = n
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .and_then(|n| n.checked_mul(unit))
        .and_then(TimeDelta::try_seconds)
        .ok_or_else(bad)?;
    now.checked_sub_signed(age).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Option<DateTime<Utc>> {
        Some(s.parse().expect("a time"))
    }

    #[test]
    fn a_filter_names_what_it_retries() {
        let dead = OutboxState::Dead;
        assert_eq!(
            RetryFilter::new(dead, None, None, None, None, false),
            Err(BadFilter::MatchesEverything)
        );
        assert!(RetryFilter::new(dead, None, None, None, None, true).is_ok());
        assert!(RetryFilter::new(dead, Some("429".into()), None, None, None, false).is_ok());
        assert_eq!(
            RetryFilter::new(dead, Some(String::new()), None, None, None, true),
            Err(BadFilter::EmptyText)
        );
        let (t0, t1) = (at("2026-12-01T10:00:00Z"), at("2026-12-01T11:00:00Z"));
        assert!(RetryFilter::new(dead, None, None, t0, t1, false).is_ok());
        assert!(matches!(
            RetryFilter::new(dead, None, None, t1, t0, false),
            Err(BadFilter::EmptyRange { .. })
        ));
    }

    #[test]
    fn only_dead_rows_are_retried_by_hand() {
        for state in OutboxState::ALL {
            let made = RetryFilter::new(state, None, None, None, None, true);
            assert_eq!(made.is_ok(), state == OutboxState::Dead, "{state:?}");
            if let Err(e) = made {
                let text = e.to_string();
                assert!(
                    text.contains(state.as_str()) && text.contains("only dead"),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn times_are_rfc3339_or_an_age() {
        let now = at("2026-12-01T12:00:00Z").expect("a time");
        assert_eq!(
            parse_time("2026-12-01T10:00:00+01:00", now),
            Ok(at("2026-12-01T09:00:00Z").expect("a time"))
        );
        assert_eq!(
            parse_time("90m", now),
            Ok(at("2026-12-01T10:30:00Z").expect("a time"))
        );
        assert_eq!(
            parse_time("1d", now),
            Ok(at("2026-11-30T12:00:00Z").expect("a time"))
        );
        for bad in ["", "h", "-2h", "2w", "yesterday", "2€", "99999999999999d"] {
            assert!(parse_time(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_error_text_is_matched_literally() {
        let f = RetryFilter::new(
            OutboxState::Dead,
            Some(r"50%_off\x".into()),
            None,
            None,
            None,
            false,
        )
        .expect("a filter");
        assert_eq!(f.pattern().as_deref(), Some(r"%50\%\_off\\x%"));
        assert_eq!(f.describe()["error"], r"50%_off\x");
    }
}
