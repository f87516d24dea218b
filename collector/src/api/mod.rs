//! HTTP API v1 (SPEC 12.7): one module per endpoint group, a shared state, and the
//! router.

mod body;
mod bundles;
mod enroll;
mod health;
pub(crate) mod throttle;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

use crate::db::Db;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::BlobStore;
use capvault_format::ReceiptSigner;

/// What every request handler sees.
#[derive(Debug)]
pub struct AppState {
    /// The state database.
    pub db: Db,
    /// The blob store.
    pub store: BlobStore,
    /// Signs receipts. The ingest tier holds no key that opens bundles.
    pub signer: ReceiptSigner,
    /// Counters and latency.
    pub metrics: Metrics,
    /// Largest bundle accepted, in bytes.
    pub max_bundle_bytes: usize,
    /// Uploads processed at once.
    pub in_flight: Arc<Semaphore>,
    /// Grace before a request body must keep up with `min_upload_rate`.
    pub body_timeout: std::time::Duration,
    /// Slowest upload rate allowed after the grace (bytes/s).
    pub min_upload_rate: u64,
    /// Paces the log lines of refused enrollments (anyone can cause them).
    pub refusal_log: throttle::Throttle,
}

/// The router of API v1.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/bundles", post(bundles::upload))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}
