//! Supervised background work: a panic while processing one batch is a
//! transient failure of that batch; a dispatcher that dies is restarted, and
//! `/readyz` says so while it is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use sluice::domain::ItemId;
use sluice::startup::TestParts;
use sluice::upstream::{FetchError, Fetcher};

use crate::helpers::*;

/// How long a request here may take to end.
const ENDS_WITHIN: Duration = Duration::from_secs(20);

/// Panics on its first `panics` fetches of id 13; answers everything else.
struct PanickingFetcher {
    panics: u32,
    seen: AtomicU32,
}

#[async_trait]
impl Fetcher for PanickingFetcher {
    async fn fetch(&self, id: ItemId) -> Result<Value, FetchError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if id.get() == 13 && self.seen.fetch_add(1, Ordering::SeqCst) < self.panics {
            panic!("the fetcher broke on 13");
        }
        Ok(json!({"id": id.get()}))
    }
}

async fn app_with_fetcher(panics: u32, max_attempts: u32) -> TestApp {
    let fetcher = Arc::new(PanickingFetcher {
        panics,
        seen: AtomicU32::new(0),
    });
    spawn_app_with_parts(
        |c| {
            c.interval = "20ms".parse().unwrap();
            c.retry_base = "50ms".parse().unwrap();
            c.max_attempts = max_attempts;
        },
        TestParts {
            fetcher: Some(fetcher),
            ..TestParts::default()
        },
    )
    .await
}

#[tokio::test]
async fn a_panic_while_processing_is_a_transient_failure_and_is_retried() {
    let app = app_with_fetcher(1, 3).await;
    let id = app.ingest(&[13, 14, 15, 16], "HIGH").await;
    let status = wait_until_ended(&app, &id, ENDS_WITHIN).await;
    assert_eq!(status["status"], "completed", "{status:#}");
    assert_eq!(
        status["batches"][0]["attempts"], 2,
        "retried after the panic"
    );
    assert_eq!(status["batches"][1]["attempts"], 1);
    let results = ndjson_results(&app, &id).await;
    assert_eq!(results[0]["outcome"], "ok");
    assert_eq!(results[0]["attempts"], 2);
    let later = app.ingest(&[20], "LOW").await;
    app.wait_until_completed(&later, Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn a_batch_that_always_panics_fails_after_max_attempts() {
    let app = app_with_fetcher(u32::MAX, 2).await;
    let id = app.ingest(&[13, 14], "HIGH").await;
    let status = wait_until_ended(&app, &id, ENDS_WITHIN).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["batches"][0]["attempts"], 2);
    let results = ndjson_results(&app, &id).await;
    assert_eq!(results[0]["outcome"], "error");
    assert_eq!(results[0]["error"]["kind"], "transient");
    assert!(
        results[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("processing panicked: the fetcher broke on 13"),
        "{}",
        results[0]
    );
    let later = app.ingest(&[20], "LOW").await;
    app.wait_until_completed(&later, Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn a_dead_dispatcher_shows_in_readyz_and_is_restarted() {
    let armed = Arc::new(AtomicBool::new(false));
    let fault = {
        let armed = Arc::clone(&armed);
        Arc::new(move || {
            if armed.swap(false, Ordering::SeqCst) {
                panic!("injected: the dispatcher's loop broke");
            }
        })
    };
    let app = spawn_app_with_parts(
        |c| {
            c.interval = "20ms".parse().unwrap();
            c.mock_latency = "400ms".parse().unwrap();
        },
        TestParts {
            dispatcher_fault: Some(fault),
            ..TestParts::default()
        },
    )
    .await;
    let readyz = || async {
        let response = app
            .client
            .get(format!("{}/readyz", app.address))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(readyz().await.0, 200);

    // A batch processing when the loop dies is abandoned with it.
    let first = app.ingest(&[1, 2, 3], "LOW").await;
    wait_for_status(
        &app.client,
        &app.address,
        &first,
        "triggered",
        Duration::from_secs(5),
    )
    .await;
    armed.store(true, Ordering::SeqCst);
    // New work wakes the loop, which panics before its next claim.
    let second = app.ingest(&[4, 5, 6], "HIGH").await;

    let deadline = Instant::now() + Duration::from_secs(2);
    let (code, body) = loop {
        let (code, body) = readyz().await;
        if code != 200 || Instant::now() > deadline {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("dispatcher"), "names the part: {body}");
    let status = app.status(&first).await;
    assert_eq!(status["status"], "triggered", "never goes back: {status:#}");

    // Restarted: the abandoned batch runs again first, then the rest.
    let first_done = app
        .wait_until_completed(&first, Duration::from_secs(10))
        .await;
    let second_done = app
        .wait_until_completed(&second, Duration::from_secs(10))
        .await;
    assert_eq!(first_done["batches"][0]["attempts"], 2);
    assert!(
        micros(&first_done["batches"][0]["started_at"])
            < micros(&second_done["batches"][0]["started_at"]),
        "the interrupted batch before the HIGH one"
    );
    assert_eq!(readyz().await.0, 200, "ready again");
}
