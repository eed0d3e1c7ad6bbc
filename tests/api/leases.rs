//! PostgreSQL leases under load: the heartbeat has a connection of its own, so
//! reads that take every connection of the pool cannot make a lease expire.
//! Runs on PostgreSQL whatever the store of the suite.

use std::time::{Duration, Instant};

use sqlx::{Connection, Row};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_take_every_pooled_connection_do_not_let_a_lease_expire() {
    let database = fresh_postgres_database().await;
    let url = database.clone();
    let app = spawn_app_with(move |c| {
        c.database = url;
        c.lease = "1s".parse().unwrap();
        c.interval = "20ms".parse().unwrap();
        c.mock_latency = "5s".parse().unwrap();
    })
    .await;
    let id = app.ingest(&[1, 2, 3], "HIGH").await;
    wait_for_status(
        &app.client,
        &app.address,
        &id,
        "triggered",
        Duration::from_secs(5),
    )
    .await;

    // Status reads that block on a lock of ours, more of them than the pool
    // has connections: every pooled connection waits, for three leases.
    let mut locker = sqlx::PgConnection::connect(&database).await.unwrap();
    let mut lock = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE ingestions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let reads: Vec<_> = (0..40)
        .map(|_| {
            let (client, url) = (app.client.clone(), format!("{}/status/{id}", app.address));
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
        })
        .collect();

    // Meanwhile, another node would rescue any lease that ran out.
    let mut rescuer = sqlx::PgConnection::connect(&database).await.unwrap();
    let held_until = Instant::now() + Duration::from_secs(3);
    let mut least_left = i64::MAX;
    while Instant::now() < held_until {
        let left: i64 = sqlx::query(
            "SELECT min(lease_expires_at) - sluice_now_us() FROM batches WHERE status = 1",
        )
        .fetch_one(&mut rescuer)
        .await
        .unwrap()
        .try_get::<Option<i64>, _>(0)
        .unwrap()
        .expect("the batch is still processing, with its lease");
        least_left = least_left.min(left);
        let rescued: i32 = sqlx::query("SELECT sluice_requeue(NULL)")
            .fetch_one(&mut rescuer)
            .await
            .unwrap()
            .get(0);
        assert_eq!(rescued, 0, "a lease ran out under read load");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock.rollback().await.unwrap();
    for read in reads {
        // Reads that waited too long for a connection get 503; none fails
        // otherwise.
        let status = read.await.unwrap().unwrap();
        assert!(status == 200 || status == 503, "{status}");
    }
    eprintln!("least lease time left under read load: {least_left} µs of 1 s");

    let done = app.wait_until_completed(&id, Duration::from_secs(15)).await;
    assert_eq!(done["batches"][0]["attempts"], 1, "never run a second time");
}
