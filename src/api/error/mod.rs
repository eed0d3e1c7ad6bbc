//! The one error type of the HTTP edge: every failure a client sees is an
//! RFC 9457 problem document, built by one of the constructors below.
//!
//! Handlers return `Result<_, ApiError>`; library errors convert with `From`.
//! Client mistakes are 4xx; store trouble is 503 with `Retry-After`, so a client
//! can tell "fix your request" from "try again".

mod responses;

pub use responses::{
    BadRequest, Forbidden, Internal, NotFound, PayloadTooLarge, QueueFull, RequestTimeout,
    Unauthorized, Unavailable, UnsupportedMediaType, ValidationFailed,
};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// One offending field of a request, e.g. `ids[3]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field at fault: `ids`, `ids[3]`, `priority`, `Idempotency-Key`…
    pub field: String,
    /// What is wrong with it, and what is expected.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem document, served as `application/problem+json`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ApiError {
    /// What kind of problem: `urn:sluice:problem:<slug>`, stable for clients to
    /// match on.
    #[serde(rename = "type")]
    #[schema(
        pattern = "^urn:sluice:problem:[a-z-]+$",
        examples("urn:sluice:problem:validation")
    )]
    kind: String,
    /// A short, human-readable summary of the kind of problem.
    title: &'static str,
    /// The HTTP status, repeated.
    #[serde(serialize_with = "serialize_status")]
    #[schema(value_type = u16, minimum = 400, maximum = 599)]
    status: StatusCode,
    /// What went wrong with this request.
    detail: String,
    /// For invalid input: every offending field, each with a message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
}

fn serialize_status<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl ApiError {
    fn new(status: StatusCode, slug: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:sluice:problem:{slug}"),
            title,
            status,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_secs: None,
        }
    }

    pub fn invalid_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-json",
            "Body is not valid JSON",
            detail,
        )
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Content-Type must be application/json",
            detail,
        )
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "The request breaks the API's rules",
                detail,
            )
        }
    }

    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Request too large",
            detail,
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "API key required",
            detail,
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Not allowed for this key",
            detail,
        )
    }

    pub fn request_timeout(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timed out",
            detail,
        )
    }

    pub fn too_many_requests(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue-full",
                "Queue full",
                detail,
            )
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this path does not accept that method",
        )
    }

    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                detail,
            )
        }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A query string that does not parse is the client's mistake.
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) | StoreError::Closed => {
                tracing::error!(%error, "store error answered with 503");
                ApiError::unavailable("the store is unavailable; nothing was changed", 1)
            }
            StoreError::Corrupt(_) => {
                tracing::error!(%error, "store holds unexpected data");
                ApiError::internal("the store holds data this version cannot read")
            }
            // Only a write of what the request carries can be refused for
            // its content: the request is too large for the store.
            StoreError::Rejected(_) => {
                tracing::warn!(%error, "the store refused a request's content");
                ApiError::too_large("the store cannot hold this request; nothing was stored")
            }
        }
    }
}
