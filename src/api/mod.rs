//! The HTTP API of SPEC.md, on axum.

pub mod auth;
mod body;
mod dashboard;
pub mod error;
mod events;
pub mod host;
mod ingest;
mod ingestions;
pub mod limits;
mod openapi;
mod ops;
mod path;
mod queues;
pub mod serve;
mod status;

use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::error::ApiError;
use tokio_util::sync::CancellationToken;

use crate::domain::Clock;
use crate::metrics::{Metrics, ResponseLabels, RouteLabels};
use crate::queue::Queues;
use crate::signals::Signals;
use crate::store::SharedStore;

pub use ingest::IngestResponse;
pub use status::{Ranking, StatusResponse, StatusSummary};

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
    /// Tells the dispatcher of new work, the callback sender of ended
    /// requests, and live streams of new events.
    pub signals: Signals,
    /// What `/metrics` serves.
    pub metrics: Arc<Metrics>,
    /// The service's clock, shared with the dispatcher.
    pub clock: Clock,
    /// The configured queues; a request names one (`default` if none).
    pub queues: Queues,
    pub limits: ApiLimits,
    /// Cancelled when the service shuts down: ends live streams, which would
    /// otherwise hold their connections open.
    pub shutdown: CancellationToken,
    /// Overload protection: concurrent writes, request time, queue size.
    pub overload: limits::Limits,
    /// The API keys, when `--api-keys-file` is given.
    pub api_keys: Option<Arc<auth::ApiKeys>>,
    /// Without API keys, the `Host` names served (DNS rebinding protection);
    /// `None` when keys are configured.
    pub allowed_hosts: Option<Arc<host::AllowedHosts>>,
    /// How long an `Idempotency-Key` holds.
    pub idempotency_ttl: std::time::Duration,
    /// Which background parts are down: `/readyz` is 503 while any is.
    pub supervision: crate::supervisor::Supervision,
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
    let (api, document) = documented_routes(Some(&state)).split_for_parts();
    let roles = Arc::new(auth::Roles::from_document(&document));
    api.route("/", get(dashboard::index))
        .route("/dashboard/{*path}", get(dashboard::asset))
        .merge(openapi::routes(document))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::shed_writes,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::time_limit,
        ))
        .layer(middleware::from_fn_with_state(
            (state.clone(), roles),
            auth::require_key,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            host::require_allowed_host,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::internal(
                "the server failed while answering; nothing was acknowledged",
            ))
        }))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            body::drain_unread_body,
        ))
        .with_state(state)
}

/// The API document, as `/openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    documented_routes(None).into_openapi()
}

/// Every operation of the API, each registered with its document: the
/// handler's `#[utoipa::path]` gives both its route and its OpenAPI entry.
/// `state` is what the routes' own layers need; without it they are left
/// out, which changes nothing in the document.
fn documented_routes(state: Option<&AppState>) -> OpenApiRouter<AppState> {
    // Layers that belong to one route go on its method router.
    let (schemas, paths, mut ingest) = routes!(ingest::ingest);
    if let Some(state) = state {
        ingest = ingest.layer(middleware::from_fn_with_state(
            state.clone(),
            limits::queue_room,
        ));
    }
    let (status_schemas, status_paths, status_read) = routes!(status::status_by_query_or_body);
    let status_read = status_read.layer(DefaultBodyLimit::max(status::STATUS_BODY_LIMIT));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes((schemas, paths, ingest))
        .routes((status_schemas, status_paths, status_read))
        .routes(routes!(status::status_by_path))
        .routes(routes!(events::ingestion_events))
        .routes(routes!(events::all_events))
        .routes(routes!(ops::list))
        .routes(routes!(ingestions::cancel))
        .routes(routes!(ingestions::cancel_by_post))
        .routes(routes!(ingestions::results))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::stats))
        .routes(routes!(queues::list))
        .routes(routes!(queues::show, queues::change))
        .routes(routes!(queues::pause))
        .routes(routes!(queues::resume))
}

/// Counts and times every routed request, and logs one line for it.
async fn observe(
    State(app): State<AppState>,
    route: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let route = route.as_str().to_owned();
    app.metrics
        .http_latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());
    // The access log: one line per request, under its own target so that
    // `RUST_LOG=info,sluice::access=off` drops it where its cost matters (a
    // sixth of the runtime's CPU at tens of thousands of requests a second, see
    // docs/performance.md); the metrics above count every request anyway.
    let ingestion_id = response
        .extensions()
        .get::<ingest::LoggedIngestion>()
        .map(|logged| tracing::field::display(logged.0));
    let micros = elapsed.as_micros() as u64;
    if status >= 500 {
        tracing::error!(target: "sluice::access", %method, %route, status, micros, ingestion_id, "request");
    } else {
        tracing::info!(target: "sluice::access", %method, %route, status, micros, ingestion_id, "request");
    }
    app.metrics
        .http_requests
        .get_or_create(&ResponseLabels {
            method,
            route,
            status,
        })
        .inc();
    response
}
