//! Tenants from API keys: two tenants' keys and an operator's (a key without a
//! tenant), through HTTP. A tenant sees and acts on only its own requests,
//! its lists and streams hold only its own, its idempotency keys are its own,
//! and the operator endpoints are refused to it.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const ACME: &str = "acme-submit-key-0123456789";
const GLOBEX: &str = "globex-admin-key-0123456789";
const ACME_ADMIN: &str = "acme-admin-key-0123456789";
const OPERATOR: &str = "operator-admin-key-0123456789";

/// acme has a submit and an admin key, globex an admin key, the operator an
/// admin key without a tenant. The interval is long: requests wait, so a
/// cancel has something to cancel.
async fn spawn_tenants(dir: &tempfile::TempDir) -> TestApp {
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        format!(
            "# role key tenant\nsubmit {ACME} acme\nadmin {ACME_ADMIN} acme\n\
             admin {GLOBEX} globex\nadmin {OPERATOR}\n"
        ),
    )
    .unwrap();
    spawn_app_with(|c| {
        c.api_keys_file = Some(keys.clone());
        c.interval = "1h".parse().unwrap();
    })
    .await
}

async fn call(app: &TestApp, method: Method, path: &str, key: &str) -> reqwest::Response {
    app.client
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn submit(
    app: &TestApp,
    key: &str,
    ids: &[u64],
    idempotency: Option<&str>,
) -> (String, bool) {
    let mut request = app
        .client
        .post(format!("{}/ingest", app.address))
        .bearer_auth(key)
        .json(&json!({"ids": ids, "priority": "LOW"}));
    if let Some(idempotency) = idempotency {
        request = request.header("idempotency-key", idempotency);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let body: Value = response.json().await.unwrap();
    (body["ingestion_id"].as_str().unwrap().to_owned(), replayed)
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

async fn listed(app: &TestApp, key: &str) -> Vec<String> {
    let response = call(app, Method::GET, "/ingestions?limit=500", key).await;
    assert_eq!(response.status(), 200);
    json_of(response).await["ingestions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["ingestion_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The ingestion ids of the events of `GET /events` (from the start, with
/// `Last-Event-ID: 0`), read until `seen` holds all of `until`.
async fn streamed(app: &TestApp, key: &str, until: &[&str]) -> Vec<String> {
    let response = app
        .client
        .get(format!("{}/events", app.address))
        .bearer_auth(key)
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let (mut buffer, mut seen) = (String::new(), Vec::<String>::new());
    while !until.iter().all(|id| seen.iter().any(|s| s == id)) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .unwrap_or_else(|_| panic!("events of {until:?} within 10 s; saw {seen:?}"))
            .expect("the stream stays open")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    let data: Value = serde_json::from_str(data).unwrap();
                    if let Some(id) = data["ingestion_id"].as_str() {
                        seen.push(id.to_owned());
                    }
                }
            }
        }
    }
    seen
}

async fn assert_unknown(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 404, "{what}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    let body = json_of(response).await;
    assert_eq!(
        body["type"], "urn:sluice:problem:not-found",
        "{what}: {body}"
    );
}

#[tokio::test]
async fn a_tenant_cannot_see_or_cancel_another_tenants_request() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = spawn_tenants(&dir).await;
    // The first slot goes to the operator's request: the tenants' wait.
    submit(&app, OPERATOR, &[100], None).await;
    let (acme, _) = submit(&app, ACME, &[1, 2, 3], None).await;
    let (globex, _) = submit(&app, GLOBEX, &[4, 5, 6], None).await;

    // Each sees its own, with its tenant named.
    let own = json_of(call(&app, Method::GET, &format!("/status/{acme}"), ACME).await).await;
    assert_eq!(own["tenant"], "acme");
    let own = json_of(call(&app, Method::GET, &format!("/status/{globex}"), GLOBEX).await).await;
    assert_eq!(own["tenant"], "globex");

    // The other's is as unknown as a request that never was: the same answer.
    let never = "0192f0b4-7c1e-7000-8000-000000000000";
    for (key, theirs) in [(ACME, &globex), (GLOBEX, &acme), (ACME_ADMIN, &globex)] {
        for id in [theirs.as_str(), never] {
            for (method, path) in [
                (Method::GET, format!("/status/{id}")),
                (Method::GET, format!("/status?ingestion_id={id}")),
                (Method::GET, format!("/ingestions/{id}/results")),
                (
                    Method::GET,
                    format!("/ingestions/{id}/results?format=ndjson"),
                ),
                (Method::GET, format!("/status/{id}/events")),
            ] {
                let response = call(&app, method.clone(), &path, key).await;
                assert_unknown(response, &format!("{method} {path}")).await;
            }
        }
    }
    let theirs_answer =
        json_of(call(&app, Method::GET, &format!("/status/{globex}"), ACME).await).await;
    let never_answer =
        json_of(call(&app, Method::GET, &format!("/status/{never}"), ACME).await).await;
    assert_eq!(
        theirs_answer["title"], never_answer["title"],
        "another tenant's request is answered as an unknown one"
    );

    // A cancel of the other's request is refused and changes nothing.
    for (method, path) in [
        (Method::DELETE, format!("/ingestions/{acme}")),
        (Method::POST, format!("/ingestions/{acme}/cancel")),
    ] {
        assert_unknown(call(&app, method, &path, GLOBEX).await, "cancel").await;
    }
    let untouched =
        json_of(call(&app, Method::GET, &format!("/status/{acme}"), OPERATOR).await).await;
    assert_eq!(untouched["status"], "yet_to_start", "{untouched}");
    assert_eq!(untouched["batch_counts"]["cancelled"], 0, "{untouched}");

    // Its own it cancels.
    let response = call(
        &app,
        Method::DELETE,
        &format!("/ingestions/{acme}"),
        ACME_ADMIN,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(response).await["status"], "cancelled");

    // The operator sees both, and their tenants.
    for (id, tenant) in [(&acme, "acme"), (&globex, "globex")] {
        let response = call(&app, Method::GET, &format!("/status/{id}"), OPERATOR).await;
        assert_eq!(response.status(), 200);
        assert_eq!(json_of(response).await["tenant"], tenant);
        let response = call(
            &app,
            Method::GET,
            &format!("/ingestions/{id}/results"),
            OPERATOR,
        )
        .await;
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn lists_and_the_event_stream_hold_only_the_tenants_own() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = spawn_tenants(&dir).await;
    let mut acme = Vec::new();
    let mut globex = Vec::new();
    for n in 0..3 {
        acme.push(submit(&app, ACME, &[n + 1], None).await.0);
        globex.push(submit(&app, GLOBEX, &[n + 10, n + 20], None).await.0);
    }
    let (operators, _) = submit(&app, OPERATOR, &[99], None).await;

    let mut expected = acme.clone();
    expected.reverse();
    assert_eq!(
        listed(&app, ACME).await,
        expected,
        "newest first, only acme's"
    );
    assert_eq!(listed(&app, ACME_ADMIN).await, expected);
    let mut expected = globex.clone();
    expected.reverse();
    assert_eq!(listed(&app, GLOBEX).await, expected);
    let all = listed(&app, OPERATOR).await;
    assert_eq!(all.len(), 7, "the operator sees every request: {all:?}");
    assert_eq!(all[0], operators);
    assert!(
        acme.iter().chain(&globex).all(|id| all.contains(id)),
        "{all:?}"
    );

    // The stream from the start: acme's events only, and all of them (each
    // request's `yet_to_start`).
    let until: Vec<&str> = acme.iter().map(String::as_str).collect();
    let seen = streamed(&app, ACME, &until).await;
    assert!(seen.iter().all(|id| acme.contains(id)), "{seen:?}");
    let until: Vec<&str> = globex.iter().map(String::as_str).collect();
    let seen = streamed(&app, GLOBEX, &until).await;
    assert!(seen.iter().all(|id| globex.contains(id)), "{seen:?}");
    // The operator's stream has everybody's.
    let mut until: Vec<&str> = acme.iter().chain(&globex).map(String::as_str).collect();
    until.push(&operators);
    streamed(&app, OPERATOR, &until).await;

    // And a live stream opened now: a new globex request does not reach acme,
    // the next acme request does.
    let response = app
        .client
        .get(format!("{}/events", app.address))
        .bearer_auth(ACME)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (hidden, _) = submit(&app, GLOBEX, &[7], None).await;
    let (shown, _) = submit(&app, ACME, &[8], None).await;
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while !text.contains(&shown) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("acme's new request within 10 s")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!text.contains(&hidden), "{text}");
}

#[tokio::test]
async fn idempotency_keys_are_the_tenants_own() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = spawn_tenants(&dir).await;
    let (acme, replayed) = submit(&app, ACME, &[1, 2], Some("order-42")).await;
    assert!(!replayed);
    // The same key from another tenant is another request, even with the same
    // content; and with other content it is no conflict either.
    let (globex, replayed) = submit(&app, GLOBEX, &[1, 2], Some("order-42")).await;
    assert!(!replayed);
    assert_ne!(acme, globex);
    let (operators, replayed) = submit(&app, OPERATOR, &[3], Some("order-42")).await;
    assert!(!replayed);
    assert_ne!(operators, acme);
    assert_ne!(operators, globex);

    // Within a tenant, a replay still replays, from any of its keys.
    for key in [ACME, ACME_ADMIN] {
        let (again, replayed) = submit(&app, key, &[1, 2], Some("order-42")).await;
        assert!(replayed);
        assert_eq!(again, acme);
    }
    let (again, replayed) = submit(&app, GLOBEX, &[1, 2], Some("order-42")).await;
    assert!(replayed);
    assert_eq!(again, globex);
    let (again, replayed) = submit(&app, OPERATOR, &[3], Some("order-42")).await;
    assert!(replayed);
    assert_eq!(again, operators);
    // And other content under a tenant's used key is still a conflict.
    let response = app
        .client
        .post(format!("{}/ingest", app.address))
        .bearer_auth(ACME)
        .header("idempotency-key", "order-42")
        .json(&json!({"ids": [9], "priority": "LOW"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(listed(&app, ACME).await, [acme]);
    assert_eq!(listed(&app, GLOBEX).await, [globex]);
}

#[tokio::test]
async fn operator_endpoints_need_a_key_without_a_tenant() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = spawn_tenants(&dir).await;
    for key in [ACME, GLOBEX, ACME_ADMIN] {
        for (method, path) in [
            (Method::GET, "/stats"),
            (Method::GET, "/metrics"),
            (Method::GET, "/queues"),
            (Method::GET, "/queues/default"),
            (Method::PATCH, "/queues/default"),
            (Method::POST, "/queues/default/pause"),
            (Method::POST, "/queues/default/resume"),
        ] {
            let response = call(&app, method.clone(), path, key).await;
            assert_eq!(response.status(), 403, "{method} {path}");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
            let body = json_of(response).await;
            assert_eq!(
                body["detail"], "this endpoint needs an operator key (a key without a tenant)",
                "{method} {path}: {body}"
            );
        }
    }
    // The pause was refused: the queue still runs.
    let queue = json_of(call(&app, Method::GET, "/queues/default", OPERATOR).await).await;
    assert_eq!(queue["paused"], false, "{queue}");
    for path in ["/stats", "/metrics", "/queues", "/queues/default"] {
        let response = call(&app, Method::GET, path, OPERATOR).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let response = call(&app, Method::POST, "/queues/default/pause", OPERATOR).await;
    assert_eq!(response.status(), 200);
    // What is not an operator's stays open to a tenant.
    for path in ["/ingestions", "/readyz", "/openapi.json", "/healthz"] {
        assert_eq!(
            call(&app, Method::GET, path, ACME).await.status(),
            200,
            "{path}"
        );
    }
}
