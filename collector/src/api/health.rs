//! `GET /healthz` and `GET /metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use crate::error::ApiError;

/// 200 when the database and the blob store answer, else 503 with `Retry-After`.
pub async fn healthz(State(s): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    s.db.ping().await?;
    s.store.check().await?;
    Ok(axum::Json(serde_json::json!({ "status": "ok" })))
}

/// Prometheus text exposition.
pub async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
