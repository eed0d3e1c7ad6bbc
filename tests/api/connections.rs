//! Connection-level behaviour through raw TCP: keep-alive after refusals, the
//! header-read and idle timeouts, and the caps on connections and event
//! streams.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::helpers::*;

const SUBMIT_KEY: &str = "submit-key-0123456789";

/// One HTTP/1.1 answer as read off the wire.
struct Answer {
    status: u16,
    close: bool,
}

/// A kept-alive HTTP/1.1 connection to the app.
struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    async fn open(app: &TestApp) -> Self {
        let address = app.address.trim_start_matches("http://");
        let stream = TcpStream::connect(address).await.unwrap();
        // Each write goes out at once, as a client's separate writes would
        // on a busy network.
        stream.set_nodelay(true).unwrap();
        Self {
            stream: BufReader::new(stream),
        }
    }

    /// Sends the head, then the body in a second write, so that the server
    /// may well answer before the body has arrived.
    async fn send(&mut self, head: &str, body: &[u8]) -> std::io::Result<Answer> {
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.flush().await?;
        stream.write_all(body).await?;
        stream.flush().await?;
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> std::io::Result<Answer> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("a bad status line {line:?}")))?;
        let (mut length, mut close) = (0usize, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(Answer { status, close })
    }

    /// Whether the server has closed this connection (within `limit`).
    async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(limit, self.stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

fn post_head(content_type: &str, key: Option<&str>, length: usize) -> String {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST /ingest HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n\
         {auth}Content-Length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_kept_alive_connection_stays_usable_after_1000_refusals() {
    let dir = tempfile::TempDir::new().unwrap();
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, format!("submit {SUBMIT_KEY}\n")).unwrap();
    let app = spawn_app_with(|c| {
        c.api_keys_file = Some(keys.clone());
        c.max_body_bytes = 64 * 1024;
        // Nothing is processed: the test is about the connection.
        c.interval = "1h".parse().unwrap();
    })
    .await;

    // Bodies larger than one read, so that a refusal comes before they are in.
    let refused_body = vec![b' '; 48 * 1024];
    let too_large = vec![b' '; 80 * 1024];
    let valid = br#"{"ids": [1], "priority": "LOW"}"#;
    let (mut failures, mut reconnects) = (Vec::new(), 0);
    let mut connection = Connection::open(&app).await;
    for cycle in 0..1000 {
        let (head, body, expected) = match cycle % 3 {
            0 => (
                post_head("text/plain", Some(SUBMIT_KEY), refused_body.len()),
                &refused_body,
                415,
            ),
            1 => (
                post_head("application/json", None, refused_body.len()),
                &refused_body,
                401,
            ),
            _ => (
                post_head("application/json", Some(SUBMIT_KEY), too_large.len()),
                &too_large,
                413,
            ),
        };
        match connection.send(&head, body).await {
            Ok(answer) if answer.status == expected => {
                if answer.close {
                    // Said so: the client may reconnect.
                    reconnects += 1;
                    connection = Connection::open(&app).await;
                }
            }
            Ok(answer) => failures.push(format!("cycle {cycle}: {} for {expected}", answer.status)),
            Err(error) => {
                failures.push(format!("cycle {cycle}: the refusal failed: {error}"));
                connection = Connection::open(&app).await;
                continue;
            }
        }
        // One key: the first POST stores, the others replay it, so that the
        // test does not wait for a thousand commits.
        let head = post_head("application/json", Some(SUBMIT_KEY), valid.len())
            .replace("\r\n\r\n", "\r\nIdempotency-Key: keep-alive\r\n\r\n");
        match connection.send(&head, valid).await {
            Ok(answer) if answer.status == 200 => {}
            Ok(answer) => failures.push(format!("cycle {cycle}: the POST got {}", answer.status)),
            Err(error) => {
                failures.push(format!(
                    "cycle {cycle}: the POST after {expected} failed: {error}"
                ));
                connection = Connection::open(&app).await;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    // Only a body past `--max-body-bytes` is not drained: those 413s, and
    // only those, say `Connection: close`.
    assert_eq!(reconnects, (0..1000).filter(|c| c % 3 == 2).count());
}

#[tokio::test]
async fn a_body_too_large_to_drain_is_answered_with_connection_close() {
    let app = spawn_app_with(|c| c.max_body_bytes = 1024).await;
    let mut connection = Connection::open(&app).await;
    let body = vec![b' '; 8 * 1024];
    let answer = connection
        .send(&post_head("text/plain", None, body.len()), &body)
        .await
        .unwrap();
    assert_eq!(answer.status, 415);
    assert!(
        answer.close,
        "a body past the drain limit closes the connection, saying so"
    );
    assert!(connection.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn the_header_read_timeout_closes_a_slow_connection() {
    let app = spawn_app_with(|c| {
        c.header_read_timeout = "500ms".parse().unwrap();
        c.keep_alive_timeout = "0".parse().unwrap();
    })
    .await;
    let mut slow = Connection::open(&app).await;
    let started = Instant::now();
    let head =
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for byte in head {
        if slow.stream.get_mut().write_all(&[*byte]).await.is_err()
            || slow.closed_within(Duration::from_millis(100)).await
        {
            closed = true;
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(
        closed,
        "a connection still sending its head after {elapsed:?} is open"
    );
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed after {elapsed:?}, before the timeout"
    );

    // Others are served meanwhile, and a prompt client is not cut.
    let mut prompt = Connection::open(&app).await;
    let answer = prompt
        .send("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", b"")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_keep_alive_timeout() {
    let app = spawn_app_with(|c| {
        c.keep_alive_timeout = "300ms".parse().unwrap();
        c.header_read_timeout = "0".parse().unwrap();
    })
    .await;
    // One that never sends anything, and one idle after an answer.
    let mut silent = Connection::open(&app).await;
    let mut used = Connection::open(&app).await;
    let answer = used
        .send("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", b"")
        .await
        .unwrap();
    assert_eq!((answer.status, answer.close), (200, false));
    assert!(!used.closed_within(Duration::from_millis(100)).await);
    assert!(silent.closed_within(Duration::from_secs(5)).await);
    assert!(used.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(|c| c.max_connections = 2.try_into().unwrap()).await;
    let first = Connection::open(&app).await;
    let mut second = Connection::open(&app).await;
    let answer = second
        .send("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", b"")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);

    let mut third = Connection::open(&app).await;
    let head = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    third
        .stream
        .get_mut()
        .write_all(head.as_bytes())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read_answer())
            .await
            .is_err(),
        "a third connection was served while two were open"
    );
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(5), third.read_answer())
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn event_streams_past_the_cap_get_503_with_retry_after() {
    let app = spawn_app_with(|c| c.max_event_streams = 2).await;
    let open = || app.client.get(format!("{}/events", app.address)).send();
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );

    let refused = open().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );

    // A closed stream frees its place.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = open().await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// HTTP/2 in the clear (h2c) is not served: its streams would escape the
/// header-read timeout. Its connection preface gets an HTTP/1 refusal, or the
/// connection closed, and never the HTTP/2 settings frame that would start a
/// session.
#[tokio::test]
async fn http2_in_the_clear_is_not_served() {
    let app = spawn_app().await;
    let mut h2 = Connection::open(&app).await;
    let stream = h2.stream.get_mut();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let mut answer = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), h2.stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection stayed open");
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
        "an HTTP/2 answer: {:?}",
        &answer[..answer.len().min(32)]
    );
}
