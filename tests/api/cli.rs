//! The command-line client: the real `sluice` binary, run as a child process
//! against a server that the test starts (`--server`), checked by its stdout,
//! stderr and exit code: 0 done, 1 the followed request failed or was
//! cancelled, 2 the command could not do its job.
//!
//! Until the real server has its event stream, a small scripted server stands
//! in for it to test how `watch` resumes a dropped stream.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use crate::helpers::*;

const LIMIT: Duration = Duration::from_secs(10);

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Neither a panic nor Rust's debug output reached the user.
    fn assert_tidy(&self) {
        for bad in ["panicked", "RUST_BACKTRACE", "Error {", "Some(", "kind:"] {
            assert!(!self.stderr.contains(bad), "{bad:?} in stderr: {self:#?}");
        }
    }
}

/// Runs `sluice <args>` with `input` on stdin, off the async runtime so that
/// the in-process server keeps answering meanwhile.
async fn sluice(args: &[&str], input: Option<&str>) -> Run {
    sluice_with_env(args, input, &[]).await
}

/// The same with these environment variables set (and no other `SLUICE_`
/// variable of the test's own environment).
async fn sluice_with_env(args: &[&str], input: Option<&str>, env: &[(&str, &str)]) -> Run {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let input = input.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&args)
            .env_remove("SLUICE_URL")
            .env_remove("SLUICE_API_KEY")
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sluice binary starts");
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input.as_bytes()).unwrap();
        }
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        Run {
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    })
    .await
    .unwrap()
}

/// `sluice submit <args> --server <app>`; asserts success and that stdout is
/// exactly the id; returns it.
async fn submit(app: &TestApp, args: &[&str], input: Option<&str>) -> String {
    let mut all = vec!["submit", "--server", &app.address];
    all.extend(args);
    let run = sluice(&all, input).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_is_only_an_id(&run.stdout);
    run.stdout.trim_end().to_owned()
}

fn assert_is_only_an_id(stdout: &str) {
    let id = stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("not one line: {stdout:?}"));
    assert!(
        uuid::Uuid::try_parse(id).is_ok(),
        "stdout is not just an ingestion id: {stdout:?}"
    );
}

fn ids_of(status: &Value) -> Vec<u64> {
    status["batches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["ids"].as_array().unwrap().iter())
        .map(|id| id.as_u64().unwrap())
        .collect()
}

/// An address where nothing listens: a port that was free a moment ago.
fn nothing_listening() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    address
}

#[tokio::test]
async fn submit_prints_only_the_id_of_a_medium_request() {
    let app = spawn_app().await;
    let id = submit(&app, &["1", "2", "3"], None).await;
    let status = app.status(&id).await;
    assert_eq!(ids_of(&status), [1, 2, 3]);
    assert_eq!(status["priority"], "MEDIUM");
}

#[tokio::test]
async fn submit_takes_ranges_commas_and_a_priority_in_any_case() {
    let app = spawn_app().await;
    let id = submit(&app, &["--priority", "hIgH", "1-4,7", "9,10-10", "3"], None).await;
    let status = app.status(&id).await;
    assert_eq!(ids_of(&status), [1, 2, 3, 4, 7, 9, 10, 3]);
    assert_eq!(status["priority"], "HIGH");
}

#[tokio::test]
async fn submit_reads_stdin_for_a_dash() {
    let app = spawn_app().await;
    let id = submit(&app, &["-p", "low", "-"], Some("5\n6,7 8-10\r\n\n11\n")).await;
    let status = app.status(&id).await;
    assert_eq!(ids_of(&status), [5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(status["priority"], "LOW");
}

#[tokio::test]
async fn submit_reads_an_ids_file() {
    let app = spawn_app().await;
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("ids.txt");
    std::fs::write(&file, "100-102\n7, 8\n").unwrap();
    let id = submit(&app, &["--ids-file", file.to_str().unwrap()], None).await;
    assert_eq!(ids_of(&app.status(&id).await), [100, 101, 102, 7, 8]);
}

#[tokio::test]
async fn sluice_url_picks_the_server_when_there_is_no_flag() {
    let app = spawn_app().await;
    let run = tokio::task::spawn_blocking({
        let address = app.address.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["submit", "4-6"])
                .env("SLUICE_URL", address)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(run.status.success(), "{run:?}");
    let id = String::from_utf8(run.stdout).unwrap();
    assert_eq!(ids_of(&app.status(id.trim()).await), [4, 5, 6]);
}

#[tokio::test]
async fn bad_ids_are_refused_before_anything_is_sent() {
    // Nothing listens: a message about the server would mean ids were sent.
    let server = nothing_listening();
    let cases: [(&[&str], Option<&str>, &str); 6] = [
        (
            &["1", "abc"],
            None,
            "argument 2: \"abc\" is not an id; expected a whole number such as 42, \
             or a range such as 1-1000",
        ),
        (
            &["10-1"],
            None,
            "the range 10-1 is reversed; did you mean 1-10?",
        ),
        (
            &["-"],
            Some("1\n2\n3.5\n"),
            "standard input, line 3: \"3.5\" is not an id",
        ),
        (&[], None, "no ids given"),
        (&["-"], Some("\n , \n"), "no ids on standard input"),
        (
            &["--ids-file", "/no/such/file"],
            None,
            "cannot read ids from /no/such/file",
        ),
    ];
    for (args, input, message) in cases {
        let mut all = vec!["submit", "--server", &server];
        all.extend(args);
        let run = sluice(&all, input).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
        assert!(
            run.stderr.starts_with("error: ") && run.stderr.contains(message),
            "{args:?}: expected {message:?} in {run:#?}"
        );
        run.assert_tidy();
    }
}

#[tokio::test]
async fn ids_out_of_range_show_the_servers_problem_document() {
    let app = spawn_app().await;
    let run = sluice(
        &["submit", "--server", &app.address, "0", "5", "1000000008"],
        None,
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stdout.is_empty());
    assert_eq!(
        run.stderr,
        "error: Sluice answered 422 The request breaks the API's rules: 2 fields are invalid\n  \
         ids[0]: must be an integer from 1 to 1000000007, got an integer out of range\n  \
         ids[2]: must be an integer from 1 to 1000000007, got an integer out of range\n"
    );
}

#[tokio::test]
async fn too_many_ids_show_the_servers_limit() {
    let app = spawn_app_with(|c| c.max_ids_per_request = 10).await;
    let run = sluice(&["submit", "--server", &app.address, "1-11"], None).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains("413 Request too large")
            && run
                .stderr
                .contains("11 ids in one request; the limit is 10"),
        "{run:#?}"
    );
}

#[tokio::test]
async fn status_prints_the_request_then_a_row_per_batch() {
    let app = spawn_app().await;
    let id = app.ingest(&[1, 2, 3, 4, 5], "LOW").await;
    app.wait_until_completed(&id, LIMIT).await;

    let run = sluice(&["status", &id, "--server", &app.address], None).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], format!("ingestion     {id}"));
    assert_eq!(lines[1], "status        completed");
    assert_eq!(lines[2], "priority      LOW");
    assert_eq!(lines[3], "queue         default");
    assert!(lines[4].starts_with("created_at    20"), "{}", run.stdout);
    assert!(lines[5].starts_with("completed_at  20"), "{}", run.stdout);
    assert_eq!(lines[6], "batches       2 total: 2 completed");
    let header: Vec<&str> = lines[8].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "batch_id",
            "status",
            "attempts",
            "ids",
            "started_at",
            "completed_at"
        ]
    );
    let rows: Vec<Vec<&str>> = lines[9..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{}", run.stdout);
    assert_eq!(rows[0][..4], [":0", "completed", "1", "1,2,3"]);
    assert_eq!(rows[1][..4], [":1", "completed", "1", "4,5"]);
    assert!(
        rows.iter()
            .all(|r| r.len() == 6 && r[4].ends_with('Z') && r[5].ends_with('Z'))
    );
}

#[tokio::test]
async fn status_abbreviates_long_id_lists() {
    let app = spawn_app_with(|c| c.batch_size = "50".parse().unwrap()).await;
    let id = app.ingest(&(1000..1050).collect::<Vec<_>>(), "HIGH").await;
    let run = sluice(&["status", &id, "--server", &app.address], None).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stdout
            .contains("  1000,1001,1002,1003,1004,1005,…(+44)  "),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn status_json_is_the_servers_answer() {
    let app = spawn_app().await;
    let id = app.ingest(&[1, 2, 3, 4], "MEDIUM").await;
    let expected = app.wait_until_completed(&id, LIMIT).await;
    let run = sluice(&["status", "--json", &id, "--server", &app.address], None).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let printed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed, expected);
}

#[tokio::test]
async fn submit_wait_exits_0_once_the_request_completes() {
    let app = spawn_app_with(|c| {
        c.interval = "100ms".parse().unwrap();
        c.mock_latency = "5ms".parse().unwrap();
    })
    .await;
    let run = sluice(
        &[
            "submit",
            "--server",
            &app.address,
            "--wait",
            "--interval",
            "100ms",
            "--poll",
            "50ms",
            "1-7",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    // The progress bar draws only on a terminal: stdout is still just the id.
    assert_is_only_an_id(&run.stdout);
    let id = run.stdout.trim_end();
    assert_eq!(app.status(id).await["status"], "completed");
    assert!(
        run.stderr
            .starts_with(&format!("{id} completed: 3 batches (3 completed) in ")),
        "{run:#?}"
    );
}

/// An upstream that knows no item: every id is a permanent error (404), so
/// every batch, and the request, ends `failed`.
async fn spawn_upstream_without_items() -> String {
    let app = Router::new().route(
        "/items/{id}",
        get(|| async { (StatusCode::NOT_FOUND, "no such item") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/items/{{id}}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn submit_wait_exits_1_when_the_request_fails() {
    let upstream = spawn_upstream_without_items().await;
    let app = spawn_app_with(|c| {
        c.upstream_url = Some(upstream);
        c.interval = "100ms".parse().unwrap();
    })
    .await;
    let run = sluice(
        &[
            "submit",
            "--server",
            &app.address,
            "--wait",
            "--poll",
            "50ms",
            "1-4",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_is_only_an_id(&run.stdout);
    let id = run.stdout.trim_end();
    assert_eq!(app.status(id).await["status"], "failed");
    assert!(
        run.stderr
            .starts_with(&format!("{id} failed: 2 batches (2 failed) in ")),
        "{run:#?}"
    );
}

#[tokio::test]
async fn submit_wait_exits_1_when_the_request_is_cancelled() {
    // The first batch starts at once; the others would wait an hour.
    let app = spawn_app_with(|c| c.interval = "1h".parse().unwrap()).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "submit",
            "--server",
            &app.address,
            "--wait",
            "--poll",
            "50ms",
            "1-9",
        ])
        .env_remove("SLUICE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The id comes first, before the wait.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (id, stdout) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (line.trim_end().to_owned(), stdout)
    })
    .await
    .unwrap();

    // Cancel once the first batch has started, so that it is the only one run.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while app.status(&id).await["batches"][0]["status"] == "yet_to_start" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first batch never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancel = app.cancel(&id).await;
    assert_eq!(cancel.status(), 200, "{:?}", cancel.text().await);

    let output = tokio::task::spawn_blocking(move || {
        drop(stdout);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{id} cancelled: 3 batches (1 completed, 2 cancelled) in "
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unknown_id_is_a_clear_error() {
    let app = spawn_app().await;
    let unknown = uuid::Uuid::now_v7().to_string();
    for command in ["status", "watch"] {
        for id in [unknown.as_str(), "not-an-id"] {
            let run = sluice(&[command, id, "--server", &app.address], None).await;
            assert_eq!(run.code, Some(2), "{command} {id}: {run:#?}");
            assert!(run.stdout.is_empty(), "{run:#?}");
            assert_eq!(
                run.stderr,
                format!("error: no ingestion {id:?} at {}\n", app.address)
            );
        }
    }
}

#[tokio::test]
async fn a_server_that_is_down_is_a_clear_error() {
    let server = nothing_listening();
    for args in [
        &["submit", "1"][..],
        &["submit", "--wait", "1-3"],
        &["status", "0193a0b0-0000-7000-8000-000000000000"],
        &["status", "--json", "x"],
        &["watch", "x"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--server", &server]);
        let run = sluice(&all, None).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
        assert_eq!(
            run.stderr,
            format!("error: cannot reach Sluice at {server}: connection refused\n"),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn watch_follows_a_request_to_its_end() {
    // Slots 500 ms apart leave the watch time to connect before the second.
    let app = spawn_app_with(|c| {
        c.interval = "500ms".parse().unwrap();
        c.mock_latency = "5ms".parse().unwrap();
    })
    .await;
    // The first batch starts at once; the watch sees at least the others.
    let id = app.ingest(&[1, 2, 3, 4, 5, 6, 7], "MEDIUM").await;
    let run = sluice(&["watch", &id, "--server", &app.address], None).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with(&format!("{id}: ")), "{}", run.stdout);
    for batch in [":1", ":2"] {
        for status in ["triggered", "completed"] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.ends_with(&format!("batch {batch}  {status}"))),
                "no {batch} {status} in\n{}",
                run.stdout
            );
        }
    }
    let request_line = lines[lines.len() - 2];
    assert!(
        request_line.ends_with("request   completed"),
        "{}",
        run.stdout
    );
    assert!(request_line.contains("[3/3]"), "{}", run.stdout);
    assert!(
        lines[lines.len() - 1].starts_with(&format!("{id} completed: 3 batches (3 completed)")),
        "{}",
        run.stdout
    );
}

// --- A scripted server, for what the real one cannot produce yet -----------

/// What the scripted server has seen and what it answers.
#[derive(Default)]
struct Script {
    /// The `Last-Event-ID` of each event-stream connection, in order.
    last_event_ids: Mutex<Vec<Option<String>>>,
    /// The status the request has on every read.
    status: Mutex<&'static str>,
}

const SCRIPTED_ID: &str = "0193a0b0-0000-7000-8000-000000000001";

async fn spawn_scripted(script: Arc<Script>) -> String {
    async fn status(State(script): State<Arc<Script>>) -> impl IntoResponse {
        let status = *script.status.lock().unwrap();
        let batch = |n: u32, batch_status: &str| {
            json!({"batch_id": format!("{SCRIPTED_ID}:{n}"), "ids": [n + 1],
                   "status": batch_status, "attempts": 1,
                   "scheduled_at": null, "started_at": null, "completed_at": null})
        };
        let batches = match status {
            "failed" => [batch(0, "completed"), batch(1, "failed")],
            _ => [batch(0, "yet_to_start"), batch(1, "yet_to_start")],
        };
        axum::Json(json!({
            "ingestion_id": SCRIPTED_ID, "status": status, "priority": "HIGH",
            "created_at": "2026-01-01T00:00:00Z", "completed_at": null,
            "batches": batches,
        }))
    }
    /// First connection: two events, then the connection drops. Second: the
    /// second event again (a replay the client must not show twice), then the
    /// rest, ending with the request's failure.
    async fn events(State(script): State<Arc<Script>>, headers: HeaderMap) -> impl IntoResponse {
        let last = headers
            .get("last-event-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let connection = {
            let mut seen = script.last_event_ids.lock().unwrap();
            seen.push(last);
            seen.len()
        };
        let at = |millis: u32| format!("2026-01-01T00:00:00.{millis:03}Z");
        let batch = |seq: u32, n: u32, status: &str, millis: u32| {
            let data = json!({"ingestion_id": SCRIPTED_ID, "batch_id": format!("{SCRIPTED_ID}:{n}"),
                              "status": status, "at": at(millis)});
            format!("id: {seq}\nevent: batch\ndata: {data}\n\n")
        };
        let body = if connection == 1 {
            [
                "retry: 10\n: hello\n\n".to_owned(),
                batch(1, 0, "triggered", 100),
                batch(2, 0, "completed", 200),
            ]
            .concat()
        } else {
            *script.status.lock().unwrap() = "failed";
            let data = json!({"ingestion_id": SCRIPTED_ID, "status": "failed", "at": at(400)});
            [
                batch(2, 0, "completed", 200),
                batch(3, 1, "triggered", 300),
                batch(4, 1, "failed", 400),
                format!("id: 5\nevent: ingestion\ndata: {data}\n\n"),
            ]
            .concat()
        };
        ([("content-type", "text/event-stream")], body)
    }

    let app = Router::new()
        .route("/status/{id}", get(status))
        .route("/status/{id}/events", get(events))
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[tokio::test]
async fn watch_resumes_after_the_last_event_and_exits_1_when_the_request_fails() {
    let script = Arc::new(Script::default());
    *script.status.lock().unwrap() = "triggered";
    let server = spawn_scripted(script.clone()).await;

    let run = sluice(&["watch", SCRIPTED_ID, "--server", &server], None).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(
        *script.last_event_ids.lock().unwrap(),
        [None, Some("2".to_owned())],
        "the reconnection resumes after the last event seen"
    );
    let expected = format!(
        "{SCRIPTED_ID}: triggered, 0/2 batches ended\n\
         00:00:00.100  [0/2]  batch :0  triggered\n\
         00:00:00.200  [1/2]  batch :0  completed\n\
         00:00:00.300  [1/2]  batch :1  triggered\n\
         00:00:00.400  [2/2]  batch :1  failed\n\
         00:00:00.400  [2/2]  request   failed\n\
         {SCRIPTED_ID} failed: 2 batches (1 completed, 1 failed)\n"
    );
    assert_eq!(run.stdout, expected);
    assert!(run.stderr.contains("reconnecting"), "{run:#?}");
    run.assert_tidy();
}

// ------------------------------------------------------------ API keys

const SUBMIT_KEY: &str = "cli-submit-key-0123456789";
const READ_KEY: &str = "cli-read-key-0123456789";
const ADMIN_KEY: &str = "cli-admin-key-0123456789";

#[tokio::test]
async fn the_api_key_goes_with_every_command_and_is_never_shown() {
    let dir = tempfile::TempDir::new().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("submit {SUBMIT_KEY}\nread {READ_KEY}\n")).unwrap();
    let app = spawn_app_with(|c| c.api_keys_file = Some(keys.clone())).await;

    // Without a key the server's refusal is the message.
    let run = sluice(&["submit", "--server", &app.address, "1-3"], None).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert!(
        run.stderr.starts_with("error: Sluice answered 401")
            && run.stderr.contains("send an API key"),
        "{run:#?}"
    );

    // The flag.
    let run = sluice(
        &[
            "submit",
            "--server",
            &app.address,
            "--api-key",
            SUBMIT_KEY,
            "1-3",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_is_only_an_id(&run.stdout);
    let id = run.stdout.trim_end().to_owned();

    // The environment, for a read; and a read key cannot submit.
    let env = [("SLUICE_API_KEY", READ_KEY)];
    let run = sluice_with_env(
        &["status", "--server", &app.address, "--json", &id],
        None,
        &env,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let status: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(ids_of(&status), [1, 2, 3]);
    let run = sluice_with_env(&["submit", "--server", &app.address, "4"], None, &env).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("403"), "{run:#?}");

    // A wrong key is refused by the server, and not repeated back.
    let wrong = "wrong-key-0123456789abcdef";
    let run = sluice(
        &["status", "--server", &app.address, "--api-key", wrong, &id],
        None,
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("unknown API key"), "{run:#?}");
    for key in [SUBMIT_KEY, READ_KEY, wrong] {
        assert!(!run.stderr.contains(key) && !run.stdout.contains(key));
    }

    // `--help` names the variable but not the key it found.
    let run = sluice_with_env(&["queues", "--help"], None, &env).await;
    assert!(run.stdout.contains("SLUICE_API_KEY"), "{run:#?}");
    assert!(!run.stdout.contains(READ_KEY), "{run:#?}");

    // A key that cannot go in a header is refused before anything is sent,
    // without being echoed.
    let bad = "line-one\nline-two-0123456789";
    let run = sluice(
        &[
            "status",
            "--server",
            &nothing_listening(),
            "--api-key",
            bad,
            &id,
        ],
        None,
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("the API key"), "{run:#?}");
    assert!(!run.stderr.contains("line-one"), "{run:#?}");
    run.assert_tidy();
}

const ACME_KEY: &str = "cli-acme-submit-key-0123456789";
const GLOBEX_KEY: &str = "cli-globex-read-key-0123456789";

#[tokio::test]
async fn a_tenants_key_submits_and_follows_its_own_and_is_told_the_queues_need_an_operator() {
    let dir = tempfile::TempDir::new().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        format!(
            "submit {ACME_KEY} acme
read {GLOBEX_KEY} globex
"
        ),
    )
    .unwrap();
    let app = spawn_app_with(|c| {
        c.api_keys_file = Some(keys.clone());
        c.interval = "100ms".parse().unwrap();
        c.mock_latency = "5ms".parse().unwrap();
    })
    .await;
    let acme = [("SLUICE_API_KEY", ACME_KEY)];
    let globex = [("SLUICE_API_KEY", GLOBEX_KEY)];

    // Submit and wait, status and watch: as with any key.
    let run = sluice_with_env(
        &[
            "submit",
            "--server",
            &app.address,
            "--wait",
            "--poll",
            "50ms",
            "1-7",
        ],
        None,
        &acme,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_is_only_an_id(&run.stdout);
    let id = run.stdout.trim_end().to_owned();
    let run = sluice_with_env(
        &["status", "--server", &app.address, "--json", &id],
        None,
        &acme,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let status: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(status["tenant"], "acme");
    assert_eq!(status["status"], "completed");
    let run = sluice_with_env(&["status", "--server", &app.address, &id], None, &acme).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let run = sluice_with_env(&["watch", &id, "--server", &app.address], None, &acme).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stdout.contains(&format!("{id} completed: 3 batches")),
        "{run:#?}"
    );

    // Another tenant's key does not find it.
    for command in ["status", "watch"] {
        let run = sluice_with_env(&[command, &id, "--server", &app.address], None, &globex).await;
        assert_eq!(run.code, Some(2), "{command}: {run:#?}");
        assert_eq!(
            run.stderr,
            format!("error: no ingestion {id:?} at {}\n", app.address),
            "{command}"
        );
    }

    // The queue commands say what key they need.
    for args in [
        vec!["queues"],
        vec!["queue", "pause", "default"],
        vec!["queue", "set", "default", "--interval", "1s"],
    ] {
        let mut all = args.clone();
        all.extend(["--server", app.address.as_str()]);
        let run = sluice_with_env(&all, None, &acme).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{run:#?}");
        assert!(
            run.stderr.contains("403")
                && run
                    .stderr
                    .contains("need an operator key (a key without a tenant)"),
            "{args:?}: {run:#?}"
        );
        run.assert_tidy();
    }
}

// ----------------------------------------------- queues on an older server

/// A server from before named queues: every path is its catch-all 404.
async fn spawn_without_queues() -> String {
    let app = Router::new().fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            [("content-type", "application/problem+json")],
            json!({"type": "urn:sluice:problem:not-found", "title": "Not found",
                   "status": 404, "detail": "no such endpoint"})
            .to_string(),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[tokio::test]
async fn queue_commands_against_a_server_without_queues_say_so() {
    let server = spawn_without_queues().await;
    for args in [
        &["queues"][..],
        &["queues", "--json"],
        &["queue", "pause", "enrich"],
        &["queue", "resume", "enrich"],
        &["queue", "set", "enrich", "--interval", "2s"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--server", &server]);
        let run = sluice(&all, None).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
        assert!(
            run.stderr
                .starts_with(&format!("error: Sluice at {server} has no named queues")),
            "{args:?}: {run:#?}"
        );
        run.assert_tidy();
    }
}

// ------------------------------------------------------------ named queues

/// A service with a second queue, `enrich`, whose slots are an hour apart:
/// what the tests put in it stays there to be seen.
async fn spawn_with_enrich(dir: &tempfile::TempDir) -> TestApp {
    let file = queues_file(
        dir.path(),
        "[queues.enrich]\ninterval = \"1h\"\nmax_in_flight = 2\nbatch_size = 2\n",
    );
    spawn_app_with(|c| {
        c.interval = "1h".parse().unwrap();
        c.queues_file = Some(file);
    })
    .await
}

/// `GET /queues/{name}`, as JSON.
async fn queue_at(app: &TestApp, name: &str) -> Value {
    let response = app
        .client
        .get(format!("{}/queues/{name}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET /queues/{name}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn submit_queue_lands_in_that_queue() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = spawn_with_enrich(&dir).await;
    let id = submit(&app, &["--queue", "enrich", "1-5"], None).await;
    let status = app.status(&id).await;
    assert_eq!(status["queue"], "enrich");
    let run = sluice(&["status", &id, "--server", &app.address], None).await;
    assert!(
        run.stdout.lines().any(|l| l == "queue         enrich"),
        "{run:#?}"
    );
    // The queue's own batch size: 2 ids a batch.
    assert_eq!(status["batches"].as_array().unwrap().len(), 3);
    let id = submit(&app, &["1-5"], None).await;
    assert_eq!(app.status(&id).await["queue"], "default");

    let run = sluice(
        &["submit", "--server", &app.address, "-q", "nope", "1"],
        None,
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert!(
        run.stderr.starts_with("error: Sluice answered 422") && run.stderr.contains("\n  queue: "),
        "{run:#?}"
    );
    run.assert_tidy();
}

#[tokio::test]
async fn queues_lists_every_queue_as_a_table() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = spawn_with_enrich(&dir).await;
    // One batch starts at once, the other two wait an hour.
    submit(&app, &["--queue", "enrich", "1-6"], None).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while queue_at(&app, "enrich").await["waiting"] != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first batch did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let run = sluice(&["queues", "--server", &app.address], None).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    let cells = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cells(lines[0]),
        [
            "NAME",
            "PAUSED",
            "INTERVAL",
            "EFFECTIVE",
            "IN-FLIGHT",
            "WAITING",
            "PROCESSING",
            "NEXT-SLOT"
        ]
    );
    let default = cells(lines[1]);
    assert_eq!(
        default[..7],
        ["default", "no", "1h", "1h", "1", "0", "0"],
        "{}",
        run.stdout
    );
    let enrich = cells(lines[2]);
    assert_eq!(
        enrich[..6],
        ["enrich", "no", "1h", "1h", "2", "2"],
        "{}",
        run.stdout
    );
    // An hour after the first start: a time of day, not a dash.
    assert!(enrich[7].contains(':'), "{}", run.stdout);

    let run = sluice(&["queues", "--json", "--server", &app.address], None).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let answer: Value = serde_json::from_str(&run.stdout).unwrap();
    let names: Vec<&str> = answer["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "enrich"]);
}

#[tokio::test]
async fn queue_pause_resume_and_set_change_the_queue_and_say_how_it_is_now() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = spawn_with_enrich(&dir).await;
    let queue = |args: &[&str]| {
        let mut all = vec!["queue"];
        all.extend(args);
        all.extend(["--server", app.address.as_str()]);
        all.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let run_queue = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = sluice(&args, None).await;
        assert_eq!(run.code, Some(0), "{args:?}: {run:#?}");
        run.assert_tidy();
        run.stdout
    };

    let out = run_queue(queue(&["pause", "enrich"])).await;
    assert_eq!(out, "enrich: paused, 0 waiting, 0 processing\n");
    assert_eq!(queue_at(&app, "enrich").await["paused"], true);
    assert_eq!(queue_at(&app, "default").await["paused"], false);

    let out = run_queue(queue(&["resume", "enrich"])).await;
    assert_eq!(out, "enrich: running, 0 waiting, 0 processing\n");
    assert_eq!(queue_at(&app, "enrich").await["paused"], false);

    let out = run_queue(queue(&["set", "enrich", "--interval", "2s"])).await;
    assert_eq!(
        out,
        "enrich: interval 2s (configured 1h), max in flight 2\n"
    );
    let now = queue_at(&app, "enrich").await;
    assert_eq!(now["interval"], "2s");
    assert_eq!(now["configured"]["interval"], "1h");

    let out = run_queue(queue(&["set", "enrich", "--max-in-flight", "5"])).await;
    assert_eq!(
        out,
        "enrich: interval 2s (configured 1h), max in flight 5 (configured 2)\n"
    );
    assert_eq!(queue_at(&app, "enrich").await["max_in_flight"], 5);

    let out = run_queue(queue(&["set", "enrich", "--reset"])).await;
    assert_eq!(out, "enrich: interval 1h, max in flight 2\n");
    let now = queue_at(&app, "enrich").await;
    assert_eq!(
        (now["interval"].clone(), now["max_in_flight"].clone()),
        (json!("1h"), json!(2))
    );
}

#[tokio::test]
async fn an_unknown_queue_is_a_clear_error() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = spawn_with_enrich(&dir).await;
    for args in [
        &["queue", "pause", "nope"][..],
        &["queue", "resume", "nope"],
        &["queue", "set", "nope", "--interval", "2s"],
        &["queue", "set", "nope", "--reset"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--server", &app.address]);
        let run = sluice(&all, None).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
        assert_eq!(
            run.stderr,
            format!(
                "error: no such queue nope at {} (`sluice queues` lists them)\n",
                app.address
            ),
            "{args:?}"
        );
    }
    // Nothing changed on the queues that exist.
    assert_eq!(queue_at(&app, "enrich").await["paused"], false);
}

#[tokio::test]
async fn queue_commands_need_an_admin_key() {
    let dir = tempfile::TempDir::new().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        format!("submit {SUBMIT_KEY}\nread {READ_KEY}\nadmin {ADMIN_KEY}\n"),
    )
    .unwrap();
    let app = spawn_app_with(|c| c.api_keys_file = Some(keys.clone())).await;

    let env = [("SLUICE_API_KEY", READ_KEY)];
    let run = sluice_with_env(&["queues", "--server", &app.address], None, &env).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stdout.starts_with("NAME"), "{run:#?}");
    let run = sluice_with_env(
        &["queue", "pause", "default", "--server", &app.address],
        None,
        &env,
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.starts_with("error: Sluice answered 403"),
        "{run:#?}"
    );

    let env = [("SLUICE_API_KEY", ADMIN_KEY)];
    let run = sluice_with_env(
        &["queue", "pause", "default", "--server", &app.address],
        None,
        &env,
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stdout.starts_with("default: paused"), "{run:#?}");
}
