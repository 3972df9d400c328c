//! The one error type of the crate, and its mapping to the contract's HTTP errors.
//!
//! Every failure a request can meet ends up as an [`Error`]. This module
//! says what each one is to a client ([`Error::status`], [`Error::code`],
//! [`Error::retry_after_secs`]); `http::error_response` is the one place
//! that renders it.
//! 5xx bodies are opaque: the cause chain only goes to the log.

use std::time::Duration;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the request body must be a JSON object")]
    InvalidJson,
    #[error("{0}")]
    InvalidMessage(&'static str),
    #[error("sessionId must be a UUID")]
    InvalidSessionId,
    #[error("{0}")]
    InvalidQuery(&'static str),
    #[error("the Idempotency-Key header must be 16 to 255 printable ASCII characters (use a UUID)")]
    InvalidIdempotencyKey,
    #[error("no conversation with this sessionId")]
    SessionNotFound,
    #[error("this route or method is not served here")]
    NotFound,
    #[error("the request body is larger than {} KiB", .limit / 1024)]
    PayloadTooLarge { limit: usize },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("too many requests; retry in {} s", .retry_after.as_millis().div_ceil(1000).max(1))]
    RateLimited { retry_after: Duration },
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed; retry shortly")]
    RequestInProgress,
    /// The database cannot be reached (down, failing over, overloaded).
    #[error("the service is temporarily unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else; the cause is logged, never shown.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidJson
            | Error::InvalidMessage(_)
            | Error::InvalidSessionId
            | Error::InvalidQuery(_)
            | Error::InvalidIdempotencyKey => 400,
            Error::SessionNotFound | Error::NotFound => 404,
            Error::RequestInProgress => 409,
            Error::PayloadTooLarge { .. } => 413,
            Error::UnsupportedMediaType => 415,
            Error::IdempotencyKeyReused => 422,
            Error::RateLimited { .. } => 429,
            Error::Unavailable(_) => 503,
            Error::Internal(_) => 500,
        }
    }

    /// The stable machine-readable code of the contract.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidJson => "invalid_json",
            Error::InvalidMessage(_) => "invalid_message",
            Error::InvalidSessionId => "invalid_session_id",
            Error::InvalidQuery(_) => "invalid_query",
            Error::InvalidIdempotencyKey => "invalid_idempotency_key",
            Error::SessionNotFound => "session_not_found",
            Error::NotFound => "not_found",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::RateLimited { .. } => "rate_limited",
            Error::IdempotencyKeyReused => "idempotency_key_reused",
            Error::RequestInProgress => "request_in_progress",
            Error::Unavailable(_) => "service_unavailable",
            Error::Internal(_) => "internal_error",
        }
    }

    /// Seconds for a `Retry-After` header, where the status calls for one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            // Whole seconds, rounded up: never an invitation to retry too early.
            Error::RateLimited { retry_after } => {
                Some(retry_after.as_millis().div_ceil(1000).max(1) as u64)
            }
            Error::Unavailable(_) => Some(2),
            Error::RequestInProgress => Some(1),
            _ => None,
        }
    }

    pub fn internal(e: impl Into<BoxError>) -> Self {
        Error::Internal(e.into())
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_unavailable(&e) {
            Error::Unavailable(e.into())
        } else {
            Error::Internal(e.into())
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match e {
            PoolError::Backend(e) => e.into(),
            // No connection could be had in time: the database is down or saturated.
            PoolError::Timeout(_) | PoolError::Closed | PoolError::NoRuntimeSpecified => {
                Error::Unavailable(e.into())
            }
            PoolError::PostCreateHook(_) => Error::Unavailable(e.into()),
        }
    }
}

/// Whether a PostgreSQL error means "cannot reach or use the database right
/// now" (503) rather than a bug (500).
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        // Not reported by the server: I/O, TLS, closed connection, timeout.
        return true;
    };
    let code = db.code().code();
    // 08: connection exception; 53: insufficient resources; 57P0x: shutdown /
    // cannot connect now; 57014: statement timeout; 40001/40P01 never reach
    // here as statements are single and retried by the client.
    code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") || code == "57014"
}
