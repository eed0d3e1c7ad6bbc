//! The dashboard at `/`, in a real browser: Debian's Chromium, headless,
//! driven through its `chromedriver` (WebDriver) with fantoccini.
//!
//! The browser test needs `/usr/bin/chromedriver` and `/usr/bin/chromium`
//! (`apt-get install -y chromium chromium-driver`; CI's `.ci/run` installs
//! them); `SLUICE_CHROMEDRIVER` and `SLUICE_CHROMIUM` name others. Without
//! them it fails: a skipped browser test would look like a passing one.
//!
//! It leaves a screenshot in `test-artifacts/dashboard.png` (and the request
//! drawer in `dashboard-detail.png`; `dashboard-failure.png` when a check
//! fails). The README's `docs/dashboard.png` comes from an ignored test that
//! plays a busier half minute: `cargo test --test api
//! dashboard::docs_screenshot -- --ignored`.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::*;

/// How long the page may take to show what the server knows.
const LIMIT: Duration = Duration::from_secs(15);

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts")
}

// ------------------------------------------------------------ chromedriver

/// A chromedriver on a free port, killed when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
    log: PathBuf,
    /// Chromium's profile, fresh for each run.
    profile: TempDir,
}

impl ChromeDriver {
    fn start() -> Self {
        let driver = std::env::var("SLUICE_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned());
        assert!(
            Path::new(&driver).exists(),
            "the dashboard's browser test needs chromedriver, and there is none at {driver}: \
             install Debian's Chromium and its driver (`apt-get install -y chromium \
             chromium-driver`), or set SLUICE_CHROMEDRIVER"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let profile = TempDir::new().unwrap();
        let log = profile.path().join("chromedriver.log");
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, with the browser it starts: both go
            // when the test ends, even when it fails before closing them.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {driver}: {e}"));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            profile,
        }
    }

    /// Waits until the driver answers, then opens a browser session.
    async fn session(&mut self) -> Client {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            let ready = client
                .get(format!("{}/status", self.url))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromedriver exited ({status}): {}", self.log_text());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not answer at {}: {}",
                self.url,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let chromium =
            std::env::var("SLUICE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        assert!(
            Path::new(&chromium).exists(),
            "the dashboard's browser test needs Chromium at {chromium}: \
             `apt-get install -y chromium`, or set SLUICE_CHROMIUM"
        );
        let user_data = self.profile.path().join("profile");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    "--disable-sync",
                    "--disable-quic",
                    "--disable-default-apps",
                    "--disable-extensions",
                    format!("--user-data-dir={}", user_data.display()),
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                    // A laptop screen.
                    "--window-size=1366,768",
                    "--force-color-profile=srgb",
                    "--hide-scrollbars",
                ],
            },
            // Console messages and uncaught exceptions, read back below.
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        ClientBuilder::rustls()
            .expect("TLS roots for the WebDriver client")
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("no browser session: {e}\n{}", self.log_text()))
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group: chromedriver and the Chromium it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----------------------------------------------------------------- browser

/// The page under test, with checks that keep a screenshot when they fail.
struct Page {
    client: Client,
    /// The session's URL at chromedriver, for the log endpoint.
    session: String,
}

impl Page {
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        match self.client.execute(script, args).await {
            Ok(value) => value,
            Err(e) => self.fail(&format!("script failed: {e}\n{script}")).await,
        }
    }

    /// Runs `script` until `done` accepts its value; fails after `limit`.
    async fn wait_for(
        &self,
        what: &str,
        script: &str,
        args: Vec<Value>,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let value = self.js(script, args.clone()).await;
            if done(&value) {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                self.fail(&format!("{what}: still {value} after {LIMIT:?}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        let element = match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => self.fail(&format!("no {css}: {e}")).await,
        };
        if let Err(e) = element.click().await {
            self.fail(&format!("cannot click {css}: {e}")).await;
        }
    }

    /// Console errors (and uncaught exceptions) since the last call, from
    /// chromedriver's log endpoint (`goog:loggingPrefs` turns it on).
    async fn console_errors(&self) -> Vec<String> {
        let answer = reqwest::Client::new()
            .post(format!("{}/se/log", self.session))
            .json(&json!({"type": "browser"}))
            .send()
            .await;
        let entries: Value = match answer {
            Ok(answer) if answer.status().is_success() => answer.json().await.unwrap(),
            Ok(answer) => {
                let text = answer.text().await.unwrap_or_default();
                self.fail(&format!("cannot read the console: {text}")).await
            }
            Err(e) => self.fail(&format!("cannot read the console: {e}")).await,
        };
        entries["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Fails on any console error since the last read but the `expected` ones.
    async fn no_console_errors(&self, when: &str, expected: impl Fn(&str) -> bool) {
        let errors: Vec<String> = self
            .console_errors()
            .await
            .into_iter()
            .filter(|e| !expected(e))
            .collect();
        if !errors.is_empty() {
            self.fail(&format!("console errors {when}: {errors:#?}"))
                .await;
        }
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(artifacts()).unwrap();
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn fail(&self, message: &str) -> ! {
        let shot = self.screenshot("dashboard-failure.png").await;
        panic!("{message}\n(the page then: {})", shot.display());
    }
}

// ---------------------------------------------------------------- upstream

/// Markup as data: the page must show it as text.
const HOSTILE: &str = "<img src=x onerror=\"window.hacked=1\"><b>bold</b>";

/// An upstream that knows every id below 900,000 and none above, so that
/// the page has a failed request to show, and answers id 666 with markup;
/// it answers after `latency`.
async fn start_upstream(latency: Duration) -> String {
    let item = move |UrlPath(id): UrlPath<u64>| async move {
        tokio::time::sleep(latency).await;
        if id >= 900_000 {
            return (StatusCode::NOT_FOUND, "no such item").into_response();
        }
        if id == 666 {
            return HOSTILE.into_response();
        }
        axum::Json(json!({"id": id, "name": format!("item-{id}")})).into_response()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/items/{{id}}", listener.local_addr().unwrap());
    let app = Router::new().route("/items/{id}", get(item));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

// ------------------------------------------------------------------- tests

/// A browser session on the dashboard at `address`.
async fn open(driver: &mut ChromeDriver, address: &str) -> Page {
    let client = driver.session().await;
    let session = format!(
        "{}/session/{}",
        driver.url,
        client.session_id().await.unwrap().expect("a session id")
    );
    let page = Page { client, session };
    if let Err(e) = page.client.goto(address).await {
        page.fail(&format!("cannot open {address}: {e}")).await;
    }
    page
}

/// The status pill of the request's row, or null while it is not listed.
const ROW_STATUS: &str = r#"
    const row = document.querySelector(`#requests-body tr[data-id="${arguments[0]}"]`);
    return row ? row.querySelector(".pill").textContent : null;"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_submits_a_request_and_follows_it_live_in_a_browser() {
    let mut driver = ChromeDriver::start();
    let upstream = start_upstream(Duration::from_millis(15)).await;
    let app = spawn_app_with(|c| {
        c.interval = "100ms".parse().unwrap();
        c.upstream_url = Some(upstream);
    })
    .await;
    let page = open(&mut driver, &app.address).await;

    // The page loads: data from /stats and /ingestions, the event stream
    // open, and not one console error.
    assert_eq!(page.client.title().await.unwrap(), "Sluice");
    page.wait_for(
        "the event stream",
        "return document.getElementById('connection').dataset.state",
        vec![],
        |v| v == "live",
    )
    .await;
    page.wait_for(
        "the empty list",
        "return !document.getElementById('requests-empty').hidden",
        vec![],
        |v| v == true,
    )
    .await;
    page.wait_for(
        "the queue from /stats",
        "return document.getElementById('fact-interval').textContent",
        vec![],
        |v| v == "100 ms",
    )
    .await;
    page.no_console_errors("on load", |_| false).await;

    // The check above is real: an error thrown in the page is seen.
    page.js(
        "setTimeout(() => { throw new Error('deliberate probe') }, 0)",
        vec![],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let errors = page.console_errors().await;
    assert!(
        errors.iter().any(|e| e.contains("deliberate probe")),
        "a thrown error did not reach the console log: {errors:#?}"
    );

    // Ids the server rejects: its problem document is shown, field by
    // field, and nothing is stored.
    let ids = page.client.find(Locator::Id("ids-input")).await.unwrap();
    ids.send_keys("0, 7, 1000000008").await.unwrap();
    page.click("#submit-button").await;
    let problem = page
        .wait_for(
            "the server's problem",
            "const p = document.querySelector('#form-message .problem');\
             return p ? p.textContent : null",
            vec![],
            |v| v.is_string(),
        )
        .await;
    let problem = problem.as_str().unwrap();
    assert!(problem.contains("2 fields are invalid"), "{problem}");
    assert!(problem.contains("ids[0]: must be an integer"), "{problem}");
    assert!(problem.contains("ids[2]"), "{problem}");
    assert_eq!(app.store.stats().await.unwrap().ingestions, 0);
    // The browser reports the 422 itself; anything else is an error.
    page.no_console_errors("after the refused request", |e| {
        e.contains("/ingest") && e.contains("422")
    })
    .await;

    // A syntax error is caught before anything is sent.
    ids.clear().await.unwrap();
    ids.send_keys("1-x").await.unwrap();
    page.click("#submit-button").await;
    page.wait_for(
        "the syntax error",
        "return document.getElementById('form-message').textContent",
        vec![],
        |v| v.as_str().is_some_and(|t| t.contains("“1-x”")),
    )
    .await;

    // A good request: typed, with a priority, submitted with the button.
    ids.clear().await.unwrap();
    ids.send_keys("1-40, 42").await.unwrap();
    page.client
        .find(Locator::Id("priority-input"))
        .await
        .unwrap()
        .select_by_value("HIGH")
        .await
        .unwrap();
    page.click("#submit-button").await;
    let id = page
        .wait_for(
            "the submitted id",
            "const b = document.querySelector('#form-message .ok button');\
             return b ? b.title : null",
            vec![],
            |v| v.is_string(),
        )
        .await;
    let id = id.as_str().unwrap().to_owned();
    assert_eq!(app.store.stats().await.unwrap().ingestions, 1);
    let status = app.status(&id).await;
    assert_eq!(status["priority"], "HIGH");
    let sent: Vec<u64> = status["batches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["ids"].as_array().unwrap().iter())
        .map(|v| v.as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=40).chain([42]).collect();
    assert_eq!(sent, expected);

    // It appears in the recent list, and the page follows it to the end.
    page.wait_for("the new row", ROW_STATUS, vec![json!(id)], |v| {
        v.is_string()
    })
    .await;
    page.wait_for("the row completed", ROW_STATUS, vec![json!(id)], |v| {
        v == "completed"
    })
    .await;

    // Its drill-down, from the link in the form's message: every batch
    // completed, and the results a page at a time.
    page.click("#form-message .ok button").await;
    let drawer = page
        .js(
            "return [document.getElementById('detail').hidden,\
                     document.getElementById('detail-id').textContent]",
            vec![],
        )
        .await;
    assert_eq!(drawer, json!([false, id]));
    page.wait_for(
        "the batches, completed",
        "return [...document.querySelectorAll('#batches-body .pill')]\
             .map(p => p.dataset.status).join(' ')",
        vec![],
        |v| v.as_str() == Some(&["completed"; 14].join(" ")),
    )
    .await;
    page.click("#tab-results").await;
    let results = "return [...document.querySelectorAll('#results-body tr')]\
                   .map(r => r.children[0].textContent + ':' + r.dataset.outcome)";
    let first = page
        .wait_for("the first page of results", results, vec![], |v| {
            v.as_array().is_some_and(|a| a.len() == 30)
        })
        .await;
    assert_eq!(first[0], "1:ok");
    page.click("#results-more").await;
    let all = page
        .wait_for("every result", results, vec![], |v| {
            v.as_array().is_some_and(|a| a.len() == 41)
        })
        .await;
    assert_eq!(all[40], "42:ok");
    page.wait_for(
        "no more pages",
        "return document.getElementById('results-more').hidden",
        vec![],
        |v| v == true,
    )
    .await;

    // The live parts: the chart counted the 14 completions from the event
    // stream, and the activity feed lists the transitions.
    page.wait_for(
        "the throughput chart",
        "return document.getElementById('chart').getAttribute('aria-label')",
        vec![],
        |v| v.as_str().is_some_and(|t| t.contains("14 batches ended")),
    )
    .await;
    let activity = page
        .js(
            "return document.querySelectorAll('#activity li').length",
            vec![],
        )
        .await;
    assert!(activity.as_u64().unwrap() >= 29, "{activity}");
    page.click("#detail-close").await;

    // Cancel from the list: the button asks once more, then cancels.
    let long = app.ingest(&(1..=450).collect::<Vec<_>>(), "LOW").await;
    let doomed = app.ingest(&(500..=530).collect::<Vec<_>>(), "LOW").await;
    page.wait_for("the queued row", ROW_STATUS, vec![json!(doomed)], |v| {
        v == "yet to start"
    })
    .await;
    let cancel = format!("#requests-body tr[data-id=\"{doomed}\"] button.cancel");
    page.click(&cancel).await;
    page.click(&cancel).await;
    page.wait_for("the row cancelled", ROW_STATUS, vec![json!(doomed)], |v| {
        v == "cancelled"
    })
    .await;
    assert_eq!(app.status(&doomed).await["status"], "cancelled");

    // Whatever the upstream answers is shown as text, never as markup.
    let hostile = app.ingest(&[666], "HIGH").await;
    page.wait_for("the hostile row", ROW_STATUS, vec![json!(hostile)], |v| {
        v == "completed"
    })
    .await;
    page.click(&format!("#requests-body tr[data-id=\"{hostile}\"] .req-id"))
        .await;
    page.click("#tab-results").await;
    let shown = page
        .wait_for(
            "the hostile result",
            "const cell = document.querySelector('#results-body td.data');\
             return cell ? [cell.textContent, cell.children.length,\
                 document.querySelectorAll('#detail img, #detail b').length,\
                 window.hacked === undefined] : null",
            vec![],
            |v| v.is_array(),
        )
        .await;
    assert_eq!(shown, json!([HOSTILE, 0, 0, true]));
    page.click("#detail-close").await;

    // A few more requests in various states, for the screenshot.
    let failing = app
        .ingest(&[899_998, 899_999, 900_000, 900_001], "HIGH")
        .await;
    app.ingest(&(1000..=1020).collect::<Vec<_>>(), "MEDIUM")
        .await;
    page.wait_for("the failed row", ROW_STATUS, vec![json!(failing)], |v| {
        v == "failed"
    })
    .await;
    app.ingest(&(2000..=2090).collect::<Vec<_>>(), "LOW").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    page.wait_for(
        "the long request running",
        ROW_STATUS,
        vec![json!(long)],
        |v| v == "triggered",
    )
    .await;
    // Nothing hovered, nothing moving.
    page.click("#queue-title").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    page.screenshot("dashboard.png").await;
    page.click(&format!("#requests-body tr[data-id=\"{long}\"] td.when"))
        .await;
    page.wait_for(
        "the long request's batches",
        "return document.querySelectorAll('#batches-body tr').length",
        vec![],
        |v| v == 150,
    )
    .await;
    page.click("#tab-batches").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    page.screenshot("dashboard-detail.png").await;

    page.no_console_errors("in the end", |_| false).await;
    page.client.clone().close().await.unwrap();
}

/// The page and its assets come from the binary, with cache headers that
/// let a browser keep the assets and never serve a stale page.
#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_with_cache_headers() {
    let app = spawn_app().await;
    let page = app.client.get(&app.address).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let etag = headers["etag"].clone();
    let html = page.text().await.unwrap();

    // Unchanged: 304.
    let again = app
        .client
        .get(&app.address)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    // Assets are named with their hash, and then cached for good.
    for (name, mime) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let start = html
            .find(&format!("/dashboard/{name}?v="))
            .unwrap_or_else(|| panic!("{name} is not versioned in {html}"));
        let url = &html[start..];
        let url = &url[..url.find('"').unwrap()];
        let asset = app
            .client
            .get(format!("{}{url}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(asset.status(), 200, "{url}");
        assert_eq!(asset.headers()["content-type"], mime, "{url}");
        assert_eq!(
            asset.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert!(!asset.bytes().await.unwrap().is_empty());

        // Without the current hash, it is revalidated instead.
        let plain = app
            .client
            .get(format!("{}/dashboard/{name}?v=old", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(plain.headers()["cache-control"], "no-cache");
    }

    // No CDN, no external font: every URL in the page is our own.
    for attr in ["src=\"http", "href=\"http", "//fonts.", "cdn"] {
        assert!(!html.contains(attr), "{attr} in the page");
    }

    let missing = app
        .client
        .get(format!("{}/dashboard/nope.js", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
}

/// The README's screenshot: half a minute of a busier service (a 250 ms
/// interval, an upstream that takes 200 ms), with requests in every state.
/// Ignored by default: it takes a while and rewrites `docs/dashboard.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "rewrites docs/dashboard.png; run it by name to refresh the README's screenshot"]
async fn docs_screenshot() {
    let mut driver = ChromeDriver::start();
    let upstream = start_upstream(Duration::from_millis(200)).await;
    let app = spawn_app_with(|c| {
        c.interval = "250ms".parse().unwrap();
        c.upstream_url = Some(upstream);
    })
    .await;
    let page = open(&mut driver, &app.address).await;
    let range = |a: u64, b: u64| (a..=b).collect::<Vec<_>>();

    // A first wave, then a pause: the chart shows both.
    app.ingest(&range(1, 24), "HIGH").await;
    app.ingest(&range(100, 160), "MEDIUM").await;
    tokio::time::sleep(Duration::from_secs(10)).await;

    app.ingest(&range(899_995, 900_003), "HIGH").await;
    let long = app.ingest(&range(1000, 1899), "LOW").await;
    let doomed = app.ingest(&range(3000, 3060), "LOW").await;
    app.ingest(&range(500, 530), "MEDIUM").await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    app.cancel(&doomed).await;
    app.ingest(&range(5000, 5030), "LOW").await;
    app.ingest(&range(700, 715), "HIGH").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // One through the form, as a user would.
    let ids = page.client.find(Locator::Id("ids-input")).await.unwrap();
    ids.send_keys("1-12, 40").await.unwrap();
    page.client
        .find(Locator::Id("priority-input"))
        .await
        .unwrap()
        .select_by_value("HIGH")
        .await
        .unwrap();
    page.click("#submit-button").await;
    page.wait_for(
        "the submitted request",
        "return document.querySelector('#form-message .ok') !== null",
        vec![],
        |v| v == true,
    )
    .await;
    page.wait_for(
        "the long request running",
        ROW_STATUS,
        vec![json!(long)],
        |v| v == "triggered",
    )
    .await;
    page.click("#queue-title").await;
    // After the new row's highlight has faded.
    tokio::time::sleep(Duration::from_millis(2700)).await;
    let shot = page.screenshot("dashboard-docs.png").await;
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::copy(&shot, docs.join("dashboard.png")).unwrap();

    page.no_console_errors("in the end", |_| false).await;
    page.client.clone().close().await.unwrap();
}

/// A queue's row in the Queues panel: its cells' text, or null while it is
/// not shown.
const QUEUE_ROW: &str = r#"
    const row = document.querySelector(`#queues-body tr[data-queue="${arguments[0]}"]`);
    if (!row || document.getElementById('queues-card').hidden) return null;
    const cell = (field) => row.querySelector(`[data-field="${field}"]`).textContent;
    return {
        state: row.querySelector('.pill').textContent,
        waiting: cell('waiting'),
        processing: cell('processing'),
        next: cell('next-slot'),
        interval: cell('interval'),
        action: row.querySelector('button.queue-action').textContent,
    };"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_panel_shows_each_queue_and_pauses_and_resumes_it_in_a_browser() {
    let mut driver = ChromeDriver::start();
    let dir = TempDir::new().unwrap();
    let file = queues_file(
        dir.path(),
        "[queues.enrich]\ninterval = \"1h\"\nmax_in_flight = 2\nbatch_size = 2\n",
    );
    let app = spawn_app_with(|c| {
        c.interval = "250ms".parse().unwrap();
        c.queues_file = Some(file);
    })
    .await;
    // One batch of enrich's starts at once; the two others wait an hour.
    let answer = app
        .post_ingest(&json!({"ids": [1, 2, 3, 4, 5, 6], "priority": "LOW", "queue": "enrich"}))
        .await;
    assert_eq!(answer.status(), 200);
    let queue_at = |name: &'static str| {
        let (client, address) = (app.client.clone(), app.address.clone());
        async move {
            let response = client
                .get(format!("{address}/queues/{name}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };

    let page = open(&mut driver, &app.address).await;
    let default = page
        .wait_for(
            "the default queue's row",
            QUEUE_ROW,
            vec![json!("default")],
            |v| v.is_object(),
        )
        .await;
    assert_eq!(default["state"], "running");
    assert_eq!(default["interval"], "250 ms");
    assert_eq!(default["action"], "Pause");
    let enrich = page
        .wait_for(
            "enrich with two batches waiting",
            QUEUE_ROW,
            vec![json!("enrich")],
            |v| v["waiting"] == "2" && v["processing"] == "0 / 2",
        )
        .await;
    assert_eq!(enrich["state"], "running");
    assert!(
        enrich["next"].as_str().unwrap().starts_with("in "),
        "an hour after its first start: {enrich}"
    );
    assert_eq!(enrich["interval"], "1 h 00 min");
    let names = page
        .js(
            "return [...document.querySelectorAll('#queues-body tr')].map(r => r.dataset.queue)",
            vec![],
        )
        .await;
    assert_eq!(names, json!(["default", "enrich"]));
    // The top bar counts every queue's limit; the Now card's slot is said
    // to be the default queue's, and enrich's waiting batches are not its.
    let facts = page
        .wait_for(
            "the in-flight limit of both queues",
            "return [document.getElementById('fact-inflight').textContent,
                     document.getElementById('slot-queue').hidden,
                     document.getElementById('slot-note').textContent]",
            vec![],
            |v| v[0] == "0 / 3",
        )
        .await;
    assert_eq!(facts, json!(["0 / 3", false, "New work starts at once"]));

    // Pause, from the button: the server's queue is paused, the row says so.
    page.click(r#"#queues-body tr[data-queue="enrich"] button.queue-action"#)
        .await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while queue_at("enrich").await["paused"] != true {
        if tokio::time::Instant::now() > deadline {
            page.fail("the Pause button did not pause enrich").await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queue_at("default").await["paused"], false);
    let enrich = page
        .wait_for("enrich paused", QUEUE_ROW, vec![json!("enrich")], |v| {
            v["state"] == "paused" && v["action"] == "Resume"
        })
        .await;
    assert_eq!(enrich["next"], "paused");
    let summary = page
        .js(
            "return document.getElementById('queues-summary').textContent",
            vec![],
        )
        .await;
    assert_eq!(summary, "2 queues · 1 paused");
    page.screenshot("dashboard-queues.png").await;

    // Resume, from the same button.
    page.click(r#"#queues-body tr[data-queue="enrich"] button.queue-action"#)
        .await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while queue_at("enrich").await["paused"] != false {
        if tokio::time::Instant::now() > deadline {
            page.fail("the Resume button did not resume enrich").await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    page.wait_for("enrich running", QUEUE_ROW, vec![json!("enrich")], |v| {
        v["state"] == "running" && v["action"] == "Pause"
    })
    .await;

    // The form offers the queues, and the request goes to the one chosen;
    // its row names the queue.
    let ids = page.client.find(Locator::Id("ids-input")).await.unwrap();
    ids.send_keys("7-8").await.unwrap();
    page.client
        .find(Locator::Id("queue-input"))
        .await
        .unwrap()
        .select_by_value("enrich")
        .await
        .unwrap();
    page.click("#submit-button").await;
    let id = page
        .wait_for(
            "the submitted id",
            "const b = document.querySelector('#form-message .ok button');\
             return b ? b.title : null",
            vec![],
            |v| v.is_string(),
        )
        .await;
    let id = id.as_str().unwrap().to_owned();
    assert_eq!(app.status(&id).await["queue"], "enrich");
    page.wait_for(
        "the queue in the new row",
        "const row = document.querySelector(`#requests-body tr[data-id=\"${arguments[0]}\"]`);\
         return row ? row.querySelector('.queue-tag').textContent : null",
        vec![json!(id)],
        |v| v == "enrich",
    )
    .await;
    page.screenshot("dashboard-queues-submitted.png").await;
    page.no_console_errors("with the Queues panel", |_| false)
        .await;
}

/// An upstream that refuses everything with 429 and `Retry-After: 30`.
async fn start_refusing_upstream() -> String {
    let refuse = || async {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "30")],
            "slow down",
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/items/{{id}}", listener.local_addr().unwrap());
    let app = Router::new().route("/items/{id}", get(refuse));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_panel_highlights_a_queue_slowed_down_by_its_upstream() {
    let mut driver = ChromeDriver::start();
    let upstream = start_refusing_upstream().await;
    let dir = TempDir::new().unwrap();
    let file = queues_file(
        dir.path(),
        &format!(
            "[queues.slow]\ninterval = \"100ms\"\nadaptive = true\nmax_attempts = 1\n\
             upstream_url = \"{upstream}\"\n"
        ),
    );
    let app = spawn_app_with(|c| {
        c.interval = "2s".parse().unwrap();
        c.queues_file = Some(file);
    })
    .await;
    let answer = app
        .post_ingest(&json!({"ids": [1], "priority": "HIGH", "queue": "slow"}))
        .await;
    assert_eq!(answer.status(), 200);
    // The upstream's 429 slows the whole queue to at least its Retry-After.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let queue: Value = app
            .client
            .get(format!("{}/queues/slow", app.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if queue["effective_interval"] != queue["interval"] {
            assert_eq!(queue["interval"], "100ms");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue was not slowed down: {queue}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let page = open(&mut driver, &app.address).await;
    let cell = "const row = document.querySelector(`#queues-body tr[data-queue=\"${arguments[0]}\"]`);\
        if (!row) return null;\
        const cell = row.querySelector('[data-field=\"interval\"]');\
        return [cell.classList.contains('slowed'), cell.textContent];";
    let slow = page
        .wait_for("the slowed queue", cell, vec![json!("slow")], |v| {
            v.is_array()
        })
        .await;
    assert_eq!(slow[0], true, "{slow}");
    assert!(
        slow[1].as_str().unwrap().ends_with(" set 100 ms"),
        "the effective interval, then the one set: {slow}"
    );
    let default = page
        .wait_for("the default queue", cell, vec![json!("default")], |v| {
            v.is_array()
        })
        .await;
    assert_eq!(default, json!([false, "2.0 s"]));
    page.screenshot("dashboard-queues-slowed.png").await;
    page.no_console_errors("with a slowed queue", |_| false)
        .await;
}

// ---------------------------------------------------------------- tenants

const ACME_KEY: &str = "dashboard-acme-key-0123456789";
const GLOBEX_KEY: &str = "dashboard-globex-key-0123456789";

/// Submits `ids` with `key`; the new request's id.
async fn submit_with_key(app: &TestApp, key: &str, ids: &[u64]) -> String {
    let answer = app
        .client
        .post(format!("{}/ingest", app.address))
        .bearer_auth(key)
        .json(&json!({"ids": ids, "priority": "HIGH"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    body["ingestion_id"].as_str().unwrap().to_owned()
}

/// Whether the activity list has a line about request `arguments[0]`.
const IN_ACTIVITY: &str =
    r#"return document.querySelector(`#activity button[title="${arguments[0]}"]`) !== null;"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_tenants_key_the_dashboard_shows_its_own_requests_and_no_operator_panels() {
    let mut driver = ChromeDriver::start();
    let upstream = start_upstream(Duration::from_millis(15)).await;
    let dir = TempDir::new().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        format!("admin {ACME_KEY} acme\nadmin {GLOBEX_KEY} globex\n"),
    )
    .unwrap();
    let app = spawn_app_with(|c| {
        c.interval = "100ms".parse().unwrap();
        c.upstream_url = Some(upstream);
        c.api_keys_file = Some(keys.clone());
    })
    .await;
    let theirs = submit_with_key(&app, GLOBEX_KEY, &[1, 2, 3]).await;
    let mine = submit_with_key(&app, ACME_KEY, &[4, 5, 6]).await;

    // Without a key the page asks for one.
    let page = open(&mut driver, &app.address).await;
    page.wait_for(
        "the key form",
        "return !document.getElementById('key-form').hidden;",
        vec![],
        |v| v == true,
    )
    .await;
    page.js(
        "document.getElementById('key-input').value = arguments[0];
         document.getElementById('key-form').requestSubmit();",
        vec![json!(ACME_KEY)],
    )
    .await;

    // With it: acme's request, followed to its end, and not globex's.
    page.wait_for("acme's row completed", ROW_STATUS, vec![json!(mine)], |v| {
        v == "completed"
    })
    .await;
    let rows = page
        .js(
            "return [...document.querySelectorAll('#requests-body tr[data-id]')].map(r => r.dataset.id);",
            vec![],
        )
        .await;
    assert_eq!(rows, json!([mine]), "only acme's requests are listed");

    // The operator panels are left out, and the page says why.
    let panels = page
        .js(
            "const shown = (el) => el !== null && !el.hidden && el.offsetParent !== null;
             return {
               queue: shown(document.querySelector('.card.queue')),
               now: shown(document.querySelector('.card.now')),
               queues: shown(document.getElementById('queues-card')),
               facts: shown(document.querySelector('.facts')),
               note: shown(document.getElementById('operator-note')),
               noteText: document.getElementById('operator-note').textContent,
             };",
            vec![],
        )
        .await;
    assert_eq!(panels["queue"], false, "{panels}");
    assert_eq!(panels["now"], false, "{panels}");
    assert_eq!(panels["queues"], false, "{panels}");
    assert_eq!(panels["facts"], false, "{panels}");
    assert_eq!(panels["note"], true, "{panels}");
    assert!(
        panels["noteText"]
            .as_str()
            .unwrap()
            .contains("need an operator key"),
        "{panels}"
    );

    // Live, through the stream the page reads with its key: a new acme
    // request shows up in the activity, another tenant's does not.
    let later_theirs = submit_with_key(&app, GLOBEX_KEY, &[7]).await;
    let later_mine = submit_with_key(&app, ACME_KEY, &[8]).await;
    page.wait_for(
        "acme's new request in the activity",
        IN_ACTIVITY,
        vec![json!(later_mine)],
        |v| v == true,
    )
    .await;
    page.wait_for(
        "acme's new row completed",
        ROW_STATUS,
        vec![json!(later_mine)],
        |v| v == "completed",
    )
    .await;
    for id in [&theirs, &later_theirs] {
        assert_eq!(page.js(IN_ACTIVITY, vec![json!(id)]).await, false, "{id}");
        assert_eq!(
            page.js(ROW_STATUS, vec![json!(id)]).await,
            Value::Null,
            "{id}"
        );
    }
    // The 401 before the key, and the operator endpoints' 403, are the
    // only errors.
    page.no_console_errors("with a tenant's key", |e| {
        e.contains("401") || (e.contains("403") && (e.contains("/stats") || e.contains("/queues")))
    })
    .await;
    page.screenshot("dashboard-tenant.png").await;
}
