//! The SQLite store on its own, with times chosen by the test.

use std::num::NonZeroUsize;

use super::SqliteStore;
use crate::domain::{BatchSize, BatchStatus, IngestionId, Interval, ItemId, Priority, Timestamp};
use crate::queue::QueueName;
use crate::store::{AttemptEnd, ClaimOutcome, ClaimRequest, ClaimedBatch, NewIngestion, Store};

const SECOND: i64 = 1_000_000;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_micros(1_700_000_000 * SECOND + seconds * SECOND)
}

fn request(priority: Priority, ids: &[u64], created: i64) -> NewIngestion {
    NewIngestion {
        id: IngestionId::generate(),
        queue: QueueName::default_queue(),
        priority,
        ids: ids.iter().map(|&i| ItemId::new(i).unwrap()).collect(),
        batch_size: BatchSize::new(2).unwrap(),
        created_at: at(created),
        callback_url: None,
        idempotency: None,
        tenant: None,
        group: None,
    }
}

fn claim(now: i64, interval_secs: u64, max_in_flight: usize) -> ClaimRequest {
    ClaimRequest {
        queue: QueueName::default_queue(),
        slow_down: Interval::default(),
        ready_since: Some(at(now)),
        now: at(now),
        interval: Interval::from_duration(std::time::Duration::from_secs(interval_secs)),
        max_in_flight: NonZeroUsize::new(max_in_flight).unwrap(),
        batches: NonZeroUsize::MIN,
        order: Default::default(),
    }
}

/// The one batch a claim of one started.
fn started(outcome: ClaimOutcome) -> ClaimedBatch {
    match outcome {
        ClaimOutcome::Started(mut batches) if batches.len() == 1 => batches.remove(0),
        other => panic!("expected one start, got {other:?}"),
    }
}

async fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::TempDir::new().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn claims_follow_priority_then_arrival_then_position() {
    let (_dir, store) = open().await;
    store
        .create_ingestion(request(Priority::Low, &[1, 2, 3], 0))
        .await
        .unwrap();
    store
        .create_ingestion(request(Priority::High, &[4, 5, 6], 1))
        .await
        .unwrap();
    store
        .create_ingestion(request(Priority::High, &[7], 2))
        .await
        .unwrap();
    store
        .create_ingestion(request(Priority::Medium, &[8], 3))
        .await
        .unwrap();

    let mut order = Vec::new();
    for n in 0..6 {
        let batch = started(store.claim_batches(claim(10 + n, 0, 100)).await.unwrap());
        order.push(batch.ids.iter().map(|i| i.get()).collect::<Vec<_>>());
    }
    assert_eq!(
        order,
        [vec![4, 5], vec![6], vec![7], vec![8], vec![1, 2], vec![3]]
    );
    assert!(matches!(
        store.claim_batches(claim(20, 0, 100)).await.unwrap(),
        ClaimOutcome::Idle
    ));
}

#[tokio::test]
async fn the_rate_and_the_in_flight_limit_are_taken_in_the_claim() {
    let (_dir, store) = open().await;
    store
        .create_ingestion(request(Priority::High, &[1, 2, 3, 4, 5, 6], 0))
        .await
        .unwrap();

    // An idle store starts at once.
    let first = started(store.claim_batches(claim(0, 5, 1)).await.unwrap());
    assert_eq!(first.slot, at(0));
    // Within the interval: not before the next slot.
    match store.claim_batches(claim(3, 5, 1)).await.unwrap() {
        ClaimOutcome::NotBefore(t) => assert_eq!(t, at(5)),
        other => panic!("{other:?}"),
    }
    // At the slot, but the one processing slot is taken.
    assert!(matches!(
        store.claim_batches(claim(5, 5, 1)).await.unwrap(),
        ClaimOutcome::Busy
    ));
    store
        .finish_attempt(first.key, Vec::new(), AttemptEnd::Completed, at(6))
        .await
        .unwrap();
    // Waiting on the store's word for the slot at 5, woken 1 ms late: the slot
    // stays on the grid.
    let mut late = claim(5, 5, 1);
    late.ready_since = None;
    late.now = late.now.saturating_add_micros(1_000);
    let second = started(store.claim_batches(late).await.unwrap());
    assert_eq!(
        second.slot,
        at(5),
        "no drift from a late wake-up within tolerance"
    );
}

#[tokio::test]
async fn one_claim_starts_many_only_when_no_interval_separates_them() {
    let (_dir, store) = open().await;
    store
        .create_ingestion(request(Priority::Medium, &(1..=14).collect::<Vec<_>>(), 0))
        .await
        .unwrap();

    // With an interval, asking for many starts one.
    let mut spaced = claim(0, 5, 10);
    spaced.batches = NonZeroUsize::new(10).unwrap();
    let first = started(store.claim_batches(spaced).await.unwrap());
    assert_eq!(first.id.position, 0);

    // Without one, as many as asked and as the in-flight limit allows (4 of
    // the 5 processing slots are free), in order, each on the same slot.
    let mut unthrottled = claim(10, 0, 5);
    unthrottled.batches = NonZeroUsize::new(10).unwrap();
    let ClaimOutcome::Started(batches) = store.claim_batches(unthrottled.clone()).await.unwrap()
    else {
        panic!("four slots are free");
    };
    let positions: Vec<u32> = batches.iter().map(|b| b.id.position).collect();
    assert_eq!(positions, [1, 2, 3, 4]);
    assert!(batches.iter().all(|b| b.slot == at(10)));
    assert!(matches!(
        store.claim_batches(unthrottled).await.unwrap(),
        ClaimOutcome::Busy
    ));

    // Fewer asked than free: that many.
    for batch in batches.iter().take(2) {
        store
            .finish_attempt(batch.key, Vec::new(), AttemptEnd::Completed, at(11))
            .await
            .unwrap();
    }
    let mut one = claim(12, 0, 5);
    one.batches = NonZeroUsize::MIN;
    assert_eq!(
        started(store.claim_batches(one).await.unwrap()).id.position,
        5
    );
}

#[tokio::test]
async fn stats_count_every_batch_by_priority_and_status_as_they_move() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let ids: Vec<u64> = (1..=20).collect();
    store
        .create_ingestion(request(Priority::High, &ids, 0))
        .await
        .unwrap();
    store
        .create_ingestion(request(Priority::Low, &ids[..6], 1))
        .await
        .unwrap();
    let cancelled = request(Priority::Medium, &ids[..8], 2);
    let cancelled_id = cancelled.id;
    store.create_ingestion(cancelled).await.unwrap();

    // Every kind of move: started, completed, failed, retrying, cancelled.
    let mut claim_five = claim(10, 0, 100);
    claim_five.batches = NonZeroUsize::new(5).unwrap();
    let ClaimOutcome::Started(batches) = store.claim_batches(claim_five).await.unwrap() else {
        panic!("five start");
    };
    let ends = [
        AttemptEnd::Completed,
        AttemptEnd::Completed,
        AttemptEnd::Failed,
        AttemptEnd::RetryAt(at(60)),
    ];
    for (batch, end) in batches.iter().zip(ends) {
        store
            .finish_attempt(batch.key, Vec::new(), end, at(11))
            .await
            .unwrap();
    }
    store.cancel_ingestion(cancelled_id, at(12)).await.unwrap();

    let mut counted = store.stats().await.unwrap().batches;
    counted.sort_by_key(|&(p, s, _)| (p.rank(), s.code()));
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut scan = conn
        .prepare("SELECT priority, status, count(*) FROM batches GROUP BY 1, 2 ORDER BY 1, 2")
        .unwrap();
    let truth: Vec<(Priority, BatchStatus, u64)> = scan
        .query_map([], |row| {
            Ok((
                Priority::from_rank(row.get(0)?).unwrap(),
                BatchStatus::from_code(row.get(1)?).unwrap(),
                row.get::<_, i64>(2)? as u64,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(counted, truth);
    // Each kind of move is in there.
    for status in [
        BatchStatus::YetToStart,
        BatchStatus::Triggered,
        BatchStatus::Completed,
        BatchStatus::Failed,
        BatchStatus::Retrying,
        BatchStatus::Cancelled,
    ] {
        assert!(counted.iter().any(|&(_, s, _)| s == status), "{status:?}");
    }
    assert_eq!(store.stats().await.unwrap().ingestions, 3);
}

#[tokio::test]
async fn a_status_read_is_whole_on_either_side_of_the_inline_bound() {
    let (_dir, store) = open().await;
    let bound = super::INLINE_MAX_BATCHES as u64;
    // Batches of 2: `bound` batches read inline, one more goes to a blocking thread.
    for batches in [bound, bound + 1] {
        let ids: Vec<u64> = (1..=2 * batches).collect();
        let new = request(Priority::Low, &ids, 0);
        let id = new.id;
        store.create_ingestion(new).await.unwrap();
        let record = store.ingestion(id).await.unwrap().expect("stored");
        assert_eq!(record.batches.len() as u64, batches);
        let last = record.batches.last().unwrap();
        assert_eq!(u64::from(last.ids.last().unwrap().get()), 2 * batches);
    }
}
