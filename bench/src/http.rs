//! A plain HTTP/1.1 client over one kept-alive connection, on hyper: each
//! connection is its own `SendRequest`, with no pool and no shared state, so
//! that 64 of them cost little more than the syscalls they make.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            // Ends when the server or this side closes the connection.
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender.ready().await.context("the connection closed")?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host);
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// `POST /ingest`; the new ingestion id.
    pub async fn ingest(&mut self, body: Bytes) -> anyhow::Result<String> {
        let (status, answer) = self.request(Method::POST, "/ingest", Some(body)).await?;
        if status != StatusCode::OK {
            bail!(
                "POST /ingest answered {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(500)])
            );
        }
        #[derive(Deserialize)]
        struct Answer {
            ingestion_id: String,
        }
        let answer: Answer =
            serde_json::from_slice(&answer).context("reading the POST /ingest answer")?;
        Ok(answer.ingestion_id)
    }

    /// `GET /status/{id}`, decoded.
    pub async fn status(&mut self, id: &str) -> anyhow::Result<Status> {
        let (status, answer) = self
            .request(Method::GET, &format!("/status/{id}"), None)
            .await?;
        if status != StatusCode::OK {
            bail!(
                "GET /status/{id} answered {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(500)])
            );
        }
        serde_json::from_slice(&answer).context("reading a GET /status answer")
    }
}

/// The parts of a status answer this tool reads.
#[derive(Debug, Deserialize)]
pub struct Status {
    pub status: String,
    #[serde(default)]
    pub batches: Vec<BatchStatus>,
}

#[derive(Debug, Deserialize)]
pub struct BatchStatus {
    pub status: String,
    pub scheduled_at: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

/// Waits until a request is answered, with a deadline.
pub async fn with_deadline<T>(
    what: &str,
    deadline: Duration,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(deadline, future).await {
        Ok(result) => result,
        Err(_) => bail!("{what}: no answer within {deadline:?}"),
    }
}
