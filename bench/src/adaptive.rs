//! Issue 12's adaptive-rate scenario: one queue, configured twice as fast as
//! an upstream that hides its limit, run with `adaptive = true` and then with
//! `adaptive = false`, and what the upstream saw each time.
//!
//! The upstream is local, on 127.0.0.1: a token bucket of 5 requests a second
//! with a burst of 5. Past it, it answers 429 without `Retry-After`, so the
//! service has to find the limit by itself. Within it, 200 with a small JSON
//! body. It counts every request by second and by answer.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::http::{Connection, with_deadline};
use crate::load::thousands;
use crate::report::secs;
use crate::scenarios::Bench;

/// The upstream's hidden limit: tokens a second, and the bucket's size.
const LIMIT_PER_SECOND: f64 = 5.0;
const LIMIT_BURST: f64 = 5.0;
/// The queue's configured interval: 10 a second, twice the hidden limit.
const QUEUE_INTERVAL: Duration = Duration::from_millis(100);
/// The name of the queue in the queues file.
const QUEUE: &str = "limited";
/// With `adaptive = true`: at most this share of upstream requests get a 429 ...
const TARGET_REFUSED_SHARE: f64 = 0.10;
/// ... and at least this many fetches a second succeed (80% of the limit).
const TARGET_SUCCESSES_PER_SECOND: f64 = 4.0;
/// The largest HTTP request head the upstream reads.
const MAX_HEAD: usize = 16 * 1024;

impl Bench {
    /// h. Adaptive rate against an upstream with a hidden limit, on and off.
    pub async fn adaptive(&mut self, duration: Duration) -> anyhow::Result<()> {
        println!(
            "\n== h. Adaptive rate: queue `{QUEUE}` at interval {} (batches of 1 id, 1 in flight) against an upstream that hides a limit of {LIMIT_PER_SECOND}/s (burst {LIMIT_BURST}, 429 without Retry-After past it), {} each with adaptive on and off ==",
            humantime::format_duration(QUEUE_INTERVAL),
            secs(duration)
        );
        let on = self.adaptive_run(true, duration).await?;
        let off = self.adaptive_run(false, duration).await?;
        for (run, adaptive) in [(&on, true), (&off, false)] {
            let label = if adaptive { "on" } else { "off" };
            let met = |ok: bool| adaptive.then_some(ok);
            self.summary.add(
                format!("adaptive {label}: 429 share of upstream requests"),
                format!(
                    "{:.1}% ({} of {})",
                    run.refused_share() * 100.0,
                    thousands(run.counts.refused),
                    thousands(run.counts.total())
                ),
                if adaptive { "≤ 10%" } else { "" },
                met(run.refused_share() <= TARGET_REFUSED_SHARE),
            );
            self.summary.add(
                format!("adaptive {label}: successful fetches per second"),
                format!(
                    "{:.2}/s (effective interval at the end {})",
                    run.successes_per_second(),
                    run.effective_interval
                ),
                if adaptive { "≥ 4/s" } else { "" },
                met(run.successes_per_second() >= TARGET_SUCCESSES_PER_SECOND),
            );
        }
        Ok(())
    }

    async fn adaptive_run(&self, adaptive: bool, duration: Duration) -> anyhow::Result<RunFigures> {
        let label = if adaptive { "on" } else { "off" };
        println!("  -- adaptive {label}");
        let upstream = HiddenLimit::start().await?;
        let queues_file = self.log_dir.join(format!("queues-adaptive-{label}.toml"));
        write_queues_file(&queues_file, &upstream.url_template(), adaptive)?;
        let db = self.database.create(&format!("adaptive-{label}"))?;
        let queues_arg = queues_file.display().to_string();
        let mut server = self.start_server(
            &db,
            &format!("adaptive-{label}"),
            &["--queues-file", &queues_arg, "--mock-latency", "0ms"],
        )?;

        // Enough ids to keep the queue busy at its configured rate for the
        // whole run, with room for the retries of refused ones.
        let ids = (duration.as_secs_f64() / QUEUE_INTERVAL.as_secs_f64() * 2.0) as usize + 100;
        let mut conn = Connection::open(server.addr()).await?;
        self.settle().await;
        upstream.reset();
        let started = Instant::now();
        with_deadline(
            "POST /ingest",
            Duration::from_secs(60),
            conn.ingest(ingest_body(ids)),
        )
        .await?;
        let mut next_note = started + Duration::from_secs(15);
        while started.elapsed() < duration {
            let left = duration.saturating_sub(started.elapsed());
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
            server.check_alive()?;
            if Instant::now() >= next_note && started.elapsed() < duration {
                let so_far = upstream.counts();
                println!(
                    "  ... {}: {} upstream requests, {} answered 429",
                    secs(started.elapsed()),
                    thousands(so_far.total()),
                    thousands(so_far.refused)
                );
                next_note += Duration::from_secs(15);
            }
        }
        let window = started.elapsed();
        let counts = upstream.counts();
        let per_second = upstream.per_second();
        // On a connection of its own: the server closes idle ones (10 s), so
        // the one that posted the ids is gone by now.
        let queue = queue_answer(&mut Connection::open(server.addr()).await?).await?;
        server.stop()?;

        let effective_interval = queue
            .get("effective_interval")
            .and_then(serde_json::Value::as_str)
            .context("no effective_interval in the GET /queues/limited answer")?
            .to_string();
        let figures = RunFigures {
            window,
            counts,
            effective_interval,
        };
        println!(
            "  adaptive {label}: {} upstream requests in {}, {} answered 429 ({:.1}%), {} answered 200 ({:.2}/s); effective interval at the end {} (configured {})",
            thousands(figures.counts.total()),
            secs(window),
            thousands(figures.counts.refused),
            figures.refused_share() * 100.0,
            thousands(figures.counts.ok),
            figures.successes_per_second(),
            figures.effective_interval,
            queue
                .get("interval")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?")
        );
        print_per_second(&per_second);
        Ok(figures)
    }
}

/// What one run measured.
struct RunFigures {
    window: Duration,
    counts: Counts,
    /// `effective_interval` from `GET /queues/limited` at the end of the run.
    effective_interval: String,
}

impl RunFigures {
    fn refused_share(&self) -> f64 {
        self.counts.refused as f64 / self.counts.total().max(1) as f64
    }

    fn successes_per_second(&self) -> f64 {
        self.counts.ok as f64 / self.window.as_secs_f64()
    }
}

/// The queues file of one run: the queue `limited`, at twice the hidden rate.
fn write_queues_file(path: &Path, upstream_url: &str, adaptive: bool) -> anyhow::Result<()> {
    let text = format!(
        "[queues.{QUEUE}]\n\
         interval = \"{}\"\n\
         max_in_flight = 1\n\
         batch_size = 1\n\
         upstream_url = \"{upstream_url}\"\n\
         adaptive = {adaptive}\n",
        humantime::format_duration(QUEUE_INTERVAL)
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A `POST /ingest` body of ids 1..=count for the queue `limited`.
fn ingest_body(count: usize) -> Bytes {
    let mut body = String::with_capacity(count * 8 + 60);
    body.push_str("{\"ids\":[");
    for id in 1..=count {
        if id > 1 {
            body.push(',');
        }
        let _ = write!(body, "{id}");
    }
    let _ = write!(body, "],\"priority\":\"MEDIUM\",\"queue\":\"{QUEUE}\"}}");
    Bytes::from(body)
}

/// `GET /queues/limited`, decoded.
async fn queue_answer(conn: &mut Connection) -> anyhow::Result<serde_json::Value> {
    let path = format!("/queues/{QUEUE}");
    let (status, body) = with_deadline(
        &path,
        Duration::from_secs(30),
        conn.request(Method::GET, &path, None),
    )
    .await?;
    ensure!(
        status == StatusCode::OK,
        "GET {path} answered {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    serde_json::from_slice(&body).with_context(|| format!("reading the GET {path} answer"))
}

/// The 200s and 429s of each second of the run, ten seconds a line.
fn print_per_second(per_second: &[Counts]) {
    println!("  per second, 200s/429s:");
    for (row, chunk) in per_second.chunks(10).enumerate() {
        let cells: Vec<String> = chunk
            .iter()
            .map(|c| format!("{:>2}/{:<2}", c.ok, c.refused))
            .collect();
        println!("    {:>3} s: {}", row * 10, cells.join(" "));
    }
}

/// Requests the upstream answered, by answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    ok: u64,
    refused: u64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.ok + self.refused
    }
}

/// A token bucket: `per_second` tokens a second, holding at most `burst`.
#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(per_second: f64, burst: f64, now: Instant) -> Self {
        Self {
            per_second,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Whether a request at `now` is within the limit (and takes a token).
    fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the upstream keeps between requests.
#[derive(Debug)]
struct Ledger {
    bucket: TokenBucket,
    /// Where the per-second counts start.
    started: Instant,
    counts: Counts,
    per_second: Vec<Counts>,
}

impl Ledger {
    /// Answers one request at `now`: whether it is within the limit.
    fn answer(&mut self, now: Instant) -> bool {
        let ok = self.bucket.admit(now);
        let second = now.saturating_duration_since(self.started).as_secs() as usize;
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, Counts::default());
        }
        let (total, this_second) = (&mut self.counts, &mut self.per_second[second]);
        if ok {
            total.ok += 1;
            this_second.ok += 1;
        } else {
            total.refused += 1;
            this_second.refused += 1;
        }
        ok
    }
}

/// The local upstream with a hidden limit, on 127.0.0.1 at a port of its own.
/// A hand-written HTTP/1.1 server (keep-alive, `GET` only): this tool has no
/// HTTP server library, and the upstream needs no more.
struct HiddenLimit {
    port: u16,
    ledger: Arc<Mutex<Ledger>>,
    accept: JoinHandle<()>,
}

impl HiddenLimit {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the upstream")?;
        let port = listener.local_addr()?.port();
        let now = Instant::now();
        let ledger = Arc::new(Mutex::new(Ledger {
            bucket: TokenBucket::new(LIMIT_PER_SECOND, LIMIT_BURST, now),
            started: now,
            counts: Counts::default(),
            per_second: Vec::new(),
        }));
        let shared = Arc::clone(&ledger);
        let accept = tokio::spawn(async move {
            // Dropped with the accept task, so aborting it ends every
            // connection too.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            port,
            ledger,
            accept,
        })
    }

    fn url_template(&self) -> String {
        format!("http://127.0.0.1:{}/items/{{id}}", self.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the counts (and their seconds) afresh; the bucket is left as it
    /// is, full if nothing has been asked yet.
    fn reset(&self) {
        let mut ledger = self.lock();
        ledger.started = Instant::now();
        ledger.counts = Counts::default();
        ledger.per_second.clear();
    }

    fn counts(&self) -> Counts {
        self.lock().counts
    }

    fn per_second(&self) -> Vec<Counts> {
        self.lock().per_second.clone()
    }
}

impl Drop for HiddenLimit {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Answers the requests of one connection until the client closes it.
async fn serve_connection(mut stream: TcpStream, ledger: Arc<Mutex<Ledger>>) {
    let mut buffer = Vec::with_capacity(1024);
    loop {
        let (head_len, request) = loop {
            if let Some(end) = find_head_end(&buffer) {
                match parse_head(&buffer[..end]) {
                    Ok(request) => break (end, request),
                    Err(_) => return,
                }
            }
            if buffer.len() > MAX_HEAD {
                return;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        // A body (the service sends none) is read and dropped.
        while buffer.len() < head_len + request.content_length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..head_len + request.content_length);

        let ok = ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .answer(Instant::now());
        let response = if ok {
            let body = format!(
                "{{\"id\":\"{}\",\"name\":\"item\",\"score\":42}}",
                request.id
            );
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            let body = "{\"error\":\"rate limit exceeded\"}";
            format!(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        if stream.write_all(response.as_bytes()).await.is_err() || request.close {
            return;
        }
    }
}

/// The end of a request head (just past its blank line), if it has arrived.
fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// What the upstream reads of a request.
#[derive(Debug, PartialEq, Eq)]
struct RequestHead {
    /// The last segment of the path: the item's id.
    id: String,
    content_length: usize,
    /// `Connection: close`: answer, then close.
    close: bool,
}

fn parse_head(head: &[u8]) -> anyhow::Result<RequestHead> {
    let text = std::str::from_utf8(head).context("a request head that is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(_method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("a malformed request line: {request_line:?}");
    };
    ensure!(version.starts_with("HTTP/1."), "not HTTP/1.x: {version:?}");
    let path = target.split('?').next().unwrap_or_default();
    let id = path.rsplit('/').next().unwrap_or_default().to_string();
    let mut content_length = 0;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().context("a bad Content-Length")?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(RequestHead {
        id,
        content_length,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_a_burst_through_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(5.0, 5.0, t0);
        let burst = (0..10).filter(|_| bucket.admit(t0)).count();
        assert_eq!(burst, 5);
        // One token every 200 ms afterwards.
        assert!(!bucket.admit(t0 + Duration::from_millis(100)));
        assert!(bucket.admit(t0 + Duration::from_millis(210)));
        assert!(!bucket.admit(t0 + Duration::from_millis(220)));
    }

    #[test]
    fn request_heads_parse() {
        let head = b"GET /items/42 HTTP/1.1\r\nhost: x\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(find_head_end(head), Some(head.len()));
        assert_eq!(
            parse_head(head).unwrap(),
            RequestHead {
                id: "42".into(),
                content_length: 3,
                close: false
            }
        );
        let head = b"GET /items/7?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert!(parse_head(head).unwrap().close);
        assert!(parse_head(b"nonsense\r\n\r\n").is_err());
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn the_ingest_body_names_the_queue() {
        let body: serde_json::Value = serde_json::from_slice(&ingest_body(3)).unwrap();
        assert_eq!(body["ids"], serde_json::json!([1, 2, 3]));
        assert_eq!(body["queue"], "limited");
    }

    #[tokio::test]
    async fn the_upstream_answers_429_past_its_limit_and_counts() {
        let upstream = HiddenLimit::start().await.unwrap();
        let addr = ([127, 0, 0, 1], upstream.port).into();
        let mut conn = Connection::open(addr).await.unwrap();
        let started = Instant::now();
        let mut statuses = Vec::new();
        for id in 0..8 {
            let (status, body) = conn
                .request(Method::GET, &format!("/items/{id}"), None)
                .await
                .unwrap();
            if status == StatusCode::OK {
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(json["id"], id.to_string());
            }
            statuses.push(status);
        }
        let took = started.elapsed();
        let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        assert!(
            statuses
                .iter()
                .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS)
        );
        // The burst of 5 passes; if the eight took less than the 200 ms that
        // earns another token, exactly those 5.
        assert!(ok >= 5, "{statuses:?}");
        if took < Duration::from_millis(150) {
            assert_eq!(ok, 5, "{statuses:?} in {took:?}");
        }
        let counts = upstream.counts();
        assert_eq!(counts.total(), 8);
        assert_eq!(counts.ok as usize, ok);
        assert_eq!(
            upstream.per_second().iter().map(Counts::total).sum::<u64>(),
            8
        );
    }
}
