//! Named queues: each with its own rate, in-flight limit and priority order,
//! none waiting for another; pause, resume and runtime settings through HTTP.

use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::*;

const TWO_QUEUES: &str = r#"
[queues.fast]
interval = "300ms"
batch_size = 1

[queues.slow]
interval = "1s"
batch_size = 1
"#;

/// An app with the queues of `text`, and the folder that keeps its file.
async fn app_with_queues(
    text: &str,
    configure: impl FnOnce(&mut sluice::config::Config),
) -> (TempDir, TestApp) {
    let dir = TempDir::new().unwrap();
    let path = queues_file(dir.path(), text);
    let app = spawn_app_with(|c| {
        c.queues_file = Some(path);
        configure(c);
    })
    .await;
    (dir, app)
}

async fn ingest_to(app: &TestApp, queue: &str, ids: &[u64], priority: &str) -> String {
    let response = app
        .post_ingest(&json!({"ids": ids, "priority": priority, "queue": queue}))
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let body: Value = response.json().await.unwrap();
    body["ingestion_id"].as_str().unwrap().to_owned()
}

async fn queue_action(app: &TestApp, queue: &str, action: &str) -> Value {
    let response = app
        .client
        .post(format!("{}/queues/{queue}/{action}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn get_queue(app: &TestApp, queue: &str) -> Value {
    let response = app
        .client
        .get(format!("{}/queues/{queue}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn patch_queue(app: &TestApp, queue: &str, body: Value) -> reqwest::Response {
    app.client
        .patch(format!("{}/queues/{queue}", app.address))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `(ids, scheduled_at, started_at)` of every batch of these requests, in
/// start order.
fn starts(statuses: &[Value]) -> Vec<(Vec<u64>, i64, i64)> {
    let mut starts: Vec<_> = statuses
        .iter()
        .flat_map(|s| s["batches"].as_array().unwrap().iter())
        .map(|b| {
            let ids = b["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            (ids, micros(&b["scheduled_at"]), micros(&b["started_at"]))
        })
        .collect();
    starts.sort_by_key(|&(_, _, started)| started);
    starts
}

/// Starts never closer than `interval` (less the late tolerance), and an
/// exact grid wherever a start was on time.
fn assert_spacing(queue: &str, starts: &[(Vec<u64>, i64, i64)], interval: i64) {
    let tolerance = (interval / 10).min(25_000);
    for pair in starts.windows(2) {
        let (slot_a, slot_b, started_b) = (pair[0].1, pair[1].1, pair[1].2);
        let gap = slot_b - slot_a;
        assert!(gap >= interval, "{queue}: slots {gap} µs apart");
        // A claim later than the tolerance starts a new grid (as in the
        // single-queue rate tests); on time, the grid is exact.
        if started_b - slot_a - interval <= tolerance {
            assert_eq!(gap, interval, "{queue}: a backlog runs on an exact grid");
        }
        let started_gap = started_b - pair[0].2;
        assert!(
            started_gap >= interval - tolerance,
            "{queue}: starts {started_gap} µs apart"
        );
    }
}

#[tokio::test]
async fn two_queues_keep_their_own_rates_and_priorities_and_never_wait_for_each_other() {
    let (_dir, app) = app_with_queues(TWO_QUEUES, |_| {}).await;
    // Paused while loading, so that each queue's order is decided by
    // priority alone, not by which request arrived while it was idle.
    queue_action(&app, "fast", "pause").await;
    queue_action(&app, "slow", "pause").await;
    let fast_low = ingest_to(&app, "fast", &[1, 2, 3], "LOW").await;
    let fast_high = ingest_to(&app, "fast", &[4, 5, 6], "HIGH").await;
    let slow_low = ingest_to(&app, "slow", &[11, 12], "LOW").await;
    let slow_high = ingest_to(&app, "slow", &[13], "HIGH").await;
    queue_action(&app, "fast", "resume").await;
    queue_action(&app, "slow", "resume").await;

    let mut fast = Vec::new();
    for id in [&fast_low, &fast_high] {
        fast.push(app.wait_until_completed(id, Duration::from_secs(20)).await);
    }
    let mut slow = Vec::new();
    for id in [&slow_low, &slow_high] {
        slow.push(app.wait_until_completed(id, Duration::from_secs(20)).await);
    }
    assert_eq!(fast[0]["queue"], "fast");
    assert_eq!(slow[1]["queue"], "slow");

    let fast = starts(&fast);
    let slow = starts(&slow);
    let order = |starts: &[(Vec<u64>, i64, i64)]| -> Vec<u64> {
        starts.iter().map(|(ids, _, _)| ids[0]).collect()
    };
    assert_eq!(
        order(&fast),
        [4, 5, 6, 1, 2, 3],
        "HIGH first, inside the queue"
    );
    assert_eq!(order(&slow), [13, 11, 12], "HIGH first, inside the queue");
    assert_spacing("fast", &fast, 300_000);
    assert_spacing("slow", &slow, 1_000_000);
    for (name, starts, interval) in [("fast", &fast, 300_000), ("slow", &slow, 1_000_000)] {
        let gaps: Vec<i64> = starts.windows(2).map(|w| w[1].1 - w[0].1).collect();
        let started: Vec<i64> = starts.windows(2).map(|w| w[1].2 - w[0].2).collect();
        eprintln!(
            "queue {name}: {} starts, slot gaps {gaps:?} µs (interval {interval} µs), \
             minimum start spacing {} µs",
            starts.len(),
            started.iter().min().unwrap()
        );
    }

    // Neither waits for the other: the fast queue has started its fourth
    // batch before the slow queue's second, which a shared rate limit of
    // either interval could not do.
    let (fast_fourth, slow_second) = (fast[3].2, slow[1].2);
    assert!(
        fast_fourth < slow_second,
        "fast's 4th start {fast_fourth} after slow's 2nd {slow_second}"
    );
    // And the two queues' starts interleave closer than either interval:
    // each queue has its own slot.
    let mut all: Vec<i64> = fast.iter().chain(&slow).map(|s| s.2).collect();
    all.sort();
    let closest = all.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(
        closest < 300_000,
        "the queues never started close together: {closest} µs"
    );
}

#[tokio::test]
async fn a_paused_queue_starts_nothing_and_the_other_is_unaffected() {
    let (_dir, app) = app_with_queues(TWO_QUEUES, |_| {}).await;
    let paused = queue_action(&app, "slow", "pause").await;
    assert_eq!(paused["paused"], true);
    // Still accepts work.
    let held = ingest_to(&app, "slow", &[1, 2], "HIGH").await;
    let runs = ingest_to(&app, "fast", &[3, 4], "LOW").await;
    app.wait_until_completed(&runs, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = app.status(&held).await;
    assert_eq!(status["status"], "yet_to_start", "{status:#}");
    let queue = get_queue(&app, "slow").await;
    assert_eq!(queue["paused"], true);
    assert_eq!(queue["waiting"], 2);
    assert!(queue["last_slot"].is_null(), "{queue:#}");

    let resumed = queue_action(&app, "slow", "resume").await;
    assert_eq!(resumed["paused"], false);
    app.wait_until_completed(&held, Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn a_runtime_interval_applies_from_the_next_slot_and_survives_a_restart() {
    let dir = TempDir::new().unwrap();
    let path = queues_file(
        dir.path(),
        "[queues.bulk]\ninterval = \"2s\"\nbatch_size = 1\n",
    );
    let database = fresh_database(dir.path()).await;
    let configure = |c: &mut sluice::config::Config| {
        c.queues_file = Some(path.clone());
        c.database = database.clone();
    };
    let app = spawn_app_with(configure).await;
    let id = ingest_to(&app, "bulk", &[1, 2, 3, 4, 5], "MEDIUM").await;
    // The first starts at once; the second would wait 2 s.
    wait_for_started(&app, &id, 1).await;
    let response = patch_queue(&app, "bulk", json!({"interval": "200ms"})).await;
    assert_eq!(response.status(), 200);
    let changed: Value = response.json().await.unwrap();
    assert_eq!(changed["interval"], "200ms");
    assert_eq!(changed["configured"]["interval"], "2s");

    let status = app.wait_until_completed(&id, Duration::from_secs(10)).await;
    let starts = starts(&[status]);
    // The next slot comes 200 ms after the first, not 2 s.
    let first_gap = starts[1].1 - starts[0].1;
    assert!(
        first_gap < 1_000_000,
        "the change waited for the old slot: {first_gap} µs"
    );
    assert_spacing("bulk", &starts[1..], 200_000);

    // Stored: a restart keeps it over the file's 2 s.
    let _kept = app.stop().await;
    let app = spawn_app_with(configure).await;
    let queue = get_queue(&app, "bulk").await;
    assert_eq!(queue["interval"], "200ms", "{queue:#}");

    // `null` returns it to the file's.
    let response = patch_queue(&app, "bulk", json!({"interval": null, "max_in_flight": 3})).await;
    assert_eq!(response.status(), 200);
    let reset: Value = response.json().await.unwrap();
    assert_eq!(reset["interval"], "2s");
    assert_eq!(reset["max_in_flight"], 3);
}

/// Waits until every one of `ids` has completed, as the server at `address`
/// answers; their statuses.
async fn all_completed(client: &reqwest::Client, address: &str, ids: &[String]) -> Vec<Value> {
    let mut done = Vec::new();
    for id in ids {
        done.push(wait_for_status(client, address, id, "completed", Duration::from_secs(30)).await);
    }
    done
}

async fn wait_for_started(app: &TestApp, id: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = app.status(id).await;
        let started = status["batches"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| !b["started_at"].is_null())
            .count();
        if started >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn queues_are_listed_with_their_settings_and_state() {
    let (_dir, app) = app_with_queues(
        "[queues.enrich]\ninterval = \"250ms\"\nmax_in_flight = 2\nbatch_size = 10\nmax_attempts = 3\nadaptive = true\n",
        |_| {},
    )
    .await;
    let response = app
        .client
        .get(format!("{}/queues", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let list: Value = response.json().await.unwrap();
    let names: Vec<&str> = list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "enrich"]);
    let enrich = &list["queues"][1];
    assert_eq!(enrich["interval"], "250ms");
    assert_eq!(enrich["effective_interval"], "250ms");
    assert_eq!(enrich["max_in_flight"], 2);
    assert_eq!(enrich["batch_size"], 10);
    assert_eq!(enrich["max_attempts"], 3);
    assert_eq!(enrich["adaptive"], true);
    assert!(enrich["upstream"].is_null(), "the mock");
    let default = &list["queues"][0];
    // The default queue is the flags' (the test config's 100 ms).
    assert_eq!(default["interval"], "100ms");
    assert_eq!(default["batch_size"], 3);
    assert_eq!(default["adaptive"], false);

    // Its batches, by priority and status, once it has some.
    let id = ingest_to(&app, "enrich", &(1..=25).collect::<Vec<_>>(), "LOW").await;
    app.wait_until_completed(&id, Duration::from_secs(10)).await;
    let enrich = get_queue(&app, "enrich").await;
    assert_eq!(enrich["batches"]["LOW"]["completed"], 3, "{enrich:#}");
    assert_eq!(enrich["waiting"], 0);
    assert!(!enrich["last_slot"].is_null());
    let default = get_queue(&app, "default").await;
    assert!(
        default["last_slot"].is_null(),
        "the default queue started nothing"
    );
}

#[tokio::test]
async fn an_unknown_queue_is_refused_with_a_problem_on_the_field() {
    let (_dir, app) = app_with_queues(TWO_QUEUES, |_| {}).await;
    let response = app
        .post_ingest(&json!({"ids": [1], "priority": "HIGH", "queue": "nope"}))
        .await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "queue", "{problem:#}");
    for bad in [json!(7), json!(["fast"])] {
        let response = app
            .post_ingest(&json!({"ids": [1], "priority": "HIGH", "queue": bad}))
            .await;
        assert_eq!(response.status(), 422);
    }
    // No queue, or null, is the default queue.
    for body in [
        json!({"ids": [1], "priority": "HIGH"}),
        json!({"ids": [1], "priority": "HIGH", "queue": null}),
    ] {
        let response = app.post_ingest(&body).await;
        let id: Value = response.json().await.unwrap();
        let status = app.status(id["ingestion_id"].as_str().unwrap()).await;
        assert_eq!(status["queue"], "default");
    }
    // Nothing stored for the refused ones: only the two accepted requests.
    let stats: Value = app
        .client
        .get(format!("{}/stats", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["ingestions"], 2);

    let response = app
        .client
        .get(format!("{}/queues/nope", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    for action in ["pause", "resume"] {
        let response = app
            .client
            .post(format!("{}/queues/nope/{action}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }
    assert_eq!(
        patch_queue(&app, "nope", json!({"interval": "1s"}))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn a_bad_patch_is_refused_field_by_field_and_changes_nothing() {
    let (_dir, app) = app_with_queues(TWO_QUEUES, |_| {}).await;
    for (body, field) in [
        (json!({"interval": "soon"}), "interval"),
        (json!({"interval": 5}), "interval"),
        (json!({"max_in_flight": 0}), "max_in_flight"),
        (json!({"max_in_flight": -1}), "max_in_flight"),
        (json!({"max_in_flight": 1.5}), "max_in_flight"),
        (json!({"max_in_flight": "3"}), "max_in_flight"),
        (json!({"intervall": "1s"}), "intervall"),
        (json!({}), "body"),
        (json!([1]), "body"),
    ] {
        let response = patch_queue(&app, "fast", body.clone()).await;
        assert_eq!(response.status(), 422, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{body}: {problem:#}");
    }
    // A good field beside a bad one changes nothing either.
    let response = patch_queue(&app, "fast", json!({"interval": "2s", "max_in_flight": 0})).await;
    assert_eq!(response.status(), 422);
    let queue = get_queue(&app, "fast").await;
    assert_eq!(queue["interval"], "300ms");
    assert_eq!(queue["max_in_flight"], 1);
}

#[tokio::test]
async fn the_queue_controls_need_an_admin_key() {
    let dir = TempDir::new().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        "read r3ad-key-0123456789\nadmin adm1n-key-0123456789\n",
    )
    .unwrap();
    let app = spawn_app_with(|c| c.api_keys_file = Some(keys)).await;
    let url = format!("{}/queues/default/pause", app.address);
    let as_reader = app
        .client
        .post(&url)
        .bearer_auth("r3ad-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(as_reader.status(), 403);
    let listed = app
        .client
        .get(format!("{}/queues", app.address))
        .bearer_auth("r3ad-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let as_admin = app
        .client
        .post(&url)
        .bearer_auth("adm1n-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(as_admin.status(), 200);
}

#[tokio::test]
async fn a_bad_queues_file_stops_start_up_with_its_line_and_reason() {
    let dir = TempDir::new().unwrap();
    let path = queues_file(
        dir.path(),
        "[queues.enrich]\ninterval = \"250ms\"\nmax_inflight = 2\n",
    );
    let mut config = test_config(&fresh_database(dir.path()).await);
    config.queues_file = Some(path);
    let error = match sluice::startup::Application::build(config).await {
        Ok(_) => panic!("a misspelt setting must stop start-up"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("max_inflight"), "{error}");
    assert!(error.contains("queues.toml"), "{error}");
}

#[tokio::test]
async fn metrics_carry_the_queue() {
    let (_dir, app) = app_with_queues(TWO_QUEUES, |_| {}).await;
    let id = ingest_to(&app, "fast", &[1, 2], "HIGH").await;
    app.wait_until_completed(&id, Duration::from_secs(10)).await;
    queue_action(&app, "slow", "pause").await;
    let text = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"sluice_batches_started_total{queue="fast"} 2"#,
        r#"sluice_queue_batches{queue="fast",priority="HIGH",status="completed"} 2"#,
        r#"sluice_queue_paused{queue="slow"} 1"#,
        r#"sluice_queue_paused{queue="fast"} 0"#,
        r#"sluice_queue_effective_interval_seconds{queue="slow"} 1.0"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
}

/// Three nodes on one PostgreSQL database, two queues: each queue keeps its
/// own rate and in-flight limit across the cluster, and a pause or a new
/// interval given to one node holds on every node. Always on PostgreSQL,
/// whichever store the rest of the suite runs on.
#[tokio::test]
async fn cluster_of_three_nodes_keeps_each_queues_rate_and_controls() {
    let database = fresh_postgres_database().await;
    let dir = TempDir::new().unwrap();
    let file = queues_file(dir.path(), TWO_QUEUES);
    let file = file.to_str().unwrap();
    let nodes: Vec<ServerProcess> = (0..3)
        .map(|_| {
            ServerProcess::start(
                &database,
                &["--queues-file", file, "--mock-latency", "20ms"],
            )
        })
        .collect();
    let client = reqwest::Client::new();
    let post = |node: usize, path: String| {
        let (client, address) = (client.clone(), nodes[node].address.clone());
        async move {
            let response = client
                .post(format!("{address}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    let ingest = |node: usize, queue: &'static str, ids: Vec<u64>, priority: &'static str| {
        let (client, address) = (client.clone(), nodes[node].address.clone());
        async move {
            let response = client
                .post(format!("{address}/ingest"))
                .json(&json!({"ids": ids, "priority": priority, "queue": queue}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body["ingestion_id"].as_str().unwrap().to_owned()
        }
    };

    // Paused on node 0, loaded through all three: nothing starts anywhere.
    post(0, "/queues/fast/pause".into()).await;
    post(0, "/queues/slow/pause".into()).await;
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for n in 0..6u64 {
        let priority = if n % 2 == 0 { "LOW" } else { "HIGH" };
        fast.push(ingest(n as usize % 3, "fast", vec![n * 2 + 1, n * 2 + 2], priority).await);
        if n < 3 {
            slow.push(ingest(n as usize % 3, "slow", vec![100 + n], priority).await);
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    for id in fast.iter().chain(&slow) {
        let status = status_at(&client, &nodes[2].address, id).await;
        assert_eq!(
            status["status"], "yet_to_start",
            "a paused queue started: {status:#}"
        );
    }
    // Resumed on node 1.
    post(1, "/queues/fast/resume".into()).await;
    post(1, "/queues/slow/resume".into()).await;

    let fast_done = all_completed(&client, &nodes[0].address, &fast).await;
    let slow_done = all_completed(&client, &nodes[0].address, &slow).await;
    for (name, done, interval) in [
        ("fast", &fast_done, 300_000),
        ("slow", &slow_done, 1_000_000),
    ] {
        let starts = starts(done);
        assert_spacing(name, &starts, interval);
        // In-flight 1 per queue, cluster-wide, and HIGH before LOW.
        let mut batches: Vec<(i64, i64, &str)> = done
            .iter()
            .flat_map(|s| {
                let priority = s["priority"].as_str().unwrap();
                s["batches"].as_array().unwrap().iter().map(move |b| {
                    (
                        micros(&b["started_at"]),
                        micros(&b["completed_at"]),
                        priority,
                    )
                })
            })
            .collect();
        batches.sort();
        for pair in batches.windows(2) {
            assert!(pair[1].0 >= pair[0].1, "{name}: {pair:?} overlap");
        }
        let first_low = batches.iter().position(|b| b.2 == "LOW").unwrap();
        assert!(
            batches[first_low..].iter().all(|b| b.2 == "LOW"),
            "{name}: HIGH after LOW: {batches:?}"
        );
        let min_gap = starts.windows(2).map(|w| w[1].2 - w[0].2).min().unwrap();
        eprintln!(
            "cluster queue {name}: {} starts on 3 nodes, minimum spacing {min_gap} µs (interval {interval} µs)",
            starts.len()
        );
    }

    // A new interval given to node 2 holds for the starts node 0 and 1 make.
    let response = client
        .patch(format!("{}/queues/slow", nodes[2].address))
        .json(&json!({"interval": "150ms"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut more = Vec::new();
    for n in 0..3 {
        more.push(ingest(n, "slow", vec![200 + n as u64], "MEDIUM").await);
    }
    let done = all_completed(&client, &nodes[0].address, &more).await;
    let starts = starts(&done);
    let span = starts.last().unwrap().2 - starts[0].2;
    assert!(span < 1_500_000, "three starts at 150 ms took {span} µs");
    assert_spacing("slow at 150ms", &starts, 150_000);
    for node in &nodes {
        let queue: Value = client
            .get(format!("{}/queues/slow", node.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(queue["interval"], "150ms", "{queue:#}");
    }
}
