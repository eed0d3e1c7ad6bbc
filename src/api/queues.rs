//! `/queues`: each queue's settings and state, and the operator's controls
//! (pause, resume, new settings at runtime).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::body::JsonBody;
use super::error::{ApiError, FieldError};
use super::error::{
    BadRequest, Forbidden, Internal, NotFound, RequestTimeout, Unauthorized, Unavailable,
    UnsupportedMediaType, ValidationFailed,
};
use super::path::PathParam;
use crate::domain::{Interval, Priority, Timestamp};
use crate::queue::{Fairness, Queue};
use crate::redact::redacted_url;
use crate::store::{QueueChange, QueueState};

/// Every configured queue, by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueView>,
}

/// A queue: its settings in force, its state, and its batches.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    #[schema(example = "default")]
    pub name: String,
    /// A paused queue starts nothing; batches already processing finish, and
    /// `POST /ingest` still accepts work for it.
    pub paused: bool,
    /// The minimum spacing between two starts in force: the one set at
    /// runtime, else the configured one (`0`: no limit).
    #[schema(example = "5s")]
    pub interval: String,
    /// How many of the queue's batches may be processing at once, in force.
    pub max_in_flight: usize,
    /// The spacing kept now: more than `interval` while an adaptive queue's
    /// upstream pushes back (429, 503).
    #[schema(example = "5s")]
    pub effective_interval: String,
    pub batch_size: usize,
    /// The upstream's URL template, without any password; `null` for the
    /// built-in mock.
    #[schema(required = true)]
    pub upstream: Option<String>,
    pub max_attempts: u32,
    #[schema(example = "1s")]
    pub retry_base: String,
    /// Whether the queue slows down by itself when its upstream answers 429
    /// or 503.
    pub adaptive: bool,
    /// `fifo` (SPEC.md's order inside a priority) or `tenant` (tenants take
    /// turns, and inside each tenant its groups).
    pub fairness: Fairness,
    /// With `fairness = "tenant"`: the tenants given more turns than one;
    /// any other weighs 1.
    #[schema(value_type = Object, example = json!({"acme": 3}))]
    pub tenant_weights: BTreeMap<String, u32>,
    /// A batch that has waited k × this ranks k levels higher; null: no
    /// aging.
    #[schema(required = true, example = "30s")]
    pub aging: Option<String>,
    /// The settings the configuration gives (flags, queues file): what
    /// `PATCH` with `null` returns to.
    pub configured: ConfiguredSettings,
    /// The slot of the queue's latest start.
    #[schema(required = true)]
    pub last_slot: Option<Timestamp>,
    /// The earliest time the rate limit allows the queue's next start, if one
    /// has started before.
    #[schema(required = true)]
    pub next_slot: Option<Timestamp>,
    /// Batches waiting to start, those between attempts included.
    pub waiting: u64,
    /// Batches processing now.
    pub processing: u64,
    /// Batches per priority and status, as in `/stats`.
    #[schema(value_type = Object)]
    pub batches: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
}

/// A queue's settings as configured.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfiguredSettings {
    #[schema(example = "5s")]
    pub interval: String,
    pub max_in_flight: usize,
}

impl QueueView {
    fn of(queue: &Queue, state: QueueState) -> Self {
        let settings = &queue.settings;
        let runtime = state.runtime;
        let interval = queue.interval_in_force(&runtime);
        let effective = queue.effective_interval(interval);
        let mut batches: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = Priority::ALL
            .iter()
            .map(|p| (p.as_str(), BTreeMap::new()))
            .collect();
        let (mut waiting, mut processing) = (0, 0);
        for (priority, status, n) in &state.batches {
            *batches
                .entry(priority.as_str())
                .or_default()
                .entry(status.operator_name())
                .or_default() += n;
            match status.operator_name() {
                "yet_to_start" | "retrying" => waiting += n,
                "triggered" => processing += n,
                _ => {}
            }
        }
        Self {
            name: queue.name.to_string(),
            paused: runtime.paused,
            interval: interval.to_string(),
            max_in_flight: queue.max_in_flight_in_force(&runtime).get(),
            effective_interval: effective.to_string(),
            batch_size: settings.batch_size.get(),
            upstream: settings
                .upstream
                .as_ref()
                .map(|upstream| redacted_url(&upstream.url_template).to_string()),
            max_attempts: settings.retry.max_attempts,
            retry_base: Interval::from_duration(settings.retry.base).to_string(),
            adaptive: settings.adaptive,
            fairness: settings.order.fairness,
            tenant_weights: settings
                .order
                .weights
                .iter()
                .map(|(tenant, weight)| (tenant.to_string(), weight.get()))
                .collect(),
            aging: settings.order.aging.map(|aging| aging.to_string()),
            configured: ConfiguredSettings {
                interval: settings.interval.to_string(),
                max_in_flight: settings.max_in_flight.get(),
            },
            last_slot: runtime.last_slot,
            next_slot: runtime
                .last_slot
                .map(|slot| slot.saturating_add_micros(effective.as_micros())),
            waiting,
            processing,
            batches,
        }
    }
}

/// A configured queue by its name in the path; 404 for any other.
fn queue_named(app: &AppState, name: &str) -> Result<Arc<Queue>, ApiError> {
    app.queues
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::not_found("no such queue"))
}

async fn view(app: &AppState, queue: &Queue) -> Result<QueueView, ApiError> {
    let state = app
        .store
        .queue_state(&queue.name)
        .await?
        .unwrap_or_default();
    Ok(QueueView::of(queue, state))
}

/// `GET /queues`: every queue, its settings and state.
#[utoipa::path(
    get,
    path = "/queues",
    tag = "queues",
    operation_id = "list_queues",
    summary = "Every queue, with its settings, state and batches",
    security((), ("api_key" = ["read", "operator"])),
    responses(
        (status = 200, description = "The queues, by name.", body = QueueList),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn list(State(app): State<AppState>) -> Result<Json<QueueList>, ApiError> {
    let mut queues = Vec::new();
    for queue in app.queues.iter() {
        queues.push(view(&app, queue).await?);
    }
    Ok(Json(QueueList { queues }))
}

/// `GET /queues/{name}`: one queue.
#[utoipa::path(
    get,
    path = "/queues/{name}",
    tag = "queues",
    operation_id = "get_queue",
    summary = "One queue, with its settings, state and batches",
    params(("name" = String, Path, description = "The queue's name.")),
    security((), ("api_key" = ["read", "operator"])),
    responses(
        (status = 200, description = "The queue.", body = QueueView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn show(
    State(app): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Json<QueueView>, ApiError> {
    let queue = queue_named(&app, &name)?;
    Ok(Json(view(&app, &queue).await?))
}

/// `POST /queues/{name}/pause`.
#[utoipa::path(
    post,
    path = "/queues/{name}/pause",
    tag = "queues",
    operation_id = "pause_queue",
    summary = "Pause a queue: nothing starts until it is resumed",
    description = "Batches already processing finish; `POST /ingest` still accepts work for \
        the queue. Holds for every node, and across restarts, until resumed.",
    params(("name" = String, Path, description = "The queue's name.")),
    security((), ("api_key" = ["admin", "operator"])),
    responses(
        (status = 200, description = "The queue, now paused.", body = QueueView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn pause(
    State(app): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Json<QueueView>, ApiError> {
    let change = QueueChange {
        paused: Some(true),
        ..QueueChange::default()
    };
    apply(&app, &name, change).await
}

/// `POST /queues/{name}/resume`.
#[utoipa::path(
    post,
    path = "/queues/{name}/resume",
    tag = "queues",
    operation_id = "resume_queue",
    summary = "Resume a paused queue",
    params(("name" = String, Path, description = "The queue's name.")),
    security((), ("api_key" = ["admin", "operator"])),
    responses(
        (status = 200, description = "The queue, now running.", body = QueueView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn resume(
    State(app): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Json<QueueView>, ApiError> {
    let change = QueueChange {
        paused: Some(false),
        ..QueueChange::default()
    };
    apply(&app, &name, change).await
}

/// The body of `PATCH /queues/{name}`, for the API document only: the real
/// decoding reads a JSON object and checks every field, so that a misspelt
/// setting is an error rather than ignored.
#[derive(ToSchema)]
#[schema(examples(json!({"interval": "2s", "max_in_flight": 3})))]
#[allow(dead_code)] // Never built: it only describes what `change` reads.
pub struct QueuePatch {
    /// A duration such as `2s` or `250ms`, or `0` for no limit; `null`
    /// returns to the configured interval.
    interval: Option<String>,
    /// 1 or more; `null` returns to the configured limit.
    #[schema(minimum = 1)]
    max_in_flight: Option<u32>,
}

/// `PATCH /queues/{name}`: new settings at runtime.
#[utoipa::path(
    patch,
    path = "/queues/{name}",
    tag = "queues",
    operation_id = "change_queue",
    summary = "Change a queue's interval or in-flight limit at runtime",
    description = "Takes effect from the queue's next slot, on every node, and is stored: it \
        survives a restart and wins over the configuration until a setting is set to `null`, \
        which returns it to the configured value. Fields left out stay as they are; any other \
        field is refused.",
    params(("name" = String, Path, description = "The queue's name.")),
    request_body(content = QueuePatch, content_type = "application/json"),
    security((), ("api_key" = ["admin", "operator"])),
    responses(
        (status = 200, description = "The queue, with its new settings.", body = QueueView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn change(
    State(app): State<AppState>,
    PathParam(name): PathParam,
    JsonBody(body): JsonBody<PatchBody>,
) -> Result<Json<QueueView>, ApiError> {
    // The queue first: a change to a queue that does not exist is a 404,
    // whatever the body says.
    queue_named(&app, &name)?;
    let change = body.validate()?;
    apply(&app, &name, change).await
}

async fn apply(
    app: &AppState,
    name: &str,
    change: QueueChange,
) -> Result<Json<QueueView>, ApiError> {
    let queue = queue_named(app, name)?;
    if !app.store.change_queue(&queue.name, change).await? {
        return Err(ApiError::not_found("no such queue"));
    }
    // This node's dispatchers hear it now; other nodes' through the store.
    app.signals.queues_changed();
    tracing::info!(queue = %queue.name, "queue changed by an operator");
    Ok(Json(view(app, &queue).await?))
}

/// A `PATCH` body as it arrived: a JSON object, its fields checked one by one.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct PatchBody(Value);

impl PatchBody {
    /// The change, or every rule the body breaks.
    fn validate(self) -> Result<QueueChange, ApiError> {
        let Value::Object(fields) = self.0 else {
            return Err(ApiError::validation(vec![FieldError::new(
                "body",
                "must be a JSON object, such as {\"interval\": \"2s\"}",
            )]));
        };
        let mut change = QueueChange::default();
        let mut errors = Vec::new();
        for (field, value) in fields {
            match (field.as_str(), value) {
                ("interval", Value::Null) => change.interval = Some(None),
                ("interval", Value::String(text)) => match text.parse::<Interval>() {
                    Ok(interval) => change.interval = Some(Some(interval)),
                    Err(error) => errors.push(FieldError::new("interval", error.to_string())),
                },
                ("interval", _) => errors.push(FieldError::new(
                    "interval",
                    "must be a duration such as \"2s\" or \"250ms\", \"0\", or null",
                )),
                ("max_in_flight", Value::Null) => change.max_in_flight = Some(None),
                ("max_in_flight", Value::Number(n)) => {
                    match n
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|&n| n <= i32::MAX as usize)
                        .and_then(NonZeroUsize::new)
                    {
                        Some(n) => change.max_in_flight = Some(Some(n)),
                        None => errors.push(FieldError::new(
                            "max_in_flight",
                            "must be a whole number of at least 1",
                        )),
                    }
                }
                ("max_in_flight", _) => errors.push(FieldError::new(
                    "max_in_flight",
                    "must be a whole number of at least 1, or null",
                )),
                (other, _) => errors.push(FieldError::new(
                    // The name is the client's own text: keep it short.
                    other.chars().take(64).collect::<String>(),
                    "is not a setting that can be changed; use interval or max_in_flight",
                )),
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::validation(errors));
        }
        if change == QueueChange::default() {
            return Err(ApiError::validation(vec![FieldError::new(
                "body",
                "names no setting; give interval, max_in_flight or both",
            )]));
        }
        Ok(change)
    }
}
