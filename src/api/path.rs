//! The one path parameter of Sluice's routes (an id, or a dashboard asset's
//! name), read so that any bytes get a problem document.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::ApiError;

/// A route's path parameter, percent-decoded.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(param)) => Ok(Self(param)),
            // Not UTF-8 once decoded: no id and no asset is named so. axum's
            // own answer would be a plain-text 400.
            Err(rejection) => Err(ApiError::not_found(format!(
                "nothing is named so here: {}",
                rejection.body_text()
            ))),
        }
    }
}
