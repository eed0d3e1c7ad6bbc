//! What only the SQLite store does. The PostgreSQL run skips this module.

use std::time::Duration;

use tempfile::TempDir;

use crate::helpers::*;

#[tokio::test]
async fn a_second_process_cannot_open_the_same_sqlite_file() {
    let dir = TempDir::new().unwrap();
    let db = format!("sqlite://{}", dir.path().join("sluice.db").display());
    let _first = ServerProcess::start(&db, &[]);
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another Sluice process"),
        "{stderr}"
    );
}

/// On tokio's paused clock, a backlog of ten batches starts exactly one
/// interval apart, although each takes one and a half intervals to process.
///
/// The paused clock skips ahead whenever the runtime waits on real I/O, so the
/// test keeps the dispatcher from ever waiting on a completion (max-in-flight 4):
/// its starts then depend on timers alone. It cannot drive the PostgreSQL store:
/// sqlx's own timers (pool acquire timeouts) would fire as tokio skips ahead
/// while a query waits on the network. The real-clock test
/// `rate::starts_are_never_closer_than_the_interval` checks the grid on both.
#[tokio::test(start_paused = true)]
async fn a_backlog_starts_on_an_exact_grid() {
    let app = spawn_app_with(|c| {
        c.interval = "1s".parse().unwrap();
        c.mock_latency = "1500ms".parse().unwrap();
        c.max_in_flight = 4.try_into().unwrap();
        // A request timeout is a timer too: the paused clock would run to it
        // whenever the runtime waits on the database.
        c.request_timeout = "0".parse().unwrap();
    })
    .await;
    let ids: Vec<u64> = (1..=30).collect();
    let id = app.ingest(&ids, "MEDIUM").await;
    let status = app.wait_until_completed(&id, Duration::from_secs(60)).await;

    let batches = status["batches"].as_array().unwrap().clone();
    assert_eq!(batches.len(), 10);
    let first = micros(&batches[0]["started_at"]);
    for (k, batch) in batches.iter().enumerate() {
        assert_eq!(
            micros(&batch["started_at"]) - first,
            k as i64 * 1_000_000,
            "start {k} is off the grid"
        );
        assert_eq!(batch["scheduled_at"], batch["started_at"]);
    }
}

/// A database locked by another process: writes fail with a clear 503 after
/// the busy timeout, nothing is half-written, reads go on, and everything
/// resumes once the lock is gone.
#[tokio::test]
async fn a_locked_database_gives_503_then_recovers() {
    let app = spawn_app_with(|c| c.interval = "50ms".parse().unwrap()).await;
    let done = app.ingest(&[1, 2, 3], "HIGH").await;
    app.wait_until_completed(&done, Duration::from_secs(10))
        .await;
    let path = app.database_path().expect("a SQLite test app");

    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refused = app
        .post_ingest(&serde_json::json!({"ids": [4, 5, 6, 7], "priority": "HIGH"}))
        .await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "the store is unavailable; nothing was changed"
    );
    assert_eq!(app.get_status(&done).await.status(), 200, "reads go on");
    locker.execute_batch("ROLLBACK").unwrap();

    assert_eq!(
        app.store.stats().await.unwrap().ingestions,
        1,
        "nothing half-written"
    );
    let id = app.ingest(&[4, 5, 6, 7], "HIGH").await;
    app.wait_until_completed(&id, Duration::from_secs(10)).await;
}
