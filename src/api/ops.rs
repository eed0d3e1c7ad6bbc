//! What operators and the dashboard read: health, readiness, metrics, the
//! queue at a glance, and recent requests.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::status::BatchCounts;
use crate::domain::{BatchId, BatchStatus, IngestionId, IngestionStatus, Priority, Timestamp};
use crate::store::IngestionSummary;

#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
}

/// `GET /healthz`: the process is alive and answering.
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /readyz`: the store answers and its migrations are applied.
pub async fn readyz(State(app): State<AppState>) -> Result<Json<Health>, ApiError> {
    match app.store.check_ready().await {
        Ok(()) => Ok(Json(Health { status: "ready" })),
        Err(error) => Err(ApiError::unavailable(
            format!("the store is not ready: {error}"),
            5,
        )),
    }
}

/// `GET /metrics`: Prometheus metrics (OpenMetrics text).
pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let stats = app.store.stats().await?;
    let mut response = app.metrics.render(&stats).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

#[derive(Debug, Serialize)]
pub struct Stats {
    /// Batches per priority (`HIGH`, `MEDIUM`, `LOW`) and status; `retrying`
    /// counts batches waiting between attempts (clients see them `triggered`).
    pub queue: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub ingestions: u64,
    /// The batches processing now.
    pub processing: Vec<Processing>,
    /// The minimum spacing between two starts, in milliseconds (0: no limit).
    pub interval_ms: u64,
    pub max_in_flight: usize,
    /// The slot of the latest start.
    pub last_start: Option<Timestamp>,
    /// The earliest time the rate limit allows the next start.
    pub next_slot: Option<Timestamp>,
    pub now: Timestamp,
}

#[derive(Debug, Serialize)]
pub struct Processing {
    pub batch_id: BatchId,
    pub started_at: Timestamp,
}

/// `GET /stats`: the queue at a glance, for the dashboard.
pub async fn stats(State(app): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let stats = app.store.stats().await?;
    let mut queue: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = Priority::ALL
        .iter()
        .map(|p| (p.as_str(), BTreeMap::new()))
        .collect();
    for (priority, status, count) in &stats.batches {
        let name = match status {
            BatchStatus::Retrying => "retrying",
            other => other.as_str(),
        };
        *queue
            .entry(priority.as_str())
            .or_default()
            .entry(name)
            .or_default() += count;
    }
    let interval = app.interval;
    Ok(Json(Stats {
        queue,
        ingestions: stats.ingestions,
        processing: stats
            .running
            .into_iter()
            .map(|(batch_id, started_at)| Processing {
                batch_id,
                started_at,
            })
            .collect(),
        interval_ms: interval.as_duration().as_millis() as u64,
        max_in_flight: app.max_in_flight,
        last_start: stats.last_slot,
        next_slot: stats
            .last_slot
            .map(|slot| slot.saturating_add_micros(interval.as_micros())),
        now: app.clock.now(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct IngestionList {
    pub ingestions: Vec<IngestionListItem>,
}

#[derive(Debug, Serialize)]
pub struct IngestionListItem {
    pub ingestion_id: IngestionId,
    pub status: IngestionStatus,
    pub priority: Priority,
    pub created_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub ids: u64,
    pub batch_counts: BatchCounts,
}

impl From<IngestionSummary> for IngestionListItem {
    fn from(summary: IngestionSummary) -> Self {
        let mut counts = BatchCounts::default();
        let mut statuses = Vec::new();
        for &(status, n) in &summary.batches {
            counts.add(status, n as usize);
            statuses.extend(std::iter::repeat_n(status, n.min(2) as usize));
        }
        let status = IngestionStatus::derive(statuses);
        Self {
            ingestion_id: summary.id,
            status,
            priority: summary.priority,
            created_at: summary.created_at,
            completed_at: summary.finished_at.filter(|_| status.is_final()),
            ids: summary.ids,
            batch_counts: counts,
        }
    }
}

/// `GET /ingestions?limit=N`: the most recent requests, newest first.
pub async fn list(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<IngestionList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit: from 1 to 500"));
    }
    let recent = app.store.recent_ingestions(limit).await?;
    Ok(Json(IngestionList {
        ingestions: recent.into_iter().map(IngestionListItem::from).collect(),
    }))
}
