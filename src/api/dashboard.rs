//! The dashboard at `/`: the static files of `assets/dashboard/`, compiled
//! into the binary (debug builds read them from disk, so an edit shows on
//! reload).
//!
//! Caching: the page itself is always revalidated (`no-cache` with an
//! `ETag`), and it names its scripts and styles with their content hash
//! (`/dashboard/app.js?v=…`), so those are cached for a year and a new binary
//! is picked up at once. An asset asked for without its current hash is
//! revalidated like the page.

use axum::extract::RawQuery;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::path::PathParam;

#[derive(RustEmbed)]
#[folder = "assets/dashboard/"]
struct Assets;

/// Where the page's assets are served; `index.html` refers to them by this
/// prefix.
const PREFIX: &str = "/dashboard/";
const INDEX: &str = "index.html";

/// No script, style, image or connection from anywhere but this server: the
/// dashboard needs no CDN, and injected markup could not run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `GET /`: the dashboard.
pub async fn index(headers: HeaderMap) -> Response {
    let Some(page) = Assets::get(INDEX) else {
        return ApiError::not_found("the dashboard is not in this build").into_response();
    };
    let mut html = String::from_utf8_lossy(&page.data).into_owned();
    for name in Assets::iter().filter(|name| name != INDEX) {
        if let Some(file) = Assets::get(&name) {
            let path = format!("\"{PREFIX}{name}\"");
            let versioned = format!("\"{PREFIX}{name}?v={}\"", version(&file));
            html = html.replace(&path, &versioned);
        }
    }
    let etag = format!("\"{}\"", hex(&Sha256::digest(html.as_bytes())[..12]));
    let mut response = respond(
        &headers,
        &etag,
        "no-cache",
        "text/html; charset=utf-8",
        html,
    );
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response_headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /dashboard/{*path}`: a script, style sheet or image of the dashboard.
pub async fn asset(
    PathParam(path): PathParam,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let file = match Assets::get(&path) {
        Some(file) if path != INDEX => file,
        _ => return ApiError::not_found(format!("no dashboard asset {path:?}")).into_response(),
    };
    let version = version(&file);
    let pinned = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .any(|pair| pair.strip_prefix("v=") == Some(version.as_str()));
    let cache = if pinned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mime = file.metadata.mimetype();
    let content_type = if mime.starts_with("text/") || mime.ends_with("javascript") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    respond(
        &headers,
        &format!("\"{version}\""),
        cache,
        &content_type,
        file.data.into_owned(),
    )
}

/// A file's version: the start of its SHA-256, in hex.
fn version(file: &rust_embed::EmbeddedFile) -> String {
    hex(&file.metadata.sha256_hash()[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 200 with the body, or 304 when the client already has this `etag`.
fn respond(
    request: &HeaderMap,
    etag: &str,
    cache_control: &'static str,
    content_type: &str,
    body: impl Into<axum::body::Body>,
) -> Response {
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*");
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = body.into().into_response();
        if let Ok(value) = HeaderValue::from_str(content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        response
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
