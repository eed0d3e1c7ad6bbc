//! The HTTP API of SPEC.md, on axum.

mod body;
pub mod error;
mod ingest;
mod ingestions;
mod status;

use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use tokio::sync::Notify;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use self::error::ApiError;
use crate::domain::{BatchSize, Clock};
use crate::store::SharedStore;

pub use ingest::IngestResponse;
pub use status::{StatusResponse, StatusSummary};

/// Limits on what one request may carry.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// The largest body accepted, in bytes (413 past it).
    pub max_body_bytes: usize,
    /// The most ids one request may carry (413 past it).
    pub max_ids_per_request: usize,
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<App>);

pub struct App {
    /// Where requests and batches are kept.
    pub store: SharedStore,
    /// Wakes the dispatcher when new work has been stored.
    pub wake: Arc<Notify>,
    /// Wakes the callback sender when a request has ended.
    pub request_ended: Arc<Notify>,
    /// The service's clock, shared with the dispatcher.
    pub clock: Clock,
    /// How many ids go into a batch.
    pub batch_size: BatchSize,
    pub limits: ApiLimits,
    /// How long an `Idempotency-Key` holds.
    pub idempotency_ttl: std::time::Duration,
}

impl AppState {
    pub fn new(app: App) -> Self {
        Self(Arc::new(app))
    }
}

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/ingest", post(ingest::ingest))
        .route("/status", get(status::status_by_query_or_body))
        .route("/status/{ingestion_id}", get(status::status_by_path))
        .route("/ingestions/{ingestion_id}", delete(ingestions::cancel))
        .route(
            "/ingestions/{ingestion_id}/cancel",
            post(ingestions::cancel),
        )
        .route(
            "/ingestions/{ingestion_id}/results",
            get(ingestions::results),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::internal(
                "the server failed while answering; nothing was acknowledged",
            ))
        }))
        .with_state(state)
}
