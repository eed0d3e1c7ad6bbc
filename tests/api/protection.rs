//! Access control and overload: API keys with roles, and every limit answering
//! with a problem document and Retry-After while status reads go on.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const READ: &str = "read-key-0123456789abcdef";
const SUBMIT: &str = "submit-key-0123456789abcdef";
const ADMIN: &str = "admin-key-0123456789abcdef";

fn write_keys(path: &Path, read_key: &str) {
    std::fs::write(
        path,
        format!("# role key\nread {read_key}\nsubmit {SUBMIT}\nadmin {ADMIN}\n"),
    )
    .unwrap();
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method.clone(), format!("{}{path}", app.address));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if method == reqwest::Method::POST && path == "/ingest" {
        request = request.json(&json!({"ids": [1, 2, 3, 4], "priority": "LOW"}));
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn api_keys_gate_every_endpoint_but_healthz_by_role() {
    let dir = tempfile::TempDir::new().unwrap();
    let keys = dir.path().join("keys");
    write_keys(&keys, READ);
    let app = spawn_app_with(|c| {
        c.api_keys_file = Some(keys.clone());
        c.interval = "1h".parse().unwrap();
    })
    .await;
    use reqwest::Method;

    assert_eq!(
        call(&app, Method::GET, "/healthz", None).await.status(),
        200
    );
    let missing = call(&app, Method::GET, "/stats", None).await;
    assert_eq!(missing.status(), 401);
    assert!(
        missing.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(
        call(&app, Method::GET, "/stats", Some("wrong-key-0123456789"))
            .await
            .status(),
        401
    );
    assert_eq!(
        call(&app, Method::POST, "/ingest", None).await.status(),
        401
    );

    // read: reads only.
    assert_eq!(
        call(&app, Method::GET, "/stats", Some(READ)).await.status(),
        200
    );
    assert_eq!(
        call(&app, Method::GET, "/metrics", Some(READ))
            .await
            .status(),
        200
    );
    let refused = call(&app, Method::POST, "/ingest", Some(READ)).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(
        app.store.stats().await.unwrap().ingestions,
        0,
        "nothing stored"
    );

    // submit: reads and submits, but does not cancel.
    let created = call(&app, Method::POST, "/ingest", Some(SUBMIT)).await;
    assert_eq!(created.status(), 200);
    let id = created.json::<Value>().await.unwrap()["ingestion_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        call(&app, Method::GET, &format!("/status/{id}"), Some(SUBMIT))
            .await
            .status(),
        200
    );
    let cancel = format!("/ingestions/{id}");
    assert_eq!(
        call(&app, Method::DELETE, &cancel, Some(SUBMIT))
            .await
            .status(),
        403
    );

    // admin: everything.
    assert_eq!(
        call(&app, Method::DELETE, &cancel, Some(ADMIN))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn keys_rotate_by_editing_the_file() {
    let dir = tempfile::TempDir::new().unwrap();
    let keys = dir.path().join("keys");
    write_keys(&keys, READ);
    let app = spawn_app_with(|c| c.api_keys_file = Some(keys.clone())).await;
    use reqwest::Method;
    assert_eq!(
        call(&app, Method::GET, "/stats", Some(READ)).await.status(),
        200
    );

    let rotated = "read-key-rotated-0123456789";
    tokio::time::sleep(Duration::from_millis(50)).await;
    write_keys(&keys, rotated);
    // The file is checked at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        call(&app, Method::GET, "/stats", Some(rotated))
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&app, Method::GET, "/stats", Some(READ)).await.status(),
        401
    );
}

#[tokio::test]
async fn a_full_queue_refuses_new_work_with_429_keeps_serving_reads_and_recovers() {
    let app = spawn_app_with(|c| {
        c.interval = "1h".parse().unwrap();
        c.max_queued_ids = 10;
    })
    .await;
    let ids: Vec<u64> = (1..=30).collect();
    let first = app.ingest(&ids, "LOW").await;

    // The queue is counted once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = app
        .post_ingest(&json!({"ids": [1], "priority": "HIGH"}))
        .await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "5");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["status"], 429);
    assert_eq!(app.get_status(&first).await.status(), 200, "reads go on");

    // Drain the queue: new work is accepted again, by itself.
    app.client
        .delete(format!("{}/ingestions/{first}", app.address))
        .send()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let response = app
            .post_ingest(&json!({"ids": [1], "priority": "HIGH"}))
            .await;
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens a connection and sends a POST /ingest whose body never completes.
async fn start_slow_post(address: &str) -> TcpStream {
    let host = address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /ingest HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\n\r\n{{\"ids\": [1,"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stream
}

async fn read_status_line(stream: &mut TcpStream) -> String {
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    String::from_utf8_lossy(&buffer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_slow_client_gets_408() {
    let app = spawn_app_with(|c| c.request_timeout = "300ms".parse().unwrap()).await;
    let mut slow = start_slow_post(&app.address).await;
    let status = read_status_line(&mut slow).await;
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert_eq!(app.store.stats().await.unwrap().ingestions, 0);
}

#[tokio::test]
async fn writes_past_the_concurrency_limit_get_503_and_reads_go_on() {
    let app = spawn_app_with(|c| {
        c.max_concurrent_writes = 1;
        c.request_timeout = "2s".parse().unwrap();
    })
    .await;
    let mut slow = start_slow_post(&app.address).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let shed = app
        .post_ingest(&json!({"ids": [1], "priority": "HIGH"}))
        .await;
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let stats = app
        .client
        .get(format!("{}/stats", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 200, "reads are not shed");

    // Once the slow write is gone, writes are accepted again.
    let status = read_status_line(&mut slow).await;
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    drop(slow);
    let accepted = app
        .post_ingest(&json!({"ids": [1], "priority": "HIGH"}))
        .await;
    assert_eq!(accepted.status(), 200);
}

/// `sluice serve` with these arguments, on a fresh SQLite file; its exit
/// status and everything it wrote to stderr, or `None` if it was still running
/// after `limit` (then it is killed).
fn run_to_exit(args: &[&str], limit: Duration) -> Option<(std::process::ExitStatus, String)> {
    use std::io::Read;
    let dir = tempfile::TempDir::new().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .args(args)
        .arg("--database")
        .arg(format!("sqlite://{}", dir.path().join("s.db").display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    status.map(|status| (status, stderr))
}

#[test]
fn listening_beyond_loopback_without_keys_refuses_to_start_and_says_how_to_fix_it() {
    let (status, stderr) = run_to_exit(&["--listen", "0.0.0.0:0"], Duration::from_secs(20))
        .expect("the server exits by itself");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without API keys"),
        "{stderr}"
    );
    for fix in ["--api-keys-file", "127.0.0.1", "--insecure-no-auth"] {
        assert!(stderr.contains(fix), "names {fix}: {stderr}");
    }
}

#[test]
fn a_refused_start_creates_no_database() {
    let dir = tempfile::TempDir::new().unwrap();
    let database = dir.path().join("s.db");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "0.0.0.0:0", "--database"])
        .arg(format!("sqlite://{}", database.display()))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    assert!(!database.exists(), "nothing was opened before the refusal");
}

#[test]
fn insecure_no_auth_starts_beyond_loopback_with_a_warning() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::TempDir::new().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--insecure-no-auth",
            "--database",
        ])
        .arg(format!("sqlite://{}", dir.path().join("s.db").display()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("listening on");
        seen.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let log = seen.join("\n");
    assert!(log.contains("listening on"), "it started: {log}");
    assert!(
        log.contains("WARN") && log.contains("without API keys"),
        "{log}"
    );
}

/// A GET /stats naming `host` in its `Host` header.
async fn stats_as_host(app: &TestApp, host: &str) -> reqwest::Response {
    app.client
        .get(format!("{}/stats", app.address))
        .header(reqwest::header::HOST, host)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn without_keys_only_local_host_names_are_served() {
    let app = spawn_app().await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();

    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        assert_eq!(stats_as_host(&app, &host).await.status(), 200, "{host}");
    }
    for host in ["evil.example", "evil.example:8000", "10.1.2.3"] {
        let refused = stats_as_host(&app, host).await;
        assert_eq!(refused.status(), 403, "{host}");
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["status"], 403);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("--allowed-hosts"),
            "{problem}"
        );
    }

    // A write from a rebound page stores nothing.
    let refused = app
        .client
        .post(format!("{}/ingest", app.address))
        .header(reqwest::header::HOST, "evil.example")
        .json(&json!({"ids": [1], "priority": "HIGH"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(app.store.stats().await.unwrap().ingestions, 0);
}

#[tokio::test]
async fn allowed_hosts_adds_names_and_keys_lift_the_host_check() {
    let app = spawn_app_with(|c| c.allowed_hosts = vec!["sluice.internal".into()]).await;
    assert_eq!(
        stats_as_host(&app, "Sluice.Internal:8000").await.status(),
        200
    );
    assert_eq!(stats_as_host(&app, "evil.example").await.status(), 403);

    let dir = tempfile::TempDir::new().unwrap();
    let keys = dir.path().join("keys");
    write_keys(&keys, READ);
    let app = spawn_app_with(|c| c.api_keys_file = Some(keys.clone())).await;
    let with_key = app
        .client
        .get(format!("{}/stats", app.address))
        .header(reqwest::header::HOST, "sluice.example.com")
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 200, "keys authenticate every request");
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_database_password_never_appears_in_what_the_server_prints() {
    let secret = "db-Pa55word-never-shown";
    let url = format!(
        "postgres://sluice:{secret}@127.0.0.1:{}/sluice",
        closed_port()
    );
    // The server here trusts local users, so a wrong password would connect:
    // a closed port makes the start fail with the URL in the message.
    let dir = tempfile::TempDir::new().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &url])
        .env("RUST_LOG", "trace")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("opening the database postgres://sluice:***@127.0.0.1:"),
        "the message still names the database: {stderr}"
    );
    assert!(!stderr.contains(secret), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains(secret));
}

#[test]
fn a_malformed_upstream_header_is_not_echoed() {
    let secret = "Bearer-tok3n-never-shown";
    let (status, stderr) = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream-url",
            "http://127.0.0.1:9/items/{id}",
            "--upstream-header",
            "Accept: application/json",
            "--upstream-header",
            &format!("Authorization {secret}"),
        ],
        Duration::from_secs(20),
    )
    .expect("the server exits by itself");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("--upstream-header number 2 of 2 has no `:`"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "{stderr}");
}

#[test]
fn a_malformed_callback_secret_stops_the_start_without_being_echoed() {
    let dir = tempfile::TempDir::new().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "hunter2-is-not-base64!").unwrap();
    let (status, stderr) = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--callback-secret-file",
            secret.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    )
    .expect("the server exits by itself");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("--callback-secret-file"), "{stderr}");
    assert!(stderr.contains("whsec_"), "says what it wants: {stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn without_keys_a_request_with_no_host_is_served() {
    // Browsers always send a Host, so a request without one cannot come from
    // a rebinding page.
    let app = spawn_app().await;
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(b"GET /stats HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let status = read_status_line(&mut stream).await;
    assert!(status.contains(" 200 "), "{status}");
}
