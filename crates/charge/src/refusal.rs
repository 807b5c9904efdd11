//! Answers that are about us, not about the charge: the provider refused to
//! process the call at all (credentials, endpoint, rate) or could not be
//! reached. Retrying the same row cannot help until the provider accepts us
//! again, so the dispatcher pauses for the whole provider (its circuit
//! breaker) instead of spending the row's attempts.

/// Why the provider refused a call before processing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `401`: missing, wrong or rotated API key.
    Unauthorized,
    /// `403`: the key lacks the permission (or the account is locked).
    Forbidden,
    /// `404` on the endpoint itself: a wrong base URL or path.
    NotFound,
    /// `429`: rate limited.
    Throttled,
    /// The connection was refused: nothing was sent.
    Unreachable,
}

impl Refusal {
    /// Every refusal, for metrics registered at zero.
    pub const ALL: [Refusal; 5] = [
        Refusal::Unauthorized,
        Refusal::Forbidden,
        Refusal::NotFound,
        Refusal::Throttled,
        Refusal::Unreachable,
    ];

    /// The refusal an HTTP status means, if any.
    pub fn of_status(status: u16) -> Option<Self> {
        match status {
            401 => Some(Refusal::Unauthorized),
            403 => Some(Refusal::Forbidden),
            404 => Some(Refusal::NotFound),
            429 => Some(Refusal::Throttled),
            _ => None,
        }
    }

    /// The `status` label of the refusal counter: the HTTP status, or
    /// `unreachable`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "401",
            Refusal::Forbidden => "403",
            Refusal::NotFound => "404",
            Refusal::Throttled => "429",
            Refusal::Unreachable => "unreachable",
        }
    }

    /// Whether one refusal of this kind is enough to stop calling: a refused
    /// key or a missing endpoint refuses every call alike, while a single
    /// `429` or refused connection is ordinary and only a sustained run of
    /// them says the provider is away.
    pub fn opens_at_once(self) -> bool {
        matches!(
            self,
            Refusal::Unauthorized | Refusal::Forbidden | Refusal::NotFound
        )
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unreachable => f.write_str("connection refused"),
            other => f.write_str(other.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_about_us_are_refusals_and_others_are_not() {
        assert_eq!(Refusal::of_status(401), Some(Refusal::Unauthorized));
        assert_eq!(Refusal::of_status(403), Some(Refusal::Forbidden));
        assert_eq!(Refusal::of_status(404), Some(Refusal::NotFound));
        assert_eq!(Refusal::of_status(429), Some(Refusal::Throttled));
        for status in [200, 201, 400, 402, 409, 422, 500, 503] {
            assert_eq!(Refusal::of_status(status), None, "{status}");
        }
        assert!(Refusal::Unauthorized.opens_at_once());
        assert!(!Refusal::Throttled.opens_at_once());
        assert!(!Refusal::Unreachable.opens_at_once());
    }
}
