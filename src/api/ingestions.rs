//! `GET /ingestions/{id}/results` and cancelling: `DELETE /ingestions/{id}` or
//! `POST /ingestions/{id}/cancel`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::Object;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::error::{
    BadRequest, Forbidden, Internal, NotFound, RequestTimeout, Unauthorized, Unavailable,
};
use super::openapi::string_enum;
use super::path::PathParam;
use super::status::{StatusSummary, parse_ingestion_id, unknown_ingestion};
use crate::domain::{BatchId, BatchStatus, FetchFailure, IngestionId, ItemId, Outcome, Timestamp};
use crate::store::{BatchOutcomes, SharedStore};

/// Batches read from the store at a time while streaming: memory stays
/// bounded whatever the request's size.
const STREAM_PAGE: usize = 256;
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;

/// One id's outcome, as the results API serves it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultLine {
    pub id: ItemId,
    pub batch_id: BatchId,
    /// `ok` (with `data`), `error` (final, with `error`), `retrying` (a
    /// transient error, with `error`; it will be fetched again), `pending` (not
    /// fetched yet) or `cancelled`.
    #[schema(schema_with = outcome_names)]
    pub outcome: &'static str,
    /// With `ok`: the upstream's answer, as JSON when it was JSON, else as a
    /// string.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub data: Option<serde_json::Value>,
    /// With `error` and `retrying`: why the fetch failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = FetchFailure)]
    pub error: Option<FetchFailure>,
    /// How many times the id was fetched.
    pub attempts: u32,
    /// When the last fetch ended.
    #[schema(required = true)]
    pub at: Option<Timestamp>,
}

fn outcome_names() -> Object {
    string_enum(&["ok", "error", "retrying", "pending", "cancelled"])
}

fn lines(batch: BatchOutcomes) -> impl Iterator<Item = ResultLine> {
    let BatchOutcomes {
        id: batch_id,
        ids,
        status,
        outcomes,
    } = batch;
    let mut outcomes = outcomes.into_iter().peekable();
    ids.into_iter()
        .map(move |id| match outcomes.next_if(|o| o.id == id) {
            Some(done) => {
                let outcome = done.outcome.label();
                let (data, error) = match done.outcome {
                    Outcome::Ok { data } => (Some(data), None),
                    Outcome::Error { error } | Outcome::Retrying { error } => (None, Some(error)),
                };
                ResultLine {
                    id,
                    batch_id,
                    outcome,
                    data,
                    error,
                    attempts: done.attempts,
                    at: Some(done.at),
                }
            }
            None => ResultLine {
                id,
                batch_id,
                outcome: if status == BatchStatus::Cancelled {
                    "cancelled"
                } else {
                    "pending"
                },
                data: None,
                error: None,
                attempts: 0,
                at: None,
            },
        })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    /// `ndjson` streams every result, one JSON object a line.
    #[param(schema_with = ndjson_format)]
    format: Option<String>,
    /// Paginated JSON: the `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Paginated JSON: batches per page (1 to 10,000; default 1,000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000, default = 1000)]
    limit: Option<usize>,
}

fn ndjson_format() -> Object {
    let mut format = string_enum(&["ndjson"]);
    format.description = Some("`ndjson` streams every result, one JSON object a line.".into());
    format
}

/// One page of a request's results.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultsPage {
    pub ingestion_id: IngestionId,
    pub results: Vec<ResultLine>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Every id of a request with its outcome, in the request's order: as NDJSON
/// (`?format=ndjson` or `Accept: application/x-ndjson`), streamed in constant
/// memory, or as pages of JSON.
#[utoipa::path(
    get,
    path = "/ingestions/{ingestion_id}/results",
    tag = "requests",
    operation_id = "get_results",
    summary = "Every id of a request with its outcome",
    description = "In the request's order. As pages of JSON by default: `limit` batches a \
        page, and the page's `next_cursor` passed back as `cursor` for the next one. Or as \
        NDJSON, one `ResultLine` a line, streamed in constant memory, with `?format=ndjson` \
        or `Accept: application/x-ndjson`.",
    params(
        ("ingestion_id" = String, Path, description = "The request's id (a malformed or unknown id answers 404)."),
        ResultsQuery,
    ),
    security((), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "The results, as a page of JSON or as NDJSON.",
            content(
                (ResultsPage = "application/json"),
                (ResultLine = "application/x-ndjson"),
            )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn results(
    State(app): State<AppState>,
    caller: Caller,
    PathParam(raw_id): PathParam,
    query: Result<Query<ResultsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let id = parse_ingestion_id(&raw_id)?;
    visible_to(&app, &caller, id, &raw_id).await?;
    let wants_ndjson = query.format.as_deref() == Some("ndjson")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("application/x-ndjson"));
    if wants_ndjson {
        // Read the first page now, so that an unknown id is a 404, not an
        // empty stream.
        let first = app
            .store
            .batch_outcomes(id, None, STREAM_PAGE)
            .await?
            .ok_or_else(|| unknown_ingestion(&raw_id))?;
        return Ok(ndjson(app.store.clone(), id, first));
    }

    let after = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(
            cursor
                .parse::<u32>()
                .map_err(|_| ApiError::bad_request("cursor: use the next_cursor of a page"))?,
        ),
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: batches per page, from 1 to {MAX_PAGE}"
        )));
    }
    let page = app
        .store
        .batch_outcomes(id, after, limit)
        .await?
        .ok_or_else(|| unknown_ingestion(&raw_id))?;
    let next_cursor = (page.len() == limit)
        .then(|| page.last().map(|b| b.id.position.to_string()))
        .flatten();
    Ok(Json(ResultsPage {
        ingestion_id: id,
        results: page.into_iter().flat_map(lines).collect(),
        next_cursor,
    })
    .into_response())
}

fn ndjson(store: SharedStore, id: IngestionId, first: Vec<BatchOutcomes>) -> Response {
    let pages = stream::unfold(Some((first, store)), move |state| async move {
        let (page, store) = state?;
        if page.is_empty() {
            return None;
        }
        let mut text = String::new();
        let last = page.last().map(|b| b.id.position);
        let full = page.len() == STREAM_PAGE;
        for line in page.into_iter().flat_map(lines) {
            // A ResultLine always serializes.
            text.push_str(&serde_json::to_string(&line).unwrap_or_default());
            text.push('\n');
        }
        let next = if full {
            match store.batch_outcomes(id, last, STREAM_PAGE).await {
                Ok(Some(next)) => Some((next, store)),
                // The stream is already under way: all we can do is stop.
                Ok(None) | Err(_) => None,
            }
        } else {
            None
        };
        Some((Ok::<_, std::io::Error>(text), next))
    });
    let mut response = Body::from_stream(pages.boxed()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// The request after a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelResponse {
    #[serde(flatten)]
    pub summary: StatusSummary,
    /// How many batches this call cancelled (0 when repeated).
    pub cancelled_batches: u64,
}

/// Cancels the batches that have not started; a batch processing now
/// finishes. Cancelling twice is harmless.
#[utoipa::path(
    delete,
    path = "/ingestions/{ingestion_id}",
    tag = "requests",
    operation_id = "cancel",
    summary = "Cancel a request",
    description = CANCEL_DESCRIPTION,
    params(("ingestion_id" = String, Path, description = "The request's id (a malformed or unknown id answers 404).")),
    security((), ("api_key" = ["admin"])),
    responses(
        (status = 200, description = "The request after the cancel.", body = CancelResponse),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn cancel(
    State(app): State<AppState>,
    caller: Caller,
    PathParam(raw_id): PathParam,
) -> Result<Json<CancelResponse>, ApiError> {
    let id = parse_ingestion_id(&raw_id)?;
    // Another tenant's request is left as it is, and answered as unknown.
    visible_to(&app, &caller, id, &raw_id).await?;
    let cancelled = app
        .store
        .cancel_ingestion(id, app.clock.now())
        .await?
        .ok_or_else(|| unknown_ingestion(&raw_id))?;
    if cancelled > 0 {
        tracing::info!(ingestion_id = %id, batches = cancelled, "ingestion cancelled");
        app.signals.events_stored();
        app.signals.request_ended();
    }
    let record = app
        .store
        .ingestion(id)
        .await?
        .ok_or_else(|| unknown_ingestion(&raw_id))?;
    Ok(Json(CancelResponse {
        summary: StatusSummary::of(&record),
        cancelled_batches: cancelled,
    }))
}

const CANCEL_DESCRIPTION: &str = "Batches that have not started become `cancelled`; a batch \
    processing now finishes. Cancelling again is harmless (`cancelled_batches` is then 0). \
    `DELETE /ingestions/{ingestion_id}` and `POST /ingestions/{ingestion_id}/cancel` are the \
    same operation.";

/// `POST /ingestions/{id}/cancel`, for the API document: the router serves it
/// with [`cancel`], and one function can only describe one path.
#[utoipa::path(
    post,
    path = "/ingestions/{ingestion_id}/cancel",
    tag = "requests",
    operation_id = "cancel_by_post",
    summary = "Cancel a request (the POST form)",
    description = CANCEL_DESCRIPTION,
    params(("ingestion_id" = String, Path, description = "The request's id (a malformed or unknown id answers 404).")),
    security((), ("api_key" = ["admin"])),
    responses(
        (status = 200, description = "The request after the cancel.", body = CancelResponse),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn cancel_by_post(
    state: State<AppState>,
    caller: Caller,
    id: PathParam,
) -> Result<Json<CancelResponse>, ApiError> {
    cancel(state, caller, id).await
}

/// Fails with the unknown request's 404 unless `caller` may see request
/// `id`: a tenant's key sees only its tenant's requests, and cannot tell
/// another tenant's from one that never was. Reads nothing for a caller
/// without a tenant, who sees them all.
pub async fn visible_to(
    app: &AppState,
    caller: &Caller,
    id: IngestionId,
    raw_id: &str,
) -> Result<(), ApiError> {
    if caller.tenant().is_none() {
        return Ok(());
    }
    // The request without its batches.
    match app.store.ingestion_page(id, None, 0).await? {
        Some(record) if caller.may_see(record.tenant.as_ref()) => Ok(()),
        _ => Err(unknown_ingestion(raw_id)),
    }
}
