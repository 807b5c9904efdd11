//! Why a message is refused, and the key's own bounds: shared by the
//! envelope's validation and the tenancy rules, which both refuse keys.

/// Scope used when the producer sets no `app_id`.
pub const DEFAULT_SCOPE: &str = "default";
/// Longest `message_id` / `app_id` accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// Why a message was quarantined instead of recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No `message_id` property (or an empty one).
    #[error("message has no message_id property; producers must set one (1..=255 bytes)")]
    MissingMessageId,
    /// A key part is too long or holds a NUL byte.
    #[error("{field} is invalid: {why}")]
    BadKey {
        /// `message_id`, `app_id`, `user_id` (when it is the scope),
        /// `reply_to` or `correlation_id`.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The producer may not write into the scope it names
    /// ([`ScopeAuth`](crate::ScopeAuth)): never charged.
    #[error("scope not allowed: {0}")]
    ScopeNotAllowed(String),
    /// The headers are past the bounds every reader applies (nesting, entries,
    /// bytes): checked by the inbox, which sees the headers; never charged.
    #[error("content header: {0}")]
    HeaderLimits(String),
    /// A content type other than JSON.
    #[error("content_type {0:?} is not application/json")]
    ContentType(String),
    /// The body exceeds the configured size limit. Quarantine keeps only a
    /// bounded prefix of such a body, with its size and SHA-256 (idem-store's
    /// `quarantine::MAX_KEPT_BODY`), never the whole.
    #[error("body is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Body size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The body is not JSON at all.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not a charge.
    #[error("body violates the charge schema: {0}")]
    Schema(String),
}

impl Rejection {
    /// A stable code for dashboards and queries.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingMessageId => "missing_message_id",
            Rejection::BadKey { .. } => "bad_key",
            Rejection::ScopeNotAllowed(_) => "scope_not_allowed",
            Rejection::HeaderLimits(_) => "header_limits",
            Rejection::ContentType(_) => "content_type",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::NotJson(_) => "not_json",
            Rejection::Schema(_) => "schema",
        }
    }
}

/// A key part (`message_id`, `app_id`, `user_id`) within [`MAX_KEY_LEN`] and
/// without NUL.
pub(crate) fn check_key<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Rejection> {
    let why = if value.len() > MAX_KEY_LEN {
        format!("{} bytes, over {MAX_KEY_LEN}", value.len())
    } else if value.contains('\0') {
        "contains a NUL byte".to_owned()
    } else {
        return Ok(value);
    };
    Err(Rejection::BadKey { field, why })
}
