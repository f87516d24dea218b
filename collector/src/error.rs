//! The one error type of the service. Every failure a request can meet is a variant
//! here; [`ApiError::status`] and [`ApiError::code`] decide what the client sees
//! (`{"error": "...", "code": "snake_case"}`), and the messages carry no secrets and
//! no content.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Errors of the collector, for HTTP answers and for the command line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request body is not a valid bundle, or its signature does not verify.
    #[error("malformed bundle: {0}")]
    MalformedBundle(String),
    /// The request is malformed (bad JSON, missing fields, bad enrollment record).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The enrollment token is unknown, expired or used up.
    #[error("the enrollment token is unknown, expired or used up")]
    BadToken,
    /// The bundle's device is not enrolled.
    #[error("device {0} is not enrolled")]
    UnknownDevice(String),
    /// The bundle's device was revoked.
    #[error("device {0} is revoked")]
    RevokedDevice(String),
    /// The bundle claims an enrolled device id but is signed by another key.
    #[error("device {0} is enrolled with another key")]
    WrongDeviceKey(String),
    /// The device id is already enrolled with another key.
    #[error("device {0} is already enrolled with another key")]
    EnrolledWithOtherKey(String),
    /// Another bundle already holds this chain position, or the bundle does not link
    /// to the stored previous bundle.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The body exceeds the size limit.
    #[error("the bundle is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// The request body did not arrive within its deadline.
    #[error("the request body did not arrive in time")]
    Timeout,
    /// Too many requests in flight; retry later.
    #[error("too many uploads in flight; retry later")]
    Busy,
    /// The state database or the object store is unavailable; retry later.
    #[error("storage is unavailable; retry later ({0})")]
    Unavailable(String),
    /// A local failure (configuration, files) outside a request.
    #[error("{0}")]
    Operational(String),
    /// Stored data failed an integrity check.
    #[error("integrity failure: {0}")]
    Integrity(String),
    /// Unknown route.
    #[error("not found")]
    NotFound,
}

/// Seconds a client should wait after a 429 or 503.
pub const RETRY_AFTER_SECS: u64 = 2;

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedBundle(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BadToken => StatusCode::UNAUTHORIZED,
            ApiError::UnknownDevice(_)
            | ApiError::RevokedDevice(_)
            | ApiError::WrongDeviceKey(_) => StatusCode::FORBIDDEN,
            ApiError::EnrolledWithOtherKey(_) | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Busy => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Operational(_) | ApiError::Integrity(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// The stable snake_case code of this error (also the `reason` label in metrics).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedBundle(_) => "malformed_bundle",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::BadToken => "bad_token",
            ApiError::UnknownDevice(_) => "unknown_device",
            ApiError::RevokedDevice(_) => "revoked_device",
            ApiError::WrongDeviceKey(_) => "wrong_device_key",
            ApiError::EnrolledWithOtherKey(_) => "enrolled_with_other_key",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Timeout => "timeout",
            ApiError::Busy => "busy",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Operational(_) => "internal",
            ApiError::Integrity(_) => "integrity",
            ApiError::NotFound => "not_found",
        }
    }

    /// The process exit code for this error on the command line.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApiError::Integrity(_) => 3,
            ApiError::BadRequest(_) => 2,
            _ => 1,
        }
    }
}

/// A database error as text, without query text or bound values.
pub fn db_error_text(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => format!("database error {}", d.code().unwrap_or_default()),
        sqlx::Error::PoolTimedOut => "the database pool timed out".to_string(),
        sqlx::Error::Io(io) => format!("database I/O error: {io}"),
        other => format!("database error: {other}"),
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Unavailable(db_error_text(&e))
    }
}

/// 503s come in bursts (every upload while the store is down): their log lines are
/// paced.
static UNAVAILABLE_LOG: crate::api::throttle::Throttle = crate::api::throttle::Throttle::new();

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // The detail of a server-side failure (an S3 or database error: endpoints,
        // buckets, key ids, paths) is for the operator's log, not for whoever called.
        let text = match &self {
            ApiError::Unavailable(_) => {
                if let Some(skipped) = UNAVAILABLE_LOG.allow() {
                    tracing::warn!(error = %self, skipped, "request answered 503");
                }
                "storage is unavailable; retry later".to_string()
            }
            e if status.is_server_error() => {
                tracing::error!(code = e.code(), error = %e, "request failed");
                "the collector failed; its log says why".to_string()
            }
            // Answered as an unknown device: whoever sends a bundle signed by any key
            // learns nothing about which ids are enrolled (enrollment hides it too).
            // The log and the metrics tell the two apart.
            ApiError::WrongDeviceKey(id) => ApiError::UnknownDevice(id.clone()).to_string(),
            e => e.to_string(),
        };
        let code = match &self {
            ApiError::WrongDeviceKey(_) => "unknown_device",
            e => e.code(),
        };
        let body = serde_json::json!({ "error": text, "code": code });
        let mut resp = (status, axum::Json(body)).into_response();
        if matches!(self, ApiError::Busy | ApiError::Unavailable(_)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if matches!(self, ApiError::TooLarge(_) | ApiError::Timeout) {
            // The body was not read (whole): this connection cannot carry another
            // request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_formats_and_maps_to_a_status_and_code() {
        let all = [
            ApiError::MalformedBundle("truncated".into()),
            ApiError::BadRequest("x".into()),
            ApiError::BadToken,
            ApiError::UnknownDevice("00".into()),
            ApiError::RevokedDevice("00".into()),
            ApiError::WrongDeviceKey("00".into()),
            ApiError::EnrolledWithOtherKey("00".into()),
            ApiError::Conflict("x".into()),
            ApiError::TooLarge(10),
            ApiError::Timeout,
            ApiError::Busy,
            ApiError::Unavailable("x".into()),
            ApiError::Operational("x".into()),
            ApiError::Integrity("x".into()),
            ApiError::NotFound,
        ];
        let mut codes = std::collections::BTreeSet::new();
        for e in all {
            assert!(!e.to_string().is_empty());
            assert!(e
                .code()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(codes.insert(e.code()), "codes are distinct");
            let status = e.status();
            let retry = matches!(e, ApiError::Busy | ApiError::Unavailable(_));
            let resp = e.into_response();
            assert_eq!(resp.status(), status);
            assert_eq!(resp.headers().contains_key(header::RETRY_AFTER), retry);
        }
    }
}
