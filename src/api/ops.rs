//! What operators and the dashboard read: health, readiness, metrics, the
//! queue at a glance, and recent requests.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::ApiError;
use super::error::{BadRequest, Forbidden, Internal, RequestTimeout, Unauthorized, Unavailable};
use super::openapi::string_enum;
use super::status::BatchCounts;
use crate::domain::{BatchId, IngestionId, IngestionStatus, Priority, Timestamp};
use crate::metrics::QueueGauges;
use crate::store::IngestionSummary;

/// A health answer: `ok` from `/healthz`, `ready` from `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(schema_with = health_states)]
    pub status: &'static str,
}

fn health_states() -> Object {
    string_enum(&["ok", "ready"])
}

/// `GET /healthz`: the process is alive and answering.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "Liveness: the process is alive and answering",
    description = "Touches nothing else, so it answers even when the store is down.",
    security(()),
    responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`.", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /readyz`: every background part runs, the store answers and its
/// migrations are applied.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    summary = "Readiness: background work runs, the store answers and its migrations are applied",
    description = "503 names what is not ready: a background part that stopped and waits to \
        be restarted (the dispatcher, the callback sender, the queue counter, on PostgreSQL the \
        listener and the lease heartbeat), or the store.",
    security((), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ready\"}`.", body = Health),
        (status = 401, response = Unauthorized),
        (status = 408, response = RequestTimeout),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn readyz(State(app): State<AppState>) -> Result<Json<Health>, ApiError> {
    let down = app.supervision.down();
    if !down.is_empty() {
        return Err(ApiError::unavailable(
            format!("stopped, restarting: {}", down.join(", ")),
            1,
        ));
    }
    // Probes give up after a second or so: a store that cannot answer within
    // that (PostgreSQL down, the pool waiting for a connection) is not ready,
    // and the probe should hear so rather than time out.
    match tokio::time::timeout(READY_WITHIN, app.store.check_ready()).await {
        Ok(Ok(())) => Ok(Json(Health { status: "ready" })),
        Ok(Err(error)) => Err(ApiError::unavailable(
            format!("the store is not ready: {error}"),
            5,
        )),
        Err(_) => Err(ApiError::unavailable(
            format!("the store is not ready: no answer within {READY_WITHIN:?}"),
            5,
        )),
    }
}

/// How long readiness waits for the store.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_millis(800);

/// `GET /metrics`: Prometheus metrics (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics, in the OpenMetrics text format",
    description = "Every metric is named with a `sluice_` prefix: queue depth by priority and \
        status; batches started, completed and failed; ids fetched; upstream latency; time \
        spent waiting for the rate limit; dispatcher lag; HTTP requests by route and status, \
        with latency; rows deleted by pruning, by kind (`sluice_pruned_total`).",
    security((), ("api_key" = ["read", "operator"])),
    responses(
        (status = 200, description = "The metrics.",
            content((String = "application/openmetrics-text; version=1.0.0; charset=utf-8"))),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let mut gauges = Vec::new();
    for queue in app.queues.iter() {
        let state = app
            .store
            .queue_state(&queue.name)
            .await?
            .unwrap_or_default();
        let interval = queue.interval_in_force(&state.runtime);
        gauges.push(QueueGauges {
            name: queue.name.clone(),
            effective_interval: queue.effective_interval(interval).as_duration(),
            paused: state.runtime.paused,
            batches: state.batches,
        });
    }
    let mut response = app.metrics.render(&gauges).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

/// The queue at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Batches per priority (`HIGH`, `MEDIUM`, `LOW`) and status; `retrying`
    /// counts batches waiting between attempts (clients see them `triggered`).
    #[schema(schema_with = queue_schema)]
    pub queue: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub ingestions: u64,
    /// The batches processing now.
    pub processing: Vec<Processing>,
    /// The minimum spacing between two starts, in milliseconds (0: no limit).
    pub interval_ms: u64,
    pub max_in_flight: usize,
    /// The slot of the latest start.
    #[schema(required = true)]
    pub last_start: Option<Timestamp>,
    /// The earliest time the rate limit allows the next start.
    #[schema(required = true)]
    pub next_slot: Option<Timestamp>,
    pub now: Timestamp,
    /// When the oldest request still kept arrived; older ones were pruned
    /// (see `--retention`).
    #[schema(required = true)]
    pub oldest_ingestion_at: Option<Timestamp>,
    /// When the last pruning pass ended, on any node.
    #[schema(required = true)]
    pub last_prune_at: Option<Timestamp>,
}

/// A batch processing now.
#[derive(Debug, Serialize, ToSchema)]
pub struct Processing {
    pub batch_id: BatchId,
    pub started_at: Timestamp,
}

/// The schema of [`Stats::queue`]: every priority, each a map from the
/// statuses that have batches to their counts.
fn queue_schema() -> Object {
    let counts = ObjectBuilder::new()
        .property_names(Some(string_enum(&[
            "yet_to_start",
            "triggered",
            "retrying",
            "completed",
            "failed",
            "cancelled",
        ])))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0)),
        ))
        .build();
    Priority::ALL
        .iter()
        .fold(ObjectBuilder::new(), |queue, p| {
            queue
                .property(p.as_str(), counts.clone())
                .required(p.as_str())
        })
        .description(Some(
            "Batches per priority and status; a status with no batches may be left out. \
             `retrying` counts batches waiting between attempts (clients see them `triggered`).",
        ))
        .build()
}

/// `GET /stats`: the queue at a glance, for the dashboard.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "operations",
    operation_id = "stats",
    summary = "The queue at a glance",
    description = "Queue depth per priority and status, the batches processing now, and the \
        rate limiter's last and next slot. What the dashboard shows.",
    security((), ("api_key" = ["read", "operator"])),
    responses(
        (status = 200, description = "The queue now.", body = Stats),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn stats(State(app): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let stats = app.store.stats().await?;
    let mut queue: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = Priority::ALL
        .iter()
        .map(|p| (p.as_str(), BTreeMap::new()))
        .collect();
    for (priority, status, count) in &stats.batches {
        let name = status.operator_name();
        *queue
            .entry(priority.as_str())
            .or_default()
            .entry(name)
            .or_default() += count;
    }
    // The rate is the default queue's, as before there were queues; each
    // queue's is in `GET /queues`.
    let default = app.queues.default_queue();
    let runtime = app
        .store
        .queue_state(&default.name)
        .await?
        .unwrap_or_default()
        .runtime;
    let interval = default.effective_interval(default.interval_in_force(&runtime));
    let max_in_flight = default.max_in_flight_in_force(&runtime).get();
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
        max_in_flight,
        last_start: stats.last_slot,
        next_slot: stats
            .last_slot
            .map(|slot| slot.saturating_add_micros(interval.as_micros())),
        now: app.clock.now(),
        oldest_ingestion_at: stats.oldest_ingestion_at,
        last_prune_at: stats.last_prune_at,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// How many requests, from 1 to 500.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500, default = 20)]
    limit: Option<usize>,
}

/// Recent requests, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestionList {
    pub ingestions: Vec<IngestionListItem>,
}

/// A request without its batches.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestionListItem {
    pub ingestion_id: IngestionId,
    pub status: IngestionStatus,
    pub priority: Priority,
    /// The queue the request runs in.
    #[schema(value_type = String, example = "default")]
    pub queue: crate::queue::QueueName,
    pub created_at: Timestamp,
    /// When the last batch ended, once all have.
    #[schema(required = true)]
    pub completed_at: Option<Timestamp>,
    /// How many ids the request carries.
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
            queue: summary.queue,
            created_at: summary.created_at,
            completed_at: summary.finished_at.filter(|_| status.is_final()),
            ids: summary.ids,
            batch_counts: counts,
        }
    }
}

/// `GET /ingestions?limit=N`: the most recent requests, newest first.
#[utoipa::path(
    get,
    path = "/ingestions",
    tag = "requests",
    operation_id = "list_ingestions",
    summary = "The most recent requests, newest first",
    params(ListQuery),
    security((), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "The most recent requests.", body = IngestionList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list(
    State(app): State<AppState>,
    caller: super::auth::Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<IngestionList>, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit: from 1 to 500"));
    }
    // A tenant's key lists only its tenant's requests.
    let recent = match caller.tenant() {
        Some(tenant) => app.store.tenant_ingestions(tenant, limit).await?,
        None => app.store.recent_ingestions(limit).await?,
    };
    Ok(Json(IngestionList {
        ingestions: recent.into_iter().map(IngestionListItem::from).collect(),
    }))
}
