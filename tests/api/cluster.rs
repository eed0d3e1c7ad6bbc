//! Several nodes on one PostgreSQL database behave as one service. These tests
//! always use PostgreSQL, whichever store the rest of the suite runs on.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::helpers::*;

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn start_nodes(database: &str, args: &[&str]) -> Vec<ServerProcess> {
    (0..3)
        .map(|_| ServerProcess::start(database, args))
        .collect()
}

/// One started batch, as the cluster test reads it back.
#[derive(Debug)]
struct Start {
    ids: Vec<u64>,
    /// The contract's order: priority rank, then arrival, then position.
    key: (u8, usize, usize),
    acknowledged_at: i64,
    scheduled_at: i64,
    started_at: i64,
    completed_at: i64,
}

#[tokio::test]
async fn three_nodes_hold_one_rate_one_order_and_one_state() {
    let database = fresh_postgres_database().await;
    let interval = 150_000;
    let nodes = start_nodes(
        &database,
        &["--interval", "150ms", "--mock-latency", "20ms"],
    );
    let client = reqwest::Client::new();

    // A mix of priorities, sent one after the other, round robin over the nodes.
    let requests: [(&[u64], &str); 12] = [
        (&[1, 2, 3, 4], "LOW"),
        (&[5], "MEDIUM"),
        (&[6, 7, 8, 9, 10], "HIGH"),
        (&[11, 12], "LOW"),
        (&[13, 14, 15, 16], "MEDIUM"),
        (&[17], "HIGH"),
        (&[18, 19, 20], "LOW"),
        (&[21, 22, 23, 24, 25, 26, 27], "HIGH"),
        (&[28], "MEDIUM"),
        (&[29, 30], "HIGH"),
        (&[31, 32, 33], "LOW"),
        (&[34, 35, 36, 37], "MEDIUM"),
    ];
    let mut sent = Vec::new();
    for (arrival, (ids, priority)) in requests.iter().enumerate() {
        let node = &nodes[arrival % nodes.len()];
        let id = ingest_at(&client, &node.address, ids, priority).await;
        sent.push((id, arrival, now_micros()));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }

    let mut starts = Vec::new();
    for (id, arrival, acknowledged_at) in &sent {
        let done = wait_for_status(
            &client,
            &nodes[0].address,
            id,
            "completed",
            Duration::from_secs(30),
        )
        .await;
        // Every node answers the same.
        for node in &nodes[1..] {
            assert_eq!(status_at(&client, &node.address, id).await, done);
        }
        let rank = match done["priority"].as_str().unwrap() {
            "HIGH" => 0,
            "MEDIUM" => 1,
            _ => 2,
        };
        for (position, batch) in done["batches"].as_array().unwrap().iter().enumerate() {
            assert_eq!(batch["attempts"], 1);
            starts.push(Start {
                ids: batch["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect(),
                key: (rank, *arrival, position),
                acknowledged_at: *acknowledged_at,
                scheduled_at: micros(&batch["scheduled_at"]),
                started_at: micros(&batch["started_at"]),
                completed_at: micros(&batch["completed_at"]),
            });
        }
    }
    starts.sort_by_key(|s| s.started_at);

    let mut min_gap = i64::MAX;
    for pair in starts.windows(2) {
        let slot_gap = pair[1].scheduled_at - pair[0].scheduled_at;
        assert!(slot_gap >= interval, "slots {slot_gap} µs apart");
        let gap = pair[1].started_at - pair[0].started_at;
        min_gap = min_gap.min(gap);
        // A start later than a tenth of the interval begins a new grid, so two
        // starts are never closer than the interval minus that tolerance.
        assert!(gap >= interval - interval / 10, "starts {gap} µs apart");
        // max-in-flight 1, cluster-wide.
        assert!(
            pair[1].started_at >= pair[0].completed_at,
            "{pair:?} overlap"
        );
    }
    eprintln!(
        "cluster: {} starts, minimum spacing {min_gap} µs (interval {interval} µs)",
        starts.len()
    );

    // The contract's order: when a batch started, no batch that comes before
    // it in the order was already acknowledged and still waiting.
    for later in &starts {
        for earlier in &starts {
            if earlier.key < later.key && earlier.acknowledged_at < later.started_at {
                assert!(
                    earlier.started_at <= later.started_at,
                    "{:?} started before {:?}, which was waiting",
                    later.ids,
                    earlier.ids
                );
            }
        }
    }
}

#[tokio::test]
async fn max_in_flight_holds_across_the_cluster() {
    let database = fresh_postgres_database().await;
    // Each batch takes longer than the interval: only the in-flight limit
    // keeps three nodes from running three at once.
    let nodes = start_nodes(
        &database,
        &["--interval", "50ms", "--mock-latency", "250ms"],
    );
    let client = reqwest::Client::new();
    let ids: Vec<u64> = (1..=24).collect();
    let id = ingest_at(&client, &nodes[1].address, &ids, "MEDIUM").await;
    let done = wait_for_status(
        &client,
        &nodes[2].address,
        &id,
        "completed",
        Duration::from_secs(30),
    )
    .await;
    let mut runs: Vec<(i64, i64)> = done["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (micros(&b["started_at"]), micros(&b["completed_at"])))
        .collect();
    runs.sort();
    for pair in runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two batches processed at once: {pair:?}"
        );
    }
}

#[tokio::test]
async fn kill_9_of_the_node_holding_a_batch_loses_nothing() {
    let database = fresh_postgres_database().await;
    let client = reqwest::Client::new();
    // The first node is slow: it is surely processing when it dies.
    let doomed = ServerProcess::start(
        &database,
        &[
            "--interval",
            "200ms",
            "--lease",
            "2s",
            "--mock-latency",
            "60s",
        ],
    );
    let id = ingest_at(&client, &doomed.address, &[1, 2, 3, 4, 5, 6, 7], "HIGH").await;
    wait_for_status(
        &client,
        &doomed.address,
        &id,
        "triggered",
        Duration::from_secs(5),
    )
    .await;
    let survivors = [
        ServerProcess::start(
            &database,
            &[
                "--interval",
                "200ms",
                "--lease",
                "2s",
                "--mock-latency",
                "10ms",
            ],
        ),
        ServerProcess::start(
            &database,
            &[
                "--interval",
                "200ms",
                "--lease",
                "2s",
                "--mock-latency",
                "10ms",
            ],
        ),
    ];

    let killed_at = now_micros();
    let clock = Instant::now();
    doomed.kill9();
    let done = wait_for_status(
        &client,
        &survivors[0].address,
        &id,
        "completed",
        Duration::from_secs(20),
    )
    .await;
    let batches = done["batches"].as_array().unwrap();
    let rescued = &batches[0];
    assert_eq!(rescued["attempts"], 2, "processed again after the kill");
    let rescue = micros(&rescued["completed_at"]) - killed_at;
    eprintln!(
        "rescue after kill -9: {rescue} µs (lease 2 s, interval 200 ms); all done after {:?}",
        clock.elapsed()
    );
    // lease + one heartbeat (lease/5) + interval, plus slack for a loaded machine.
    assert!(
        rescue < 2_000_000 + 400_000 + 200_000 + 1_000_000,
        "{rescue} µs"
    );

    let mut slots: Vec<i64> = batches.iter().map(|b| micros(&b["scheduled_at"])).collect();
    slots.sort();
    for pair in slots.windows(2) {
        assert!(
            pair[1] - pair[0] >= 200_000,
            "the rate broke during the rescue"
        );
    }
}

#[tokio::test]
async fn sigterm_hands_claims_back_without_waiting_for_the_lease() {
    let database = fresh_postgres_database().await;
    let client = reqwest::Client::new();
    let leaving = ServerProcess::start(
        &database,
        &[
            "--interval",
            "100ms",
            "--lease",
            "60s",
            "--mock-latency",
            "60s",
            "--shutdown-grace",
            "300ms",
        ],
    );
    let id = ingest_at(&client, &leaving.address, &[1, 2, 3], "LOW").await;
    wait_for_status(
        &client,
        &leaving.address,
        &id,
        "triggered",
        Duration::from_secs(5),
    )
    .await;
    let staying = ServerProcess::start(
        &database,
        &[
            "--interval",
            "100ms",
            "--lease",
            "60s",
            "--mock-latency",
            "10ms",
        ],
    );

    let clock = Instant::now();
    leaving.sigterm();
    assert!(leaving.wait_exit(Duration::from_secs(10)).await.success());
    let done = wait_for_status(
        &client,
        &staying.address,
        &id,
        "completed",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(done["batches"][0]["attempts"], 2);
    assert!(
        clock.elapsed() < Duration::from_secs(5),
        "handed back in {:?}, far below the 60 s lease",
        clock.elapsed()
    );
}

/// Issue 13's fairness test on three nodes: tenant a's 100 batches, then
/// tenant b's 10, each submitted to another node and read from a third.
#[tokio::test]
async fn three_nodes_share_turns_between_tenants() {
    use crate::fairness::{a_hundred_then_ten, fair_queues_file, tenant_keys_file};
    let database = fresh_postgres_database().await;
    let dir = tempfile::TempDir::new().unwrap();
    let keys = tenant_keys_file(dir.path());
    let queues = fair_queues_file(dir.path(), "fairness = \"tenant\"");
    let nodes = start_nodes(
        &database,
        &[
            "--api-keys-file",
            keys.to_str().unwrap(),
            "--queues-file",
            queues.to_str().unwrap(),
            "--mock-latency",
            "2ms",
        ],
    );
    let client = reqwest::Client::new();
    a_hundred_then_ten(
        &client,
        &nodes[0].address,
        &nodes[1].address,
        &nodes[2].address,
        "PostgreSQL, 3 nodes",
    )
    .await;
}
