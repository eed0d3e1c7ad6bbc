//! Test harness: an in-process app on port 0 (`spawn_app`) and the real
//! binary as a child process (`ServerProcess`), for crashes and signals.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sluice::config::Config;
use sluice::startup::{Application, TestParts};
use sluice::store::SharedStore;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub store: SharedStore,
    /// The database URL the app runs on.
    pub database: String,
    shutdown: CancellationToken,
    /// Kept so the server task lives as long as the app.
    server: Option<JoinHandle<anyhow::Result<()>>>,
    dir: Option<TempDir>,
}

/// Which store the suite runs against: `SLUICE_TEST_STORE=postgres` for
/// PostgreSQL, SQLite otherwise.
pub fn testing_postgres() -> bool {
    std::env::var("SLUICE_TEST_STORE").is_ok_and(|s| s.eq_ignore_ascii_case("postgres"))
}

/// A fresh, empty database for one test: a SQLite file in `dir`, or a new
/// PostgreSQL database when testing PostgreSQL.
pub async fn fresh_database(dir: &Path) -> String {
    if testing_postgres() {
        fresh_postgres_database().await
    } else {
        format!("sqlite://{}", dir.join("sluice.db").display())
    }
}

/// A new PostgreSQL database on the server `SLUICE_TEST_POSTGRES` names
/// (default `postgres://postgres@127.0.0.1:5432`), named `sluice_test_…`.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let server = std::env::var("SLUICE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let server = server.trim_end_matches('/');
    let name = format!("sluice_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {server} (set SLUICE_TEST_POSTGRES): {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    format!("{server}/{name}")
}

/// Settings for tests: port 0, the given database, a short interval and a fast mock.
pub fn test_config(database: &str) -> Config {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database = database.to_owned();
    config.interval = "100ms".parse().unwrap();
    config.mock_latency = "5ms".parse().unwrap();
    config.shutdown_grace = "5s".parse().unwrap();
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with_parts(configure, TestParts::default()).await
}

/// An app with test parts in place of configured ones (a fetcher, a fault).
pub async fn spawn_app_with_parts(
    configure: impl FnOnce(&mut Config),
    parts: TestParts,
) -> TestApp {
    let dir = TempDir::new().unwrap();
    let mut config = test_config(&fresh_database(dir.path()).await);
    configure(&mut config);

    let database = config.database.clone();
    let app = Application::build_with(config, parts)
        .await
        .expect("the app builds");
    let address = format!("http://{}", app.local_addr());
    let store = app.store();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run(shutdown.clone()));
    TestApp {
        address,
        client: reqwest::Client::new(),
        store,
        database,
        shutdown,
        server: Some(server),
        dir: Some(dir),
    }
}

impl TestApp {
    /// Shuts the app down and waits until it has stopped, so another may
    /// open its database; the folder it returns holds a SQLite database.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.dir.take().expect("the folder is kept until now")
    }

    /// The SQLite file behind this app, if it uses SQLite.
    pub fn database_path(&self) -> Option<std::path::PathBuf> {
        self.database
            .strip_prefix("sqlite://")
            .map(std::path::PathBuf::from)
    }

    pub async fn post_ingest(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/ingest", self.address))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A POST /ingest with exactly these bytes and this Content-Type (if any).
    pub async fn post_ingest_raw(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/ingest", self.address))
            .body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.send().await.unwrap()
    }

    /// Submits a request and returns its ingestion id.
    pub async fn ingest(&self, ids: &[u64], priority: &str) -> String {
        ingest_at(&self.client, &self.address, ids, priority).await
    }

    pub async fn get_status(&self, id: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/status/{id}", self.address))
            .send()
            .await
            .unwrap()
    }

    /// `DELETE /ingestions/{id}`: cancels what has not started.
    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        self.client
            .delete(format!("{}/ingestions/{id}", self.address))
            .send()
            .await
            .unwrap()
    }

    pub async fn status(&self, id: &str) -> Value {
        let response = self.get_status(id).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Polls until the request is `completed`; panics after `limit`.
    pub async fn wait_until_completed(&self, id: &str, limit: Duration) -> Value {
        wait_for_status(&self.client, &self.address, id, "completed", limit).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A queues file (`--queues-file`) with this text, in `dir`.
pub fn queues_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("queues.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Submits a request to the server at `address`; returns its ingestion id.
pub async fn ingest_at(
    client: &reqwest::Client,
    address: &str,
    ids: &[u64],
    priority: &str,
) -> String {
    let response = client
        .post(format!("{address}/ingest"))
        .json(&json!({"ids": ids, "priority": priority}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let body: Value = response.json().await.unwrap();
    body["ingestion_id"].as_str().unwrap().to_owned()
}

/// The status of a request the server at `address` must know.
pub async fn status_at(client: &reqwest::Client, address: &str, id: &str) -> Value {
    let response = client
        .get(format!("{address}/status/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{id} is known");
    response.json().await.unwrap()
}

pub async fn wait_for_status(
    client: &reqwest::Client,
    address: &str,
    id: &str,
    wanted: &str,
    limit: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let body: Value = client
            .get(format!("{address}/status/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["status"] == wanted {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} not {wanted} after {limit:?}: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every batch of these requests, sorted by start time: `(ids, started_at µs)`.
pub fn starts_in_order(statuses: &[Value]) -> Vec<(Vec<u64>, i64)> {
    let mut starts: Vec<(Vec<u64>, i64)> = statuses
        .iter()
        .flat_map(|s| s["batches"].as_array().unwrap().iter())
        .map(|b| {
            let ids = b["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            (ids, micros(&b["started_at"]))
        })
        .collect();
    starts.sort_by_key(|(_, at)| *at);
    starts
}

/// An RFC 3339 timestamp from a status answer, in µs since the epoch.
pub fn micros(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    let t = humantime::parse_rfc3339(text).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// The real `sluice` binary, for kill -9 and signals.
pub struct ServerProcess {
    pub child: Child,
    pub address: String,
}

/// `sluice serve` on port 0 with its log on a pipe (`binary`: this build's if
/// `None`).
fn spawn_server(binary: Option<&str>, database: &str, extra_args: &[&str]) -> Child {
    Command::new(binary.unwrap_or(env!("CARGO_BIN_EXE_sluice")))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--database", database])
        .args(extra_args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sluice binary starts")
}

impl ServerProcess {
    pub fn start(database: &str, extra_args: &[&str]) -> Self {
        Self::start_binary(None, database, extra_args)
    }

    /// Starts `binary` (this build's `sluice` if `None`).
    pub fn start_binary(binary: Option<&str>, database: &str, extra_args: &[&str]) -> Self {
        let mut child = spawn_server(binary, database, extra_args);
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let address = loop {
            let line = lines
                .next()
                .expect("the server printed its address before exiting")
                .unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, address }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; panics after `limit`.
    pub async fn wait_exit(mut self, limit: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server still running after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every line a server has logged so far (see [`ServerProcess::start_logged`]).
#[derive(Clone, Default)]
pub struct ServerLog(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl ServerLog {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// The last `n` lines, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl ServerProcess {
    /// Like [`ServerProcess::start`], but keeps every line the server logs, so
    /// a test can check what it said and show it when an assertion fails.
    pub fn start_logged(database: &str, extra_args: &[&str]) -> (Self, ServerLog) {
        let mut child = spawn_server(None, database, extra_args);
        let log = ServerLog::default();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let address = loop {
            let Some(line) = lines.next() else {
                panic!(
                    "the server exited before printing its address:\n{}",
                    log.tail(50)
                );
            };
            let line = line.unwrap();
            log.0.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep reading so the server never blocks on a full pipe.
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        (Self { child, address }, log)
    }
}

/// Polls the request until it has ended (completed, failed or cancelled)
/// within `limit`, and returns its status.
pub async fn wait_until_ended(app: &TestApp, id: &str, limit: Duration) -> Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let status = app.status(id).await;
        if ["completed", "failed", "cancelled"].contains(&status["status"].as_str().unwrap()) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} did not end: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every id's outcome, from the results API as NDJSON.
pub async fn ndjson_results(app: &TestApp, id: &str) -> Vec<Value> {
    let body = app
        .client
        .get(format!(
            "{}/ingestions/{id}/results?format=ndjson",
            app.address
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
