//! The HTTP side of the client: where the server is, the key it is sent, one
//! method per endpoint, and every failure turned into a [`ClientError`] that
//! says what happened in the user's terms (server down, no such ingestion or
//! queue, the server's own problem document) rather than in reqwest's.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url, header};
use serde::de::DeserializeOwned;

use super::args::ServerArg;
use super::body::IngestBody;
use super::model::{Problem, QueueAnswer, QueuesAnswer, StatusAnswer};

/// Connecting takes milliseconds on a LAN; past this the server is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A status read or a queue command answers at once unless the server is in
/// trouble.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// A server that sends nothing for this long while it should be answering is
/// stuck. Event streams have no such limit: they may be quiet for long.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A broken upload of a body at least this large was most likely refused for
/// its size: the server answers 413 once it has read past its limit, and closes
/// the connection while the rest is still being sent.
const LARGE_BODY: u64 = 1 << 20;
/// The `detail` of Sluice's 404 for a path it has no route for.
const NO_SUCH_ENDPOINT: &str = "no such endpoint";
/// What Sluice's 403 says when a tenant's key asks for an operator endpoint.
const NEEDS_OPERATOR: &str = "needs an operator key";
/// How much of a body that is not a problem document to show.
const EXCERPT_CHARS: usize = 200;

/// The base URL of a Sluice service. `host:port` alone means `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(Url);

impl FromStr for ServerUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let with_scheme = if s.contains("://") {
            s.to_owned()
        } else {
            format!("http://{s}")
        };
        let mut url = Url::parse(&with_scheme).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{s:?} is not an http:// or https:// URL of a server"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{s:?}: a server URL has no ?query or #fragment"));
        }
        // Endpoints are joined below the path, so a Sluice behind a proxy at
        // `http://host/sluice` works too.
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        Ok(Self(url))
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str().trim_end_matches('/'))
    }
}

impl ServerUrl {
    /// The URL of an endpoint: `segments` are appended, each percent-encoded,
    /// so an id typed by the user can never change the path.
    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.0.clone();
        url.path_segments_mut()
            .expect("http URLs have a path")
            .pop_if_empty()
            .extend(segments);
        url
    }
}

/// An API key, sent as `Authorization: Bearer <key>`. It is never shown: its
/// `Debug` hides it, the header is marked sensitive, and a key that cannot be
/// sent is refused without echoing it (which is why parsing it cannot fail:
/// clap would quote the value in its error).
#[derive(Clone)]
pub struct ApiKey(String);

impl FromStr for ApiKey {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl ApiKey {
    /// The `Authorization` header that carries the key.
    fn header(&self) -> Result<HeaderValue, ClientError> {
        // The server trims the key it is sent; so does the client, so that a
        // key read from a file with its newline still works.
        let key = self.0.trim();
        if key.is_empty() {
            return Err(ClientError::BadApiKey("is empty"));
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| ClientError::BadApiKey("holds characters an HTTP header cannot carry"))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// Why a call to Sluice failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made: the server is down, or the URL is wrong.
    #[error("cannot reach Sluice at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// A connection was made, then lost or left without an answer.
    #[error("lost the connection to Sluice at {server}: {reason}")]
    Disconnected { server: String, reason: String },
    #[error(
        "lost the connection to Sluice at {server} while sending {ids} ids ({mib:.1} MiB): \
         {reason}. A server closes the connection on a body over its --max-body-bytes \
         (16 MiB by default, about a million ids): send fewer ids per request"
    )]
    UploadBroken {
        server: String,
        reason: String,
        ids: u128,
        mib: f64,
    },
    #[error("no ingestion {id:?} at {server}")]
    NoSuchIngestion { id: String, server: String },
    #[error("no such queue {name} at {server} (`sluice queues` lists them)")]
    NoSuchQueue { name: String, server: String },
    /// A server from before named queues.
    #[error(
        "Sluice at {server} has no named queues (its API answered 404): it is a version \
         from before them"
    )]
    NoQueuesApi { server: String },
    #[error("the API key (--api-key or SLUICE_API_KEY) {0}")]
    BadApiKey(&'static str),
    /// A tenant's key asked for what only an operator may see or do.
    #[error(
        "Sluice at {server} answered 403: the queues need an operator key (a key without a \
         tenant), and this API key belongs to a tenant"
    )]
    NeedsOperatorKey { server: String },
    /// The server refused or failed the request and said why (RFC 9457).
    #[error("Sluice answered {problem}")]
    Problem { problem: Problem },
    /// An answer that is not Sluice's: a proxy's error page, another service.
    #[error("{server} answered {status}, which is not a Sluice answer: {excerpt}")]
    Unexpected {
        server: String,
        status: StatusCode,
        excerpt: String,
    },
}

impl ClientError {
    /// Whether trying again later may succeed: the server may be restarting.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Disconnected { .. } => true,
            Self::Problem { problem } => problem.status == Some(503),
            Self::Unexpected { status, .. } => status.is_server_error(),
            Self::NoSuchIngestion { .. }
            | Self::NoSuchQueue { .. }
            | Self::NoQueuesApi { .. }
            | Self::BadApiKey(_)
            | Self::NeedsOperatorKey { .. }
            | Self::UploadBroken { .. } => false,
        }
    }
}

/// A Sluice service, as its clients see it.
#[derive(Debug, Clone)]
pub struct Sluice {
    server: ServerUrl,
    http: reqwest::Client,
    /// The same without a read timeout, for event streams.
    streams: reqwest::Client,
}

/// What a 404 answer is about.
#[derive(Debug, Clone, Copy)]
enum Subject<'a> {
    /// Nothing in particular: the server's problem document says.
    Other,
    Ingestion(&'a str),
    Queue(&'a str),
    /// `GET /queues` itself.
    QueueList,
}

impl Sluice {
    /// A client of the server `server` names, sending its API key, if any, on
    /// every request.
    pub fn new(server: &ServerArg) -> Result<Self, ClientError> {
        let mut headers = header::HeaderMap::new();
        if let Some(key) = &server.api_key {
            headers.insert(header::AUTHORIZATION, key.header()?);
        }
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("sluice-cli/", env!("CARGO_PKG_VERSION")))
                .default_headers(headers.clone())
        };
        // Only a broken TLS backend fails to build; nothing a user can fix.
        Ok(Self {
            server: server.url.clone(),
            http: builder()
                .read_timeout(READ_TIMEOUT)
                .build()
                .expect("the HTTP client builds"),
            streams: builder().build().expect("the HTTP client builds"),
        })
    }

    pub fn server(&self) -> &ServerUrl {
        &self.server
    }

    /// `POST /ingest`: the new ingestion's id, once the server has it on disk.
    pub async fn submit(&self, body: IngestBody) -> Result<String, ClientError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            ingestion_id: String,
        }
        let (length, ids) = (body.length, body.ids);
        let stream = futures_util::stream::iter(body.chunks.map(Ok::<_, std::convert::Infallible>));
        let response = self
            .http
            .post(self.server.endpoint(&["ingest"]))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|e| match self.transport_error(&e) {
                ClientError::Disconnected { server, reason } if length >= LARGE_BODY => {
                    ClientError::UploadBroken {
                        server,
                        reason,
                        ids,
                        mib: length as f64 / f64::from(1 << 20),
                    }
                }
                other => other,
            })?;
        let response = self.successful(response, Subject::Other).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let answer: Answer =
            serde_json::from_slice(&bytes).map_err(|_| self.unexpected(StatusCode::OK, &bytes))?;
        Ok(answer.ingestion_id)
    }

    /// `GET /status/{id}`: the answer, parsed, and its bytes as they came (for
    /// `--json`).
    pub async fn status(&self, id: &str) -> Result<(StatusAnswer, Vec<u8>), ClientError> {
        let request = self.http.get(self.server.endpoint(&["status", id]));
        self.json(request, Subject::Ingestion(id)).await
    }

    /// `GET /queues`: every queue, and the answer's bytes as they came.
    pub async fn queues(&self) -> Result<(QueuesAnswer, Vec<u8>), ClientError> {
        let request = self.http.get(self.server.endpoint(&["queues"]));
        self.json(request, Subject::QueueList).await
    }

    /// `POST /queues/{name}/pause` (`pause` true) or `…/resume`: the queue
    /// as it is now.
    pub async fn pause_queue(&self, name: &str, pause: bool) -> Result<QueueAnswer, ClientError> {
        let action = if pause { "pause" } else { "resume" };
        let request = self
            .http
            .post(self.server.endpoint(&["queues", name, action]));
        Ok(self.json(request, Subject::Queue(name)).await?.0)
    }

    /// `PATCH /queues/{name}` with `changes` (`interval`, `max_in_flight`,
    /// `null` for "back to the configured value"): the queue as it is now.
    pub async fn set_queue(
        &self,
        name: &str,
        changes: &serde_json::Value,
    ) -> Result<QueueAnswer, ClientError> {
        let request = self
            .http
            .patch(self.server.endpoint(&["queues", name]))
            .json(changes);
        Ok(self.json(request, Subject::Queue(name)).await?.0)
    }

    /// Sends a short request and reads its JSON answer, and the bytes as they
    /// came.
    async fn json<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        subject: Subject<'_>,
    ) -> Result<(T, Vec<u8>), ClientError> {
        let response = request
            .timeout(STATUS_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let response = self.successful(response, subject).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let answer =
            serde_json::from_slice(&bytes).map_err(|_| self.unexpected(StatusCode::OK, &bytes))?;
        Ok((answer, bytes.to_vec()))
    }

    /// `GET /status/{id}/events`: the open stream, resumed after
    /// `last_event_id` when given, so that no transition is lost.
    pub async fn events(
        &self,
        id: &str,
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self
            .streams
            .get(self.server.endpoint(&["status", id, "events"]))
            .header(header::ACCEPT, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache");
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        self.successful(response, Subject::Ingestion(id)).await
    }

    /// The response if it is a success; otherwise what went wrong. `subject`
    /// is what a 404 is about.
    async fn successful(
        &self,
        response: reqwest::Response,
        subject: Subject<'_>,
    ) -> Result<reqwest::Response, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let server = self.server.to_string();
        match (status, subject) {
            (StatusCode::NOT_FOUND, Subject::Ingestion(id)) => {
                return Err(ClientError::NoSuchIngestion {
                    id: id.to_owned(),
                    server,
                });
            }
            (StatusCode::NOT_FOUND, Subject::QueueList) => {
                return Err(ClientError::NoQueuesApi { server });
            }
            _ => {}
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let problem = serde_json::from_slice::<Problem>(&bytes)
            .ok()
            .filter(Problem::is_problem);
        match (status, subject, problem) {
            (StatusCode::FORBIDDEN, Subject::Queue(_) | Subject::QueueList, Some(problem))
                if problem
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains(NEEDS_OPERATOR)) =>
            {
                Err(ClientError::NeedsOperatorKey { server })
            }
            (StatusCode::NOT_FOUND, Subject::Queue(name), problem) => {
                // A server without queues answers its catch-all 404.
                if problem.is_some_and(|p| p.detail.as_deref() == Some(NO_SUCH_ENDPOINT)) {
                    Err(ClientError::NoQueuesApi { server })
                } else {
                    Err(ClientError::NoSuchQueue {
                        name: name.to_owned(),
                        server,
                    })
                }
            }
            (_, _, Some(problem)) => Err(ClientError::Problem { problem }),
            _ => Err(self.unexpected(status, &bytes)),
        }
    }

    fn unexpected(&self, status: StatusCode, body: &[u8]) -> ClientError {
        let text = String::from_utf8_lossy(body);
        let mut excerpt: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(EXCERPT_CHARS)
            .collect();
        if excerpt.is_empty() {
            excerpt = "(an empty body)".to_owned();
        } else if text.chars().count() > EXCERPT_CHARS {
            excerpt.push('…');
        }
        ClientError::Unexpected {
            server: self.server.to_string(),
            status,
            excerpt,
        }
    }

    fn transport_error(&self, error: &reqwest::Error) -> ClientError {
        let server = self.server.to_string();
        let reason = reason(error);
        if error.is_connect() {
            ClientError::Unreachable { server, reason }
        } else {
            ClientError::Disconnected { server, reason }
        }
    }
}

/// The root cause of a transport error in a few words: "connection refused",
/// not reqwest's "error sending request for url (…)".
fn reason(error: &reqwest::Error) -> String {
    let mut deepest: &(dyn std::error::Error + 'static) = error;
    while let Some(next) = deepest.source() {
        if let Some(io) = next.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
                std::io::ErrorKind::TimedOut => "timed out".to_owned(),
                _ => without_os_code(&io.to_string()),
            };
        }
        deepest = next;
    }
    if error.is_timeout() {
        return "no answer in time".to_owned();
    }
    without_os_code(&deepest.to_string())
}

/// "Connection refused (os error 111)" → "connection refused".
fn without_os_code(text: &str) -> String {
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_take_a_bare_host_and_port() {
        let url: ServerUrl = "127.0.0.1:8000".parse().unwrap();
        assert_eq!(url.to_string(), "http://127.0.0.1:8000");
        assert_eq!(
            url.endpoint(&["status", "x"]).as_str(),
            "http://127.0.0.1:8000/status/x"
        );
    }

    #[test]
    fn endpoints_sit_below_a_path_prefix_and_ids_are_encoded() {
        let url: ServerUrl = "https://example.com/sluice".parse().unwrap();
        assert_eq!(
            url.endpoint(&["status", "a/b?c", "events"]).as_str(),
            "https://example.com/sluice/status/a%2Fb%3Fc/events"
        );
    }

    #[test]
    fn server_urls_must_be_http() {
        assert!("ftp://example.com".parse::<ServerUrl>().is_err());
        assert!("http://".parse::<ServerUrl>().is_err());
        assert!("http://h/?x=1".parse::<ServerUrl>().is_err());
    }

    #[test]
    fn api_keys_go_as_a_sensitive_bearer_header_and_never_show() {
        let key: ApiKey = " s3cret-key-0123456789\n".parse().unwrap();
        let header = key.header().unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer s3cret-key-0123456789");
        assert!(header.is_sensitive());
        assert!(!format!("{key:?}").contains("s3cret"));
        assert!(!format!("{header:?}").contains("s3cret"));

        let error = "bad\nkey".parse::<ApiKey>().unwrap().header().unwrap_err();
        assert!(!error.to_string().contains("bad"), "{error}");
        assert!(" ".parse::<ApiKey>().unwrap().header().is_err());
    }

    #[test]
    fn os_codes_are_dropped_from_reasons() {
        assert_eq!(
            without_os_code("Connection refused (os error 111)"),
            "connection refused"
        );
    }
}
