//! Reading JSON bodies with the contract's errors: 415 for a wrong
//! Content-Type, 413 past the size limit, 400 for empty or broken JSON, 422 for
//! JSON of the wrong shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body sent with `Content-Type: application/json`.
///
/// The Content-Type rule is strict on purpose: a browser on another site can
/// post a form (`text/plain`, `application/x-www-form-urlencoded`) to a local
/// Sluice without asking, but not `application/json`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json_content_type(req.headers())?;
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::unsupported_media_type(
            "no Content-Type; send application/json",
        ));
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(format!(
            "got {:?}; send application/json",
            String::from_utf8_lossy(value.as_bytes())
        )))
    }
}

/// The whole body, within the router's size limit.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(body_error)
}

/// Why a body could not be read, as the contract answers it.
pub fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large("the body is larger than the configured limit (--max-body-bytes)")
    } else {
        ApiError::bad_request(format!("cannot read the body: {rejection}"))
    }
}

/// Reads a JSON body: `400` when it is not JSON at all, `422` when it is JSON
/// of the wrong shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // JSON is UTF-8 (RFC 8259), and serde_json does not check the values it
    // skips (unknown fields), so check it here.
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::invalid_json(format!("the body is not UTF-8: {e}")))?;
    if text.trim_ascii().is_empty() {
        return Err(ApiError::invalid_json("the body is empty"));
    }
    serde_json::from_str(text).map_err(|e| match e.classify() {
        // serde stops at the first value of the wrong shape, maybe before a
        // syntax error further on (`[1, 1,1,` is a wrong type at byte 1): only
        // a body that is JSON throughout is a 422.
        serde_json::error::Category::Data => {
            match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => {
                    ApiError::validation(vec![super::error::FieldError::new("body", e.to_string())])
                }
                Err(syntax) => ApiError::invalid_json(syntax.to_string()),
            }
        }
        _ => ApiError::invalid_json(e.to_string()),
    })
}
