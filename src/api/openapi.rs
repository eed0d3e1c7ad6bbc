//! The OpenAPI 3.1 document of the API, served at `/openapi.json`; and
//! Swagger UI to read it at `/docs`, every asset compiled into the binary (no
//! CDN).
//!
//! This module holds the document's frame: its description, security scheme,
//! tags and shared components. Its operations come from the handlers'
//! `#[utoipa::path]` annotations as `api::router` registers each route (with
//! utoipa-axum), so a route and its document are declared once and cannot
//! drift; the error responses live beside `ApiError`.
//!
//! `tests/api/openapi.rs` keeps `docs/openapi.json` equal to the document, and
//! checks real answers against it.

use axum::Router;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::error::{
    ApiError, BadRequest, FieldError, Forbidden, Internal, NotFound, PayloadTooLarge, QueueFull,
    RequestTimeout, Unauthorized, Unavailable, UnsupportedMediaType, ValidationFailed,
};
use super::events::{BatchEvent, IngestionEvent, LostEvents};
use super::status::StatusRequest;

/// The document's `info.description`.
const DESCRIPTION: &str = "\
Sluice ingests lists of ids on behalf of its clients. Each request carries a priority; Sluice \
splits it into small batches and fetches every id from an upstream API, never faster than the \
upstream's rate limit allows, always taking the most urgent work first: `HIGH`, then `MEDIUM`, \
then `LOW`; within a priority, the request that arrived first. A request is acknowledged only \
once it and all its batches are on disk.

A request may name a `queue` (`GET /queues` lists them): each queue has its own rate limit, \
in-flight limit and upstream, and its own priority order; queues never wait for each other.

Submit with `POST /ingest`; follow a request with `GET /status/{ingestion_id}`, or live with \
`GET /status/{ingestion_id}/events` (Server-Sent Events); read every id's outcome with \
`GET /ingestions/{ingestion_id}/results`.

Every error is an RFC 9457 problem document (`application/problem+json`, schema `Problem`) \
whose `type` is a stable `urn:sluice:problem:<slug>`; invalid input lists every offending \
field in `errors`. A client's input never causes a 5xx: 503 means Sluice cannot take the \
request now (the store is unavailable, or too many writes are in progress) and nothing was \
changed, so retry after `Retry-After`; 500 means Sluice itself failed. Any unknown path answers \
404, and a known path with another method 405 (`method-not-allowed`), both as problem \
documents.

With `--api-keys-file`, every endpoint but `/healthz` needs a key (`Authorization: Bearer \
<key>`, scheme `api_key`) whose role allows it: `read` for every GET, `submit` also for \
`POST /ingest`, `admin` also for cancelling and for the queue controls. Without the file every endpoint is open, which is \
why each operation also accepts no key at all.";

#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice", version = env!("CARGO_PKG_VERSION"), description = DESCRIPTION),
    components(
        schemas(ApiError, FieldError, BatchEvent, IngestionEvent, LostEvents, StatusRequest),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            RequestTimeout,
            PayloadTooLarge,
            UnsupportedMediaType,
            ValidationFailed,
            QueueFull,
            Internal,
            Unavailable,
        ),
    ),
    modifiers(&ApiKeys),
    tags(
        (name = "requests", description = "Submit requests, follow them, read their results, cancel them."),
        (name = "live", description = "Live progress as Server-Sent Events."),
        (name = "operations", description = "Health, readiness, metrics and the queue at a glance."),
        (name = "queues", description = "Named queues, each with its own rate and limits: their state, and an operator's controls."),
    ),
)]
pub struct ApiDoc;

/// The `api_key` security scheme, which the derive cannot declare.
struct ApiKeys;

impl Modify for ApiKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A key from `--api-keys-file`, each with a role: `read` (every GET), `submit` \
                 (read, and `POST /ingest`) or `admin` (submit, cancelling, and the queue controls). Operations \
                 name the role they need. A key may also name a tenant: it then sees and acts on only \
                 its tenant's requests (another tenant's answer 404, as unknown ones), lists and \
                 streams show only its own, and its `Idempotency-Key`s are its own. Operations whose \
                 requirement also names `operator` (metrics, stats, the queues) need a key without a \
                 tenant: a tenant's key gets 403.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_key", SecurityScheme::Http(scheme));
    }
}

/// `/openapi.json` serving `document`, and Swagger UI at `/docs` (`/docs`
/// redirects to `/docs/`).
pub fn routes<S: Clone + Send + Sync + 'static>(document: utoipa::openapi::OpenApi) -> Router<S> {
    SwaggerUi::new("/docs")
        .url("/openapi.json", document)
        .into()
}

/// A string schema that allows only these values.
pub fn string_enum(values: &[&str]) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}
