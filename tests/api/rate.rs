//! The rate limit: at most one start per interval, no wasted slots, no drift.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

fn batches(status: &Value) -> Vec<Value> {
    status["batches"].as_array().unwrap().clone()
}

#[tokio::test]
async fn starts_are_never_closer_than_the_interval() {
    let interval = 150_000;
    let app = spawn_app_with(|c| c.interval = "150ms".parse().unwrap()).await;
    let ids: Vec<u64> = (1..=24).collect();
    let id = app.ingest(&ids, "HIGH").await;
    let status = app.wait_until_completed(&id, Duration::from_secs(10)).await;

    let batches = batches(&status);
    // A start later than a tenth of the interval starts a new grid (see
    // `Interval::late_tolerance_micros`); on time, the grid is exact.
    let tolerance = interval / 10;
    for pair in batches.windows(2) {
        let gap = micros(&pair[1]["scheduled_at"]) - micros(&pair[0]["scheduled_at"]);
        assert!(gap >= interval, "slots {gap} µs apart");
        let lateness = micros(&pair[1]["started_at"]) - micros(&pair[0]["scheduled_at"]) - interval;
        if lateness <= tolerance {
            assert_eq!(gap, interval, "a backlog runs one interval apart, exactly");
        }
        let started_gap = micros(&pair[1]["started_at"]) - micros(&pair[0]["started_at"]);
        assert!(
            started_gap >= interval - tolerance,
            "starts {started_gap} µs apart"
        );
    }
    for batch in &batches {
        let lag = micros(&batch["started_at"]) - micros(&batch["scheduled_at"]);
        assert!(lag >= 0, "a batch started before its slot: {batch}");
        assert!(lag < 50_000, "a batch started {lag} µs after its slot");
    }
}

#[tokio::test]
async fn an_idle_service_starts_new_work_at_once() {
    // A scheduler that waited for its next tick would hold B for most of an
    // interval (1.8 s here); starting at once takes a claim's time. The
    // tolerance is wide because a loaded machine (CI runs many PostgreSQL
    // tests at once) can take a few hundred ms for a first claim.
    let interval = 2_000_000;
    let at_once = 800_000;
    let app = spawn_app_with(|c| c.interval = "2s".parse().unwrap()).await;
    let a = app.ingest(&[1], "LOW").await;
    let a = app.wait_until_completed(&a, Duration::from_secs(10)).await;
    let a_start = micros(&a["batches"][0]["started_at"]);
    assert!(a_start - micros(&a["created_at"]) < at_once, "{a:#}");

    // Arriving 1.1 intervals after A started, B starts at once, not at the
    // next tick (2 intervals after A).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let b = app.ingest(&[2], "LOW").await;
    let b = app.wait_until_completed(&b, Duration::from_secs(10)).await;
    let b_start = micros(&b["batches"][0]["started_at"]);
    assert!(b_start - micros(&b["created_at"]) < at_once, "{b:#}");
    assert!(b_start - a_start >= interval);
}

#[tokio::test]
async fn work_arriving_within_the_interval_waits_for_the_next_slot() {
    let app = spawn_app_with(|c| c.interval = "1s".parse().unwrap()).await;
    let a = app.ingest(&[1], "LOW").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = app.ingest(&[2], "HIGH").await;
    let a = app.wait_until_completed(&a, Duration::from_secs(5)).await;
    let b = app.wait_until_completed(&b, Duration::from_secs(5)).await;
    let gap = micros(&b["batches"][0]["scheduled_at"]) - micros(&a["batches"][0]["scheduled_at"]);
    assert_eq!(gap, 1_000_000);
}

/// Overlaps between batches' processing, from their start and completion times.
fn max_concurrent(statuses: &[Value]) -> usize {
    let mut events = Vec::new();
    for batch in statuses.iter().flat_map(batches) {
        events.push((micros(&batch["started_at"]), 1));
        events.push((micros(&batch["completed_at"]), -1));
    }
    // At equal times, a completion comes before a start.
    events.sort();
    let (mut now, mut max) = (0i64, 0i64);
    for (_, delta) in events {
        now += delta;
        max = max.max(now);
    }
    max as usize
}

#[tokio::test]
async fn at_most_max_in_flight_batches_process_at_once() {
    for limit in [1usize, 3] {
        let app = spawn_app_with(|c| {
            c.interval = "0".parse().unwrap();
            c.mock_latency = "40ms".parse().unwrap();
            c.max_in_flight = limit.try_into().unwrap();
        })
        .await;
        let ids: Vec<u64> = (1..=30).collect();
        let id = app.ingest(&ids, "MEDIUM").await;
        let status = app.wait_until_completed(&id, Duration::from_secs(10)).await;
        assert_eq!(max_concurrent(&[status]), limit, "max-in-flight {limit}");
    }
}
