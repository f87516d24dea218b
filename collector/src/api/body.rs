//! Reading request bodies from clients that may be slow or hostile: at most a size limit,
//! and only while the client keeps up. The next bytes must come before the body so far
//! falls behind the minimum upload rate after a grace (`--body-timeout`), so a client
//! that sends nothing, or drips a few bytes at a time whatever length it declared, is
//! answered 408 about one grace after it started and gives its connection and its slot
//! back; a client at the minimum rate or faster is never cut.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::config::body_deadline;
use crate::error::ApiError;

/// The declared body length, refused (413) above `limit` before anything is read.
pub(crate) fn declared_length(headers: &HeaderMap, limit: usize) -> Result<Option<u64>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    Ok(declared)
}

/// Reads `body` (at most `limit` bytes) frame by frame into `take`, paced as above.
pub(crate) async fn read_paced(
    body: Body,
    limit: usize,
    grace: Duration,
    min_rate: u64,
    mut take: impl FnMut(&[u8]),
) -> Result<(), ApiError> {
    let start = tokio::time::Instant::now();
    let mut body = Limited::new(body, limit);
    let mut received = 0u64;
    loop {
        // A deadline past what the clock holds is no deadline (never a panic).
        let due = start
            .checked_add(body_deadline(grace, min_rate, received))
            .unwrap_or_else(|| start + crate::config::MAX_DURATION);
        let frame = match tokio::time::timeout_at(due, body.frame()).await {
            Err(_) => return Err(ApiError::Timeout),
            Ok(None) => return Ok(()),
            Ok(Some(frame)) => frame.map_err(|inner| {
                if inner.downcast_ref::<LengthLimitError>().is_some() {
                    ApiError::TooLarge(limit)
                } else {
                    ApiError::BadRequest(format!("the request body could not be read: {inner}"))
                }
            })?,
        };
        // Trailers, if any, are ignored.
        if let Ok(data) = frame.into_data() {
            received += data.len() as u64;
            take(&data);
        }
    }
}
