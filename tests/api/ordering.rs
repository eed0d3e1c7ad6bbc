//! Which batch starts next: priority, then arrival, then position; a started
//! batch is never interrupted.

use std::time::Duration;

use crate::helpers::*;

/// SPEC.md's reference timeline, scaled: interval 2 s instead of 5 s, with B
/// arriving at 0.8 of the interval ("T4").
#[tokio::test]
async fn reference_timeline() {
    let app = spawn_app_with(|c| {
        c.interval = "2s".parse().unwrap();
        c.mock_latency = "50ms".parse().unwrap();
    })
    .await;
    let t0 = tokio::time::Instant::now();

    let a = app.ingest(&[1, 2, 3, 4, 5], "MEDIUM").await;
    tokio::time::sleep_until(t0 + Duration::from_millis(1600)).await;
    let b = app.ingest(&[6, 7, 8, 9], "HIGH").await;

    // "T4": A has started, B waits.
    assert_eq!(app.status(&a).await["status"], "triggered");
    assert_eq!(app.status(&b).await["status"], "yet_to_start");

    let a = app.wait_until_completed(&a, Duration::from_secs(15)).await;
    let b = app.wait_until_completed(&b, Duration::from_secs(15)).await;
    let order: Vec<Vec<u64>> = starts_in_order(&[a.clone(), b])
        .into_iter()
        .map(|(ids, _)| ids)
        .collect();
    assert_eq!(order, [vec![1, 2, 3], vec![6, 7, 8], vec![9], vec![4, 5]]);

    // T0: A's first batch starts at once, not at a timer tick.
    let first = &a["batches"][0];
    assert!(micros(&first["started_at"]) - micros(&a["created_at"]) < 500_000);
}

#[tokio::test]
async fn priority_then_arrival_then_position() {
    let app = spawn_app_with(|c| c.interval = "200ms".parse().unwrap()).await;
    // Starts at once and holds the first slot while the rest queue up. The
    // rest are sent once it has started: until then a claim racing the next
    // commit could rightly pick a more urgent batch first.
    let blocker = app.ingest(&[1], "LOW").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.status(&blocker).await["batches"][0]["started_at"].is_null() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the blocker never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let requests = [
        (vec![10, 11, 12, 13], "LOW"),
        (vec![20], "MEDIUM"),
        (vec![30, 31, 32, 33], "HIGH"),
        (vec![21, 22, 23, 24], "medium"),
        (vec![40], "high"),
        (vec![50], "Low"),
    ];
    let mut ids = vec![blocker];
    for (batch, priority) in &requests {
        ids.push(app.ingest(batch, priority).await);
    }

    let mut statuses = Vec::new();
    for id in &ids {
        statuses.push(app.wait_until_completed(id, Duration::from_secs(10)).await);
    }
    let starts = starts_in_order(&statuses);
    let last_created = micros(&statuses.last().unwrap()["created_at"]);
    assert!(
        last_created < starts[1].1,
        "the test must queue everything within the first interval"
    );

    let order: Vec<Vec<u64>> = starts.into_iter().map(|(ids, _)| ids).collect();
    let expected: Vec<Vec<u64>> = vec![
        vec![1],
        vec![30, 31, 32],
        vec![33],
        vec![40],
        vec![20],
        vec![21, 22, 23],
        vec![24],
        vec![10, 11, 12],
        vec![13],
        vec![50],
    ];
    assert_eq!(order, expected);
}

#[tokio::test]
async fn a_started_batch_is_never_preempted() {
    let app = spawn_app_with(|c| {
        c.interval = "50ms".parse().unwrap();
        c.mock_latency = "600ms".parse().unwrap();
    })
    .await;
    let low = app.ingest(&[1, 2, 3], "LOW").await;
    wait_for_status(
        &app.client,
        &app.address,
        &low,
        "triggered",
        Duration::from_secs(5),
    )
    .await;
    let high = app.ingest(&[4], "HIGH").await;

    let low = app
        .wait_until_completed(&low, Duration::from_secs(10))
        .await;
    let high = app
        .wait_until_completed(&high, Duration::from_secs(10))
        .await;
    let (low, high) = (&low["batches"][0], &high["batches"][0]);
    assert_eq!(low["attempts"], 1, "the LOW batch ran once, to the end");
    assert!(micros(&low["completed_at"]) - micros(&low["started_at"]) >= 600_000);
    // With max-in-flight 1, the urgent batch waits for the running one.
    assert!(micros(&high["started_at"]) >= micros(&low["completed_at"]));
}
