//! Fair sharing and aging through HTTP (issue 13): tenants from their keys,
//! groups named in the request, a queue's `fairness`, `tenant_weights` and
//! `aging`, at a short interval with batches of one id. The order is read
//! back from the status answers: each batch's slot (`scheduled_at`, strictly
//! increasing in a queue with an interval, so it is the claim order, on one
//! node or several) and its start (`started_at`, the claim's time).
//!
//! A claim that began before a request was acknowledged may not have seen it,
//! so a window of starts "after a submission" leaves out the other tenants'
//! starts that began before the acknowledgement: what remains is decided by
//! the store's order alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::*;

pub const KEY_A: &str = "tenant-a-key-0123456789abcdef";
pub const KEY_B: &str = "tenant-b-key-0123456789abcdef";
pub const OPERATOR: &str = "operator-key-0123456789abcdef";
/// The queue every test here uses.
pub const QUEUE: &str = "fair";
const INTERVAL_MS: i64 = 50;

/// A keys file with tenant-a's and tenant-b's submit keys and an operator
/// (tenant-less) admin key, in `dir`.
pub fn tenant_keys_file(dir: &Path) -> PathBuf {
    let path = dir.join("keys");
    std::fs::write(
        &path,
        format!("submit {KEY_A} tenant-a\nsubmit {KEY_B} tenant-b\nadmin {OPERATOR}\n"),
    )
    .unwrap();
    path
}

/// A queues file with the queue `fair`: 50 ms, batches of one id, and
/// `settings` (TOML lines of that queue, then any of its sub-tables).
pub fn fair_queues_file(dir: &Path, settings: &str) -> PathBuf {
    queues_file(
        dir,
        &format!("[queues.{QUEUE}]\ninterval = \"{INTERVAL_MS}ms\"\nbatch_size = 1\n{settings}\n"),
    )
}

/// An app with the queue `fair` (see [`fair_queues_file`]) and the keys of
/// [`tenant_keys_file`].
async fn fair_app(settings: &str) -> (TempDir, TestApp) {
    fair_app_keyed(settings, true).await
}

/// Without `keys`, no keys file: every caller is tenant-less, and the keys
/// the helpers send are not looked at.
async fn fair_app_keyed(settings: &str, keys: bool) -> (TempDir, TestApp) {
    let dir = TempDir::new().unwrap();
    let keys = keys.then(|| tenant_keys_file(dir.path()));
    let queues = fair_queues_file(dir.path(), settings);
    let app = spawn_app_with(|c| {
        c.api_keys_file = keys;
        c.queues_file = Some(queues);
        c.mock_latency = "2ms".parse().unwrap();
    })
    .await;
    (dir, app)
}

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A submission: the ingestion id and when the client had the answer.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub id: String,
    pub acknowledged_at: i64,
}

/// POST /ingest of `ids` to the queue `fair` with `key`, and `group` if any.
pub async fn submit_to(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    ids: &[u64],
    priority: &str,
    group: Option<&str>,
) -> Submitted {
    let mut body = json!({"ids": ids, "priority": priority, "queue": QUEUE});
    if let Some(group) = group {
        body["group"] = json!(group);
    }
    let response = client
        .post(format!("{address}/ingest"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let answer: Value = response.json().await.unwrap();
    Submitted {
        id: answer["ingestion_id"].as_str().unwrap().to_owned(),
        acknowledged_at: now_micros(),
    }
}

/// The status answer, read with the operator key.
pub async fn status_as_operator(client: &reqwest::Client, address: &str, id: &str) -> Value {
    let response = client
        .get(format!("{address}/status/{id}"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{id} is known");
    response.json().await.unwrap()
}

/// Polls until `id` has at least `n` batches started; panics after `limit`.
pub async fn wait_started(
    client: &reqwest::Client,
    address: &str,
    id: &str,
    n: usize,
    limit: Duration,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let status = status_as_operator(client, address, id).await;
        if started(&status).len() >= n {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: fewer than {n} started after {limit:?}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One start: whose it was, its slot and its start (µs).
#[derive(Debug, Clone, Copy)]
pub struct Start {
    pub lane: char,
    pub slot: i64,
    pub started_at: i64,
}

/// `(scheduled_at, started_at)` of each started batch of a status answer.
fn started(status: &Value) -> Vec<(i64, i64)> {
    status["batches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| !b["started_at"].is_null())
        .map(|b| (micros(&b["scheduled_at"]), micros(&b["started_at"])))
        .collect()
}

/// Every start of these status answers, each named by its lane's letter, in
/// claim (slot) order.
pub fn starts_of(statuses: &[(char, &Value)]) -> Vec<Start> {
    let mut starts: Vec<Start> = statuses
        .iter()
        .flat_map(|(lane, status)| {
            started(status).into_iter().map(|(slot, started_at)| Start {
                lane: *lane,
                slot,
                started_at,
            })
        })
        .collect();
    starts.sort_by_key(|s| s.slot);
    for pair in starts.windows(2) {
        assert!(pair[0].slot < pair[1].slot, "two starts on one slot");
    }
    starts
}

pub fn sequence(starts: &[Start]) -> String {
    starts.iter().map(|s| s.lane).collect()
}

/// The starts decided with `submitted` (of `lane`) in view: from the first
/// start of `lane` or the first that began after the acknowledgement,
/// whichever comes first. Also the starts before it, for the record.
pub fn window_after(starts: &[Start], lane: char, submitted: &Submitted) -> (String, String) {
    let from = starts
        .iter()
        .position(|s| s.lane == lane || s.started_at > submitted.acknowledged_at)
        .unwrap_or(starts.len());
    (sequence(&starts[..from]), sequence(&starts[from..]))
}

/// B's `n` starts all within the first `2n` of `window`, alternating with
/// the others': no lane two turns in a row until B's last.
pub fn assert_alternating_within(window: &str, lane: char, n: usize) {
    let first: String = window.chars().take(2 * n).collect();
    assert_eq!(
        first.matches(lane).count(),
        n,
        "{lane}'s {n} within the first {} starts: {window}",
        2 * n
    );
    let last = first.rfind(lane).unwrap();
    let chars: Vec<char> = first[..=last].chars().collect();
    for pair in chars.windows(2) {
        assert_ne!(pair[0], pair[1], "two turns in a row in {window}");
    }
}

/// Tenant a queues 100 batches, tenant b 10 after it; the start sequence and
/// its window after b's submission, checked and printed.
pub async fn a_hundred_then_ten(
    client: &reqwest::Client,
    submit_a: &str,
    submit_b: &str,
    read: &str,
    label: &str,
) {
    let a_ids: Vec<u64> = (1..=100).collect();
    let a = submit_to(client, submit_a, KEY_A, &a_ids, "MEDIUM", None).await;
    wait_started(client, read, &a.id, 3, Duration::from_secs(10)).await;
    let b_ids: Vec<u64> = (1001..=1010).collect();
    let b = submit_to(client, submit_b, KEY_B, &b_ids, "MEDIUM", None).await;
    let b_status = wait_for_status_as_operator(client, read, &b.id, Duration::from_secs(10)).await;
    let a_status = status_as_operator(client, read, &a.id).await;
    assert_eq!(a_status["tenant"], "tenant-a");
    assert_eq!(b_status["tenant"], "tenant-b");
    let starts = starts_of(&[('A', &a_status), ('B', &b_status)]);
    let (before, window) = window_after(&starts, 'B', &b);
    eprintln!("fairness A100 then B10 ({label}): {before}|{window}");
    assert_alternating_within(&window, 'B', 10);
    assert_in_position_order(&a_status);
}

/// Polls until the request has completed, reading as the operator.
pub async fn wait_for_status_as_operator(
    client: &reqwest::Client,
    address: &str,
    id: &str,
    limit: Duration,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let status = status_as_operator(client, address, id).await;
        if status["status"] == "completed" {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{id} not completed after {limit:?}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Inside one request, batches start in their order.
pub fn assert_in_position_order(status: &Value) {
    let slots: Vec<i64> = started(status).into_iter().map(|(slot, _)| slot).collect();
    assert!(
        slots.windows(2).all(|p| p[0] < p[1]),
        "a request's batches out of order"
    );
}

#[tokio::test]
async fn a_tenant_behind_another_tenants_backlog_starts_every_other_batch() {
    let (_dir, app) = fair_app("fairness = \"tenant\"").await;
    let queue = app
        .client
        .get(format!("{}/queues/{QUEUE}", app.address))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(queue["fairness"], "tenant", "{queue:#}");
    assert_eq!(queue["aging"], Value::Null, "{queue:#}");
    a_hundred_then_ten(
        &app.client,
        &app.address,
        &app.address,
        &app.address,
        "HTTP",
    )
    .await;
}

#[tokio::test]
async fn weights_share_starts_three_to_one() {
    let (_dir, app) = fair_app(&format!(
        "fairness = \"tenant\"\n[queues.{QUEUE}.tenant_weights]\ntenant-a = 3\n"
    ))
    .await;
    let queue = app
        .client
        .get(format!("{}/queues/{QUEUE}", app.address))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(queue["tenant_weights"], json!({"tenant-a": 3}), "{queue:#}");

    let ids: Vec<u64> = (1..=100).collect();
    let a = submit_to(&app.client, &app.address, KEY_A, &ids, "MEDIUM", None).await;
    let b = submit_to(&app.client, &app.address, KEY_B, &ids, "MEDIUM", None).await;
    // 12 of b's: some 48 starts after it came.
    let b_status = wait_started(
        &app.client,
        &app.address,
        &b.id,
        12,
        Duration::from_secs(12),
    )
    .await;
    let a_status = status_as_operator(&app.client, &app.address, &a.id).await;
    let starts = starts_of(&[('A', &a_status), ('B', &b_status)]);
    let (before, window) = window_after(&starts, 'B', &b);
    eprintln!("fairness weights a=3 b=1 (HTTP): {before}|{window}");
    let forty: String = window.chars().take(40).collect();
    assert_eq!(forty.len(), 40, "{window}");
    let b_starts = forty.matches('B').count();
    eprintln!(
        "fairness weights: {} A to {b_starts} B over 40 starts",
        40 - b_starts
    );
    assert!((9..=11).contains(&b_starts), "3:1 over 40: {forty}");
    // Spread out: b never waits more than 4 of a's turns.
    assert!(!forty.contains("AAAAA"), "{forty}");
}

#[tokio::test]
async fn fifo_keeps_the_contracts_order_whatever_the_tenant() {
    let (_dir, app) = fair_app("fairness = \"fifo\"").await;
    let a_ids: Vec<u64> = (1..=100).collect();
    let a = submit_to(&app.client, &app.address, KEY_A, &a_ids, "MEDIUM", None).await;
    wait_started(&app.client, &app.address, &a.id, 3, Duration::from_secs(10)).await;
    let b_ids: Vec<u64> = (1001..=1010).collect();
    let b = submit_to(&app.client, &app.address, KEY_B, &b_ids, "MEDIUM", None).await;
    let b_status =
        wait_for_status_as_operator(&app.client, &app.address, &b.id, Duration::from_secs(14))
            .await;
    let a_status = status_as_operator(&app.client, &app.address, &a.id).await;
    let order = sequence(&starts_of(&[('A', &a_status), ('B', &b_status)]));
    eprintln!("fifo A100 then B10 (HTTP): {order}");
    assert_eq!(order, format!("{}{}", "A".repeat(100), "B".repeat(10)));
    assert_in_position_order(&a_status);
}

#[tokio::test]
async fn groups_inside_one_tenant_take_turns() {
    let (_dir, app) = fair_app("fairness = \"tenant\"").await;
    // A group is at most 128 characters; nothing is stored otherwise.
    let long = "g".repeat(129);
    let refused = app
        .client
        .post(format!("{}/ingest", app.address))
        .bearer_auth(KEY_A)
        .json(&json!({"ids": [1], "priority": "LOW", "queue": QUEUE, "group": long}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "group", "{problem:#}");
    assert_eq!(app.store.stats().await.unwrap().ingestions, 0);

    let g1_ids: Vec<u64> = (1..=40).collect();
    let longest = "ü".repeat(128);
    let g1 = submit_to(
        &app.client,
        &app.address,
        KEY_A,
        &g1_ids,
        "MEDIUM",
        Some(&longest),
    )
    .await;
    wait_started(
        &app.client,
        &app.address,
        &g1.id,
        3,
        Duration::from_secs(10),
    )
    .await;
    let g2_ids: Vec<u64> = (1001..=1010).collect();
    let g2 = submit_to(
        &app.client,
        &app.address,
        KEY_A,
        &g2_ids,
        "MEDIUM",
        Some("g2"),
    )
    .await;
    let g2_status =
        wait_for_status_as_operator(&app.client, &app.address, &g2.id, Duration::from_secs(10))
            .await;
    let g1_status = status_as_operator(&app.client, &app.address, &g1.id).await;
    assert_eq!(g1_status["group"], longest.as_str());
    assert_eq!(g2_status["group"], "g2");
    assert_eq!(g2_status["tenant"], "tenant-a");
    let starts = starts_of(&[('1', &g1_status), ('2', &g2_status)]);
    let (before, window) = window_after(&starts, '2', &g2);
    eprintln!("fairness groups g1 40 then g2 10, one tenant (HTTP): {before}|{window}");
    assert_alternating_within(&window, '2', 10);
}

/// Batches in each request of a [`Flood`].
const FLOOD_BATCHES: u64 = 10;

/// Submits HIGH requests of ten batches, one after another an interval apart,
/// until stopped; their submissions. Even if a submission took several
/// intervals on a loaded machine, that is more HIGH work than the queue starts
/// (one batch an interval): HIGH work always waits.
struct Flood {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Submitted>>,
}

impl Flood {
    fn start(app: &TestApp) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (client, address, flag) = (app.client.clone(), app.address.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut next: u64 = 10_000;
            while !flag.load(Ordering::Relaxed) {
                let ids: Vec<u64> = (next..next + FLOOD_BATCHES).collect();
                sent.push(submit_to(&client, &address, KEY_B, &ids, "HIGH", None).await);
                next += FLOOD_BATCHES;
                tokio::time::sleep(Duration::from_millis(INTERVAL_MS as u64)).await;
            }
            sent
        });
        Self { stop, task }
    }

    async fn stop(self) -> Vec<Submitted> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The `effective_priority` of a request's one batch.
fn effective(status: &Value) -> Value {
    status["batches"][0]["effective_priority"].clone()
}

/// Whether some HIGH batch of `flood` was waiting (acknowledged, not
/// started) at `at`.
async fn high_waiting_at(app: &TestApp, flood: &[Submitted], at: i64) -> bool {
    for submitted in flood.iter().filter(|s| s.acknowledged_at < at) {
        let status = status_as_operator(&app.client, &app.address, &submitted.id).await;
        for batch in status["batches"].as_array().unwrap() {
            if batch["started_at"].is_null() || micros(&batch["started_at"]) > at {
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn aging_starts_low_work_under_a_flood_of_high_within_its_bound() {
    const AGING_MS: i64 = 1000;
    // Tenants play no part here.
    let (_dir, app) = fair_app_keyed("aging = \"1s\"", false).await;
    let queue = app
        .client
        .get(format!("{}/queues/{QUEUE}", app.address))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(queue["aging"], "1s", "{queue:#}");
    assert_eq!(queue["fairness"], "fifo", "{queue:#}");

    // HIGH work waits before the LOW request comes, and keeps coming after.
    let seed: Vec<u64> = (1..=10).collect();
    submit_to(&app.client, &app.address, KEY_B, &seed, "HIGH", None).await;
    let low = submit_to(&app.client, &app.address, KEY_A, &[500], "LOW", None).await;
    let flood = Flood::start(&app);

    let deadline = Instant::now() + Duration::from_secs(8);
    let mut seen: Vec<String> = Vec::new();
    let status = loop {
        let status = status_as_operator(&app.client, &app.address, &low.id).await;
        if !status["batches"][0]["started_at"].is_null() {
            break status;
        }
        let level = effective(&status);
        let level = level
            .as_str()
            .unwrap_or_else(|| panic!("waiting: {status:#}"));
        if seen.last().map(String::as_str) != Some(level) {
            seen.push(level.to_owned());
        }
        assert!(Instant::now() < deadline, "LOW never started: {status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let flood = flood.stop().await;
    assert_eq!(
        effective(&status),
        Value::Null,
        "started: no effective priority"
    );
    let created = micros(&status["created_at"]);
    let started_at = micros(&status["batches"][0]["started_at"]);
    let waited_ms = (started_at - created) / 1000;
    eprintln!(
        "aging 1s: LOW started {waited_ms} ms after it was created, under a HIGH flood; effective priority seen while waiting: {seen:?}"
    );
    // It never passes native HIGH before ranking as HIGH itself (two
    // agings), and starts within a few intervals once it does.
    assert!(waited_ms >= 2 * AGING_MS, "{waited_ms} ms");
    assert!(
        waited_ms <= 2 * AGING_MS + 20 * INTERVAL_MS,
        "{waited_ms} ms"
    );
    assert!(
        ["LOW", "MEDIUM", "HIGH"].starts_with(&seen.iter().map(String::as_str).collect::<Vec<_>>())
            && seen.len() >= 2,
        "rising from LOW: {seen:?}"
    );
    assert!(
        high_waiting_at(&app, &flood, started_at).await,
        "no HIGH batch was waiting when LOW started"
    );
}

#[tokio::test]
async fn without_aging_low_work_waits_for_every_high() {
    let (_dir, app) = fair_app_keyed("", false).await;
    let seed: Vec<u64> = (1..=10).collect();
    submit_to(&app.client, &app.address, KEY_B, &seed, "HIGH", None).await;
    let low = submit_to(&app.client, &app.address, KEY_A, &[500], "LOW", None).await;
    let flood = Flood::start(&app);
    // Longer than the aging test's bound.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        let status = status_as_operator(&app.client, &app.address, &low.id).await;
        assert_eq!(status["batches"][0]["status"], "yet_to_start", "{status:#}");
        // Without aging it ranks with its request's priority all along.
        assert_eq!(effective(&status), "LOW", "no aging: {status:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let flood = flood.stop().await;
    let at = now_micros();
    assert!(high_waiting_at(&app, &flood, at).await, "HIGH kept waiting");
    let status = status_as_operator(&app.client, &app.address, &low.id).await;
    assert_eq!(status["batches"][0]["status"], "yet_to_start", "{status:#}");
    eprintln!(
        "without aging: LOW still waiting after 3.5 s of a HIGH flood ({} HIGH requests)",
        flood.len()
    );
}
