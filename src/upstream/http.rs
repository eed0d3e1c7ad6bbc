//! A real upstream over HTTP: `GET <url with {id} replaced>`.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::{FetchError, Fetcher};
use crate::domain::ItemId;
use crate::redact::redacted_url;

/// How much of an error body is kept in the outcome.
const BODY_EXCERPT: usize = 200;
/// How deeply nested an answer may be to be kept as JSON; a deeper one is kept
/// as text. Stored with its outcome, the answer sits two levels deeper, and it
/// must still decode well within serde_json's recursion limit (128) at a claim
/// and in the results API.
const MAX_JSON_DEPTH: usize = 64;
/// The most redirects followed with `--upstream-follow-redirects`.
const MAX_REDIRECTS: usize = 10;
/// The longest `Retry-After` honoured; a larger one is read as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct HttpUpstreamSettings {
    /// A URL with `{id}` where the id goes, e.g. `http://api.internal/items/{id}`.
    pub url_template: String,
    /// Headers sent with every request, e.g. `Authorization`. Values are
    /// marked sensitive, so they never appear in logs.
    pub headers: Vec<(String, String)>,
    /// How long one request may take, connection included.
    pub timeout: Duration,
    /// The largest answer read; past it reading stops and the id ends in a
    /// permanent error.
    pub max_body: u64,
    /// Whether redirects to the same scheme, host and port are followed; a
    /// redirect elsewhere is never followed, so headers never leave the host.
    pub follow_redirects: bool,
}

pub struct HttpUpstream {
    client: reqwest::Client,
    /// The template split around `{id}`: `prefix{id}suffix`.
    prefix: String,
    suffix: String,
    max_body: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpUpstreamError {
    #[error("--upstream-url must contain {{id}} once: {0}")]
    Template(String),
    #[error("--upstream-url is not a valid URL: {0}")]
    Url(String),
    #[error("bad upstream header {0:?}: {1}")]
    Header(String, String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl HttpUpstream {
    pub fn new(settings: HttpUpstreamSettings) -> Result<Self, HttpUpstreamError> {
        let template = &settings.url_template;
        let (prefix, suffix) = template
            .split_once("{id}")
            .filter(|(_, rest)| !rest.contains("{id}"))
            .ok_or_else(|| HttpUpstreamError::Template(redacted_url(template)))?;
        let example = format!("{prefix}1{suffix}");
        reqwest::Url::parse(&example)
            .map_err(|e| HttpUpstreamError::Url(format!("{}: {e}", redacted_url(&example))))?;

        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let header = HeaderName::try_from(name.as_str())
                .map_err(|e| HttpUpstreamError::Header(name.clone(), e.to_string()))?;
            let mut value = HeaderValue::try_from(value.as_str())
                .map_err(|e| HttpUpstreamError::Header(name.clone(), e.to_string()))?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        let redirects = if settings.follow_redirects {
            reqwest::redirect::Policy::custom(|attempt| {
                let same_origin = attempt
                    .previous()
                    .first()
                    .is_some_and(|first| same_origin(first, attempt.url()));
                if same_origin && attempt.previous().len() <= MAX_REDIRECTS {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            })
        } else {
            reqwest::redirect::Policy::none()
        };
        // One client for the process: it keeps connections alive and reuses them.
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .redirect(redirects)
            .timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpUpstreamError::Client(e.to_string()))?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
            max_body: settings.max_body,
        })
    }

    fn url(&self, id: ItemId) -> String {
        format!("{}{id}{}", self.prefix, self.suffix)
    }
}

#[async_trait]
impl Fetcher for HttpUpstream {
    async fn fetch(&self, id: ItemId) -> Result<serde_json::Value, FetchError> {
        let response = self.client.get(self.url(id)).send().await.map_err(|e| {
            let reason = if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "cannot connect to the upstream".to_owned()
            } else {
                // Without the URL: it may carry credentials, and this reason is
                // stored in the outcome that the results API serves.
                format!("request failed: {}", e.without_url())
            };
            FetchError::Transient {
                reason,
                status: None,
                retry_after: None,
            }
        })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = read_body(response, self.max_body).await?;

        if status.is_success() {
            return Ok(answer(&body));
        }
        if status.is_redirection() {
            return Err(FetchError::Permanent {
                status: status.as_u16(),
                body_excerpt: "a redirect, not followed (redirects are followed only with \
                               --upstream-follow-redirects, and only to the same host)"
                    .into(),
            });
        }
        let excerpt = excerpt(&body);
        if is_transient(status) {
            Err(FetchError::Transient {
                reason: format!("HTTP {}: {excerpt}", status.as_u16()),
                status: Some(status.as_u16()),
                retry_after,
            })
        } else {
            Err(FetchError::Permanent {
                status: status.as_u16(),
                body_excerpt: excerpt,
            })
        }
    }
}

/// Reads the body, at most `max` bytes of it: a larger answer stops the
/// reading there (announced by `Content-Length` or not), so one id's answer
/// cannot exhaust the memory.
async fn read_body(mut response: reqwest::Response, max: u64) -> Result<Vec<u8>, FetchError> {
    let status = response.status().as_u16();
    let too_large = || FetchError::Permanent {
        status,
        body_excerpt: format!("the answer was too large: over --upstream-max-body ({max} bytes)"),
    };
    if response.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > max {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(FetchError::Transient {
                    reason: if e.is_timeout() {
                        "timed out reading the body".into()
                    } else {
                        format!("reading the body failed: {}", e.without_url())
                    },
                    status: Some(status),
                    retry_after: None,
                });
            }
        }
    }
}

/// A successful answer as it is kept: its JSON when it is JSON nested at most
/// [`MAX_JSON_DEPTH`] deep, otherwise its text (invalid UTF-8 replaced).
fn answer(body: &[u8]) -> serde_json::Value {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) if depth(&json) <= MAX_JSON_DEPTH => json,
        _ => serde_json::Value::String(String::from_utf8_lossy(body).into_owned()),
    }
}

/// How deeply arrays and objects nest in a value (a scalar is 0).
fn depth(value: &serde_json::Value) -> usize {
    let children = match value {
        serde_json::Value::Array(items) => items.iter().map(depth).max(),
        serde_json::Value::Object(fields) => fields.values().map(depth).max(),
        _ => return 0,
    };
    1 + children.unwrap_or(0)
}

fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// 5xx, 408 and 429 may pass; every other non-2xx answer is final.
fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// `Retry-After` in seconds, or as an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate_wait(value)?,
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn httpdate_wait(value: &str) -> Option<Duration> {
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            retry_after(&headers),
            Some(Duration::ZERO),
            "a date in the past"
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("99999999"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn which_statuses_are_worth_retrying() {
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 422] {
            assert!(!is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn deep_or_broken_answers_are_kept_as_text() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(
            answer(nested(MAX_JSON_DEPTH).as_bytes()),
            serde_json::from_str::<serde_json::Value>(&nested(MAX_JSON_DEPTH)).unwrap()
        );
        let deep = nested(MAX_JSON_DEPTH + 1);
        assert_eq!(
            answer(deep.as_bytes()),
            serde_json::Value::String(deep.clone())
        );
        assert_eq!(
            answer(b"a\xffb"),
            serde_json::Value::String("a\u{fffd}b".into())
        );
        assert_eq!(answer(b"{\"t\": \"a\\u0000b\"}")["t"], "a\u{0}b");
    }

    #[test]
    fn only_the_same_origin_is_followed() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(same_origin(&url("http://a:80/x"), &url("http://a/y")));
        assert!(!same_origin(&url("http://a/x"), &url("http://b/x")));
        assert!(!same_origin(&url("http://a:1/x"), &url("http://a:2/x")));
        assert!(!same_origin(&url("http://a/x"), &url("https://a/x")));
    }

    fn settings(url: &str) -> HttpUpstreamSettings {
        HttpUpstreamSettings {
            url_template: url.into(),
            headers: vec![],
            timeout: Duration::from_secs(1),
            max_body: 1024,
            follow_redirects: false,
        }
    }

    #[test]
    fn the_template_needs_one_id() {
        assert!(HttpUpstream::new(settings("http://127.0.0.1:9/items/{id}")).is_ok());
        assert!(HttpUpstream::new(settings("http://127.0.0.1:9/items")).is_err());
        assert!(HttpUpstream::new(settings("http://127.0.0.1:9/{id}/{id}")).is_err());
        assert!(HttpUpstream::new(settings("not a url {id}")).is_err());
    }

    #[test]
    fn a_refused_template_is_shown_without_its_password() {
        for url in [
            "http://user:s3cretpw@127.0.0.1:9/items",
            "http://user:s3cretpw@127.0.0.1:bad/{id}",
        ] {
            let Err(error) = HttpUpstream::new(settings(url)) else {
                panic!("{url} should be refused");
            };
            let message = error.to_string();
            assert!(!message.contains("s3cretpw"), "{message}");
            assert!(message.contains("user:***@"), "{message}");
        }
    }
}
