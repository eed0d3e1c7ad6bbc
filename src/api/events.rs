//! Live progress as Server-Sent Events: `GET /status/{id}/events` for one
//! request, `GET /events` for everything (the dashboard).
//!
//! The events table is the source; a signal only says "read again". So a
//! client that reconnects with `Last-Event-ID` gets every event it missed, and
//! a stream on one node sees events made on another (by notification, or by
//! the one-second poll that backs it up).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::error::{BadRequest, Internal, NotFound, RequestTimeout, Unauthorized, Unavailable};
use super::ingestions::visible_to;
use super::path::PathParam;
use super::status::{parse_ingestion_id, unknown_ingestion};
use crate::domain::{BatchId, BatchStatus, IngestionId, IngestionStatus, TenantName, Timestamp};
use crate::store::{Event, EventSubject};

/// Events read from the store at a time.
const PAGE: usize = 500;
/// How often a stream looks for events without being told (other nodes).
const POLL: Duration = Duration::from_secs(1);

/// The `data` of a `batch` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchEvent {
    pub ingestion_id: IngestionId,
    pub batch_id: BatchId,
    /// The batch's new status.
    #[schema(value_type = BatchStatus)]
    pub status: &'static str,
    pub at: Timestamp,
}

/// The `data` of an `ingestion` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestionEvent {
    pub ingestion_id: IngestionId,
    /// The request's new status.
    #[schema(value_type = IngestionStatus)]
    pub status: &'static str,
    pub at: Timestamp,
}

fn to_sse(event: &Event) -> SseEvent {
    let sse = SseEvent::default().id(event.seq.to_string());
    let sse = match event.subject {
        EventSubject::Batch { position, status } => sse.event("batch").json_data(BatchEvent {
            ingestion_id: event.ingestion,
            batch_id: BatchId {
                ingestion: event.ingestion,
                position,
            },
            status: status.as_str(),
            at: event.at,
        }),
        EventSubject::Ingestion { status } => sse.event("ingestion").json_data(IngestionEvent {
            ingestion_id: event.ingestion,
            status: status.as_str(),
            at: event.at,
        }),
    };
    // Our event types always serialize.
    sse.unwrap_or_default()
}

/// Tells a resuming client that the events before `first_kept` are gone. Its
/// id is the one just before, so a client that reconnects after it is not
/// told again.
fn lost_event(first_kept: u64) -> SseEvent {
    SseEvent::default()
        .id((first_kept - 1).to_string())
        .event("lost")
        .json_data(LostEvents {
            first_kept_event_id: first_kept,
        })
        .unwrap_or_default()
}

/// The header a reconnecting client sends, for the API document only.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Never built: `last_event_id` reads the header.
pub struct ResumeHeaders {
    /// Resume after this event's `id`: every later event is sent.
    #[param(rename = "Last-Event-ID", value_type = u64, required = false)]
    last_event_id: Option<u64>,
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID: send back an event's id"))
        })
        .transpose()
}

/// How the two streams' events look, for the API document (OpenAPI 3.1 cannot
/// describe the events of a stream in its schema).
pub const EVENTS_FORMAT: &str = "Server-Sent Events, two types:\n\n\
    - `event: batch`: a batch changed status; `data` is a `BatchEvent` \
    (`{\"ingestion_id\", \"batch_id\", \"status\", \"at\"}`).\n\
    - `event: ingestion`: a request changed status; `data` is an `IngestionEvent` \
    (`{\"ingestion_id\", \"status\", \"at\"}`).\n\n\
    Each event's `id` is its sequence number, increasing in commit order. A client that \
    reconnects with `Last-Event-ID: <id>` receives every event after it, so it loses no \
    transition. Comments (`:`) keep an idle connection alive.\n\n\
    On `GET /events`, a `Last-Event-ID` older than the oldest event still kept (older ones \
    are pruned with their requests, see `--retention`) is first answered with \
    `event: lost`, whose `data` is a `LostEvents` (`{\"first_kept_event_id\"}`) and whose \
    `id` is the one just before it; then every kept event follows.";

/// The `data` of a `lost` event: events after the client's `Last-Event-ID`
/// were pruned, and the stream goes on from this one.
#[derive(Debug, Serialize, ToSchema)]
pub struct LostEvents {
    pub first_kept_event_id: u64,
}

/// `GET /status/{id}/events`: every status change of the request and of its
/// batches, in order, from the start (or after `Last-Event-ID`); the stream
/// ends after the request ends.
#[utoipa::path(
    get,
    path = "/status/{ingestion_id}/events",
    tag = "live",
    operation_id = "ingestion_events",
    summary = "Live progress of one request (Server-Sent Events)",
    description = "Every status change of the request and of its batches, in order, from the \
        start (or after `Last-Event-ID`). The stream ends after the event that ends the \
        request (`completed`, `failed` or `cancelled`), or when the service shuts down.",
    params(
        ("ingestion_id" = String, Path, description = "The request's id (a malformed or unknown id answers 404)."),
        ResumeHeaders,
    ),
    security((), ("api_key" = ["read"])),
    responses(
        (status = 200, description = EVENTS_FORMAT, content((String = "text/event-stream"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn ingestion_events(
    State(app): State<AppState>,
    caller: Caller,
    PathParam(raw_id): PathParam,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id = parse_ingestion_id(&raw_id)?;
    let after = last_event_id(&headers)?.unwrap_or(0);
    if caller.tenant().is_some() {
        visible_to(&app, &caller, id, &raw_id).await?;
    } else {
        app.store
            .batch_outcomes(id, None, 1)
            .await?
            .ok_or_else(|| unknown_ingestion(&raw_id))?;
    }
    let slot = stream_slot(&app)?;
    let of = Of::Ingestion(id);
    Ok(Sse::new(events(app, of, after, slot)).keep_alive(KeepAlive::default()))
}

/// `GET /events`: every status change in the service, from now (or after
/// `Last-Event-ID`).
#[utoipa::path(
    get,
    path = "/events",
    tag = "live",
    operation_id = "all_events",
    summary = "Live progress of every request (Server-Sent Events)",
    description = "Every status change in the service, from now (or after `Last-Event-ID`), \
        until the service shuts down. What the dashboard follows.",
    params(ResumeHeaders),
    security((), ("api_key" = ["read"])),
    responses(
        (status = 200, description = EVENTS_FORMAT, content((String = "text/event-stream"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 408, response = RequestTimeout),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn all_events(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let resumed = last_event_id(&headers)?;
    let after = match resumed {
        Some(after) => after,
        None => app.store.latest_event().await?,
    };
    // A stream of one request needs no such check: a request is pruned whole,
    // so the events of one that is still there are all kept.
    let lost = match resumed {
        Some(after) => app
            .store
            .oldest_event()
            .await?
            .filter(|&oldest| oldest > after.saturating_add(1))
            .map(lost_event),
        None => None,
    };
    let slot = stream_slot(&app)?;
    // A tenant's key follows only its tenant's requests.
    let of = match caller.tenant {
        Some(tenant) => Of::Tenant(tenant),
        None => Of::All,
    };
    let stream = stream::iter(lost.map(Ok)).chain(events(app, of, after, slot));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A place among the `--max-event-streams` open streams, held while the
/// stream lives: each one polls the store and holds a connection.
fn stream_slot(app: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    Arc::clone(&app.overload.event_streams)
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::unavailable(
                "too many live event streams are open (--max-event-streams); retry shortly",
                STREAM_RETRY_AFTER_SECS,
            )
        })
}

/// When a refused stream should try again: streams last minutes, not
/// milliseconds.
const STREAM_RETRY_AFTER_SECS: u64 = 5;

/// Whose events a stream carries.
enum Of {
    All,
    Ingestion(IngestionId),
    /// Those of one tenant's requests.
    Tenant(TenantName),
}

struct Cursor {
    app: AppState,
    of: Of,
    after: u64,
    ended: bool,
    _slot: OwnedSemaphorePermit,
}

/// Events after `after`, as they are stored; for one request, until it ends.
/// Every stream ends when the service shuts down.
fn events(
    app: AppState,
    of: Of,
    after: u64,
    slot: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let cursor = Cursor {
        app,
        of,
        after,
        ended: false,
        _slot: slot,
    };
    stream::unfold(cursor, |mut cursor| async move {
        if cursor.ended {
            return None;
        }
        loop {
            // Armed before reading, so an event stored meanwhile wakes us.
            let stored = cursor.app.signals.next_events();
            let store = &cursor.app.store;
            let page = match &cursor.of {
                Of::All => store.events_after(cursor.after, None, PAGE).await,
                Of::Ingestion(id) => store.events_after(cursor.after, Some(*id), PAGE).await,
                Of::Tenant(tenant) => store.tenant_events_after(cursor.after, tenant, PAGE).await,
            };
            match page {
                Ok(mut page) if !page.is_empty() => {
                    if matches!(cursor.of, Of::Ingestion(_))
                        && let Some(end) = page.iter().position(is_request_end)
                    {
                        page.truncate(end + 1);
                        cursor.ended = true;
                    }
                    cursor.after = page.last().map_or(cursor.after, |e| e.seq);
                    let items: Vec<_> = page.iter().map(|e| Ok(to_sse(e))).collect();
                    return Some((stream::iter(items), cursor));
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot read events"),
            }
            tokio::select! {
                _ = cursor.app.shutdown.cancelled() => return None,
                _ = stored => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    })
    .flatten()
}

fn is_request_end(event: &Event) -> bool {
    matches!(event.subject, EventSubject::Ingestion { status } if status.is_final())
}
