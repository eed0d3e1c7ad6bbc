//! Callbacks go only where they are allowed, and are signed: the destination
//! policy, no redirects, failures recorded without what a receiver said, and
//! Standard Webhooks signatures checked with the test's own HMAC.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sluice::config::Config;

use crate::helpers::*;

/// A listener that counts the connections it is offered and answers none.
struct Canary {
    port: u16,
    connections: Arc<AtomicUsize>,
}

async fn canary(address: &str) -> Option<Canary> {
    let listener = tokio::net::TcpListener::bind(address).await.ok()?;
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    Some(Canary { port, connections })
}

/// One request a receiver got: its headers and the exact bytes of its body.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

#[derive(Clone)]
struct Receiver {
    received: Received,
    /// What it answers: a status, and a `Location` for redirects.
    status: StatusCode,
    location: Option<String>,
    /// How many requests get a 503 before `status` is answered.
    failures_left: Arc<AtomicUsize>,
}

async fn receive(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    receiver.received.lock().unwrap().push((headers, body));
    if receiver
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        // A receiver's words must never reach the status answer.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "internal-banner: nginx/1.2.3 on db-7",
        )
            .into_response();
    }
    match &receiver.location {
        Some(location) => (receiver.status, [(header::LOCATION, location.clone())]).into_response(),
        None => receiver.status.into_response(),
    }
}

/// A receiver on 127.0.0.1 at `/hook`; the URL and what it receives.
async fn start_receiver(
    status: StatusCode,
    location: Option<String>,
    failures: usize,
) -> (String, Received) {
    let receiver = Receiver {
        received: Received::default(),
        status,
        location,
        failures_left: Arc::new(AtomicUsize::new(failures)),
    };
    let received = Arc::clone(&receiver.received);
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// Submits one id with this callback URL; the ingestion id.
async fn ingest_with_callback(app: &TestApp, url: &str) -> String {
    let response = app
        .post_ingest(&json!({"ids": [1], "priority": "HIGH", "callback_url": url}))
        .await;
    assert_eq!(response.status(), 200, "{url}: {:?}", response.text().await);
    response.json::<Value>().await.unwrap()["ingestion_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls the request's `callback` until `done` holds; panics after 15 s.
async fn callback_when(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = app.status(id).await;
        if done(&status["callback"]) {
            return status["callback"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id}: {:#}",
            status["callback"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ended(app: &TestApp, id: &str) -> Value {
    callback_when(app, id, |c| c["state"] != "pending").await
}

fn allow_loopback(config: &mut Config) {
    config.callback_allow = vec!["127.0.0.0/8".parse().unwrap()];
}

/// A secret file in Standard Webhooks form; the key's bytes.
fn write_secret(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let key: Vec<u8> = (0u8..32).map(|n| n.wrapping_mul(37) ^ 0x5a).collect();
    let path = dir.join("callback-secret");
    std::fs::write(&path, format!("whsec_{}\n", BASE64.encode(&key))).unwrap();
    (path, key)
}

/// The Standard Webhooks signature check, written from the specification.
fn signature_verifies(key: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let id = headers["webhook-id"].to_str().unwrap();
    let timestamp = headers["webhook-timestamp"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .any(|signature| signature == expected)
}

#[tokio::test]
async fn callbacks_to_internal_destinations_make_no_connection_and_fail_at_once() {
    let app = spawn_app().await;
    let local = canary("127.0.0.1:0").await.unwrap();
    let v6 = canary("[::1]:0").await;
    let v6_port = v6.as_ref().map_or(local.port, |c| c.port);
    let port = local.port;
    let urls = [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::1]:{v6_port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://0x7f.1:{port}/hook"),
        "http://10.0.0.1/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ];
    let mut requests = Vec::new();
    for url in &urls {
        requests.push((url, ingest_with_callback(&app, url).await));
    }
    for (url, id) in &requests {
        let callback = ended(&app, id).await;
        assert_eq!(callback["state"], "failed", "{url}: {callback}");
        assert_eq!(
            callback["last_error"], "destination not allowed",
            "{url}: {callback}"
        );
        assert_eq!(callback["attempts"], 1, "never retried: {url}: {callback}");
    }
    assert_eq!(local.connections.load(Ordering::SeqCst), 0);
    if let Some(v6) = v6 {
        assert_eq!(v6.connections.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_ends_the_callback() {
    let target = canary("127.0.0.1:0").await.unwrap();
    let (url, received) = start_receiver(
        StatusCode::FOUND,
        Some(format!("http://127.0.0.1:{}/hook", target.port)),
        0,
    )
    .await;
    let app = spawn_app_with(allow_loopback).await;
    let id = ingest_with_callback(&app, &url).await;

    let callback = ended(&app, &id).await;
    assert_eq!(callback["state"], "failed", "{callback}");
    assert_eq!(
        callback["last_error"],
        "destination not allowed: redirected (HTTP 302)"
    );
    assert_eq!(callback["attempts"], 1, "{callback}");
    assert_eq!(received.lock().unwrap().len(), 1);
    assert_eq!(target.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_allowed_callback_is_delivered_signed_per_standard_webhooks() {
    let dir = tempfile::TempDir::new().unwrap();
    let (secret, key) = write_secret(dir.path());
    let (url, received) = start_receiver(StatusCode::NO_CONTENT, None, 1).await;
    let app = spawn_app_with(|c| {
        allow_loopback(c);
        c.callback_secret_file = Some(secret.clone());
    })
    .await;
    let id = ingest_with_callback(&app, &url).await;

    let callback = callback_when(&app, &id, |c| c["state"] == "delivered").await;
    assert_eq!(callback["attempts"], 2, "one 503, then delivered");
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 2);
    for (headers, body) in received.iter() {
        assert!(signature_verifies(&key, headers, body), "{headers:?}");
        assert_eq!(headers["webhook-id"], id.as_str(), "stable across retries");
        assert_eq!(headers["content-type"], "application/json");
        let sent: i64 = headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - sent).abs() < 60, "{sent} is now-ish");
    }
    let (headers, body) = &received[1];
    let summary: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(summary["ingestion_id"], id.as_str());
    assert_eq!(summary["status"], "completed");

    // A byte changed anywhere breaks the signature: the check above is real.
    let mut tampered = body.to_vec();
    tampered[0] ^= 1;
    assert!(!signature_verifies(&key, headers, &tampered));
    let mut wrong_key = key.clone();
    wrong_key[0] ^= 1;
    assert!(!signature_verifies(&wrong_key, headers, body));
}

#[tokio::test]
async fn failures_are_recorded_as_a_class_and_a_status_only() {
    let (url, received) = start_receiver(StatusCode::NO_CONTENT, None, usize::MAX).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let app = spawn_app_with(allow_loopback).await;
    let answered = ingest_with_callback(&app, &url).await;
    let refused = ingest_with_callback(&app, &format!("http://127.0.0.1:{closed}/hook")).await;

    let callback = callback_when(&app, &answered, |c| c["attempts"] == 1).await;
    assert_eq!(callback["state"], "pending", "retried later: {callback}");
    assert_eq!(callback["last_error"], "HTTP 503", "{callback}");
    let callback = callback_when(&app, &refused, |c| c["attempts"] == 1).await;
    assert_eq!(callback["last_error"], "connect failed", "{callback}");

    // Without a secret, callbacks are unsigned but still carry their id.
    let received = received.lock().unwrap();
    let (headers, _) = &received[0];
    assert_eq!(headers["webhook-id"], answered.as_str());
    assert!(headers.contains_key("webhook-timestamp"));
    assert!(!headers.contains_key("webhook-signature"));
}

#[tokio::test]
async fn a_receiver_that_does_not_answer_in_time_is_recorded_as_timed_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    // Accepts and reads, never answers.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let app = spawn_app_with(|c| {
        allow_loopback(c);
        c.callback_timeout = "300ms".parse().unwrap();
    })
    .await;
    let id = ingest_with_callback(&app, &url).await;
    let callback = callback_when(&app, &id, |c| c["attempts"] == 1).await;
    assert_eq!(callback["state"], "pending", "retried later: {callback}");
    assert_eq!(callback["last_error"], "timed out", "{callback}");
}

#[tokio::test]
async fn a_receiver_admitted_by_name_is_reached_only_through_that_name() {
    let (url, received) = start_receiver(StatusCode::OK, None, 0).await;
    let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
    let app = spawn_app_with(|c| c.callback_allow = vec!["localhost".parse().unwrap()]).await;

    let by_name = ingest_with_callback(&app, &format!("http://localhost:{port}/hook")).await;
    let by_address = ingest_with_callback(&app, &url).await;
    assert_eq!(
        callback_when(&app, &by_name, |c| c["state"] != "pending").await["state"],
        "delivered"
    );
    let callback = ended(&app, &by_address).await;
    assert_eq!(callback["last_error"], "destination not allowed");
    assert_eq!(received.lock().unwrap().len(), 1);
}
