//! The dashboard at `/`: static assets compiled into the binary.

use axum::response::{Html, IntoResponse, Response};

pub async fn index() -> Response {
    Html("<!doctype html><title>Sluice</title><p>Dashboard coming.</p>").into_response()
}
