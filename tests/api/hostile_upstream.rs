//! A hostile upstream: answers too large, binary, malformed, too deep, too slow,
//! or redirecting. Each affects only its own id, on either store, and whatever
//! is stored reads back at a retry, in the results API and in the status.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::helpers::*;

/// How long a request here may take to end.
const ENDS_WITHIN: Duration = Duration::from_secs(30);

/// 100 MB, sent 64 KiB at a time: never held in the test's memory.
const HUGE_CHUNKS: usize = 1526;
static CHUNK: [u8; 65536] = [b'x'; 65536];

/// How the hostile upstream answers, by id.
const TOO_LARGE: u64 = 1;
const NUL_BYTES: u64 = 2;
const JSON_NUL: u64 = 3;
const DEEP_JSON: u64 = 4;
const INVALID_UTF8: u64 = 5;
const SLOW_DRIP: u64 = 6;
const REDIRECT_AWAY: u64 = 7;
/// 503 on the first attempt, then 200: its batch is retried, and the retry
/// must read back the hostile outcomes stored beside it.
const BUSY_ONCE: u64 = 8;
const REDIRECT_HOME: u64 = 9;

#[derive(Clone)]
struct Hostile {
    /// Where `REDIRECT_AWAY` sends the client: another listener, which must
    /// never be reached.
    elsewhere: String,
    /// This upstream's own address, for `REDIRECT_HOME`.
    home: Arc<Mutex<String>>,
    busy_once: Arc<AtomicUsize>,
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

async fn hostile(State(hostile): State<Hostile>, Path(id): Path<u64>) -> Response {
    match id {
        TOO_LARGE => {
            let chunks = futures_util::stream::iter(
                (0..HUGE_CHUNKS).map(|_| Ok::<_, Infallible>(Bytes::from_static(&CHUNK))),
            );
            Body::from_stream(chunks).into_response()
        }
        NUL_BYTES => (&b"a\0b\0c"[..]).into_response(),
        JSON_NUL => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"text": "a\u0000b"}"#,
        )
            .into_response(),
        DEEP_JSON => ([(header::CONTENT_TYPE, "application/json")], nested(200)).into_response(),
        INVALID_UTF8 => (&b"caf\xe9 \xff\xfe"[..]).into_response(),
        SLOW_DRIP => {
            let drip = futures_util::stream::unfold(0, |n| async move {
                (n < 100).then_some(())?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok::<_, Infallible>(Bytes::from_static(b"x")), n + 1))
            });
            Body::from_stream(drip).into_response()
        }
        REDIRECT_AWAY => (
            StatusCode::FOUND,
            [(
                header::LOCATION,
                format!("{}/items/{id}", hostile.elsewhere),
            )],
        )
            .into_response(),
        REDIRECT_HOME => {
            let home = hostile.home.lock().unwrap().clone();
            (
                StatusCode::FOUND,
                [(header::LOCATION, format!("{home}/moved/{id}"))],
            )
                .into_response()
        }
        BUSY_ONCE if hostile.busy_once.fetch_add(1, Ordering::SeqCst) == 0 => {
            (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
        }
        _ => axum::Json(json!({"id": id})).into_response(),
    }
}

/// The answer at the end of `REDIRECT_HOME`'s redirect.
async fn moved(Path(id): Path<u64>) -> axum::Json<Value> {
    axum::Json(json!({"id": id, "moved": true}))
}

/// A listener that counts what reaches it and the headers it got.
#[derive(Clone, Default)]
struct Elsewhere {
    requests: Arc<Mutex<Vec<HeaderMap>>>,
}

async fn start_elsewhere() -> (String, Elsewhere) {
    let seen = Elsewhere::default();
    let app = Router::new()
        .fallback(
            |State(seen): State<Elsewhere>, headers: HeaderMap| async move {
                seen.requests.lock().unwrap().push(headers);
                "you should not be here"
            },
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, seen)
}

/// The hostile upstream on port 0; returns its URL template.
async fn start_hostile(elsewhere: &str) -> String {
    let state = Hostile {
        elsewhere: elsewhere.to_owned(),
        home: Arc::default(),
        busy_once: Arc::default(),
    };
    let home = Arc::clone(&state.home);
    let app = Router::new()
        .route("/items/{id}", get(hostile))
        .route("/moved/{id}", get(moved))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    *home.lock().unwrap() = address.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("{address}/items/{{id}}")
}

async fn app_with_hostile(
    upstream: String,
    configure: impl FnOnce(&mut sluice::config::Config),
) -> TestApp {
    spawn_app_with(move |c| {
        c.upstream_url = Some(upstream);
        c.interval = "20ms".parse().unwrap();
        c.retry_base = "50ms".parse().unwrap();
        c.upstream_timeout = "1s".parse().unwrap();
        c.max_attempts = 2;
        configure(c);
    })
    .await
}

/// Every id's outcome from the results API, read both ways (NDJSON and pages).
async fn results(app: &TestApp, id: &str) -> Vec<Value> {
    let response = app
        .client
        .get(format!(
            "{}/ingestions/{id}/results?format=ndjson",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ndjson: Vec<Value> = response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let response = app
        .client
        .get(format!("{}/ingestions/{id}/results?limit=1", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "a page of JSON results");
    ndjson
}

fn message(outcome: &Value) -> &str {
    outcome["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_hostile_answer_affects_only_its_own_id() {
    let (elsewhere, reached) = start_elsewhere().await;
    let upstream = start_hostile(&elsewhere).await;
    let app = app_with_hostile(upstream, |c| {
        c.upstream_headers = vec!["X-Secret: for-the-upstream-only".into()];
    })
    .await;
    // Batches of 3: [1 2 5] [3 8 4] [6 7 10] [11 12 13]; the second holds a
    // NUL and a deep answer, and is retried for 8.
    let ids = [
        TOO_LARGE,
        NUL_BYTES,
        INVALID_UTF8,
        JSON_NUL,
        BUSY_ONCE,
        DEEP_JSON,
        SLOW_DRIP,
        REDIRECT_AWAY,
        10,
        11,
        12,
        13,
    ];
    let id = app.ingest(&ids, "HIGH").await;
    let later = app.ingest(&[20, 21], "LOW").await;
    let status = wait_until_ended(&app, &id, ENDS_WITHIN).await;
    let later = wait_until_ended(&app, &later, ENDS_WITHIN).await;
    assert_eq!(later["status"], "completed", "later work is not held up");

    let batch_status: Vec<&str> = status["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        batch_status,
        ["failed", "completed", "failed", "completed"],
        "{status:#}"
    );
    assert_eq!(status["batches"][1]["attempts"], 2, "retried for the 503");

    let results = results(&app, &id).await;
    let by_id = |wanted: u64| {
        results
            .iter()
            .find(|r| r["id"] == wanted)
            .unwrap_or_else(|| panic!("no result for {wanted}: {results:#?}"))
    };
    let too_large = by_id(TOO_LARGE);
    assert_eq!(too_large["outcome"], "error");
    assert_eq!(too_large["error"]["kind"], "permanent");
    assert!(message(too_large).contains("too large"), "{too_large}");

    assert_eq!(by_id(NUL_BYTES)["outcome"], "ok");
    assert_eq!(by_id(NUL_BYTES)["data"], "a\u{0}b\u{0}c", "kept as text");
    assert_eq!(
        by_id(JSON_NUL)["data"],
        json!({"text": "a\u{0}b"}),
        "kept as JSON"
    );
    assert_eq!(
        by_id(JSON_NUL)["attempts"],
        1,
        "not fetched again at the retry"
    );
    assert_eq!(
        by_id(DEEP_JSON)["data"],
        nested(200),
        "too deep: kept as text"
    );
    assert_eq!(by_id(INVALID_UTF8)["data"], "caf\u{fffd} \u{fffd}\u{fffd}");
    assert_eq!(by_id(BUSY_ONCE)["outcome"], "ok");
    assert_eq!(by_id(BUSY_ONCE)["attempts"], 2);

    let slow = by_id(SLOW_DRIP);
    assert_eq!(slow["outcome"], "error", "{slow}");
    assert_eq!(slow["error"]["kind"], "transient");
    assert!(message(slow).contains("timed out"), "{slow}");

    let redirect = by_id(REDIRECT_AWAY);
    assert_eq!(redirect["outcome"], "error");
    assert_eq!(redirect["error"]["kind"], "permanent");
    assert_eq!(redirect["error"]["status"], 302);
    assert!(
        reached.requests.lock().unwrap().is_empty(),
        "no redirect followed"
    );

    for other in [10, 11, 12, 13] {
        assert_eq!(by_id(other)["data"], json!({"id": other}));
    }
    // The status reads, every spelling.
    let response = app
        .client
        .get(format!("{}/status?ingestion_id={id}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn redirects_are_followed_only_when_asked_and_only_to_the_same_host() {
    let (elsewhere, reached) = start_elsewhere().await;
    let upstream = start_hostile(&elsewhere).await;
    let app = app_with_hostile(upstream, |c| {
        c.upstream_follow_redirects = true;
        c.upstream_headers = vec!["X-Secret: for-the-upstream-only".into()];
    })
    .await;
    let id = app.ingest(&[REDIRECT_HOME, REDIRECT_AWAY], "MEDIUM").await;
    wait_until_ended(&app, &id, ENDS_WITHIN).await;
    let results = results(&app, &id).await;
    assert_eq!(results[0]["outcome"], "ok", "{:#}", results[0]);
    assert_eq!(
        results[0]["data"],
        json!({"id": REDIRECT_HOME, "moved": true})
    );
    assert_eq!(results[1]["outcome"], "error");
    assert_eq!(results[1]["error"]["status"], 302);
    assert!(
        reached.requests.lock().unwrap().is_empty(),
        "another host never gets a request, nor the upstream's headers"
    );
}

#[tokio::test]
async fn the_body_limit_is_a_setting() {
    let (elsewhere, _) = start_elsewhere().await;
    let upstream = start_hostile(&elsewhere).await;
    let app = app_with_hostile(upstream, |c| c.upstream_max_body = 8).await;
    // `{"id":10}` is 9 bytes: one over the limit; `a\0b\0c` fits.
    let id = app.ingest(&[10, NUL_BYTES], "MEDIUM").await;
    wait_until_ended(&app, &id, ENDS_WITHIN).await;
    let results = results(&app, &id).await;
    assert_eq!(results[0]["outcome"], "error");
    assert!(message(&results[0]).contains("too large"), "{}", results[0]);
    assert_eq!(results[1]["outcome"], "ok");
}
