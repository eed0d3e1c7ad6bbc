//! `GET /status` in its three forms: the same answer, the documented fields,
//! the overall status derived from the batches, and problems for bad lookups.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const LIMIT: Duration = Duration::from_secs(10);

/// A service whose rate limit lets only the very first batch start during a
/// test: everything after it stays `yet_to_start`.
async fn spawn_slow_app() -> TestApp {
    spawn_app_with(|c| c.interval = "1h".parse().unwrap()).await
}

async fn by_query(app: &TestApp, id: &str) -> reqwest::Response {
    let url =
        reqwest::Url::parse_with_params(&format!("{}/status", app.address), [("ingestion_id", id)])
            .unwrap();
    app.client.get(url).send().await.unwrap()
}

async fn by_body(app: &TestApp, id: &str) -> reqwest::Response {
    app.client
        .get(format!("{}/status", app.address))
        .json(&json!({"ingestion_id": id}))
        .send()
        .await
        .unwrap()
}

/// A bare `GET /status` with these bytes as its body and this Content-Type.
async fn status_with_body(
    app: &TestApp,
    body: &'static str,
    content_type: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.get(format!("{}/status", app.address)).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    request.send().await.unwrap()
}

/// The three forms of the lookup, answered as (form, status code, body).
async fn all_forms(app: &TestApp, id: &str) -> Vec<(&'static str, u16, Value)> {
    let mut answers = Vec::new();
    for (form, response) in [
        ("path", app.get_status(id).await),
        ("query", by_query(app, id).await),
        ("body", by_body(app, id).await),
    ] {
        let code = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{form}: not JSON ({content_type}): {e}"));
        if code >= 400 {
            assert_eq!(content_type, "application/problem+json", "{form}: {body:#}");
        }
        answers.push((form, code, body));
    }
    answers
}

/// Checks an RFC 9457 problem document with this status; returns its body.
async fn assert_problem(response: reqwest::Response, status: u16, case: &str) -> Value {
    assert_eq!(response.status(), status, "{case}");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/problem+json"),
        "{case}"
    );
    let body: Value = response.json().await.unwrap();
    assert_problem_body(&body, status, case);
    body
}

fn assert_problem_body(body: &Value, status: u16, case: &str) {
    for key in ["type", "title", "detail"] {
        assert!(
            body[key].as_str().is_some_and(|s| !s.is_empty()),
            "{case}: `{key}` missing or empty in {body:#}"
        );
    }
    assert_eq!(body["status"], status, "{case}: {body:#}");
}

/// Polls until `done` holds for the request's status answer; panics after `limit`.
async fn wait_until(
    app: &TestApp,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let status = app.status(id).await;
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met after {limit:?}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn batch_statuses(status: &Value) -> Vec<&str> {
    status["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect()
}

/// A request whose first batch has completed while the rest wait an hour.
async fn partly_done(app: &TestApp, ids: &[u64], priority: &str) -> (String, Value) {
    let id = app.ingest(ids, priority).await;
    let status = wait_until(app, &id, LIMIT, |s| {
        s["batches"][0]["status"] == "completed"
    })
    .await;
    (id, status)
}

#[tokio::test]
async fn the_three_forms_give_the_same_answer() {
    let app = spawn_slow_app().await;
    // One request partly done, one completed, one waiting: the rate limit keeps
    // all three still while they are compared.
    let (partly, _) = partly_done(&app, &[1, 2, 3, 4], "LOW").await;
    let waiting = app.ingest(&[5, 6, 7, 8, 9, 10, 11], "high").await;

    for id in [&partly, &waiting] {
        let answers = all_forms(&app, id).await;
        let (_, _, by_path) = &answers[0];
        assert_eq!(by_path["ingestion_id"], id.as_str());
        for (form, code, body) in &answers {
            assert_eq!(*code, 200, "{form}: {body:#}");
            assert_eq!(body, by_path, "{form} differs from the path form");
        }
    }

    // Extra spellings of the body form: no Content-Type, and surrounding space.
    let plain = app
        .client
        .get(format!("{}/status", app.address))
        .body(format!("  {{\"ingestion_id\": \"{waiting}\"}}\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain, app.status(&waiting).await);
}

#[tokio::test]
async fn the_answer_has_every_documented_field() {
    let app = spawn_slow_app().await;
    let (id, status) = partly_done(&app, &[4, 5, 6, 7, 8, 9, 10], "mEdIuM").await;

    assert_eq!(status["ingestion_id"], id.as_str());
    assert_eq!(status["status"], "triggered");
    assert_eq!(status["priority"], "MEDIUM");
    let created = micros(&status["created_at"]);

    let batches = status["batches"].as_array().unwrap();
    let ids: Vec<&Value> = batches.iter().map(|b| &b["ids"]).collect();
    assert_eq!(ids, [&json!([4, 5, 6]), &json!([7, 8, 9]), &json!([10])]);

    let mut batch_ids: Vec<&str> = batches
        .iter()
        .map(|b| b["batch_id"].as_str().expect("batch_id is a string"))
        .collect();
    assert!(batch_ids.iter().all(|b| !b.is_empty()));
    batch_ids.sort_unstable();
    batch_ids.dedup();
    assert_eq!(batch_ids.len(), 3, "batch ids are distinct");

    let done = &batches[0];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["attempts"], 1);
    let started = micros(&done["started_at"]);
    let completed = micros(&done["completed_at"]);
    assert!(
        created <= started,
        "started before it was created: {status:#}"
    );
    assert!(
        started <= completed,
        "completed before it started: {status:#}"
    );

    for waiting in &batches[1..] {
        assert_eq!(waiting["status"], "yet_to_start");
        assert_eq!(waiting["attempts"], 0);
        for key in ["started_at", "completed_at"] {
            assert!(
                waiting.get(key).is_some_and(Value::is_null),
                "{key} of a waiting batch should be present and null: {status:#}"
            );
        }
    }
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404_in_every_form() {
    let app = spawn_app().await;
    app.ingest(&[1, 2, 3], "HIGH").await;

    let unknown = uuid::Uuid::now_v7().to_string();
    for id in [
        unknown.as_str(),
        "00000000-0000-0000-0000-000000000000",
        "not-a-uuid",
        "12345",
        "",
        "'; DROP TABLE ingestions; --",
        "%00",
        "ünïcödé",
        // Not UTF-8 once decoded (found by the fuzzer).
        "not-a-%DAuid",
    ] {
        for (form, code, body) in all_forms(&app, id).await {
            // An empty path segment is another route; every other form is a lookup.
            if id.is_empty() && form == "path" {
                assert!(
                    (400..500).contains(&code),
                    "path, empty id: {code} {body:#}"
                );
                continue;
            }
            assert_eq!(code, 404, "{form}, id {id:?}: {body:#}");
            assert_problem_body(&body, 404, &format!("{form}, id {id:?}"));
        }
    }
}

#[tokio::test]
async fn status_without_an_id_is_400() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(format!("{}/status", app.address))
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "no id at all").await;

    let response = status_with_body(&app, " \n", Some("application/json")).await;
    assert_problem(response, 400, "a blank body").await;
}

#[tokio::test]
async fn status_with_a_body_that_is_not_json_is_400() {
    let app = spawn_app().await;

    for (body, content_type) in [
        ("ingestion_id=abc", Some("application/json")),
        (r#"{"ingestion_id": "#, Some("application/json")),
        ("not json", None),
        ("not json", Some("text/plain")),
    ] {
        let response = status_with_body(&app, body, content_type).await;
        assert_problem(response, 400, &format!("{body:?} as {content_type:?}")).await;
    }
}

#[tokio::test]
async fn status_with_a_json_body_lacking_the_id_is_422() {
    let app = spawn_app().await;

    for body in [
        "{}",
        r#"{"id": "0190f6a8-0000-7000-8000-000000000000"}"#,
        r#"{"ingestion": null}"#,
    ] {
        let response = status_with_body(&app, body, Some("application/json")).await;
        let problem = assert_problem(response, 422, body).await;
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}: no errors list in {problem:#}"))
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["ingestion_id"], "{body}");
    }
}

#[tokio::test]
async fn a_request_is_yet_to_start_while_none_of_its_batches_has_started() {
    let app = spawn_slow_app().await;
    // The first request takes the one start the hour allows.
    let (first, _) = partly_done(&app, &[1, 2, 3, 4], "MEDIUM").await;
    let second = app.ingest(&[5, 6, 7, 8, 9, 10, 11], "MEDIUM").await;

    let status = app.status(&second).await;
    assert_eq!(status["status"], "yet_to_start", "{status:#}");
    assert_eq!(batch_statuses(&status), ["yet_to_start"; 3]);
    assert_eq!(status["batch_counts"]["yet_to_start"], 3);
    assert_eq!(app.status(&first).await["status"], "triggered");
}

#[tokio::test]
async fn a_request_is_triggered_while_partly_done() {
    let app = spawn_slow_app().await;

    let (id, status) = partly_done(&app, &[1, 2, 3, 4, 5], "HIGH").await;

    assert_eq!(batch_statuses(&status), ["completed", "yet_to_start"]);
    assert_eq!(status["status"], "triggered", "{status:#}");
    assert_eq!(status["batch_counts"]["completed"], 1);
    assert_eq!(status["batch_counts"]["yet_to_start"], 1);
    assert_eq!(app.status(&id).await["status"], "triggered");
}

#[tokio::test]
async fn a_request_is_triggered_while_its_only_batch_is_processing() {
    // A slow upstream keeps the single batch processing for a while.
    let app = spawn_app_with(|c| c.mock_latency = "300ms".parse().unwrap()).await;
    let id = app.ingest(&[1, 2, 3], "LOW").await;

    let status = wait_until(&app, &id, LIMIT, |s| {
        s["batches"][0]["status"] != "yet_to_start"
    })
    .await;

    // The batch takes 900 ms; polling every 20 ms sees it processing.
    assert_eq!(status["batches"][0]["status"], "triggered", "{status:#}");
    assert_eq!(status["status"], "triggered", "{status:#}");
    assert_eq!(status["batches"][0]["attempts"], 1, "{status:#}");
    assert!(status["batches"][0]["started_at"].is_string(), "{status:#}");
    assert!(status["batches"][0]["completed_at"].is_null(), "{status:#}");
    app.wait_until_completed(&id, LIMIT).await;
}

#[tokio::test]
async fn a_request_is_completed_when_every_batch_is() {
    let app = spawn_app().await;
    let id = app.ingest(&[1, 2, 3, 4, 5, 6, 7], "LOW").await;

    let status = app.wait_until_completed(&id, LIMIT).await;

    assert_eq!(batch_statuses(&status), ["completed"; 3]);
    assert_eq!(status["batch_counts"]["completed"], 3);
    let last_done = status["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b["attempts"], 1, "{status:#}");
            assert!(micros(&b["started_at"]) <= micros(&b["completed_at"]));
            micros(&b["completed_at"])
        })
        .max()
        .unwrap();
    assert_eq!(micros(&status["completed_at"]), last_done);
}

#[tokio::test]
async fn a_status_body_over_64_kib_is_413_and_up_to_it_is_read() {
    let app = spawn_app().await;
    let id = app.ingest(&[1], "LOW").await;
    let padded = |len: usize| {
        let head = format!(r#"{{"ingestion_id": "{id}", "pad": ""#);
        format!("{head}{}\"}}", "x".repeat(len - head.len() - 2))
    };
    let at_limit = padded(64 * 1024);
    assert_eq!(at_limit.len(), 64 * 1024);
    let response = app
        .client
        .get(format!("{}/status", app.address))
        .body(at_limit)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let response = app
        .client
        .get(format!("{}/status", app.address))
        .body(padded(64 * 1024 + 1))
        .send()
        .await
        .unwrap();
    assert_problem(response, 413, "a body of 64 KiB + 1").await;

    // 16 MiB, as a client sending its largest POST body to a read would.
    let response = app
        .client
        .get(format!("{}/status", app.address))
        .body(padded(16 << 20))
        .send()
        .await
        .unwrap();
    assert_problem(response, 413, "a body of 16 MiB").await;
}

#[tokio::test]
async fn a_status_body_names_the_request_only_by_a_string_the_last_time_it_is_given() {
    let app = spawn_app().await;
    let id = app.ingest(&[1], "LOW").await;
    let named = [
        format!(r#"{{"ingestion_id": [1, 2], "ingestion_id": "{id}"}}"#),
        format!(r#"{{"x": {{"ingestion_id": 1}}, "ingestion_id": "{id}"}}"#),
    ];
    for body in named {
        let response = app
            .client
            .get(format!("{}/status", app.address))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{body}");
    }
    let unnamed = [
        format!(r#"{{"ingestion_id": "{id}", "ingestion_id": 5}}"#),
        format!(r#"{{"ingestion_id": ["{id}"]}}"#),
        format!(r#"[{{"ingestion_id": "{id}"}}]"#),
        format!(r#""{id}""#),
    ];
    for body in unnamed {
        let response = app
            .client
            .get(format!("{}/status", app.address))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_problem(response, 422, &body).await;
    }
}

/// Byte for byte; on a difference, shows where it starts, not megabytes.
fn assert_same_json(got: &[u8], want: &[u8], case: &str) {
    if got != want {
        let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
        let around = |bytes: &[u8]| {
            String::from_utf8_lossy(&bytes[at.saturating_sub(80)..(at + 80).min(bytes.len())])
                .into_owned()
        };
        panic!(
            "{case}: {} bytes streamed, {} expected, first difference at {at}:
 got {}
want {}",
            got.len(),
            want.len(),
            around(got),
            around(want)
        );
    }
}

/// The status answer that the store's whole record gives, as JSON bytes.
async fn expected_answer(app: &TestApp, id: &str) -> Vec<u8> {
    let record = app
        .store
        .ingestion(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    // The default queue has no aging: a waiting batch ranks with its priority.
    let ranking = sluice::api::Ranking::of(&record, None, sluice::domain::Clock::new().now());
    serde_json::to_vec(&sluice::api::StatusResponse::of(record, ranking)).unwrap()
}

#[tokio::test]
async fn an_answer_larger_than_a_page_is_streamed_as_the_same_json() {
    // 2,500 batches of one id: the answer spans several pages of the store.
    let app = spawn_app_with(|c| {
        c.batch_size = "1".parse().unwrap();
        c.interval = "1h".parse().unwrap();
    })
    .await;
    let ids: Vec<u64> = (1..=2500).collect();
    let id = app.ingest(&ids, "LOW").await;
    // Only the first batch runs; wait until it has ended, so nothing moves.
    wait_until(&app, &id, LIMIT, |s| {
        s["batches"][0]["status"] == "completed"
    })
    .await;

    for form in ["path", "query", "body"] {
        let response = match form {
            "path" => app.get_status(&id).await,
            "query" => by_query(&app, &id).await,
            _ => by_body(&app, &id).await,
        };
        assert_eq!(response.status(), 200, "{form}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let streamed = response.bytes().await.unwrap();
        let expected = expected_answer(&app, &id).await;
        assert_same_json(&streamed, &expected, form);
    }
    let answer = app.status(&id).await;
    assert_eq!(answer["batches"].as_array().unwrap().len(), 2500);
    assert_eq!(answer["batch_counts"]["completed"], 1);
    assert_eq!(answer["batch_counts"]["yet_to_start"], 2499);
    assert_eq!(answer["status"], "triggered");

    // Once cancelled, every batch has ended: the overall status and the
    // counts come from every page.
    assert_eq!(app.cancel(&id).await.status(), 200);
    let streamed = app.get_status(&id).await.bytes().await.unwrap();
    assert_same_json(&streamed, &expected_answer(&app, &id).await, "cancelled");
    let answer: serde_json::Value = serde_json::from_slice(&streamed).unwrap();
    assert_eq!(answer["status"], "cancelled");
    assert_eq!(answer["batch_counts"]["cancelled"], 2499);
}

#[tokio::test]
async fn an_answer_of_exactly_one_page_or_one_more_batch_is_whole() {
    let app = spawn_app_with(|c| {
        c.batch_size = "1".parse().unwrap();
        c.interval = "1h".parse().unwrap();
    })
    .await;
    // The first start takes the hour's slot: nothing else runs meanwhile.
    let warm_up = app.ingest(&[1], "HIGH").await;
    app.wait_until_completed(&warm_up, LIMIT).await;
    for n in [255u64, 256, 257, 1256, 1257] {
        let ids: Vec<u64> = (1..=n).collect();
        let id = app.ingest(&ids, "LOW").await;
        assert_eq!(app.cancel(&id).await.status(), 200);
        let streamed = app.get_status(&id).await.bytes().await.unwrap();
        assert_same_json(
            &streamed,
            &expected_answer(&app, &id).await,
            &format!("{n} batches"),
        );
    }
}
