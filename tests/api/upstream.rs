//! A real upstream: an HTTP server on port 0, scripted per id. Retries,
//! failures, results, cancel, idempotency and callbacks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::helpers::*;

/// What the scripted upstream saw.
/// How long a request here may take to end.
const ENDS_WITHIN: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Seen {
    /// Every request: (id, when, Authorization header).
    requests: Vec<(u64, Instant, Option<String>)>,
    attempts: HashMap<u64, u32>,
}

/// The upstream's script, by id:
/// - 404: always 404 (permanent);
/// - 500–509: 503 for the first `id - 500` attempts, then 200;
/// - 429: 429 with `Retry-After: 1` once, then 200;
/// - 777: hangs for 5 s on the first attempt (a timeout), then 200;
/// - 999: always 503;
/// - 42: 200 with a text body;
/// - anything else: 200 `{"id": id, "name": "item-<id>"}`.
async fn item(
    State(seen): State<Arc<Mutex<Seen>>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let attempt = {
        let mut seen = seen.lock().unwrap();
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        seen.requests.push((id, Instant::now(), auth));
        let n = seen.attempts.entry(id).or_default();
        *n += 1;
        *n
    };
    match id {
        404 => (StatusCode::NOT_FOUND, "no such item").into_response(),
        500..=509 if attempt <= (id - 500) as u32 => {
            (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
        }
        429 if attempt == 1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response(),
        777 if attempt == 1 => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "too late".into_response()
        }
        999 => (StatusCode::SERVICE_UNAVAILABLE, "down for good").into_response(),
        42 => "plain text".into_response(),
        _ => axum::Json(json!({"id": id, "name": format!("item-{id}")})).into_response(),
    }
}

struct Upstream {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

async fn start_upstream() -> Upstream {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/items/{id}", get(item))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/items/{{id}}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Upstream { url, seen }
}

async fn app_with_upstream(
    upstream: &Upstream,
    configure: impl FnOnce(&mut sluice::config::Config),
) -> TestApp {
    let url = upstream.url.clone();
    spawn_app_with(move |c| {
        c.upstream_url = Some(url);
        c.interval = "20ms".parse().unwrap();
        c.retry_base = "100ms".parse().unwrap();
        c.upstream_timeout = "300ms".parse().unwrap();
        configure(c);
    })
    .await
}

#[tokio::test]
async fn successes_are_stored_as_json_or_text() {
    let upstream = start_upstream().await;
    let app = app_with_upstream(&upstream, |_| {}).await;
    let id = app.ingest(&[7, 42, 8], "HIGH").await;
    let status = wait_until_ended(&app, &id, ENDS_WITHIN).await;
    assert_eq!(status["status"], "completed");

    let results = ndjson_results(&app, &id).await;
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["outcome"], "ok");
    assert_eq!(results[0]["data"], json!({"id": 7, "name": "item-7"}));
    assert_eq!(results[1]["data"], "plain text");
    assert_eq!(results[2]["attempts"], 1);
}

#[tokio::test]
async fn a_permanent_error_is_not_retried_and_fails_the_batch() {
    let upstream = start_upstream().await;
    let app = app_with_upstream(&upstream, |_| {}).await;
    let id = app.ingest(&[1, 404, 2, 3], "MEDIUM").await;
    let status = wait_until_ended(&app, &id, ENDS_WITHIN).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["batches"][0]["status"], "failed");
    assert_eq!(status["batches"][1]["status"], "completed");
    assert_eq!(status["batches"][0]["attempts"], 1);

    let results = ndjson_results(&app, &id).await;
    assert_eq!(results[1]["outcome"], "error");
    assert_eq!(results[1]["error"]["kind"], "permanent");
    assert_eq!(results[1]["error"]["status"], 404);
    assert_eq!(results[1]["error"]["message"], "no such item");
    assert_eq!(
        upstream.seen.lock().unwrap().attempts[&404],
        1,
        "never retried"
    );
}

#[tokio::test]
async fn a_transient_error_is_retried_and_only_failed_ids_are_fetched_again() {
    let upstream = start_upstream().await;
    let app = app_with_upstream(&upstream, |_| {}).await;
    let id = app.ingest(&[1, 502, 3], "LOW").await;
    let status = wait_until_ended(&app, &id, ENDS_WITHIN).await;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["batches"][0]["attempts"], 3);

    {
        let seen = upstream.seen.lock().unwrap();
        assert_eq!(seen.attempts[&502], 3, "503 twice, then 200");
        assert_eq!(seen.attempts[&1], 1, "a settled id is not fetched again");
        assert_eq!(seen.attempts[&3], 1);
    }
    let results = ndjson_results(&app, &id).await;
    assert_eq!(results[1]["outcome"], "ok");
    assert_eq!(results[1]["attempts"], 3);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let upstream = start_upstream().await;
    let app = app_with_upstream(&upstream, |_| {}).await;
    let id = app.ingest(&[429], "HIGH").await;
    let status = wait_until_ended(&app, &id, ENDS_WITHIN).await;
    assert_eq!(status["status"], "completed");
    let seen = upstream.seen.lock().unwrap();
    let times: Vec<Instant> = seen.requests.iter().map(|r| r.1).collect();
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= Duration::from_millis(990),
        "retried after {:?}, not the 1 s the upstream asked for",
        times[1] - times[0]
    );
}

#[tokio::test]
async fn a_timeout_is_transient() {
    let upstream = start_upstream().await;
    let app = app_with_upstream(&upstream, |_| {}).await;
    let id = app.ingest(&[777], "HIGH").await;
    let status = wait_until_ended(&app, &id, ENDS_WITHIN).await;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["batches"][0]["attempts"], 2);
}

#[tokio::test]
async fn max_attempts_reached_gives_failed() {
    let upstream = start_upstream().await;
    let app = app_with_upstream(&upstream, |c| c.max_attempts = 3).await;
    let id = app.ingest(&[999, 5], "HIGH").await;
    let status = wait_until_ended(&app, &id, ENDS_WITHIN).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["batches"][0]["attempts"], 3);
    assert_eq!(upstream.seen.lock().unwrap().attempts[&999], 3);

    let results = ndjson_results(&app, &id).await;
    assert_eq!(results[0]["outcome"], "error");
    assert_eq!(results[0]["error"]["kind"], "transient");
    assert_eq!(results[0]["error"]["status"], 503);
    assert_eq!(results[1]["outcome"], "ok");
}

#[tokio::test]
async fn the_rate_limit_holds_across_retries() {
    let upstream = start_upstream().await;
    let interval = Duration::from_millis(150);
    let app = app_with_upstream(&upstream, |c| {
        c.interval = "150ms".parse().unwrap();
        c.batch_size = "1".parse().unwrap();
        c.retry_base = "10ms".parse().unwrap();
        c.max_attempts = 4;
    })
    .await;
    // A retry storm: every id fails a few times; each attempt is one request.
    let id = app.ingest(&[503, 504, 999, 502, 1], "HIGH").await;
    wait_until_ended(&app, &id, ENDS_WITHIN).await;

    let seen = upstream.seen.lock().unwrap();
    let times: Vec<Instant> = seen.requests.iter().map(|r| r.1).collect();
    let mut min_gap = Duration::MAX;
    for pair in times.windows(2) {
        min_gap = min_gap.min(pair[1] - pair[0]);
    }
    let span = *times.last().unwrap() - times[0];
    let rate = (times.len() - 1) as f64 / span.as_secs_f64();
    let configured = 1.0 / interval.as_secs_f64();
    eprintln!(
        "retry storm: {} upstream requests in {span:?}: {rate:.2}/s against {configured:.2}/s \
         configured; closest two {min_gap:?}",
        times.len(),
    );
    // 503: 3 failures + 1; 504 and 999: 4 attempts, then failed; 502: 2 + 1; 1: once.
    assert_eq!(times.len(), 4 + 4 + 4 + 3 + 1);
    // Every attempt took a slot: over the storm the upstream saw the configured
    // rate, never more. Retries that bypassed the limiter would come 10 ms
    // apart (the retry base); a request can only drift from its slot by the
    // time our own process takes to send it.
    assert!(rate <= configured * 1.01, "{rate:.2}/s");
    // And no burst: bypassing retries would put many requests 10 ms apart. A
    // send delayed by a busy machine shortens the one gap after it, so a
    // couple of short gaps are tolerated; a burst is not.
    let short = times
        .windows(2)
        .filter(|pair| pair[1] - pair[0] < interval / 2)
        .count();
    assert!(short <= 2, "{short} gaps under half the interval");
}

#[tokio::test]
async fn headers_reach_the_upstream_from_a_token_file() {
    let upstream = start_upstream().await;
    let dir = tempfile::TempDir::new().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let app = app_with_upstream(&upstream, |c| {
        c.upstream_token_file = Some(token);
        c.upstream_headers = vec!["X-Tenant: acme".into()];
    })
    .await;
    let id = app.ingest(&[1], "HIGH").await;
    wait_until_ended(&app, &id, ENDS_WITHIN).await;
    let seen = upstream.seen.lock().unwrap();
    assert_eq!(seen.requests[0].2.as_deref(), Some("Bearer s3cret"));
}

#[tokio::test]
async fn results_are_paginated_in_order() {
    let app = spawn_app_with(|c| {
        c.interval = "0".parse().unwrap();
        c.mock_latency = "0ms".parse().unwrap();
        c.max_in_flight = 8.try_into().unwrap();
    })
    .await;
    let ids: Vec<u64> = (1..=10).collect();
    let id = app.ingest(&ids, "HIGH").await;
    app.wait_until_completed(&id, Duration::from_secs(10)).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{}/ingestions/{id}/results?limit=2", app.address);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app
            .client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        for line in page["results"].as_array().unwrap() {
            assert_eq!(line["outcome"], "ok");
            assert_eq!(line["data"]["data"], "processed");
            seen.push(line["id"].as_u64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert!(pages >= 2);
}

#[tokio::test]
async fn the_results_of_100_000_ids_stream_as_ndjson() {
    let app = spawn_app_with(|c| {
        c.interval = "0".parse().unwrap();
        c.mock_latency = "0ms".parse().unwrap();
        c.max_in_flight = 64.try_into().unwrap();
        c.batch_size = "100".parse().unwrap();
    })
    .await;
    let ids: Vec<u64> = (1..=100_000).collect();
    let id = app.ingest(&ids, "LOW").await;
    app.wait_until_completed(&id, Duration::from_secs(60)).await;

    let response = app
        .client
        .get(format!("{}/ingestions/{id}/results", app.address))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    // Streamed in pages: the length is not known up front.
    assert!(response.headers().get("content-length").is_none());
    let body = response.text().await.unwrap();
    let mut count = 0u64;
    for (i, line) in body.lines().enumerate() {
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["id"], i as u64 + 1);
        assert_eq!(line["outcome"], "ok");
        count += 1;
    }
    assert_eq!(count, 100_000);
}

#[tokio::test]
async fn results_of_an_unknown_request_are_404() {
    let app = spawn_app().await;
    for url in [
        "/ingestions/0192f0b4-7c1e-7000-8000-000000000000/results",
        "/ingestions/nonsense/results?format=ndjson",
    ] {
        let response = app
            .client
            .get(format!("{}{url}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{url}");
    }
}

#[tokio::test]
async fn cancel_stops_batches_not_started_and_is_harmless_twice() {
    let app = spawn_app_with(|c| {
        c.interval = "1h".parse().unwrap();
        c.mock_latency = "300ms".parse().unwrap();
    })
    .await;
    let id = app.ingest(&[1, 2, 3, 4, 5, 6, 7], "MEDIUM").await;
    wait_for_status(
        &app.client,
        &app.address,
        &id,
        "triggered",
        Duration::from_secs(5),
    )
    .await;

    let first: Value = app.cancel(&id).await.json().await.unwrap();
    assert_eq!(first["cancelled_batches"], 2);
    assert_eq!(first["status"], "triggered", "the batch in flight finishes");

    let again = app
        .client
        .post(format!("{}/ingestions/{id}/cancel", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["cancelled_batches"], 0);

    let status = wait_until_ended(&app, &id, ENDS_WITHIN).await;
    assert_eq!(status["status"], "cancelled");
    let batches: Vec<&str> = status["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(batches, ["completed", "cancelled", "cancelled"]);
    let results = ndjson_results(&app, &id).await;
    assert_eq!(results[3]["outcome"], "cancelled");

    let unknown = app.cancel("0192f0b4-7c1e-7000-8000-000000000000").await;
    assert_eq!(unknown.status(), 404);
}

async fn post_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(format!("{}/ingest", app.address))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_idempotency_key_replays_the_same_request() {
    let app = spawn_app_with(|c| c.interval = "1h".parse().unwrap()).await;
    let body = json!({"ids": [1, 2, 3, 4], "priority": "HIGH"});
    let first = post_with_key(&app, "order-17", &body).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let again = post_with_key(&app, "order-17", &body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(app.store.stats().await.unwrap().ingestions, 1);

    let other = post_with_key(&app, "order-17", &json!({"ids": [9], "priority": "HIGH"})).await;
    assert_eq!(other.status(), 422);
    let problem: Value = other.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(app.store.stats().await.unwrap().ingestions, 1);
}

#[tokio::test]
async fn concurrent_duplicates_create_one_request() {
    let app = spawn_app_with(|c| c.interval = "1h".parse().unwrap()).await;
    let body = json!({"ids": [1, 2, 3], "priority": "LOW"});
    let answers =
        futures_util::future::join_all((0..16).map(|_| post_with_key(&app, "same-key", &body)))
            .await;
    let mut ids = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), 200);
        ids.push(answer.json::<Value>().await.unwrap()["ingestion_id"].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(app.store.stats().await.unwrap().ingestions, 1);
}

#[tokio::test]
async fn idempotency_keys_expire() {
    let app = spawn_app_with(|c| {
        c.interval = "1h".parse().unwrap();
        c.idempotency_ttl = "300ms".parse().unwrap();
    })
    .await;
    let body = json!({"ids": [1], "priority": "LOW"});
    let first: Value = post_with_key(&app, "k", &body).await.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second: Value = post_with_key(&app, "k", &body).await.json().await.unwrap();
    assert_ne!(first["ingestion_id"], second["ingestion_id"]);
    assert_eq!(app.store.stats().await.unwrap().ingestions, 2);
}

/// What the callback receiver keeps: the bodies it got, and how many more
/// deliveries it will fail.
#[derive(Clone)]
struct Receiver {
    received: Arc<Mutex<Vec<Value>>>,
    failures_left: Arc<Mutex<usize>>,
}

async fn receive(
    State(receiver): State<Receiver>,
    axum::Json(body): axum::Json<Value>,
) -> StatusCode {
    receiver.received.lock().unwrap().push(body);
    let mut failures = receiver.failures_left.lock().unwrap();
    if *failures > 0 {
        *failures -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

/// A callback receiver on port 0 that fails its first `failures` deliveries.
async fn start_receiver(failures: usize) -> (String, Arc<Mutex<Vec<Value>>>) {
    let receiver = Receiver {
        received: Arc::new(Mutex::new(Vec::new())),
        failures_left: Arc::new(Mutex::new(failures)),
    };
    let received = Arc::clone(&receiver.received);
    let app = Router::new()
        .route("/done", post(receive))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/done", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

#[tokio::test]
async fn the_callback_is_delivered_when_the_request_ends_and_retried() {
    let (url, received) = start_receiver(1).await;
    let app = spawn_app_with(|c| c.callback_allow = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let response = app
        .post_ingest(&json!({"ids": [1, 2, 3, 4], "priority": "HIGH", "callback_url": url}))
        .await;
    let id = response.json::<Value>().await.unwrap()["ingestion_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.wait_until_completed(&id, Duration::from_secs(10)).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = app.status(&id).await;
        if status["callback"]["state"] == "delivered" {
            break status;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status["callback"]["attempts"], 2,
        "failed once, then delivered"
    );
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1]["ingestion_id"], id.as_str());
    assert_eq!(received[1]["status"], "completed");
    assert_eq!(received[1]["batch_counts"]["completed"], 2);
}

#[tokio::test]
async fn a_bad_callback_url_is_rejected() {
    let app = spawn_app().await;
    for url in [json!("ftp://example.org/x"), json!("not a url"), json!(5)] {
        let response = app
            .post_ingest(&json!({"ids": [1], "priority": "HIGH", "callback_url": url}))
            .await;
        assert_eq!(response.status(), 422);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "callback_url");
    }
    assert_eq!(app.store.stats().await.unwrap().ingestions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancels_racing_the_dispatcher_always_answer_and_every_request_ends() {
    // Cancels land while batches of the same requests start and finish: on a
    // shared database that is where lock-order deadlocks would show, as 503s.
    let app = spawn_app_with(|c| {
        c.interval = "0ms".parse().unwrap();
        c.max_in_flight = std::num::NonZeroUsize::new(4).unwrap();
        c.mock_latency = "1ms".parse().unwrap();
    })
    .await;
    let ids: Vec<u64> = (1..=30).collect();
    let mut requests = Vec::new();
    for _ in 0..40 {
        requests.push(app.ingest(&ids, "MEDIUM").await);
    }
    let cancels = requests.iter().enumerate().map(|(n, id)| {
        let app = &app;
        async move {
            tokio::time::sleep(Duration::from_millis(3 * n as u64)).await;
            let cancel = app.cancel(id).await;
            assert_eq!(cancel.status(), 200, "{:?}", cancel.text().await);
            cancel.json::<Value>().await.unwrap()["cancelled_batches"]
                .as_u64()
                .unwrap()
        }
    });
    let cancelled = futures_util::future::join_all(cancels).await;

    for (id, cancelled) in requests.iter().zip(cancelled) {
        let status = wait_until_ended(&app, id, ENDS_WITHIN).await;
        let batches = status["batches"].as_array().unwrap();
        let count = |s: &str| batches.iter().filter(|b| b["status"] == s).count() as u64;
        assert_eq!(count("cancelled"), cancelled, "{status:#}");
        assert_eq!(count("completed") + cancelled, 10, "{status:#}");
        let expected = if cancelled > 0 {
            "cancelled"
        } else {
            "completed"
        };
        assert_eq!(status["status"], expected, "{status:#}");
    }
}
