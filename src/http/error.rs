//! [`ApiError`]: every refusal on both listeners, with its status code, JSON body
//! `{"error": code, "message": text}` and headers (Retry-After, WWW-Authenticate).
//! Two non-200 answers are not refusals and not built here: the `/readyz` 503 (the
//! readiness document, naming what is missing) and, on the admin listener, axum's
//! empty 405 for a wrong method.
//!
//! Internal causes (database errors, key fetch failures) are logged with their chain
//! and never sent to the client. No variant carries request body text, so no error
//! body or log line can echo a token.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::domain::alert::ParseError;
use crate::signature::SignatureError;
use crate::store::StoreError;
use crate::support::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unknown scanner {0:?}")]
    UnknownScanner(String),
    #[error("no route for this path")]
    NotFound,
    #[error("method not allowed (alerts are POSTed)")]
    MethodNotAllowed,
    #[error("missing header {0}")]
    MissingHeader(String),
    #[error("header {0} is not valid ASCII")]
    MalformedHeader(String),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("unknown key identifier")]
    UnknownKey,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("could not read the request body")]
    BodyRead,
    #[error("the request body was not received in time")]
    BodyTimeout,
    /// `--request-timeout` passed. `rolled_back`: the database gave up first and rolled
    /// back, so nothing was recorded; otherwise the answer was not awaited any longer, and
    /// only a commit already under way can have landed (a resend is then answered from it).
    #[error("{}", timeout_message(*rolled_back))]
    Timeout {
        retry_after: Duration,
        rolled_back: bool,
    },
    #[error("too many deliveries in progress; nothing was recorded, try again later")]
    Overloaded { retry_after: Duration },
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// `unconfirmed`: the keys are healthy (the last fetch worked) and the id is not
    /// among them; only the refetch interval kept revoker from asking again. Most likely
    /// a forgery, possibly a rotation too fresh to see: 503, so a genuine scanner's retry
    /// finds it, but counted as a rejected request, not a failed delivery.
    #[error("scanner keys are unavailable; try again later")]
    KeysUnavailable {
        retry_after: Duration,
        unconfirmed: bool,
    },
    /// Said by what the database did ([`database_message`], [`ApiError::code`]): it takes
    /// no writes (`database_read_only`), answered what revoker cannot read
    /// (`database_corrupt`), is behind a pooler revoker was not told about
    /// (`database_pooler`), or could not be reached or failed (`database_unavailable`).
    #[error("{}", database_message(source))]
    DatabaseUnavailable {
        #[source]
        source: StoreError,
        retry_after: Duration,
    },
    /// Admin listener: `--admin-token` is set and the request does not carry it.
    #[error("this endpoint needs Authorization: Bearer <admin token>")]
    Unauthorized,
    /// Token Revocation API: no valid `Authorization` token.
    #[error("this endpoint needs Authorization: <revocation API token>")]
    RevocationUnauthorized,
    /// Token Revocation API: a body or a type it does not take (GitLab does not retry).
    #[error("{0}")]
    InvalidRequest(String),
    /// Token Revocation API: what would be a 503 elsewhere, as the 429 GitLab retries.
    #[error("{why}")]
    RetryLater { retry_after: Duration, why: String },
    /// Admin listener: `/api/stats` could not read the database.
    #[error("cannot read stats from the database")]
    StatsUnavailable(#[source] StoreError),
}

fn database_message(source: &StoreError) -> &'static str {
    match source {
        StoreError::ReadOnly => {
            "the database takes no writes (a standby not yet promoted, or set read-only); \
             nothing was recorded; try again later"
        }
        StoreError::Corrupt(_) => {
            "the database answered with data revoker cannot read; try again later: a body is \
             recorded once, so resending it is safe"
        }
        StoreError::Pooler => {
            "the database is reached through a connection pooler revoker was not told about; \
             nothing was recorded; try again later"
        }
        _ => {
            "database is unavailable; try again later: a body is recorded once, so resending \
             it is safe"
        }
    }
}

fn timeout_message(rolled_back: bool) -> &'static str {
    if rolled_back {
        "the delivery could not be processed in time; nothing was recorded (the database \
         rolled it back, or it was still waiting for its turn to write); try again later"
    } else {
        "the delivery could not be processed in time; try again later: if the database \
         finished it after all, the same body is answered from that report, never recorded twice"
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::UnknownScanner(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::MissingHeader(_)
            | ApiError::MalformedHeader(_)
            | ApiError::Signature(_)
            | ApiError::UnknownKey
            | ApiError::Unauthorized
            | ApiError::RevocationUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::RetryLater { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyRead | ApiError::Parse(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Timeout { .. } | ApiError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::KeysUnavailable { .. }
            | ApiError::DatabaseUnavailable { .. }
            | ApiError::StatsUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether this refusal of the alert endpoint came before the request proved to be
    /// the scanner's: anyone can cause it, so it is counted in
    /// `revoker_rejected_requests_total` and logged at debug, never as a delivery. A 503
    /// for key trouble is not one: the request may be genuine. (The Token Revocation API
    /// checks its caller first: only its `RevocationUnauthorized` is such a refusal.)
    pub fn is_unverified(&self) -> bool {
        matches!(
            self,
            ApiError::UnknownScanner(_)
                | ApiError::MissingHeader(_)
                | ApiError::MalformedHeader(_)
                | ApiError::Signature(_)
                | ApiError::UnknownKey
                | ApiError::PayloadTooLarge { .. }
                | ApiError::BodyRead
                | ApiError::BodyTimeout
                | ApiError::KeysUnavailable {
                    unconfirmed: true,
                    ..
                }
        )
    }

    /// Why a request was rejected ([`Self::is_unverified`]), for the metric's label.
    pub fn rejection_reason(&self) -> &'static str {
        match self {
            ApiError::KeysUnavailable {
                unconfirmed: true, ..
            } => "unknown_key_unconfirmed",
            e => e.code(),
        }
    }

    /// The `Retry-After` this answer carries, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::KeysUnavailable { retry_after, .. }
            | ApiError::RetryLater { retry_after, .. }
            | ApiError::Timeout { retry_after, .. }
            | ApiError::Overloaded { retry_after }
            | ApiError::DatabaseUnavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// A short machine-readable code for the error body and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::UnknownScanner(_) => "unknown_scanner",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::MissingHeader(_) | ApiError::MalformedHeader(_) => "bad_signature_header",
            ApiError::Signature(SignatureError::Mismatch) => "bad_signature",
            ApiError::Signature(_) => "bad_signature_header",
            ApiError::UnknownKey => "unknown_key",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BodyRead => "body_read_error",
            ApiError::BodyTimeout => "body_timeout",
            ApiError::Timeout { .. } => "timeout",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Parse(_) => "bad_body",
            ApiError::KeysUnavailable { .. } => "keys_unavailable",
            ApiError::DatabaseUnavailable { source, .. } | ApiError::StatsUnavailable(source) => {
                match source {
                    StoreError::ReadOnly => "database_read_only",
                    StoreError::Corrupt(_) => "database_corrupt",
                    StoreError::Pooler => "database_pooler",
                    _ => "database_unavailable",
                }
            }
            ApiError::Unauthorized | ApiError::RevocationUnauthorized => "unauthorized",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::RetryLater { .. } => "retry_later",
        }
    }
}

impl ApiError {
    /// What a store call's failure answers: past its deadline the database rolled the
    /// work back (`timeout`); anything else says what the database did (503).
    pub fn from_store(source: StoreError, retry_after: Duration) -> Self {
        match source {
            StoreError::DeadlineExceeded => ApiError::Timeout {
                retry_after,
                rolled_back: true,
            },
            source => ApiError::DatabaseUnavailable {
                source,
                retry_after,
            },
        }
    }

    /// The chain of the internal error behind this answer, for the log (never sent).
    pub fn cause(&self) -> Option<String> {
        match self {
            ApiError::DatabaseUnavailable { source, .. } => Some(error_chain(source)),
            ApiError::StatsUnavailable(source) => Some(error_chain(source)),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // The webhook and the Revocation API log their refusals themselves (one WARN
        // with status, reason, cause and duration); the admin listener's are logged here.
        if let ApiError::StatsUnavailable(source) = &self {
            tracing::warn!(
                status = status.as_u16(),
                error = self.code(),
                cause = %error_chain(source),
                "cannot read stats"
            );
        }
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        let mut resp = (status, Json(body)).into_response();
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs().max(1);
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs.to_string()).expect("digits are a valid header"),
            );
        }
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 503 for the database says which trouble it is, in its code and message.
    #[test]
    fn database_refusals_have_a_code_each() {
        let refusal = |source| ApiError::DatabaseUnavailable {
            source,
            retry_after: Duration::from_secs(7),
        };
        for (source, code, says) in [
            (
                StoreError::ReadOnly,
                "database_read_only",
                "takes no writes",
            ),
            (
                StoreError::Corrupt("x".into()),
                "database_corrupt",
                "cannot read",
            ),
            (StoreError::Pooler, "database_pooler", "pooler"),
            (
                StoreError::Database(sqlx::Error::PoolTimedOut),
                "database_unavailable",
                "unavailable",
            ),
        ] {
            let e = refusal(source);
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.code(), code);
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}
