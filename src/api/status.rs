//! `GET /status/{id}`, `GET /status?ingestion_id=…` and `GET /status` with a
//! JSON body: three spellings of one read.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::Object;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::body::{StringField, parse_json};
use super::error::{ApiError, FieldError};
use super::error::{
    BadRequest, Internal, NotFound, PayloadTooLarge, RequestTimeout, Unauthorized, Unavailable,
    ValidationFailed,
};
use super::openapi::string_enum;
use super::path::PathParam;
use crate::domain::{
    BatchId, BatchStatus, GroupName, IngestionId, IngestionStatus, ItemId, Priority, TenantName,
    Timestamp,
};
use crate::queue::{DispatchOrder, QueueName};
use crate::store::{BatchRecord, CallbackRecord, CallbackState, IngestionRecord};

/// A request's state without its batches: what callbacks and cancels answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusSummary {
    pub ingestion_id: IngestionId,
    pub status: IngestionStatus,
    pub priority: Priority,
    /// The queue the request runs in.
    #[schema(value_type = String, example = "default")]
    pub queue: QueueName,
    /// The tenant of the key that submitted it; null for a key without one.
    #[schema(value_type = Option<String>, required = true, example = "acme")]
    pub tenant: Option<TenantName>,
    /// The group the request named; null if none.
    #[schema(value_type = Option<String>, required = true, example = "customer-42")]
    pub group: Option<GroupName>,
    pub created_at: Timestamp,
    /// When the last batch ended, once all have.
    #[schema(required = true)]
    pub completed_at: Option<Timestamp>,
    pub batch_counts: BatchCounts,
}

/// A request and every one of its batches, in the order of its ids.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    #[serde(flatten)]
    pub summary: StatusSummary,
    /// The completion callback, if the request asked for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = CallbackView)]
    pub callback: Option<CallbackView>,
    pub batches: Vec<BatchView>,
}

/// How many of a request's batches are in each status.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct BatchCounts {
    pub total: usize,
    pub yet_to_start: usize,
    pub triggered: usize,
    pub completed: usize,
    pub failed: usize,
    pub cancelled: usize,
}

/// One batch of a request.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchView {
    pub batch_id: BatchId,
    pub ids: Vec<ItemId>,
    pub status: BatchStatus,
    /// How many times processing has started: retries and crash recoveries
    /// count.
    pub attempts: u32,
    /// Between attempts: when the next one may start.
    #[schema(required = true)]
    pub next_attempt_at: Option<Timestamp>,
    /// The start's slot on the rate limiter's grid; `started_at` is never
    /// earlier, and later only by the dispatcher's wake-up latency.
    #[schema(required = true)]
    pub scheduled_at: Option<Timestamp>,
    /// When processing really started.
    #[schema(required = true)]
    pub started_at: Option<Timestamp>,
    /// When the batch ended: completed, failed or cancelled.
    #[schema(required = true)]
    pub completed_at: Option<Timestamp>,
    /// While the batch waits (`yet_to_start`, or between attempts): the
    /// priority it is ranked with now. In a queue with `aging`, a batch that
    /// has waited k × aging ranks k levels above its request's priority,
    /// never beyond HIGH. Null once it has started or ended.
    #[schema(required = true)]
    pub effective_priority: Option<Priority>,
}

/// How a request's waiting batches rank now: its priority, raised by aging.
#[derive(Debug, Clone, Copy)]
pub struct Ranking {
    effective: Priority,
}

impl Ranking {
    /// The ranking of `record`'s waiting batches at `now` under `order`
    /// (`None`: its queue is no longer configured, so nothing ages).
    pub fn of(record: &IngestionRecord, order: Option<&DispatchOrder>, now: Timestamp) -> Self {
        let waited = now.since(record.created_at);
        Self {
            effective: order.map_or(record.priority, |order| {
                order.effective_priority(record.priority, waited)
            }),
        }
    }

    fn of_batch(self, batch: &BatchRecord) -> Option<Priority> {
        matches!(
            batch.status,
            BatchStatus::YetToStart | BatchStatus::Retrying
        )
        .then_some(self.effective)
    }
}

/// Where the completion callback stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackView {
    pub url: String,
    /// `pending`, `delivered` or `failed` (every attempt failed).
    #[schema(schema_with = callback_states)]
    pub state: &'static str,
    pub attempts: u32,
    #[schema(required = true)]
    pub last_error: Option<String>,
}

fn callback_states() -> Object {
    string_enum(&["pending", "delivered", "failed"])
}

impl BatchCounts {
    pub fn add(&mut self, status: BatchStatus, n: usize) {
        self.total += n;
        *match status {
            BatchStatus::YetToStart => &mut self.yet_to_start,
            BatchStatus::Triggered | BatchStatus::Retrying => &mut self.triggered,
            BatchStatus::Completed => &mut self.completed,
            BatchStatus::Failed => &mut self.failed,
            BatchStatus::Cancelled => &mut self.cancelled,
        } += n;
    }
}

impl StatusSummary {
    pub fn of(record: &IngestionRecord) -> Self {
        let mut counts = BatchCounts::default();
        for batch in &record.batches {
            counts.add(batch.status, 1);
        }
        let status = IngestionStatus::derive(record.batches.iter().map(|b| b.status));
        Self {
            ingestion_id: record.id,
            status,
            priority: record.priority,
            queue: record.queue.clone(),
            tenant: record.tenant.clone(),
            group: record.group.clone(),
            created_at: record.created_at,
            completed_at: record.finished_at.filter(|_| status.is_final()),
            batch_counts: counts,
        }
    }
}

impl StatusResponse {
    pub fn of(record: IngestionRecord, ranking: Ranking) -> Self {
        Self {
            summary: StatusSummary::of(&record),
            callback: record.callback.map(CallbackView::from),
            batches: record
                .batches
                .into_iter()
                .map(|batch| BatchView::of(batch, ranking))
                .collect(),
        }
    }
}

impl BatchView {
    fn of(b: BatchRecord, ranking: Ranking) -> Self {
        Self {
            effective_priority: ranking.of_batch(&b),
            batch_id: b.id,
            ids: b.ids,
            status: b.status,
            attempts: b.attempts,
            next_attempt_at: b.retry_at,
            scheduled_at: b.scheduled_at,
            started_at: b.started_at,
            completed_at: b.completed_at,
        }
    }
}

impl From<CallbackRecord> for CallbackView {
    fn from(callback: CallbackRecord) -> Self {
        Self {
            url: callback.url,
            state: match callback.state {
                CallbackState::Pending => "pending",
                CallbackState::Delivered => "delivered",
                CallbackState::GaveUp => "failed",
            },
            attempts: callback.attempts,
            last_error: callback.last_error,
        }
    }
}

/// A request's status, with every batch
#[utoipa::path(
    get,
    path = "/status/{ingestion_id}",
    tag = "requests",
    operation_id = "get_status",
    params(("ingestion_id" = String, Path, description = "The request's id (a malformed or unknown id answers 404).")),
    security((), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "The request, with every batch.", body = StatusResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn status_by_path(
    State(app): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    lookup(&app, &caller, &id).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// The request's id (a malformed or unknown id answers 404).
    ingestion_id: Option<String>,
}

/// The JSON body form of `GET /status`, for clients that send one.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the body; `status_by_query_or_body` reads it as JSON.
pub struct StatusRequest {
    /// The request's id (a malformed or unknown id answers 404).
    ingestion_id: String,
}

/// `GET /status?ingestion_id=…`, or `GET /status` with `{"ingestion_id": …}`.
///
/// The body form is read whatever its Content-Type: some existing clients send
/// it without one, and a read cannot be abused the way a cross-site POST can.
#[utoipa::path(
    get,
    path = "/status",
    tag = "requests",
    operation_id = "get_status_by_query_or_body",
    summary = "A request's status, its id in the query or in a JSON body",
    description = "The same answer as `GET /status/{ingestion_id}`, for clients that name the \
        request with `?ingestion_id=…`, or with the JSON body `{\"ingestion_id\": \"…\"}` \
        (read whatever its Content-Type). The query wins when both are given.",
    params(StatusQuery),
    // A `ref`, not the type, so that the body is documented as optional.
    request_body(
        content = ref("#/components/schemas/StatusRequest"),
        content_type = "application/json",
        description = "Instead of the query: the request's id in a JSON body, of at most 64 KiB.",
    ),
    security((), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "The request, with every batch.", body = StatusResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = ValidationFailed),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn status_by_query_or_body(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let body = body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "a GET /status body is at most {} KiB; name the ingestion in the path instead",
                STATUS_BODY_LIMIT / 1024
            ))
        } else {
            super::body::body_error(rejection)
        }
    })?;
    if let Some(id) = query.ingestion_id {
        return lookup(&app, &caller, &id).await;
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "name the ingestion: /status/{id}, /status?ingestion_id={id}, \
             or a JSON body {\"ingestion_id\": \"…\"}",
        ));
    }
    let StatusBody { ingestion_id } = parse_json(&body)?;
    match ingestion_id {
        Some(id) => lookup(&app, &caller, &id).await,
        None => Err(ApiError::validation(vec![FieldError::new(
            "ingestion_id",
            "is required, as a string",
        )])),
    }
}

/// The largest body `GET /status` reads: an id needs 50 bytes, and a read is
/// never shed, so it must not be a way to make the server buffer megabytes.
pub(crate) const STATUS_BODY_LIMIT: usize = 64 * 1024;

/// The body of `GET /status`, as JSON that names the request. Anything that
/// is not an object, or whose `ingestion_id` is not a string, names none. As
/// with any JSON object read into a map, a repeated member counts once, the
/// last time.
struct StatusBody {
    ingestion_id: Option<String>,
}

impl StatusBody {
    const NONE: Self = Self { ingestion_id: None };
}

impl<'de> Deserialize<'de> for StatusBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> serde::de::Visitor<'de> for BodyVisitor {
            type Value = StatusBody;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object with `ingestion_id`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StatusBody, A::Error> {
                let mut ingestion_id = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "ingestion_id" {
                        ingestion_id = match map.next_value::<StringField>()? {
                            StringField::Str(id) => Some(id.into_owned()),
                            StringField::Null | StringField::Other => None,
                        };
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(StatusBody { ingestion_id })
            }
            // Any other JSON value is read past: it names nothing.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StatusBody, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(StatusBody::NONE)
            }
            fn visit_str<E>(self, _: &str) -> Result<StatusBody, E> {
                Ok(StatusBody::NONE)
            }
            fn visit_u64<E>(self, _: u64) -> Result<StatusBody, E> {
                Ok(StatusBody::NONE)
            }
            fn visit_i64<E>(self, _: i64) -> Result<StatusBody, E> {
                Ok(StatusBody::NONE)
            }
            fn visit_f64<E>(self, _: f64) -> Result<StatusBody, E> {
                Ok(StatusBody::NONE)
            }
            fn visit_bool<E>(self, _: bool) -> Result<StatusBody, E> {
                Ok(StatusBody::NONE)
            }
            fn visit_unit<E>(self) -> Result<StatusBody, E> {
                Ok(StatusBody::NONE)
            }
        }
        d.deserialize_any(BodyVisitor)
    }
}

/// Batches in the first read of a status answer: most requests fit, and so
/// are answered from one read.
const FIRST_PAGE: usize = 256;
/// Batches read at a time for a larger answer, streamed as they are read.
const STREAM_PAGE: usize = 1000;

async fn lookup(app: &AppState, caller: &Caller, raw_id: &str) -> Result<Response, ApiError> {
    let id = parse_ingestion_id(raw_id)?;
    let first = app
        .store
        .ingestion_page(id, None, FIRST_PAGE)
        .await?
        // Another tenant's request is answered as an unknown one.
        .filter(|record| caller.may_see(record.tenant.as_ref()))
        .ok_or_else(|| unknown_ingestion(raw_id))?;
    if first.batches.len() < FIRST_PAGE {
        let ranking = ranking(app, &first);
        return Ok(Json(StatusResponse::of(first, ranking)).into_response());
    }
    streamed(app.clone(), first).await
}

/// The status answer of a request with many batches, in constant memory: a
/// first pass over its batches, page by page, counts them; a second streams
/// them out. The JSON is the same as a small answer's, byte for byte. A batch
/// that moves on between the passes shows its newer status in `batches`,
/// while the counts and the overall status are those of the first pass.
async fn streamed(app: AppState, first: IngestionRecord) -> Result<Response, ApiError> {
    let id = first.id;
    let ranking = ranking(&app, &first);
    let mut counts = BatchCounts::default();
    let mut seen: Vec<BatchStatus> = Vec::new();
    let mut page = first.batches;
    let mut asked = FIRST_PAGE;
    loop {
        for batch in &page {
            counts.add(batch.status, 1);
            if !seen.contains(&batch.status) {
                seen.push(batch.status);
            }
        }
        let Some(last) = page.last().map(|b| b.id.position) else {
            break;
        };
        if page.len() < asked {
            break;
        }
        asked = STREAM_PAGE;
        page = app
            .store
            .ingestion_page(id, Some(last), STREAM_PAGE)
            .await?
            .map(|record| record.batches)
            .unwrap_or_default();
    }
    let status = IngestionStatus::derive(seen);
    let head = StatusHead {
        summary: StatusSummary {
            ingestion_id: id,
            status,
            priority: first.priority,
            queue: first.queue.clone(),
            tenant: first.tenant.clone(),
            group: first.group.clone(),
            created_at: first.created_at,
            completed_at: first.finished_at.filter(|_| status.is_final()),
            batch_counts: counts,
        },
        callback: first.callback.map(CallbackView::from),
    };
    let mut opening = serde_json::to_vec(&head)
        .map_err(|e| ApiError::internal(format!("cannot write the answer: {e}")))?;
    // `{…}` becomes `{…,"batches":[`, as `StatusResponse` writes it.
    opening.pop();
    opening.extend_from_slice(br#","batches":["#);

    let pages = futures_util::stream::unfold(Some((app, None::<u32>)), move |next| async move {
        let (app, after) = next?;
        let page = match app.store.ingestion_page(id, after, STREAM_PAGE).await {
            Ok(record) => record.map(|r| r.batches).unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, ingestion_id = %id, "a status answer was cut: cannot read");
                return Some((Err(std::io::Error::other(error)), None));
            }
        };
        let mut chunk = Vec::with_capacity(page.len() * 256);
        let last = page.last().map(|b| b.id.position);
        let full = page.len() == STREAM_PAGE;
        for batch in page {
            if after.is_some() || !chunk.is_empty() {
                chunk.push(b',');
            }
            // Our types always serialize.
            let _ = serde_json::to_writer(&mut chunk, &BatchView::of(batch, ranking));
        }
        let next = match (full, last) {
            (true, Some(last)) => Some((app, Some(last))),
            _ => {
                chunk.extend_from_slice(b"]}");
                None
            }
        };
        Some((Ok(Bytes::from(chunk)), next))
    });
    let body = futures_util::stream::once(async move { Ok(Bytes::from(opening)) }).chain(pages);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

/// How `record`'s waiting batches rank now, under its queue's order.
fn ranking(app: &AppState, record: &IngestionRecord) -> Ranking {
    let queue = app.queues.get(record.queue.as_str());
    Ranking::of(
        record,
        queue.as_ref().map(|q| &q.settings.order),
        app.clock.now(),
    )
}

/// Everything of a status answer before its batches.
#[derive(Serialize)]
struct StatusHead {
    #[serde(flatten)]
    summary: StatusSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback: Option<CallbackView>,
}

/// An ingestion id from a URL or body; a malformed one is as unknown as a
/// missing one (404).
pub fn parse_ingestion_id(raw_id: &str) -> Result<IngestionId, ApiError> {
    raw_id.trim().parse().map_err(|_| unknown_ingestion(raw_id))
}

pub fn unknown_ingestion(raw_id: &str) -> ApiError {
    ApiError::not_found(format!("no ingestion with id {raw_id:?}"))
}
