//! Overload protection: each limit answers with a problem document and
//! `Retry-After`, so clients back off and Sluice recovers by itself. Reads are
//! never shed for writes' sake: a full queue still answers status reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::AppState;
use super::error::ApiError;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Writes (POST, DELETE) being answered at once; more get 503.
    pub writes: Arc<Semaphore>,
    /// How long a request may take, reading its body included (slow
    /// clients get 408).
    pub request_timeout: Duration,
    /// Ids waiting in the queue beyond which POST /ingest gets 429.
    pub max_queued_ids: u64,
    /// Ids waiting now, as last counted (see `count_queue`).
    pub queued_ids: Arc<AtomicU64>,
    /// Room for live event streams; a stream holds one permit while open.
    pub event_streams: Arc<Semaphore>,
    /// Room, in KiB, for large request bodies held in memory at once.
    pub body_memory: Arc<Semaphore>,
}

impl Limits {
    /// Room for `max_body_memory` bytes of large bodies, and always for one
    /// body of `max_body_bytes`, so that every acceptable body can be read.
    pub fn body_memory(max_body_memory: usize, max_body_bytes: usize) -> Arc<Semaphore> {
        let kib = max_body_memory.max(max_body_bytes).div_ceil(1024);
        Arc::new(Semaphore::new(kib.min(Semaphore::MAX_PERMITS)))
    }
}

/// Sheds writes past `--max-concurrent-writes` with 503.
pub async fn shed_writes(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    match Arc::clone(&app.overload.writes).try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => ApiError::unavailable(
            "too many writes at once (--max-concurrent-writes); retry shortly",
            1,
        )
        .into_response(),
    }
}

/// Answers 408 to a request that takes longer than `--request-timeout` (`0`:
/// no limit).
pub async fn time_limit(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if app.overload.request_timeout.is_zero() {
        return next.run(request).await;
    }
    match tokio::time::timeout(app.overload.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::request_timeout(format!(
            "the request took longer than {:?} (--request-timeout)",
            app.overload.request_timeout
        ))
        .into_response(),
    }
}

/// Refuses new work with 429 while the queue holds `--max-queued-ids`.
pub async fn queue_room(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let queued = app.overload.queued_ids.load(Ordering::Relaxed);
    if queued >= app.overload.max_queued_ids {
        return ApiError::too_many_requests(
            format!(
                "the queue holds about {queued} ids, the limit is {} (--max-queued-ids); \
                 retry once it has drained",
                app.overload.max_queued_ids
            ),
            5,
        )
        .into_response();
    }
    next.run(request).await
}
