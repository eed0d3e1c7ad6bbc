//! Adaptive rate through HTTP: a queue in front of an upstream that hides a
//! limit slows itself down to it, and comes back to its configured interval
//! once the upstream stops refusing. The figures themselves belong to the
//! benchmark (`sluice-bench --scenario adaptive`); these assertions are loose
//! enough for a loaded machine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::*;

/// How a test upstream decides each answer.
enum Policy {
    /// A token bucket: `per_second` tokens a second, at most `burst`; past it,
    /// 429 without `Retry-After`.
    Bucket { per_second: f64, burst: f64 },
    /// 429 with `Retry-After: 1` for the first request, 200 afterwards.
    RefuseFirstOnce,
}

struct Ledger {
    policy: Policy,
    tokens: f64,
    last: Instant,
    ok: u64,
    refused: u64,
}

impl Ledger {
    fn admit(&mut self) -> bool {
        match self.policy {
            Policy::Bucket { per_second, burst } => {
                let now = Instant::now();
                let elapsed = now.duration_since(self.last).as_secs_f64();
                self.tokens = (self.tokens + elapsed * per_second).min(burst);
                self.last = now;
                if self.tokens >= 1.0 {
                    self.tokens -= 1.0;
                    true
                } else {
                    false
                }
            }
            Policy::RefuseFirstOnce => self.ok + self.refused > 0,
        }
    }
}

/// A local upstream on port 0 that counts its answers.
struct Upstream {
    url: String,
    ledger: Arc<Mutex<Ledger>>,
}

impl Upstream {
    async fn start(policy: Policy) -> Self {
        let tokens = match policy {
            Policy::Bucket { burst, .. } => burst,
            Policy::RefuseFirstOnce => 0.0,
        };
        let ledger = Arc::new(Mutex::new(Ledger {
            policy,
            tokens,
            last: Instant::now(),
            ok: 0,
            refused: 0,
        }));
        let app = Router::new()
            .route("/items/{id}", get(item))
            .with_state(Arc::clone(&ledger));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/items/{{id}}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, ledger }
    }

    /// (200s, 429s) so far.
    fn counts(&self) -> (u64, u64) {
        let ledger = self.ledger.lock().unwrap();
        (ledger.ok, ledger.refused)
    }
}

async fn item(State(ledger): State<Arc<Mutex<Ledger>>>) -> Response {
    let (ok, retry_after) = {
        let mut ledger = ledger.lock().unwrap();
        let ok = ledger.admit();
        if ok {
            ledger.ok += 1;
        } else {
            ledger.refused += 1;
        }
        (ok, matches!(ledger.policy, Policy::RefuseFirstOnce))
    };
    match (ok, retry_after) {
        (true, _) => axum::Json(json!({"name": "item"})).into_response(),
        (false, true) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response(),
        (false, false) => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
    }
}

/// The interval of every test queue: fast, so that the tests are short.
const INTERVAL: Duration = Duration::from_millis(20);

/// A queues file in `dir` with one queue per (name, upstream, adaptive): one
/// batch of one id at a time, every `INTERVAL`.
fn queues_of(dir: &Path, queues: &[(&str, &Upstream, bool)]) -> PathBuf {
    let mut text = String::new();
    for (name, upstream, adaptive) in queues {
        text.push_str(&format!(
            "[queues.{name}]\n\
             interval = \"{}\"\n\
             max_in_flight = 1\n\
             batch_size = 1\n\
             upstream_url = \"{}\"\n\
             max_attempts = 100\n\
             retry_base = \"50ms\"\n\
             adaptive = {adaptive}\n\n",
            humantime::format_duration(INTERVAL),
            upstream.url
        ));
    }
    queues_file(dir, &text)
}

async fn spawn_with_queues(file: PathBuf) -> TestApp {
    spawn_app_with(move |c| c.queues_file = Some(file)).await
}

/// Queues `count` ids, one batch each, to `queue`.
async fn fill(app: &TestApp, queue: &str, count: u64) {
    let ids: Vec<u64> = (1..=count).collect();
    let response = app
        .post_ingest(&json!({"ids": ids, "priority": "MEDIUM", "queue": queue}))
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

/// `GET /queues/{name}`.
async fn queue(app: &TestApp, name: &str) -> Value {
    let response = app
        .client
        .get(format!("{}/queues/{name}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn duration_of(value: &Value) -> Duration {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a string"));
    if text == "0" {
        return Duration::ZERO;
    }
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn share(ok: u64, refused: u64) -> f64 {
    refused as f64 / (ok + refused).max(1) as f64
}

#[tokio::test]
async fn an_adaptive_queue_slows_to_a_hidden_limit_and_a_fixed_one_does_not() {
    // Both queues at 50 a second against their own upstream hiding 10 a
    // second; they run side by side (queues never wait for each other).
    let hidden = || Policy::Bucket {
        per_second: 10.0,
        burst: 3.0,
    };
    let adaptive = Upstream::start(hidden()).await;
    let fixed = Upstream::start(hidden()).await;
    let dir = TempDir::new().unwrap();
    let file = queues_of(
        dir.path(),
        &[("adaptive", &adaptive, true), ("fixed", &fixed, false)],
    );
    let app = spawn_with_queues(file).await;
    fill(&app, "adaptive", 400).await;
    fill(&app, "fixed", 400).await;

    let started = Instant::now();
    let mut widest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let slowed = queue(&app, "adaptive").await;
        assert_eq!(duration_of(&slowed["interval"]), INTERVAL);
        assert_eq!(slowed["adaptive"], true);
        let effective = duration_of(&slowed["effective_interval"]);
        assert!(effective >= INTERVAL, "{effective:?} below the interval");
        widest = widest.max(effective);
        let steady = queue(&app, "fixed").await;
        assert_eq!(steady["adaptive"], false);
        assert_eq!(
            duration_of(&steady["effective_interval"]),
            INTERVAL,
            "a queue without adaptive rate never slows"
        );
    }
    let (adaptive_ok, adaptive_refused) = adaptive.counts();
    let (fixed_ok, fixed_refused) = fixed.counts();
    let (on, off) = (
        share(adaptive_ok, adaptive_refused),
        share(fixed_ok, fixed_refused),
    );
    let figures = format!(
        "adaptive: {adaptive_ok} ok, {adaptive_refused} refused ({:.0}%); fixed: {fixed_ok} ok, {fixed_refused} refused ({:.0}%); widest effective interval {widest:?}",
        on * 100.0,
        off * 100.0
    );
    assert!(widest >= 2 * INTERVAL, "{figures}");
    // At 50 a second against 10, most of the fixed queue's requests bounce.
    assert!(off > 0.4, "{figures}");
    assert!(on < off / 2.0, "{figures}");
    // The adaptive queue kept going (the limit allows ~40 in the run).
    assert!(adaptive_ok >= 8, "{figures}");
}

#[tokio::test]
async fn retry_after_slows_the_whole_queue_then_it_comes_back_to_its_interval() {
    let upstream = Upstream::start(Policy::RefuseFirstOnce).await;
    let dir = TempDir::new().unwrap();
    let file = queues_of(dir.path(), &[("burst", &upstream, true)]);
    let app = spawn_with_queues(file).await;
    fill(&app, "burst", 300).await;

    // The first fetch is refused with `Retry-After: 1`: the queue waits about
    // a second before its next start, whatever the other ids.
    let deadline = Instant::now() + Duration::from_secs(10);
    let slowed = loop {
        let effective = duration_of(&queue(&app, "burst").await["effective_interval"]);
        if effective > INTERVAL {
            break effective;
        }
        assert!(Instant::now() < deadline, "the queue never slowed down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // 1 s, or halved once or twice if this poll came late.
    assert!(slowed >= Duration::from_millis(250), "{slowed:?}");
    assert_eq!(upstream.counts().1, 1);

    // Every fetch succeeds from now on: the interval comes back down to the
    // configured one, never below it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let effective = duration_of(&queue(&app, "burst").await["effective_interval"]);
        assert!(effective >= INTERVAL, "{effective:?} below the interval");
        if effective == INTERVAL {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still at {effective:?} after 30 s of successes ({:?} fetched)",
            upstream.counts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.counts().1, 1, "no other refusal");
}
