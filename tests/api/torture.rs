//! Crash torture: the real binary under load, killed with SIGKILL at random
//! moments and restarted, again and again. After every kill, every request that
//! got a 200 is there with all its batches and ids; at the end every batch has
//! completed, and a batch ran more than once only if a kill caught it running.
//!
//! CI runs 12 kills; `SLUICE_TORTURE_KILLS=50 SLUICE_TORTURE_BIN=target/release/sluice
//! cargo test --test api torture -- --nocapture` runs the long form against
//! the release build.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::*;

/// What a client was told: ingestion id → (ids sent, priority).
type Acknowledged = Arc<Mutex<HashMap<String, (Vec<u64>, String)>>>;

/// Posts requests as fast as it can until the server dies.
async fn load(address: String, acknowledged: Acknowledged, seed: u64) {
    let client = reqwest::Client::new();
    let mut rng = fastrand::Rng::with_seed(seed);
    loop {
        let n = rng.usize(1..=12);
        let ids: Vec<u64> = (0..n).map(|_| rng.u64(1..=1_000_000_007)).collect();
        let priority = ["HIGH", "MEDIUM", "LOW"][rng.usize(0..3)];
        let Ok(response) = client
            .post(format!("{address}/ingest"))
            .json(&json!({"ids": ids, "priority": priority}))
            .send()
            .await
        else {
            return;
        };
        if response.status() != 200 {
            continue;
        }
        let Ok(body) = response.json::<Value>().await else {
            // The kill came between the answer's head and its body: not
            // acknowledged as far as this client knows.
            return;
        };
        let id = body["ingestion_id"].as_str().unwrap().to_owned();
        acknowledged
            .lock()
            .unwrap()
            .insert(id, (ids, priority.to_owned()));
    }
}

fn check_request(id: &str, status: &Value, ids: &[u64], priority: &str) {
    assert_eq!(status["priority"], priority, "{id}");
    let stored: Vec<u64> = status["batches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| {
            b["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
        })
        .collect();
    assert_eq!(stored, ids, "{id}: every batch and id");
}

#[tokio::test]
async fn acknowledged_requests_survive_sigkill_at_random_moments() {
    let kills: usize = std::env::var("SLUICE_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let binary = std::env::var("SLUICE_TORTURE_BIN").ok();
    let dir = TempDir::new().unwrap();
    let database = fresh_database(dir.path()).await;
    let args = [
        "--interval",
        "5ms",
        "--mock-latency",
        "20ms",
        "--max-in-flight",
        "4",
    ];
    let acknowledged: Acknowledged = Arc::default();
    let client = reqwest::Client::new();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut caught_running = 0usize;

    for round in 0..kills {
        let server = ServerProcess::start_binary(binary.as_deref(), &database, &args);
        // Every request acknowledged so far is there, whole.
        let known: Vec<(String, (Vec<u64>, String))> = acknowledged
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, (ids, priority)) in &known {
            let response = client
                .get(format!("{}/status/{id}", server.address))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "round {round}: {id} lost");
            check_request(id, &response.json().await.unwrap(), ids, priority);
        }

        let loaders: Vec<_> = (0..4)
            .map(|i| {
                tokio::spawn(load(
                    server.address.clone(),
                    Arc::clone(&acknowledged),
                    (round * 10 + i) as u64,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
        // How many batches a kill now could catch running.
        if let Ok(stats) = client.get(format!("{}/stats", server.address)).send().await
            && let Ok(stats) = stats.json::<Value>().await
        {
            caught_running += stats["processing"].as_array().map_or(0, Vec::len);
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..50))).await;
        server.kill9();
        for loader in loaders {
            loader.await.unwrap();
        }
    }

    // Let everything drain, then look at every request.
    let server = ServerProcess::start_binary(binary.as_deref(), &database, &args);
    let known: Vec<(String, (Vec<u64>, String))> = acknowledged
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (mut batches, mut reruns) = (0usize, 0usize);
    for (id, (ids, priority)) in &known {
        let status = wait_for_status(
            &client,
            &server.address,
            id,
            "completed",
            Duration::from_secs(120),
        )
        .await;
        check_request(id, &status, ids, priority);
        for batch in status["batches"].as_array().unwrap() {
            batches += 1;
            let attempts = batch["attempts"].as_u64().unwrap() as usize;
            reruns += attempts.saturating_sub(1);
        }
    }
    eprintln!(
        "crash torture: {kills} SIGKILLs, {} requests acknowledged, {batches} batches, all \
         completed; {reruns} batch re-runs (a kill can interrupt at most max-in-flight = 4 \
         batches; at most ~{} observed running just before kills)",
        known.len(),
        caught_running
    );
    assert!(!known.is_empty());
    // A batch runs again only when a kill interrupted it: no more re-runs than
    // kills times the batches a kill can find running.
    assert!(reruns <= kills * 4, "{reruns} re-runs for {kills} kills");
}
