//! `POST /ingest` through real HTTP: what is accepted, how it is split, and
//! every invalid input of SPEC.md answered as a problem document with nothing
//! stored.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// The ids of each batch of a status answer, in order.
fn batch_ids(status: &Value) -> Vec<Vec<u64>> {
    status["batches"]
        .as_array()
        .expect("batches is an array")
        .iter()
        .map(|b| {
            b["ids"]
                .as_array()
                .expect("ids is an array")
                .iter()
                .map(|v| v.as_u64().expect("an id is an integer"))
                .collect()
        })
        .collect()
}

/// Checks that `response` is an RFC 9457 problem document with this status, and
/// returns its body.
async fn assert_problem(response: reqwest::Response, status: u16, case: &str) -> Value {
    assert_eq!(response.status(), status, "{case}: status code");
    let content_type = response
        .headers()
        .get("content-type")
        .unwrap_or_else(|| panic!("{case}: no content-type"))
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/problem+json", "{case}");
    let body: Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("{case}: the problem is not JSON: {e}"));
    for key in ["type", "title", "detail"] {
        assert!(
            body[key].as_str().is_some_and(|s| !s.is_empty()),
            "{case}: `{key}` missing or empty in {body:#}"
        );
    }
    assert_eq!(body["status"], status, "{case}: `status` in {body:#}");
    body
}

/// The `field` of every entry of a problem's `errors` list.
fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no `errors` list in {problem:#}"))
        .iter()
        .map(|e| {
            assert!(
                e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "an error without a message in {problem:#}"
            );
            e["field"].as_str().expect("a field name").to_owned()
        })
        .collect()
}

async fn assert_nothing_stored(app: &TestApp) {
    let stats = app.store.stats().await.unwrap();
    assert_eq!(
        stats.ingestions, 0,
        "a rejected request was stored: {stats:?}"
    );
    assert!(
        stats.batches.is_empty(),
        "a rejected request left batches: {stats:?}"
    );
}

#[tokio::test]
async fn a_valid_request_is_answered_with_a_uuid() {
    let app = spawn_app().await;

    let response = app
        .post_ingest(&json!({"ids": [1, 2, 3, 4, 5], "priority": "MEDIUM"}))
        .await;

    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    let id = body["ingestion_id"]
        .as_str()
        .expect("ingestion_id is a string");
    uuid::Uuid::parse_str(id).expect("ingestion_id is a UUID");
    assert_eq!(app.status(id).await["ingestion_id"], id);

    let other = app.ingest(&[1], "LOW").await;
    assert_ne!(other, id, "two requests share an id");
    assert_eq!(app.store.stats().await.unwrap().ingestions, 2);
}

#[tokio::test]
async fn priority_in_any_letter_case_is_answered_upper_case() {
    let app = spawn_app().await;
    for (sent, answered) in [
        ("HIGH", "HIGH"),
        ("high", "HIGH"),
        ("Medium", "MEDIUM"),
        ("mEdIuM", "MEDIUM"),
        ("low", "LOW"),
        ("lOW", "LOW"),
    ] {
        let id = app.ingest(&[1], sent).await;
        assert_eq!(app.status(&id).await["priority"], answered, "sent {sent:?}");
    }
}

#[tokio::test]
async fn ids_keep_their_order_and_repeats_in_batches_of_three() {
    let app = spawn_app().await;

    let id = app
        .ingest(&[5, 1, 5, 5, 1_000_000_007, 2, 2], "MEDIUM")
        .await;

    let status = app.status(&id).await;
    assert_eq!(
        batch_ids(&status),
        vec![vec![5, 1, 5], vec![5, 1_000_000_007, 2], vec![2]]
    );
}

#[tokio::test]
async fn batches_are_split_in_order_into_threes() {
    let app = spawn_app().await;
    for (n, sizes) in [
        (1, vec![1]),
        (3, vec![3]),
        (4, vec![3, 1]),
        (6, vec![3, 3]),
        (7, vec![3, 3, 1]),
        (8, vec![3, 3, 2]),
    ] {
        let ids: Vec<u64> = (1..=n).collect();
        let id = app.ingest(&ids, "LOW").await;
        let batches = batch_ids(&app.status(&id).await);
        let got: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(got, sizes, "{n} ids");
        assert_eq!(batches.concat(), ids, "{n} ids, in order");
    }
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let app = spawn_app().await;

    let response = app
        .post_ingest(&json!({
            "ids": [7, 8],
            "priority": "HIGH",
            "callback_url": "https://example.com/done",
            "tags": ["a", "b"],
            "options": {"dedupe": true, "nested": [1, {"x": null}]},
        }))
        .await;

    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let body: Value = response.json().await.unwrap();
    let status = app.status(body["ingestion_id"].as_str().unwrap()).await;
    assert_eq!(batch_ids(&status), vec![vec![7, 8]]);
    assert_eq!(status["priority"], "HIGH");
}

#[tokio::test]
async fn a_json_content_type_with_parameters_is_accepted() {
    let app = spawn_app().await;

    let response = app
        .post_ingest_raw(
            r#"{"ids": [1], "priority": "LOW"}"#,
            Some("application/json; charset=utf-8"),
        )
        .await;

    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    assert_eq!(app.store.stats().await.unwrap().ingestions, 1);
}

#[tokio::test]
async fn the_bounds_of_the_id_range_are_accepted() {
    let app = spawn_app().await;

    let id = app.ingest(&[1, 1_000_000_007], "HIGH").await;

    assert_eq!(
        batch_ids(&app.status(&id).await),
        vec![vec![1, 1_000_000_007]]
    );
}

/// One row of the table: the bytes sent, their Content-Type, the status
/// expected, and for 422 the fields the problem must name.
struct BadRequest {
    case: &'static str,
    body: String,
    content_type: Option<&'static str>,
    status: u16,
    fields: &'static [&'static str],
}

fn json_row(case: &'static str, body: &str, fields: &'static [&'static str]) -> BadRequest {
    BadRequest {
        case,
        body: body.to_owned(),
        content_type: Some("application/json"),
        status: 422,
        fields,
    }
}

fn bad_requests() -> Vec<BadRequest> {
    let raw = |case, body: &str, content_type, status| BadRequest {
        case,
        body: body.to_owned(),
        content_type,
        status,
        fields: &[],
    };
    let valid = r#"{"ids": [1, 2], "priority": "HIGH"}"#;
    vec![
        // 400: not JSON, or empty.
        raw("not JSON", "ids=1,2", Some("application/json"), 400),
        raw(
            "truncated JSON",
            r#"{"ids": [1, 2"#,
            Some("application/json"),
            400,
        ),
        // Not JSON further on, though its start is JSON of the wrong shape:
        // still 400, not 422 (found by the fuzzer).
        raw(
            "a wrong type, then broken JSON",
            "[1, 1,1, ",
            Some("application/json"),
            400,
        ),
        raw(
            "a repeated field, then broken JSON",
            r#"{"ids":[1],"ids":"#,
            Some("application/json"),
            400,
        ),
        raw(
            "a number, then garbage",
            "1x",
            Some("application/json"),
            400,
        ),
        raw("empty body", "", Some("application/json"), 400),
        raw("blank body", "  \n ", Some("application/json"), 400),
        // 415: the Content-Type is not application/json.
        raw("no Content-Type", valid, None, 415),
        raw("text/plain", valid, Some("text/plain"), 415),
        raw(
            "form",
            valid,
            Some("application/x-www-form-urlencoded"),
            415,
        ),
        raw("multipart form", valid, Some("multipart/form-data"), 415),
        // 422: valid JSON that breaks the rules.
        json_row(
            "id \"1\"",
            r#"{"ids": [1, "1"], "priority": "HIGH"}"#,
            &["ids[1]"],
        ),
        json_row(
            "id 1.5",
            r#"{"ids": [1, 1.5], "priority": "HIGH"}"#,
            &["ids[1]"],
        ),
        json_row(
            "id 2.0",
            r#"{"ids": [1, 2.0], "priority": "HIGH"}"#,
            &["ids[1]"],
        ),
        json_row(
            "id true",
            r#"{"ids": [1, true], "priority": "HIGH"}"#,
            &["ids[1]"],
        ),
        json_row(
            "id null",
            r#"{"ids": [1, null], "priority": "HIGH"}"#,
            &["ids[1]"],
        ),
        json_row(
            "id 0",
            r#"{"ids": [1, 0], "priority": "HIGH"}"#,
            &["ids[1]"],
        ),
        json_row(
            "id 1000000008",
            r#"{"ids": [1, 1000000008], "priority": "HIGH"}"#,
            &["ids[1]"],
        ),
        json_row(
            "id -1",
            r#"{"ids": [1, -1], "priority": "HIGH"}"#,
            &["ids[1]"],
        ),
        json_row(
            "id past u64",
            r#"{"ids": [1, 18446744073709551616], "priority": "HIGH"}"#,
            &["ids[1]"],
        ),
        json_row(
            "id an array",
            r#"{"ids": [1, [2]], "priority": "HIGH"}"#,
            &["ids[1]"],
        ),
        json_row("ids empty", r#"{"ids": [], "priority": "HIGH"}"#, &["ids"]),
        json_row(
            "ids a number",
            r#"{"ids": 1, "priority": "HIGH"}"#,
            &["ids"],
        ),
        json_row(
            "ids a string",
            r#"{"ids": "1,2", "priority": "HIGH"}"#,
            &["ids"],
        ),
        json_row(
            "ids an object",
            r#"{"ids": {"0": 1}, "priority": "HIGH"}"#,
            &["ids"],
        ),
        json_row("ids null", r#"{"ids": null, "priority": "HIGH"}"#, &["ids"]),
        json_row("ids missing", r#"{"priority": "HIGH"}"#, &["ids"]),
        json_row("priority missing", r#"{"ids": [1, 2]}"#, &["priority"]),
        json_row(
            "priority URGENT",
            r#"{"ids": [1, 2], "priority": "URGENT"}"#,
            &["priority"],
        ),
        json_row(
            "priority 1",
            r#"{"ids": [1, 2], "priority": 1}"#,
            &["priority"],
        ),
        json_row(
            "priority null",
            r#"{"ids": [1, 2], "priority": null}"#,
            &["priority"],
        ),
        json_row(
            "priority empty",
            r#"{"ids": [1, 2], "priority": ""}"#,
            &["priority"],
        ),
        json_row(
            "every rule broken at once",
            r#"{"ids": [0, 2, "3"], "priority": "urgent"}"#,
            &["ids[0]", "ids[2]", "priority"],
        ),
        json_row(
            "priority an array",
            r#"{"ids": [1, 2], "priority": ["HIGH"]}"#,
            &["priority"],
        ),
        json_row(
            "priority an object",
            r#"{"ids": [1, 2], "priority": {"HIGH": true}}"#,
            &["priority"],
        ),
        json_row(
            "callback_url relative",
            r#"{"ids": [1], "priority": "HIGH", "callback_url": "/hooks"}"#,
            &["callback_url"],
        ),
        json_row(
            "callback_url ftp",
            r#"{"ids": [1], "priority": "HIGH", "callback_url": "ftp://example.org/"}"#,
            &["callback_url"],
        ),
        json_row(
            "callback_url with a user name and password",
            r#"{"ids": [1], "priority": "HIGH", "callback_url": "https://me:secret@example.org/"}"#,
            &["callback_url"],
        ),
        json_row(
            "callback_url with a user name",
            r#"{"ids": [1], "priority": "HIGH", "callback_url": "https://me@example.org/"}"#,
            &["callback_url"],
        ),
        json_row(
            "callback_url of 2049 bytes",
            &format!(
                r#"{{"ids": [1], "priority": "HIGH", "callback_url": "https://example.org/{}"}}"#,
                "a".repeat(2049 - "https://example.org/".len())
            ),
            &["callback_url"],
        ),
        json_row(
            "callback_url a number",
            r#"{"ids": [1], "priority": "HIGH", "callback_url": 5}"#,
            &["callback_url"],
        ),
        json_row(
            "callback_url an array",
            r#"{"ids": [1], "priority": "HIGH", "callback_url": ["https://example.org/"]}"#,
            &["callback_url"],
        ),
        json_row("an empty object", "{}", &["ids", "priority"]),
        json_row(
            "body an array",
            r#"[{"ids": [1], "priority": "HIGH"}]"#,
            &[],
        ),
        json_row("body a string", r#""ids""#, &[]),
        json_row("body a number", "1", &[]),
        json_row("body null", "null", &[]),
    ]
}

#[tokio::test]
async fn every_invalid_input_is_a_problem_and_stores_nothing() {
    let app = spawn_app().await;

    for row in bad_requests() {
        let response = app.post_ingest_raw(row.body, row.content_type).await;
        let problem = assert_problem(response, row.status, row.case).await;
        if row.status == 422 {
            let fields = error_fields(&problem);
            assert!(
                !fields.is_empty(),
                "{}: no offending field in {problem:#}",
                row.case
            );
            for wanted in row.fields {
                assert!(
                    fields.iter().any(|f| f == wanted),
                    "{}: {wanted} not named in {problem:#}",
                    row.case
                );
            }
            // A field is only named when it is at fault.
            if !row.fields.is_empty() {
                assert_eq!(fields.len(), row.fields.len(), "{}: {problem:#}", row.case);
            }
        }
    }

    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_400_even_where_the_value_is_ignored() {
    let app = spawn_app().await;
    // An unknown field is skipped, but JSON is UTF-8 throughout (RFC 8259).
    let mut body = br#"{"ids": [1], "priority": "LOW", "note": ""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}"#);
    let response = app.post_ingest_raw(body, Some("application/json")).await;
    let problem = assert_problem(response, 400, "not UTF-8").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("UTF-8"),
        "{problem:#}"
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_body_larger_than_the_limit_is_413_and_stores_nothing() {
    let app = spawn_app_with(|c| c.max_body_bytes = 1024).await;
    let ids: Vec<u64> = (1..=1000).collect();
    let body = json!({"ids": ids, "priority": "HIGH"}).to_string();
    assert!(body.len() > 1024);

    let response = app.post_ingest_raw(body, Some("application/json")).await;
    assert_problem(response, 413, "body over --max-body-bytes").await;

    // Without a Content-Length (chunked), the limit still holds.
    let (status, head) = post_chunked(&app.address, 2048).await;
    assert_eq!(status, 413, "chunked body over --max-body-bytes: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{head}"
    );

    assert_nothing_stored(&app).await;

    // Under the limit, the same service accepts a request.
    let id = app.ingest(&[1, 2, 3], "LOW").await;
    assert_eq!(app.status(&id).await["ingestion_id"], id);
}

/// A POST /ingest with a chunked body of `len` bytes (valid JSON, mostly
/// whitespace), over a plain socket; returns the status and the response head.
async fn post_chunked(address: &str, len: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let host = address.trim_start_matches("http://").to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let json = r#"{"ids": [1], "priority": "HIGH"}"#;
        let body = format!("{json}{}", " ".repeat(len - json.len()));
        let mut request = format!(
            "POST /ingest HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        for chunk in body.as_bytes().chunks(256) {
            let chunk = std::str::from_utf8(chunk).unwrap();
            request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
        }
        request.push_str("0\r\n\r\n");
        // One write, so the server reads the whole request at once and never
        // closes with unread bytes (which would reset the connection).
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
        let head = answer
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_owned();
        (status, head)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn more_ids_than_the_limit_is_413_and_stores_nothing() {
    let app = spawn_app_with(|c| c.max_ids_per_request = 5).await;

    let response = app
        .post_ingest(&json!({"ids": [1, 2, 3, 4, 5, 6], "priority": "HIGH"}))
        .await;
    assert_problem(response, 413, "6 ids, limit 5").await;
    assert_nothing_stored(&app).await;

    // Exactly the limit is fine.
    let id = app.ingest(&[1, 2, 3, 4, 5], "HIGH").await;
    assert_eq!(
        batch_ids(&app.status(&id).await),
        vec![vec![1, 2, 3], vec![4, 5]]
    );
}

#[tokio::test]
async fn many_invalid_ids_are_listed_up_to_ten_and_then_counted() {
    let app = spawn_app().await;
    // 25 invalid ids among valid ones: positions 1, 3, 5, … 49.
    let ids: Vec<Value> = (0..50)
        .map(|i| if i % 2 == 1 { json!(0) } else { json!(i + 1) })
        .collect();

    let response = app
        .post_ingest(&json!({"ids": ids, "priority": "LOW"}))
        .await;

    let problem = assert_problem(response, 422, "25 invalid ids").await;
    let fields = error_fields(&problem);
    let listed: Vec<String> = (0..10).map(|k| format!("ids[{}]", 2 * k + 1)).collect();
    assert_eq!(fields[..10], listed[..], "{problem:#}");
    assert_eq!(fields.len(), 11, "ten ids and one count line: {problem:#}");
    assert_eq!(fields[10], "ids");
    let count_line = problem["errors"][10]["message"].as_str().unwrap();
    assert!(
        count_line.contains("15"),
        "the 15 unlisted ids are counted: {count_line}"
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_million_ids_are_accepted_with_the_default_limits() {
    let app = spawn_app().await;
    let ids: Vec<u64> = (1..=1_000_000).collect();

    let id = tokio::time::timeout(Duration::from_secs(60), app.ingest(&ids, "LOW"))
        .await
        .expect("a million ids are acknowledged within a minute");

    let status = app.status(&id).await;
    let batches = status["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 333_334);
    assert_eq!(status["batch_counts"]["total"], 333_334);
    assert_eq!(batches[0]["ids"], json!([1, 2, 3]));
    assert_eq!(batches[333_332]["ids"], json!([999_997, 999_998, 999_999]));
    assert_eq!(batches[333_333]["ids"], json!([1_000_000]));
}

#[tokio::test]
async fn a_callback_url_of_2048_bytes_is_accepted_and_stored_normalized() {
    let app = spawn_app().await;
    let base = "HTTPS://Example.org/";
    let url = format!("{base}{}", "a".repeat(2048 - base.len()));
    let response = app
        .post_ingest(&json!({"ids": [1], "priority": "LOW", "callback_url": url}))
        .await;
    assert_eq!(response.status(), 200);
    let id = response.json::<Value>().await.unwrap()["ingestion_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = app.status(&id).await;
    assert_eq!(
        status["callback"]["url"],
        format!("https://example.org/{}", "a".repeat(2048 - base.len()))
    );
}

#[tokio::test]
async fn a_15_mib_array_as_priority_or_callback_url_is_a_422_on_that_field() {
    let app = spawn_app().await;
    let zeros = vec!["0"; 15 * 1024 * 1024 / 2].join(",");
    for field in ["priority", "callback_url"] {
        let body = if field == "priority" {
            format!(r#"{{"ids": [1], "priority": [{zeros}]}}"#)
        } else {
            format!(r#"{{"ids": [1], "priority": "HIGH", "callback_url": [{zeros}]}}"#)
        };
        assert!(body.len() > 15 * 1024 * 1024);
        let response = app.post_ingest_raw(body, Some("application/json")).await;
        let problem = assert_problem(response, 422, field).await;
        assert_eq!(error_fields(&problem), [field], "{problem:#}");
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn large_bodies_wait_for_room_in_memory_and_are_all_answered() {
    // Room for one large body at a time: the others wait, none is refused.
    let app = spawn_app_with(|c| {
        c.max_body_bytes = 1 << 20;
        c.max_body_memory = 0;
    })
    .await;
    let ids = (1..=100_000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let body = format!(r#"{{"ids": [{ids}], "priority": "LOW"}}"#);
    assert!(body.len() > 64 * 1024 && body.len() < 1 << 20);
    let answers = futures_util::future::join_all(
        (0..6).map(|_| app.post_ingest_raw(body.clone(), Some("application/json"))),
    )
    .await;
    for response in answers {
        assert_eq!(response.status(), 200);
    }
}
