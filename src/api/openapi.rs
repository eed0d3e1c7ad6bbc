//! The OpenAPI 3.1 document of the API, generated from the handlers'
//! `#[utoipa::path]` annotations and the response types' schemas, served at
//! `/openapi.json`; and Swagger UI to read it at `/docs`, every asset compiled
//! into the binary (no CDN).
//!
//! `tests/api/openapi.rs` keeps `docs/openapi.json` equal to the document, and
//! checks real answers against it.

use axum::Router;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AllOfBuilder, ArrayBuilder, Object, ObjectBuilder, Ref, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr};
use utoipa::{Modify, OpenApi, ToResponse};
use utoipa_swagger_ui::SwaggerUi;

use super::error::{ApiError, FieldError};
use super::events::{BatchEvent, IngestionEvent, LostEvents};
use super::status::StatusRequest;
use super::{events, ingest, ingestions, ops, queues, status};

/// The document's `info.description`.
const DESCRIPTION: &str = "\
Sluice ingests lists of ids on behalf of its clients. Each request carries a priority; Sluice \
splits it into small batches and fetches every id from an upstream API, never faster than the \
upstream's rate limit allows, always taking the most urgent work first: `HIGH`, then `MEDIUM`, \
then `LOW`; within a priority, the request that arrived first. A request is acknowledged only \
once it and all its batches are on disk.

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
    paths(
        ingest::ingest,
        status::status_by_path,
        status::status_by_query_or_body,
        events::ingestion_events,
        events::all_events,
        ops::list,
        ingestions::cancel,
        ingestions::cancel_by_post,
        ingestions::results,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::stats,
        queues::list,
        queues::show,
        queues::pause,
        queues::resume,
        queues::change,
    ),
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
                 name the role they need.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_key", SecurityScheme::Http(scheme));
    }
}

/// `/openapi.json` and Swagger UI at `/docs` (`/docs` redirects to `/docs/`).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    SwaggerUi::new("/docs")
        .url("/openapi.json", ApiDoc::openapi())
        .into()
}

/// A string schema that allows only these values.
pub fn string_enum(values: &[&str]) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

/// A problem document answered with `status`, whose `type` is one of `slugs`.
fn problem(description: &str, status: u16, slugs: &[&str]) -> ResponseBuilder {
    problem_with(description, status, slugs, ObjectBuilder::new())
}

/// [`problem`], with more constraints on the document in `extra`.
fn problem_with(
    description: &str,
    status: u16,
    slugs: &[&str],
    extra: ObjectBuilder,
) -> ResponseBuilder {
    let types: Vec<String> = slugs
        .iter()
        .map(|slug| format!("urn:sluice:problem:{slug}"))
        .collect();
    let this_status = extra
        .property(
            "type",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(types)),
        )
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([status])),
        );
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name("Problem"))
        .item(this_status);
    ResponseBuilder::new().description(description).content(
        "application/problem+json",
        ContentBuilder::new().schema(Some(schema)).build(),
    )
}

/// Declares a reusable error response: `components.responses.<name>`.
macro_rules! error_response {
    ($(#[$doc:meta])* $name:ident => $build:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                let response: ResponseBuilder = $build;
                (stringify!($name), response.build().into())
            }
        }
    };
}

error_response! {
    /// 400: the body is not JSON (or is empty), or the query is malformed.
    BadRequest => problem(
        "The body is not valid JSON or is empty (`invalid-json`), or the query, a header or \
         the body cannot be read as this operation expects (`bad-request`).",
        400,
        &["invalid-json", "bad-request"],
    )
}

error_response! {
    /// 401: keys are required, and none or an unknown one was sent.
    Unauthorized => problem(
        "API keys are configured (`--api-keys-file`) and the request sent no key, or an \
         unknown one.",
        401,
        &["unauthorized"],
    )
    .header(
        "WWW-Authenticate",
        HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .description(Some("`Bearer realm=\"sluice\"`"))
            .build(),
    )
}

error_response! {
    /// 403: the key's role does not allow this operation.
    Forbidden => problem(
        "The key is known, but its role does not allow this operation.",
        403,
        &["forbidden"],
    )
}

error_response! {
    /// 404: no such request.
    NotFound => problem(
        "No request has this id; a malformed id is as unknown as a missing one.",
        404,
        &["not-found"],
    )
}

error_response! {
    /// 408: the request took longer than `--request-timeout`.
    RequestTimeout => problem(
        "The request, reading its body included, took longer than `--request-timeout` (30 s by \
         default). A live event stream, once started, is not cut.",
        408,
        &["request-timeout"],
    )
}

error_response! {
    /// 413: the body, or the number of ids, is over the configured limit.
    PayloadTooLarge => problem(
        "The body is larger than `--max-body-bytes` (16 MiB by default), or carries more ids \
         than `--max-ids-per-request` (1,000,000 by default). Nothing was stored.",
        413,
        &["too-large"],
    )
}

error_response! {
    /// 415: a body that is not `application/json`.
    UnsupportedMediaType => problem(
        "The Content-Type is missing or not `application/json`. The rule is strict on \
         purpose: it keeps browsers on other sites from posting forms to Sluice.",
        415,
        &["unsupported-media-type"],
    )
}

error_response! {
    /// 422: valid JSON that breaks the API's rules.
    ValidationFailed => problem_with(
        "Valid JSON that breaks the API's rules, or an `Idempotency-Key` that is malformed or \
         was used with another body. `errors` lists every offending field (at most 10 ids, \
         then a count of the others). Nothing was stored.",
        422,
        &["validation"],
        ObjectBuilder::new()
            .property(
                "errors",
                ArrayBuilder::new()
                    .items(Ref::from_schema_name("FieldError"))
                    .min_items(Some(1)),
            )
            .required("errors"),
    )
}

error_response! {
    /// 429: the queue is full.
    QueueFull => problem(
        "The queue holds `--max-queued-ids` ids or more: nothing was stored. Retry once it \
         has drained, after `Retry-After` seconds.",
        429,
        &["queue-full"],
    )
    .header("Retry-After", retry_after())
}

error_response! {
    /// 500: Sluice failed; never caused by a client's input.
    Internal => problem(
        "Sluice failed while answering (for example, the store holds data this version \
         cannot read). Never caused by the request's content.",
        500,
        &["internal"],
    )
}

error_response! {
    /// 503: the store is unavailable; nothing was changed.
    Unavailable => problem(
        "The store is unavailable or not ready, or too many writes are being answered at \
         once (`--max-concurrent-writes`): nothing was changed. Retry after `Retry-After` \
         seconds.",
        503,
        &["unavailable"],
    )
    .header("Retry-After", retry_after())
}

fn retry_after() -> Header {
    HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        ))
        .description(Some("Seconds to wait before retrying."))
        .build()
}
