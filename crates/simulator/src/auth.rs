//! The API key (`--api-key`): when set, every `/v1` request must carry
//! `Authorization: Bearer <key>`, or gets `401` without being processed (not
//! counted, no dice rolled). `/_sim/*` and `/healthz` stay open.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::debug;

use crate::Simulator;

/// The key clients must present. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// Whether `authorization` (the header's value) presents this key.
    fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        // Compare every byte, so the time taken does not tell how much matched.
        let expected = self.0.as_bytes();
        presented.len() == expected.len()
            && presented
                .iter()
                .zip(expected)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

impl FromStr for ApiKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("the API key must not be empty".to_owned());
        }
        Ok(Self(s.into()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Middleware of the `/v1` routes: pass requests that present the key.
pub(crate) async fn require(
    State(sim): State<Simulator>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &sim.api_key else {
        return next.run(request).await;
    };
    let authorization = request.headers().get(header::AUTHORIZATION);
    if key.admits(authorization.map(|h| h.as_bytes())) {
        return next.run(request).await;
    }
    debug!(
        path = %request.uri().path(),
        presented = authorization.is_some(),
        "401: missing or wrong API key"
    );
    let body = r#"{"error":{"type":"authentication_error","message":"missing or wrong API key"}}"#;
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::WWW_AUTHENTICATE, "Bearer"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_is_admitted() {
        let key: ApiKey = "k-123".parse().expect("valid");
        assert!(key.admits(Some(b"Bearer k-123")));
        for wrong in [
            &b"Bearer k-124"[..],
            b"Bearer k-12",
            b"Bearer k-1234",
            b"k-123",
            b"bearer k-123",
        ] {
            assert!(
                !key.admits(Some(wrong)),
                "{}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(!key.admits(None));
        assert!(!format!("{key:?}").contains("k-123"));
        assert!("".parse::<ApiKey>().is_err());
    }
}
