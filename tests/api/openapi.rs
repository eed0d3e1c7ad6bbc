//! The OpenAPI document at `/openapi.json`: equal to the committed
//! `docs/openapi.json` (a snapshot), complete (every route, every error), and
//! true: real answers validate against the schemas it gives.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// The committed document; `UPDATE_OPENAPI=1` rewrites it.
const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

/// Every operation of the router (but `/`, `/openapi.json` and `/docs`), with
/// every status it can answer.
const OPERATIONS: &[(&str, &str, &[u16])] = &[
    ("get", "/queues", &[200, 401, 403, 408, 500, 503]),
    (
        "get",
        "/queues/{name}",
        &[200, 401, 403, 404, 408, 500, 503],
    ),
    (
        "patch",
        "/queues/{name}",
        &[200, 400, 401, 403, 404, 408, 415, 422, 500, 503],
    ),
    (
        "post",
        "/queues/{name}/pause",
        &[200, 401, 403, 404, 408, 500, 503],
    ),
    (
        "post",
        "/queues/{name}/resume",
        &[200, 401, 403, 404, 408, 500, 503],
    ),
    (
        "post",
        "/ingest",
        &[200, 400, 401, 403, 408, 413, 415, 422, 429, 500, 503],
    ),
    (
        "get",
        "/status/{ingestion_id}",
        &[200, 401, 404, 408, 500, 503],
    ),
    (
        "get",
        "/status",
        &[200, 400, 401, 404, 408, 413, 422, 500, 503],
    ),
    (
        "get",
        "/status/{ingestion_id}/events",
        &[200, 400, 401, 404, 408, 500, 503],
    ),
    ("get", "/events", &[200, 400, 401, 408, 500, 503]),
    ("get", "/ingestions", &[200, 400, 401, 408, 500, 503]),
    (
        "delete",
        "/ingestions/{ingestion_id}",
        &[200, 401, 403, 404, 408, 500, 503],
    ),
    (
        "post",
        "/ingestions/{ingestion_id}/cancel",
        &[200, 401, 403, 404, 408, 500, 503],
    ),
    (
        "get",
        "/ingestions/{ingestion_id}/results",
        &[200, 400, 401, 404, 408, 500, 503],
    ),
    ("get", "/healthz", &[200]),
    ("get", "/readyz", &[200, 401, 408, 503]),
    ("get", "/metrics", &[200, 401, 403, 408, 500, 503]),
    ("get", "/stats", &[200, 401, 403, 408, 500, 503]),
];

const UNKNOWN_ID: &str = "01a222b1-5fe1-70d3-b4a9-2fc5e0dc2351";

#[tokio::test]
async fn the_served_document_equals_docs_openapi_json() {
    let app = spawn_app().await;
    let served = Contract::fetch(&app).await.document;
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        let snapshot = std::path::Path::new(SNAPSHOT);
        std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
        std::fs::write(snapshot, pretty).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
    let committed: Value = serde_json::from_str(&committed).unwrap_or(Value::Null);
    assert!(
        committed == served,
        "the OpenAPI document served at /openapi.json differs from docs/openapi.json.\n\
         If the change is intended, update the file:\n\n    \
         UPDATE_OPENAPI=1 cargo test --test api openapi::the_served_document_equals_docs_openapi_json\n\n\
         and review the diff with `git diff docs/openapi.json`."
    );
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_describes_every_route_and_error() {
    let app = spawn_app().await;
    let contract = Contract::fetch(&app).await;
    let doc = &contract.document;

    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Sluice");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        doc["info"]["description"]
            .as_str()
            .is_some_and(|d| d.len() > 100),
        "the document describes the service"
    );

    let listed: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(method, path, _)| (method.to_string(), path.to_string()))
        .collect();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    assert_eq!(
        documented, listed,
        "the document's operations are the router's"
    );

    let mut operation_ids = BTreeSet::new();
    for (method, path, statuses) in OPERATIONS {
        let operation = contract.operation(method, path);
        let id = operation["operationId"].as_str().unwrap();
        assert!(operation_ids.insert(id), "operationId {id} is used twice");
        assert!(
            operation["summary"].is_string(),
            "{method} {path} has a summary"
        );
        let documented: BTreeSet<u16> = operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.parse().unwrap())
            .collect();
        let wanted: BTreeSet<u16> = statuses.iter().copied().collect();
        assert_eq!(documented, wanted, "the statuses of {method} {path}");

        for &status in statuses.iter().filter(|&&s| s >= 400) {
            let response = contract.response(method, path, status);
            let content = response["content"].as_object().unwrap();
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                ["application/problem+json"],
                "{method} {path} {status} is a problem document"
            );
            let schema = contract.schema(method, path, status, "application/problem+json");
            assert!(
                schema.to_string().contains("#/components/schemas/Problem"),
                "{method} {path} {status} uses the Problem schema"
            );
        }
        for (status, header) in [
            (503, "Retry-After"),
            (429, "Retry-After"),
            (401, "WWW-Authenticate"),
        ] {
            if statuses.contains(&status) {
                let response = contract.response(method, path, status);
                assert!(
                    response["headers"][header].is_object(),
                    "{method} {path} {status} has {header}"
                );
            }
        }

        // Keys are optional (no key is one of the alternatives), and the
        // role each operation needs is named.
        let security = &operation["security"];
        if *path == "/healthz" {
            assert_eq!(*security, json!([{}]), "/healthz is always open");
        } else {
            let role = match (*method, *path) {
                ("get", _) => "read",
                ("post", "/ingest") => "submit",
                _ => "admin",
            };
            // The operator endpoints also name the `operator` scope: they
            // need a key without a tenant.
            let operator = matches!(*path, "/stats" | "/metrics") || path.starts_with("/queues");
            let scopes = if operator {
                json!([role, "operator"])
            } else {
                json!([role])
            };
            assert_eq!(
                *security,
                json!([{}, {"api_key": scopes}]),
                "{method} {path} needs a {role} key"
            );
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"],
        json!({
            "type": "http",
            "scheme": "bearer",
            "description": doc["components"]["securitySchemes"]["api_key"]["description"],
        })
    );

    // The streaming and text answers say what they are.
    for (path, media) in [
        ("/status/{ingestion_id}/events", "text/event-stream"),
        ("/events", "text/event-stream"),
        ("/ingestions/{ingestion_id}/results", "application/x-ndjson"),
        ("/ingestions/{ingestion_id}/results", "application/json"),
        (
            "/metrics",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    ] {
        let content = &contract.response("get", path, 200)["content"];
        assert!(content[media].is_object(), "GET {path} answers {media}");
    }
    let events = contract.response("get", "/events", 200)["description"]
        .as_str()
        .unwrap();
    for word in ["event: batch", "event: ingestion", "Last-Event-ID"] {
        assert!(events.contains(word), "the SSE description tells {word:?}");
    }
    let ingest = contract.operation("post", "/ingest");
    assert!(
        ingest["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
        "POST /ingest documents Idempotency-Key"
    );
    assert!(ingest["requestBody"]["content"]["application/json"].is_object());
}

#[tokio::test]
async fn successful_answers_match_the_document() {
    // A long interval keeps the second batch of `waiting` and every batch of
    // `queued` from starting: the states are held still for the checks.
    let app = spawn_app_with(|c| c.interval = "1h".parse().unwrap()).await;
    let contract = Contract::fetch(&app).await;

    let body = contract
        .check(
            "post",
            "/ingest",
            app.post_ingest(&json!({"ids": [1, 2, 3, 4, 5, 6], "priority": "medium"}))
                .await,
        )
        .await;
    let waiting = body["ingestion_id"].as_str().unwrap().to_owned();
    wait_for(&app, &waiting, "triggered").await;
    let queued = app.ingest(&[7, 8], "HIGH").await;

    for (id, wanted) in [(&waiting, "triggered"), (&queued, "yet_to_start")] {
        let body = contract
            .check(
                "get",
                "/status/{ingestion_id}",
                get(&app, &format!("/status/{id}")).await,
            )
            .await;
        assert_eq!(body["status"], wanted);
    }
    let by_query = get(&app, &format!("/status?ingestion_id={queued}")).await;
    contract.check("get", "/status", by_query).await;
    let by_body = app
        .client
        .get(format!("{}/status", app.address))
        .json(&json!({"ingestion_id": queued}))
        .send()
        .await
        .unwrap();
    contract.check("get", "/status", by_body).await;

    let list = contract
        .check("get", "/ingestions", get(&app, "/ingestions").await)
        .await;
    assert_eq!(list["ingestions"].as_array().unwrap().len(), 2);
    let stats = contract
        .check("get", "/stats", get(&app, "/stats").await)
        .await;
    assert!(stats["last_start"].is_string());

    // Results while work is pending, as a page and as NDJSON.
    let page = contract
        .check(
            "get",
            "/ingestions/{ingestion_id}/results",
            get(&app, &format!("/ingestions/{waiting}/results")).await,
        )
        .await;
    assert_eq!(page["results"][5]["outcome"], "pending");
    contract
        .check(
            "get",
            "/ingestions/{ingestion_id}/results",
            get(
                &app,
                &format!("/ingestions/{waiting}/results?format=ndjson"),
            )
            .await,
        )
        .await;

    // Cancel, both ways; then a cancelled request's status and results.
    let cancelled = contract
        .check(
            "delete",
            "/ingestions/{ingestion_id}",
            app.client
                .delete(format!("{}/ingestions/{queued}", app.address))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(cancelled["cancelled_batches"], 1);
    let again = app
        .client
        .post(format!("{}/ingestions/{waiting}/cancel", app.address))
        .send()
        .await
        .unwrap();
    contract
        .check("post", "/ingestions/{ingestion_id}/cancel", again)
        .await;
    let status = contract
        .check(
            "get",
            "/status/{ingestion_id}",
            get(&app, &format!("/status/{queued}")).await,
        )
        .await;
    assert_eq!(status["status"], "cancelled");
    let page = contract
        .check(
            "get",
            "/ingestions/{ingestion_id}/results",
            get(&app, &format!("/ingestions/{queued}/results")).await,
        )
        .await;
    assert_eq!(page["results"][0]["outcome"], "cancelled");

    for path in ["/healthz", "/readyz", "/metrics"] {
        contract.check("get", path, get(&app, path).await).await;
    }
}

#[tokio::test]
async fn answers_about_completed_work_match_the_document() {
    let app = spawn_app().await;
    let contract = Contract::fetch(&app).await;
    let id = app.ingest(&[1, 2, 3, 4], "LOW").await;
    app.wait_until_completed(&id, Duration::from_secs(10)).await;

    let status = contract
        .check(
            "get",
            "/status/{ingestion_id}",
            get(&app, &format!("/status/{id}")).await,
        )
        .await;
    assert!(status["completed_at"].is_string());
    let page = contract
        .check(
            "get",
            "/ingestions/{ingestion_id}/results",
            get(&app, &format!("/ingestions/{id}/results?limit=1")).await,
        )
        .await;
    assert_eq!(page["results"][0]["outcome"], "ok");
    assert!(page["next_cursor"].is_string());
    let accept_ndjson = app
        .client
        .get(format!("{}/ingestions/{id}/results", app.address))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    contract
        .check("get", "/ingestions/{ingestion_id}/results", accept_ndjson)
        .await;
    contract
        .check("get", "/stats", get(&app, "/stats").await)
        .await;
}

#[tokio::test]
async fn error_answers_match_the_document() {
    let app = spawn_app_with(|c| {
        c.max_body_bytes = 1024;
        c.max_ids_per_request = 10;
    })
    .await;
    let contract = Contract::fetch(&app).await;
    let ingest = "/ingest";

    let cases = [
        (
            400,
            app.post_ingest_raw("{\"ids\": [1,", Some("application/json"))
                .await,
        ),
        (400, app.post_ingest_raw("", Some("application/json")).await),
        (
            413,
            app.post_ingest_raw(vec![b' '; 2048], Some("application/json"))
                .await,
        ),
        (
            413,
            app.post_ingest(&json!({"ids": (1..=11).collect::<Vec<_>>(), "priority": "LOW"}))
                .await,
        ),
        (415, app.post_ingest_raw("{}", Some("text/plain")).await),
        (415, app.post_ingest_raw("{}", None).await),
        (
            422,
            app.post_ingest(&json!({"ids": [0, "2"], "priority": "urgent"}))
                .await,
        ),
        (422, app.post_ingest(&json!({})).await),
    ];
    for (status, response) in cases {
        assert_eq!(response.status(), status);
        contract.check("post", ingest, response).await;
    }

    let not_found = [
        (
            "get",
            "/status/{ingestion_id}",
            format!("/status/{UNKNOWN_ID}"),
        ),
        (
            "get",
            "/status/{ingestion_id}",
            "/status/nonsense".to_owned(),
        ),
        (
            "get",
            "/status",
            format!("/status?ingestion_id={UNKNOWN_ID}"),
        ),
        (
            "get",
            "/status/{ingestion_id}/events",
            format!("/status/{UNKNOWN_ID}/events"),
        ),
        (
            "get",
            "/ingestions/{ingestion_id}/results",
            format!("/ingestions/{UNKNOWN_ID}/results"),
        ),
    ];
    for (method, path, url) in not_found {
        let response = get(&app, &url).await;
        assert_eq!(response.status(), 404, "{url}");
        contract.check(method, path, response).await;
    }
    for (method, path, url) in [
        (
            "delete",
            "/ingestions/{ingestion_id}",
            format!("/ingestions/{UNKNOWN_ID}"),
        ),
        (
            "post",
            "/ingestions/{ingestion_id}/cancel",
            format!("/ingestions/{UNKNOWN_ID}/cancel"),
        ),
    ] {
        let response = app
            .client
            .request(
                method.to_uppercase().parse().unwrap(),
                format!("{}{url}", app.address),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {url}");
        contract.check(method, path, response).await;
    }

    let bad_requests = [
        ("get", "/status", "/status".to_owned()),
        ("get", "/ingestions", "/ingestions?limit=0".to_owned()),
        (
            "get",
            "/ingestions/{ingestion_id}/results",
            format!("/ingestions/{UNKNOWN_ID}/results?limit=nope"),
        ),
    ];
    for (method, path, url) in bad_requests {
        let response = get(&app, &url).await;
        assert_eq!(response.status(), 400, "{url}");
        contract.check(method, path, response).await;
    }
    let bad_last_event = app
        .client
        .get(format!("{}/events", app.address))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_last_event.status(), 400);
    contract.check("get", "/events", bad_last_event).await;

    // GET /status with a body: broken JSON, no id, too large.
    for (status, body) in [
        (400, "{".to_owned()),
        (422, "{\"id\": 1}".to_owned()),
        (
            413,
            format!("{{\"ingestion_id\": \"{}\"}}", "x".repeat(64 * 1024)),
        ),
    ] {
        let response = app
            .client
            .get(format!("{}/status", app.address))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        contract.check("get", "/status", response).await;
    }
}

#[tokio::test]
async fn refusals_for_keys_and_load_match_the_document() {
    let contract = Contract::fetch(&spawn_app().await).await;
    let dir = tempfile::TempDir::new().unwrap();
    let keys = dir.path().join("keys");
    let (reader, submitter) = ("reader-key-0123456789", "submitter-key-0123456789");
    std::fs::write(&keys, format!("read {reader}\nsubmit {submitter}\n")).unwrap();
    let app = spawn_app_with(|c| {
        c.api_keys_file = Some(keys.clone());
        c.max_queued_ids = 0;
    })
    .await;
    let status_url = format!("{}/status/{UNKNOWN_ID}", app.address);
    let ingest_url = format!("{}/ingest", app.address);
    let body = json!({"ids": [1], "priority": "LOW"});

    for key in [None, Some("not-a-key-0123456789")] {
        let mut request = app.client.get(&status_url);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert!(response.headers().contains_key("www-authenticate"));
        contract
            .check("get", "/status/{ingestion_id}", response)
            .await;
    }
    let read_only = app
        .client
        .post(&ingest_url)
        .bearer_auth(reader)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(read_only.status(), 403);
    contract.check("post", "/ingest", read_only).await;
    let cancel = app
        .client
        .delete(format!("{}/ingestions/{UNKNOWN_ID}", app.address))
        .bearer_auth(submitter)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 403);
    contract
        .check("delete", "/ingestions/{ingestion_id}", cancel)
        .await;
    let queue_full = app
        .client
        .post(&ingest_url)
        .bearer_auth(submitter)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(queue_full.status(), 429);
    assert!(queue_full.headers().contains_key("retry-after"));
    contract.check("post", "/ingest", queue_full).await;

    // Writes past --max-concurrent-writes are shed with 503: one write holds
    // the only slot while its body trickles in.
    let app = spawn_app_with(|c| c.max_concurrent_writes = 1).await;
    let (more, body_parts) = tokio::sync::mpsc::channel::<Result<&'static str, std::io::Error>>(1);
    more.send(Ok("{\"ids\": [1],")).await.unwrap();
    let slow = tokio::spawn(
        app.client
            .post(format!("{}/ingest", app.address))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(
                tokio_stream::wrappers::ReceiverStream::new(body_parts),
            ))
            .send(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let shed = loop {
        let response = app.post_ingest(&body).await;
        if response.status() == 503 {
            break response;
        }
        assert!(tokio::time::Instant::now() < deadline, "no write was shed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(shed.headers().contains_key("retry-after"));
    contract.check("post", "/ingest", shed).await;
    more.send(Ok(" \"priority\": \"LOW\"}")).await.unwrap();
    drop(more);
    let done = slow.await.unwrap().unwrap();
    contract.check("post", "/ingest", done).await;
}

#[tokio::test]
async fn a_body_that_breaks_the_document_fails_validation() {
    let app = spawn_app().await;
    let contract = Contract::fetch(&app).await;
    let id = app.ingest(&[1, 2, 3, 4], "HIGH").await;
    let status = app.status(&id).await;
    let op = ("get", "/status/{ingestion_id}", 200, "application/json");
    assert_eq!(contract.errors(op, &status), Vec::<String>::new());

    let broken: [(&str, Breakage); 7] = [
        ("a missing field", |s| {
            s.as_object_mut().unwrap().remove("batches");
        }),
        ("a missing field of a batch", |s| {
            s["batches"][0].as_object_mut().unwrap().remove("attempts");
        }),
        ("a wrong type", |s| s["status"] = json!(3)),
        ("an unknown status", |s| {
            s["batches"][0]["status"] = json!("retrying")
        }),
        ("null where null is not allowed", |s| {
            s["created_at"] = Value::Null
        }),
        ("a malformed timestamp", |s| {
            s["created_at"] = json!("2026-11-28 15:06:19")
        }),
        ("an undocumented field", |s| s["surprise"] = json!(1)),
    ];
    for (what, breaks) in broken {
        let mut body = status.clone();
        breaks(&mut body);
        assert!(
            !contract.errors(op, &body).is_empty(),
            "{what} should fail validation: {body:#}"
        );
    }
    let problem =
        json!({"type": "urn:sluice:problem:not-found", "title": "Not found", "detail": "x"});
    let op = (
        "get",
        "/status/{ingestion_id}",
        404,
        "application/problem+json",
    );
    assert!(
        !contract.errors(op, &problem).is_empty(),
        "status is required"
    );
    let mut wrong_status = problem.clone();
    wrong_status["status"] = json!(400);
    assert!(
        !contract.errors(op, &wrong_status).is_empty(),
        "a 404 says 404"
    );
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = spawn_app().await;
    let page = get(&app, "/docs").await;
    assert_eq!(page.status(), 200);
    let content_type = page.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");

    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
        .collect();
    assert!(
        assets.iter().all(|a| !a.contains("//")),
        "every asset is Sluice's own, none from a CDN: {assets:?}"
    );
    let script = assets
        .iter()
        .find(|a| a.contains("swagger-ui-bundle") && a.ends_with(".js"))
        .expect("the page loads Swagger UI's bundle");
    let script = get(&app, &format!("/docs/{}", script.trim_start_matches("./"))).await;
    assert_eq!(script.status(), 200);
    assert!(script.bytes().await.unwrap().len() > 100_000);

    // The page is configured to read Sluice's own document.
    let initializer = get(&app, "/docs/swagger-initializer.js").await;
    assert_eq!(initializer.status(), 200);
    assert!(initializer.text().await.unwrap().contains("/openapi.json"));
}

/// A change that makes a valid answer invalid.
type Breakage = fn(&mut Value);

/// Polls until the request has this status; panics after 10 s.
async fn wait_for(app: &TestApp, id: &str, wanted: &str) {
    crate::helpers::wait_for_status(
        &app.client,
        &app.address,
        id,
        wanted,
        Duration::from_secs(10),
    )
    .await;
}

/// A plain GET of `path` on the app.
async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap()
}

/// The served document, and what checking answers against it needs.
struct Contract {
    document: Value,
    /// `components`, closed for validation (see [`close`]).
    closed_components: Value,
}

impl Contract {
    async fn fetch(app: &TestApp) -> Self {
        let response = get(app, "/openapi.json").await;
        assert_eq!(response.status(), 200);
        let document: Value = response.json().await.unwrap();
        let in_all_of = schemas_referenced_in_all_of(&document);
        let mut closed_components = document["components"].clone();
        for (name, schema) in closed_components["schemas"]
            .as_object_mut()
            .unwrap()
            .iter_mut()
        {
            close(schema, in_all_of.contains(name));
        }
        Self {
            document,
            closed_components,
        }
    }

    fn operation(&self, method: &str, path: &str) -> &Value {
        let operation = &self.document["paths"][path][method];
        assert!(operation.is_object(), "the document has no {method} {path}");
        operation
    }

    /// The response object for `status`, through a `$ref` if it is one.
    fn response(&self, method: &str, path: &str, status: u16) -> &Value {
        let response = &self.operation(method, path)["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {status}, which the document does not list"
        );
        match response["$ref"].as_str() {
            Some(reference) => self
                .document
                .pointer(reference.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("{reference} does not resolve")),
            None => response,
        }
    }

    fn schema(&self, method: &str, path: &str, status: u16, media: &str) -> &Value {
        let schema = &self.response(method, path, status)["content"][media]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} {status} has no schema for {media}"
        );
        schema
    }

    /// Why `body` does not match the schema of this operation, status and
    /// media type; empty if it does.
    fn errors(
        &self,
        (method, path, status, media): (&str, &str, u16, &str),
        body: &Value,
    ) -> Vec<String> {
        let mut root = self.schema(method, path, status, media).clone();
        close(&mut root, false);
        let root = root.as_object_mut().unwrap();
        root.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        root.insert("components".into(), self.closed_components.clone());
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&Value::Object(root.clone()))
            .unwrap_or_else(|e| panic!("the schema of {method} {path} {status} is invalid: {e}"));
        validator
            .iter_errors(body)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    /// Checks a real answer: its status and media type are documented for
    /// the operation, and its body matches the schema. Returns the body.
    async fn check(&self, method: &str, path: &str, response: reqwest::Response) -> Value {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        let content = self.response(method, path, status)["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} {status} documents no content"));
        let media = content
            .keys()
            .find(|documented| essence(documented) == essence(&content_type))
            .unwrap_or_else(|| {
                panic!(
                    "{method} {path} {status} answered {content_type:?}, not one of {:?}",
                    content.keys().collect::<Vec<_>>()
                )
            });
        let bodies: Vec<Value> = match essence(media).as_str() {
            "application/x-ndjson" => text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect(),
            m if m.ends_with("json") => vec![serde_json::from_str(&text).unwrap()],
            _ => return Value::String(text),
        };
        for body in &bodies {
            let errors = self.errors((method, path, status, media), body);
            assert!(
                errors.is_empty(),
                "{method} {path} answered {status} with a body that does not match the \
                 document:\n  {}\nbody: {body:#}",
                errors.join("\n  ")
            );
        }
        match essence(media).as_str() {
            "application/x-ndjson" => Value::Array(bodies),
            _ => bodies.into_iter().next().unwrap(),
        }
    }
}

/// A media type without its parameters, in lower case.
fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The component schemas that some `allOf` refers to.
fn schemas_referenced_in_all_of(value: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                for member in map
                    .get("allOf")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(name) = member["$ref"]
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    {
                        names.insert(name.to_owned());
                    }
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    names
}

/// Makes the test stricter than the document: an object schema that does not
/// say otherwise gets `unevaluatedProperties: false`, so a field that the
/// document does not describe fails. (The document itself stays open, since
/// later versions may add fields.) Parts of an `allOf` are left open: the
/// `allOf` as a whole is closed.
fn close(schema: &mut Value, part_of_all_of: bool) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    let is_object = map.contains_key("properties") || map.contains_key("allOf");
    let says_otherwise =
        map.contains_key("additionalProperties") || map.contains_key("unevaluatedProperties");
    if is_object && !says_otherwise && !part_of_all_of {
        map.insert("unevaluatedProperties".into(), Value::Bool(false));
    }
    for (key, child) in map.iter_mut() {
        match key.as_str() {
            "allOf" => each(child, |s| close(s, true)),
            "oneOf" | "anyOf" | "prefixItems" => each(child, |s| close(s, false)),
            "properties" => {
                for s in child
                    .as_object_mut()
                    .map(Map::values_mut)
                    .into_iter()
                    .flatten()
                {
                    close(s, false);
                }
            }
            "items" | "additionalProperties" => close(child, false),
            _ => {}
        }
    }
}

fn each(array: &mut Value, mut f: impl FnMut(&mut Value)) {
    for item in array.as_array_mut().into_iter().flatten() {
        f(item);
    }
}
