//! Reading JSON bodies with the contract's errors: 415 for a wrong
//! Content-Type, 413 past the size limit, 400 for empty or broken JSON, 422 for
//! JSON of the wrong shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use std::sync::Arc;

use super::AppState;
use super::error::ApiError;

/// A JSON body sent with `Content-Type: application/json`.
///
/// The Content-Type rule is strict on purpose: a browser on another site can
/// post a form (`text/plain`, `application/x-www-form-urlencoded`) to a local
/// Sluice without asking, but not `application/json`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Send + 'static> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, Self::Rejection> {
        require_json_content_type(req.headers())?;
        let max = app.limits.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|len| len > max) {
            return Err(too_large());
        }
        // A large body waits for room before it is read, so that concurrent
        // bodies never hold more than `--max-body-memory`. Without a length
        // (chunked), a body may grow to the limit: room for that is taken.
        let expected = declared.unwrap_or(max).min(max);
        let _room = if expected > SMALL_BODY {
            let kib = u32::try_from(expected.div_ceil(1024)).unwrap_or(u32::MAX);
            Some(
                Arc::clone(&app.overload.body_memory)
                    .acquire_many_owned(kib)
                    .await
                    .map_err(|_| ApiError::unavailable("the service is stopping", 1))?,
            )
        } else {
            None
        };
        let bytes = read_limited(req.into_body(), expected, max).await?;
        if bytes.len() > SMALL_BODY {
            // Decoding megabytes takes milliseconds: off the threads that
            // answer other requests.
            tokio::task::spawn_blocking(move || parse_json(&bytes))
                .await
                .map_err(|_| ApiError::internal("decoding the body failed"))?
                .map(JsonBody)
        } else {
            parse_json(&bytes).map(JsonBody)
        }
    }
}

/// The whole body, at most `max` bytes, into one buffer of the expected
/// size: collecting chunks and then joining them would hold it twice.
async fn read_limited(
    mut body: axum::body::Body,
    expected: usize,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let mut bytes = Vec::with_capacity(expected);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > max {
                return Err(too_large());
            }
            bytes.extend_from_slice(data);
        }
    }
    Ok(bytes)
}

/// Bodies up to this size are read and decoded without waiting for room.
const SMALL_BODY: usize = 64 * 1024;

fn too_large() -> ApiError {
    ApiError::too_large("the body is larger than the configured limit (--max-body-bytes)")
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

/// Why a body could not be read, as the contract answers it.
pub fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
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

/// A JSON value where a string is expected: the string, `null`, or anything
/// else, which is read past without being built (a 15 MiB array costs no
/// memory beyond the body).
#[derive(Debug)]
pub(crate) enum StringField<'a> {
    Str(Cow<'a, str>),
    Null,
    Other,
}

impl<'de> de::Deserialize<'de> for StringField<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StringFieldVisitor)
    }
}

struct StringFieldVisitor;

impl<'de> Visitor<'de> for StringFieldVisitor {
    type Value = StringField<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(StringField::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(StringField::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(StringField::Str(Cow::Owned(s)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(StringField::Null)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(StringField::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(StringField::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(StringField::Other)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(StringField::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(StringField::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(StringField::Other)
    }
}

/// Keeps keep-alive correct after a refusal. A request refused before its
/// body was read to the end (401, 413, 415, ...) leaves the rest of the body
/// on the connection; HTTP/1.1 can only go on once it has been read. So the
/// rest is read and dropped here, up to `--max-body-bytes` and within the
/// request timeout, before the answer goes out (a client still sending
/// would otherwise see its connection reset before it reads the answer);
/// past either, the answer says `Connection: close`.
pub(crate) async fn drain_unread_body(
    axum::extract::State(app): axum::extract::State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use http_body::Body as _;
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let unread = Arc::new(std::sync::Mutex::new(None));
    let watched = axum::body::Body::new(WatchedBody {
        inner: Some(body),
        ended: false,
        unread: Arc::clone(&unread),
    });
    let mut response = next.run(Request::from_parts(parts, watched)).await;
    let left = unread.lock().map(|mut left| left.take()).unwrap_or(None);
    if let Some(left) = left {
        let timeout = match app.overload.request_timeout {
            zero if zero.is_zero() => std::time::Duration::from_secs(30),
            timeout => timeout,
        };
        let drained = tokio::time::timeout(timeout, drain(left, app.limits.max_body_bytes))
            .await
            .unwrap_or(false);
        if !drained {
            response.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
    }
    response
}

/// Reads `body` to its end and drops it; `false` if it holds more than
/// `limit` bytes or fails.
async fn drain(mut body: axum::body::Body, limit: usize) -> bool {
    use http_body_util::BodyExt;
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return false;
        };
        if let Some(data) = frame.data_ref() {
            read += data.len();
            if read > limit {
                return false;
            }
        }
    }
    true
}

/// A request body that, when dropped before its end, hands what is left of
/// it to [`drain_unread_body`].
struct WatchedBody {
    inner: Option<axum::body::Body>,
    ended: bool,
    unread: Arc<std::sync::Mutex<Option<axum::body::Body>>>,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(|inner| inner.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            |inner| inner.size_hint(),
        )
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        use http_body::Body as _;
        if let Some(inner) = self.inner.take()
            && !self.ended
            && !inner.is_end_stream()
            && let Ok(mut unread) = self.unread.lock()
        {
            *unread = Some(inner);
        }
    }
}
