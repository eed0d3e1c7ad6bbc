//! Retention: ended requests are pruned whole once older than `--retention`,
//! unfinished ones and ones with a callback to deliver stay, counts stay
//! right, and a resuming live stream is told what it lost.

use std::time::Duration;

use serde_json::{Value, json};
use sluice::config::Config;
use sqlx::Connection;

use crate::helpers::{TestApp, spawn_app_with, testing_postgres};

/// A retention of one second, a pass every 100 ms, and an interval of an
/// hour: a request's first batch starts at once, the next waits.
fn short_retention(config: &mut Config) {
    config.retention = "1s".parse().unwrap();
    config.retention_period = "100ms".parse().unwrap();
    config.interval = "1h".parse().unwrap();
}

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app
        .client
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one `sluice_pruned_total` series.
fn pruned_total(metrics: &str, kind: &str) -> u64 {
    let prefix = format!("sluice_pruned_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Polls until `GET /status/{id}` answers 404; panics after 10 s.
async fn wait_until_pruned(app: &TestApp, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.get_status(id).await.status() != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} still kept after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The total of every status in `/stats`' queue.
fn queued_total(stats: &Value) -> u64 {
    stats["queue"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|counts| counts.as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn ended_requests_are_pruned_whole_and_unfinished_ones_stay() {
    let app = spawn_app_with(short_retention).await;
    // Ends at once: one batch, which starts now.
    let completed = app.ingest(&[1, 2], "HIGH").await;
    app.wait_until_completed(&completed, Duration::from_secs(10))
        .await;
    // Two batches: the second waits an hour for the rate limit; cancelled, it ends.
    let cancelled = app.ingest(&[1, 2, 3, 4], "LOW").await;
    assert_eq!(app.cancel(&cancelled).await.status(), 200);
    crate::helpers::wait_for_status(
        &app.client,
        &app.address,
        &cancelled,
        "cancelled",
        Duration::from_secs(10),
    )
    .await;
    // Never ends within the test.
    let unfinished = app.ingest(&[5, 6, 7, 8], "MEDIUM").await;

    wait_until_pruned(&app, &completed).await;
    wait_until_pruned(&app, &cancelled).await;
    for id in [&completed, &cancelled] {
        let (status, problem) = get_json(&app, &format!("/ingestions/{id}/results")).await;
        assert_eq!(status, 404, "results of a pruned request: {problem}");
        assert_eq!(
            problem["status"], 404,
            "a problem document, as for an unknown id"
        );
    }
    let (_, list) = get_json(&app, "/ingestions").await;
    let listed: Vec<&str> = list
        .as_array()
        .or_else(|| list["ingestions"].as_array())
        .expect("a list of requests")
        .iter()
        .map(|r| r["ingestion_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![unfinished.as_str()], "only the kept request");

    // Well past the retention, the unfinished request is still there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = app.status(&unfinished).await;
    assert!(
        ["yet_to_start", "triggered"].contains(&status["status"].as_str().unwrap()),
        "{status}"
    );

    let stats = app.store.stats().await.unwrap();
    let (_, shown) = get_json(&app, "/stats").await;
    assert_eq!(shown["ingestions"], 1, "one request is left: {shown}");
    assert_eq!(stats.ingestions, 1);
    assert_eq!(
        queued_total(&shown),
        2,
        "only the unfinished request's two batches are counted: {shown}"
    );
    assert!(
        shown["last_prune_at"].is_string(),
        "a pass has run: {shown}"
    );
    assert!(
        shown["oldest_ingestion_at"].is_string(),
        "the unfinished request's arrival: {shown}"
    );
    let text = metrics(&app).await;
    assert_eq!(pruned_total(&text, "ingestions"), 2, "{text}");
    assert_eq!(pruned_total(&text, "batches"), 3, "{text}");
    let gauges: u64 = text
        .lines()
        .filter(|line| line.starts_with("sluice_queue_batches{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(gauges, 2, "the gauges count what is kept: {text}");
}

#[tokio::test]
async fn a_retention_of_zero_keeps_everything() {
    let app = spawn_app_with(|config| {
        short_retention(config);
        config.retention = "0".parse().unwrap();
        config.interval = "0".parse().unwrap();
    })
    .await;
    let first = app.ingest(&[1], "HIGH").await;
    let second = app.ingest(&[2], "HIGH").await;
    for id in [&first, &second] {
        app.wait_until_completed(id, Duration::from_secs(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.get_status(&first).await.status(), 200);
    let (_, shown) = get_json(&app, "/stats").await;
    assert_eq!(shown["ingestions"], 2, "{shown}");
    assert!(shown["last_prune_at"].is_null(), "no pass ran: {shown}");
}

#[tokio::test]
async fn counts_match_a_full_count_after_pruning() {
    let app = spawn_app_with(|config| {
        short_retention(config);
        config.interval = "0".parse().unwrap();
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..30u64 {
        ids.push(app.ingest(&[n + 1, n + 2, n + 3, n + 4], "LOW").await);
    }
    for id in &ids {
        app.wait_until_completed(id, Duration::from_secs(20)).await;
    }
    // On SQLite the newest request is kept (arrival numbers are never
    // reused); the others go everywhere.
    for id in &ids[..ids.len() - 1] {
        wait_until_pruned(&app, id).await;
    }
    if testing_postgres() {
        // Nothing left to prune once the newest is gone: the counts are still.
        wait_until_pruned(&app, ids.last().unwrap()).await;
    }
    let (_, shown) = get_json(&app, "/stats").await;
    let full = full_count(&app).await;
    assert_eq!(shown["ingestions"].as_u64().unwrap(), full.0, "{shown}");
    assert_eq!(queued_total(&shown), full.1, "{shown}");
    assert!(
        full == if testing_postgres() { (0, 0) } else { (1, 2) },
        "at most the newest request, with its two batches: {full:?}"
    );
}

/// `(requests, batches)` counted row by row in the database.
async fn full_count(app: &TestApp) -> (u64, u64) {
    if testing_postgres() {
        let pool = sqlx::PgPool::connect(&app.database).await.unwrap();
        let requests: i64 = sqlx::query_scalar("SELECT count(*) FROM ingestions")
            .fetch_one(&pool)
            .await
            .unwrap();
        let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM batches")
            .fetch_one(&pool)
            .await
            .unwrap();
        (requests as u64, batches as u64)
    } else {
        let conn = rusqlite::Connection::open_with_flags(
            app.database_path().unwrap(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let count = |table: &str| -> u64 {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get::<_, i64>(0)
            })
            .unwrap() as u64
        };
        (count("ingestions"), count("batches"))
    }
}

#[tokio::test]
async fn a_request_with_a_callback_to_deliver_is_kept() {
    // Nothing listens there: every delivery fails and is retried later.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn_app_with(|config| {
        short_retention(config);
        config.interval = "0".parse().unwrap();
        config.callback_allow = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let response = app
        .post_ingest(&json!({"ids": [1], "priority": "HIGH", "callback_url": url}))
        .await;
    assert_eq!(response.status(), 200);
    let with_callback: Value = response.json().await.unwrap();
    let with_callback = with_callback["ingestion_id"].as_str().unwrap().to_owned();
    app.wait_until_completed(&with_callback, Duration::from_secs(10))
        .await;
    // A later request that ends, so the first is not kept as the newest.
    let plain = app.ingest(&[2], "HIGH").await;
    app.ingest(&[3], "LOW").await;
    app.wait_until_completed(&plain, Duration::from_secs(10))
        .await;

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = app.status(&with_callback).await;
    assert_eq!(status["callback"]["state"], "pending", "{status}");
    assert_eq!(app.get_status(&plain).await.status(), 404, "pruned");
}

#[tokio::test]
async fn a_resumed_stream_older_than_the_oldest_kept_event_hears_lost_first() {
    let app = spawn_app_with(short_retention).await;
    let pruned = app.ingest(&[1], "HIGH").await;
    app.wait_until_completed(&pruned, Duration::from_secs(10))
        .await;
    let kept = app.ingest(&[2, 3, 4, 5], "HIGH").await;
    wait_until_pruned(&app, &pruned).await;
    let oldest = app.store.oldest_event().await.unwrap().unwrap();
    assert!(oldest > 2, "the first request's events are gone: {oldest}");

    let mut response = app
        .client
        .get(format!("{}/events", app.address))
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    while !text.contains(&kept) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("events arrive")
            .unwrap()
            .expect("the stream goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let first = text
        .split("\n\n")
        .find(|frame| frame.contains("event:"))
        .unwrap();
    assert!(first.contains("event: lost"), "lost comes first: {text}");
    assert!(
        first.contains(&format!("\"first_kept_event_id\":{oldest}")),
        "{text}"
    );
    assert!(first.contains(&format!("id: {}", oldest - 1)), "{text}");
    let after_lost = &text[text.find(first).unwrap() + first.len()..];
    assert!(
        after_lost.contains(&format!("id: {oldest}\n")),
        "then the first kept event: {text}"
    );

    // A client already past the gap is not told again.
    let mut response = app
        .client
        .get(format!("{}/events", app.address))
        .header("last-event-id", (oldest - 1).to_string())
        .send()
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(!text.contains("event: lost"), "{text}");
}

#[tokio::test]
async fn an_expired_idempotency_key_is_deleted_and_free_again() {
    let app = spawn_app_with(|config| {
        short_retention(config);
        config.idempotency_ttl = "1s".parse().unwrap();
    })
    .await;
    let submit = |ids: Value| {
        app.client
            .post(format!("{}/ingest", app.address))
            .header("idempotency-key", "order-17")
            .json(&json!({"ids": ids, "priority": "HIGH"}))
            .send()
    };
    let first = submit(json!([1])).await.unwrap();
    assert_eq!(first.status(), 200);
    let other_content = submit(json!([2])).await.unwrap();
    assert_eq!(
        other_content.status(),
        422,
        "the key holds while it lasts: {:?}",
        other_content.text().await
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pruned_total(&metrics(&app).await, "idempotency_keys") < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key is not pruned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = submit(json!([2])).await.unwrap();
    assert_eq!(again.status(), 200, "the key is free again");
}

/// Only one node prunes at a time: while another holder has the pruning lock
/// (as a node pruning a chunk does), this node deletes nothing; once it is
/// free, it prunes.
#[tokio::test]
async fn on_postgres_a_node_does_not_prune_while_another_holds_the_pruning_lock() {
    if !testing_postgres() {
        return;
    }
    let app = spawn_app_with(|config| {
        short_retention(config);
        config.interval = "0".parse().unwrap();
    })
    .await;
    let mut other_node = sqlx::PgConnection::connect(&app.database).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(7311002)")
        .execute(&mut other_node)
        .await
        .unwrap();
    let id = app.ingest(&[1], "HIGH").await;
    app.wait_until_completed(&id, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        app.get_status(&id).await.status(),
        200,
        "kept while another node prunes"
    );
    assert_eq!(pruned_total(&metrics(&app).await, "ingestions"), 0);

    sqlx::query("SELECT pg_advisory_unlock(7311002)")
        .execute(&mut other_node)
        .await
        .unwrap();
    wait_until_pruned(&app, &id).await;
}

/// Two real nodes on one PostgreSQL database prune one history between them:
/// every ended request goes, and each is counted as pruned by one node only.
#[tokio::test]
async fn two_nodes_on_postgres_prune_each_request_once() {
    let database = crate::helpers::fresh_postgres_database().await;
    let args = [
        "--retention",
        "1s",
        "--retention-period",
        "100ms",
        "--interval",
        "0",
        "--mock-latency",
        "5ms",
    ];
    let nodes = [
        crate::helpers::ServerProcess::start(&database, &args),
        crate::helpers::ServerProcess::start(&database, &args),
    ];
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for n in 0..20u64 {
        let node = &nodes[n as usize % nodes.len()];
        ids.push(crate::helpers::ingest_at(&client, &node.address, &[n + 1], "HIGH").await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (k, id) in ids.iter().enumerate() {
        let address = &nodes[(k + 1) % nodes.len()].address;
        loop {
            let status = client
                .get(format!("{address}/status/{id}"))
                .send()
                .await
                .unwrap()
                .status();
            if status == 404 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id} still kept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut total = 0;
    for node in &nodes {
        let text = client
            .get(format!("{}/metrics", node.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        total += pruned_total(&text, "ingestions");
    }
    assert_eq!(total, 20, "each request pruned by exactly one node");
}

#[tokio::test]
async fn idle_fair_turn_flows_are_pruned_and_busy_ones_kept() {
    // A flow (queue, priority, tenant, group) is made for every group a
    // request names: unique groups must not pile up forever.
    let dir = tempfile::TempDir::new().unwrap();
    let queues = crate::helpers::queues_file(
        dir.path(),
        "[queues.default]\ninterval = \"0\"\nbatch_size = 1\n\n[queues.slow]\ninterval = \"1h\"\nbatch_size = 1\n",
    );
    let app = spawn_app_with(|c| {
        short_retention(c);
        c.queues_file = Some(queues);
    })
    .await;
    let submit = |body: Value| {
        let app = &app;
        async move {
            let response = app.post_ingest(&body).await;
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body["ingestion_id"].as_str().unwrap().to_owned()
        }
    };
    // Its second batch waits an hour: its flow has work waiting all test long.
    let busy =
        submit(json!({"ids": [1, 2], "priority": "LOW", "queue": "slow", "group": "busy"})).await;
    let mut ended = Vec::new();
    for n in 0..5 {
        ended.push(
            submit(json!({"ids": [n + 10], "priority": "HIGH", "group": format!("customer-{n}")}))
                .await,
        );
    }
    // The newest request is kept whatever its age (see the migration); its
    // flow has nothing waiting all the same.
    for id in &ended[..4] {
        wait_until_pruned(&app, id).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pruned_total(&metrics(&app).await, "flows") < 5 {
        assert!(tokio::time::Instant::now() < deadline, "idle flows kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A few more passes: the busy flow stays, so exactly five went.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pruned_total(&metrics(&app).await, "flows"), 5);
    let (status, kept) = get_json(&app, &format!("/status/{busy}")).await;
    assert_eq!(status, 200);
    assert_eq!(kept["batches"][1]["status"], "yet_to_start");
    // A pruned flow is made again by the next request that needs it.
    let again = submit(json!({"ids": [99], "priority": "HIGH", "group": "customer-0"})).await;
    app.wait_until_completed(&again, Duration::from_secs(10))
        .await;
}
