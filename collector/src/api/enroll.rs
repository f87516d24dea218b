//! `POST /v1/enroll`: a device presents a token and its self-signed enrollment record.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;

use super::AppState;
use crate::config::MAX_ENROLL_BYTES;
use crate::db::Enrolled;
use crate::error::ApiError;
use capvault_format::EnrollmentRecord;

#[derive(Deserialize)]
struct EnrollRequest {
    token: String,
    record: serde_json::Value,
}

/// 201 new device; 200 same device and key again (a token this collector issued, no
/// use consumed); 401 unknown token, or expired or used-up token for anything but that
/// re-enrollment; 409 the id is enrolled with another key (usable token only); 400
/// malformed. The token is checked before the device, so a client without a token
/// learns nothing about which ids are enrolled. Refusals are counted by reason.
pub async fn enroll(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let result = enroll_device(&s, &headers, body).await;
    if let Err(e) = &result {
        s.metrics.enroll_rejected(e.code());
    }
    result
}

async fn enroll_device(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    // Refused before anything is read: a declared length over the limit. No slot is
    // taken: each enrollment body is at most 64 KiB (memory bounded by the connection
    // cap), so a client that holds enrollments open only holds connections.
    super::body::declared_length(headers, MAX_ENROLL_BYTES)?;
    let mut body_bytes = Vec::new();
    super::body::read_paced(
        body,
        MAX_ENROLL_BYTES,
        s.body_timeout,
        s.min_upload_rate,
        |data| body_bytes.extend_from_slice(data),
    )
    .await?;
    let req: EnrollRequest = serde_json::from_slice(&body_bytes)
        .map_err(|e| ApiError::BadRequest(format!("expected {{\"token\", \"record\"}}: {e}")))?;
    let record = EnrollmentRecord::from_json(&req.record.to_string())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let device_id = record.device_id_hex();
    let key = data_encoding::HEXLOWER.encode(&record.device_key());
    let outcome =
        s.db.enroll(
            &crate::tokens::hash(&req.token),
            &device_id,
            &key,
            &record.to_json(),
            crate::config::now_us(),
        )
        .await?;
    let body = Json(serde_json::json!({ "device_id": device_id }));
    match outcome {
        Enrolled::New => {
            s.metrics.enrolled();
            tracing::info!(device_id = %device_id, "device enrolled");
            Ok((StatusCode::CREATED, body))
        }
        Enrolled::Same => Ok((StatusCode::OK, body)),
        Enrolled::OtherKey => {
            if let Some(skipped) = s.refusal_log.allow() {
                tracing::warn!(device_id = %device_id, skipped, "enrollment refused: id enrolled with another key");
            }
            Err(ApiError::EnrolledWithOtherKey(device_id))
        }
        Enrolled::BadToken => {
            if let Some(skipped) = s.refusal_log.allow() {
                tracing::warn!(device_id = %device_id, skipped, "enrollment refused: bad token");
            }
            Err(ApiError::BadToken)
        }
    }
}
