//! The error responses of the API document, one per problem the API
//! answers: each operation lists those it can give, by name.

use utoipa::ToResponse;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AllOfBuilder, ArrayBuilder, ObjectBuilder, Ref, Type};
use utoipa::openapi::{ContentBuilder, RefOr};

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
    /// 403: the key's role does not allow this operation, or the operation
    /// needs an operator's key and this one has a tenant.
    Forbidden => problem(
        "The key is known, but its role does not allow this operation, or the operation \
         needs an operator key (a key without a tenant).",
        403,
        &["forbidden"],
    )
}

error_response! {
    /// 404: no such request or queue.
    NotFound => problem(
        "No request has this id (a malformed id is as unknown as a missing one), or no queue \
         has this name.",
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
