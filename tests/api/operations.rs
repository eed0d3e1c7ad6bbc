//! What operators rely on: health, readiness, metrics, and live progress (SSE).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn readiness_fails_when_the_store_goes_away() {
    let database = fresh_postgres_database().await;
    let app = spawn_app_with(|c| c.database = database.clone()).await;
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // Take the database away under the running service.
    let (server, name) = database.rsplit_once('/').unwrap();
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{server}/postgres"))
            .await
            .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();

    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.headers().contains_key("retry-after"));
    let alive = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(alive.status(), 200, "the process itself is alive");
    // Client requests get a clear 503, never a 500.
    let post = app
        .post_ingest(&serde_json::json!({"ids": [1], "priority": "HIGH"}))
        .await;
    assert_eq!(post.status(), 503);
    assert_eq!(post.headers()["content-type"], "application/problem+json");
}

/// The value of one sample line of a Prometheus scrape (0 if absent).
fn sample(scrape: &str, name_and_labels: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == name_and_labels).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    let response = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_change_as_work_flows() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    assert_eq!(sample(&before, "sluice_ingestions_total"), 0.0);

    let id = app.ingest(&[1, 2, 3, 4, 5], "HIGH").await;
    app.wait_until_completed(&id, Duration::from_secs(10)).await;
    let after = scrape(&app).await;

    assert_eq!(sample(&after, "sluice_ingestions_total"), 1.0);
    assert_eq!(sample(&after, "sluice_ids_accepted_total"), 5.0);
    assert_eq!(
        sample(&after, r#"sluice_batches_started_total{queue="default"}"#),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            r#"sluice_batch_attempts_total{outcome="completed"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(&after, r#"sluice_ids_fetched_total{outcome="ok"}"#),
        5.0
    );
    assert_eq!(
        sample(&after, "sluice_upstream_request_duration_seconds_count"),
        5.0
    );
    assert_eq!(sample(&after, "sluice_dispatch_lag_seconds_count"), 2.0);
    assert_eq!(
        sample(
            &after,
            r#"sluice_queue_batches{queue="default",priority="HIGH",status="completed"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            r#"sluice_queue_batches{queue="default",priority="HIGH",status="yet_to_start"}"#
        ),
        0.0
    );
    assert_eq!(
        sample(
            &after,
            r#"sluice_http_requests_total{method="POST",route="/ingest",status="200"}"#
        ),
        1.0
    );
    assert!(sample(&after, "sluice_rate_limit_wait_seconds_count") >= 1.0);
}

/// One Server-Sent Event: (id, event type, data).
type Sse = (u64, String, Value);

/// Reads events from an SSE response until `stop` says so or the stream ends.
async fn read_events(
    response: reqwest::Response,
    mut stop: impl FnMut(&[Sse]) -> bool,
) -> Vec<Sse> {
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.bytes_stream();
    let (mut buffer, mut events) = (String::new(), Vec::new());
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("an event within 10 s")
    {
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if let Some(id) = id {
                events.push((id, kind, serde_json::from_str(&data).unwrap()));
                if stop(&events) {
                    return events;
                }
            }
        }
    }
    events
}

fn transitions(events: &[Sse]) -> Vec<String> {
    events
        .iter()
        .map(|(_, kind, data)| match kind.as_str() {
            "batch" => format!(
                "batch {} {}",
                data["batch_id"]
                    .as_str()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap(),
                data["status"].as_str().unwrap()
            ),
            _ => format!("request {}", data["status"].as_str().unwrap()),
        })
        .collect()
}

const EVERY_TRANSITION: [&str; 7] = [
    "request yet_to_start",
    "batch 0 triggered",
    "request triggered",
    "batch 0 completed",
    "batch 1 triggered",
    "batch 1 completed",
    "request completed",
];

#[tokio::test]
async fn a_client_sees_every_transition_of_a_request_in_order() {
    let app = spawn_app().await;
    let id = app.ingest(&[1, 2, 3, 4, 5], "MEDIUM").await;
    let response = app
        .client
        .get(format!("{}/status/{id}/events", app.address))
        .send()
        .await
        .unwrap();
    // No stop condition: the server ends the stream when the request ends.
    let events = read_events(response, |_| false).await;
    assert_eq!(transitions(&events), EVERY_TRANSITION);
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    assert!(
        events
            .iter()
            .all(|(_, _, data)| data["ingestion_id"] == id.as_str())
    );
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_loses_nothing() {
    let app = spawn_app_with(|c| c.interval = "300ms".parse().unwrap()).await;
    let id = app.ingest(&[1, 2, 3, 4, 5], "LOW").await;
    let url = format!("{}/status/{id}/events", app.address);

    // Drop the connection after three events, while the request is running.
    let first = read_events(app.client.get(&url).send().await.unwrap(), |e| e.len() == 3).await;
    let last_id = first.last().unwrap().0;
    let rest = read_events(
        app.client
            .get(&url)
            .header("last-event-id", last_id.to_string())
            .send()
            .await
            .unwrap(),
        |_| false,
    )
    .await;

    let mut all = first.clone();
    all.extend(rest);
    assert_eq!(transitions(&all), EVERY_TRANSITION);
}

#[tokio::test]
async fn the_global_stream_carries_new_requests() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/events", app.address))
        .send()
        .await
        .unwrap();
    let id = app.ingest(&[9], "HIGH").await;
    let events = read_events(response, |e| {
        e.iter()
            .any(|(_, kind, data)| kind == "ingestion" && data["status"] == "completed")
    })
    .await;
    assert!(
        events
            .iter()
            .all(|(_, _, data)| data["ingestion_id"] == id.as_str())
    );
    assert_eq!(
        transitions(&events),
        [
            "request yet_to_start",
            "batch 0 triggered",
            "request triggered",
            "batch 0 completed",
            "request completed"
        ]
    );
}

#[tokio::test]
async fn events_of_an_unknown_request_are_404() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!(
            "{}/status/0192f0b4-7c1e-7000-8000-000000000000/events",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn the_log_has_a_line_per_request_and_per_batch_transition() {
    let dir = tempfile::TempDir::new().unwrap();
    let database = fresh_database(dir.path()).await;
    let (server, log) =
        ServerProcess::start_logged(&database, &["--interval", "10ms", "--mock-latency", "1ms"]);
    let client = reqwest::Client::new();
    let address = server.address.clone();
    let id = ingest_at(&client, &address, &[1, 2, 3, 4], "HIGH").await;
    wait_for_status(&client, &address, &id, "completed", Duration::from_secs(10)).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let has = |needles: &[&str]| {
        log.lines()
            .iter()
            .any(|line| needles.iter().all(|n| line.contains(n)))
    };
    // Batch transitions arrive asynchronously; give the log a moment.
    while !has(&["batch completed", &format!("{id}:1")]) {
        assert!(tokio::time::Instant::now() < deadline, "{}", log.tail(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let access = [
        "sluice::access",
        "method=POST",
        "route=/ingest",
        "status=200",
        &format!("ingestion_id={id}"),
    ];
    assert!(
        has(&access),
        "no access line for the POST:\n{}",
        log.tail(30)
    );
    assert!(
        has(&[
            "sluice::access",
            "method=GET",
            "route=/status/{ingestion_id}",
            "status=200"
        ]),
        "no access line for the GET:\n{}",
        log.tail(30)
    );
    for position in 0..2 {
        let batch = format!("{id}:{position}");
        assert!(has(&["batch triggered", &batch]), "{}", log.tail(30));
        assert!(has(&["batch completed", &batch]), "{}", log.tail(30));
    }
}
