//! The same store-level cases against SQLite and PostgreSQL, both always,
//! whatever `SLUICE_TEST_STORE` says. Some rules are written twice, once in
//! Rust for SQLite and once in PL/pgSQL for PostgreSQL (the slot grid and the
//! limits of a claim, the end of a request and its final status): these cases
//! hold the two copies to one behaviour, through the `Store` trait only.
//!
//! PostgreSQL decides on its own clock; the `now` a claim carries only tells
//! it the node's skew. So every call passes the real time, and the cases
//! compare times the store recorded with each other: a batch's `scheduled_at`
//! (its slot) against its `started_at`, both on the clock that decided, is
//! exact on either store. A time that crosses from the database's clock to the
//! caller's (a `NotBefore` answer) is checked against the window in which the
//! calls ran: whatever the offset between the two clocks for the rate, and
//! with the clocks agreeing (a server on this machine) for a retry time, which
//! the caller wrote. Intervals are an hour where a case needs a claim to be
//! refused; the one case with a short interval states the rule for a claim
//! however late it comes, so no case depends on speed.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice::config::Config;
use sluice::domain::{
    BatchSize, BatchStatus, FailureKind, FetchFailure, GroupName, IdOutcome, IngestionId,
    IngestionStatus, Interval, ItemId, Outcome, Priority, TenantName, Timestamp,
};
use sluice::queue::{DispatchOrder, Fairness, QueueName};
use sluice::store::{
    AttemptEnd, CallbackDelivery, CallbackState, ClaimOutcome, ClaimRequest, ClaimedBatch, Created,
    EventSubject, IdempotencyKey, IngestionRecord, NewIngestion, QueueChange, SharedStore, Store,
};
use tempfile::TempDir;

use crate::helpers::fresh_postgres_database;

const HOUR: Interval = Interval::from_duration(Duration::from_secs(3600));
const NO_LIMIT: Interval = Interval::from_duration(Duration::ZERO);
/// Short enough to wait for, long enough that its late tolerance is the
/// 25 ms cap (a tenth of the interval, at most 25 ms).
const GRID: Interval = Interval::from_duration(Duration::from_millis(300));
const GRID_TOLERANCE_US: i64 = 25_000;
/// What separates two readings of the same real time on the two clocks,
/// beyond the window the calls took: rounding of the database's clock.
const CLOCK_SLACK_US: i64 = 2_000;

/// Runs each named case once on a fresh SQLite store and once on a fresh
/// PostgreSQL store: `store_conformance::<case>::sqlite` and `::postgres`.
macro_rules! on_both_stores {
    ($($(#[$attr:meta])* $case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test]
            $(#[$attr])*
            async fn sqlite() {
                let (_dir, store) = super::sqlite_store().await;
                super::$case(&*store).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn postgres() {
                let store = super::postgres_store().await;
                super::$case(&*store).await;
            }
        }
    )*};
}

on_both_stores!(
    claims_take_interrupted_work_then_priority_then_arrival_then_position,
    a_claim_within_the_interval_is_told_when_the_next_slot_is,
    a_backlog_runs_on_the_grid_and_a_late_claim_starts_a_new_one,
    the_in_flight_limit_holds_per_queue,
    queues_are_limited_and_paused_independently,
    runtime_settings_replace_the_configured_ones,
    slow_down_raises_the_spacing_but_never_lowers_it,
    a_request_ends_with_its_last_batch_and_its_status_derives_from_them,
    cancelling_ends_what_has_not_started_and_counts_once,
    a_retry_waits_for_its_time_without_holding_back_other_work,
    every_change_is_announced_once_in_commit_order,
    outcomes_and_pages_read_back_as_written,
    an_idempotency_key_replays_conflicts_and_expires,
    a_callback_is_due_when_the_request_ends_and_held_while_delivered,
    a_retry_waits_for_its_time_on_a_node_whose_clock_is_off,
    queue_counts_match_the_batches,
    attempts_that_end_together_are_each_recorded_once,
);

// ---------------------------------------------------------------------------
// The stores and how the cases drive them.

async fn sqlite_store() -> (TempDir, SharedStore) {
    let dir = TempDir::new().unwrap();
    let url = format!("sqlite://{}", dir.path().join("sluice.db").display());
    let store = open(&url).await;
    (dir, store)
}

async fn postgres_store() -> SharedStore {
    open(&fresh_postgres_database().await).await
}

async fn open(url: &str) -> SharedStore {
    let store = sluice::store::open(url, Config::defaults().lease_settings())
        .await
        .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    let names = ["default", "alpha", "beta"].map(queue);
    store.register_queues(&names).await.unwrap();
    store
}

fn queue(name: &str) -> QueueName {
    name.parse().unwrap()
}

/// The real time, as the dispatcher would pass it.
fn now() -> Timestamp {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    Timestamp::from_micros(since_epoch.as_micros() as i64)
}

/// Stores a request whose every id is a batch of its own, so a batch is
/// named by its id.
async fn submit(
    store: &dyn Store,
    queue_name: &str,
    priority: Priority,
    ids: &[u32],
) -> IngestionId {
    let new = new_ingestion(queue_name, priority, ids);
    let id = new.id;
    assert_eq!(store.create_ingestion(new).await.unwrap(), Created::New(id));
    id
}

fn new_ingestion(queue_name: &str, priority: Priority, ids: &[u32]) -> NewIngestion {
    NewIngestion {
        id: IngestionId::generate(),
        queue: queue(queue_name),
        priority,
        ids: ids
            .iter()
            .map(|&i| ItemId::new(i.into()).unwrap())
            .collect(),
        batch_size: BatchSize::new(1).unwrap(),
        created_at: now(),
        callback_url: None,
        idempotency: None,
        tenant: None,
        group: None,
    }
}

/// A dispatcher that has just become ready to start one batch of `queue`.
fn claim(queue_name: &str, interval: Interval) -> ClaimRequest {
    let now = now();
    ClaimRequest {
        queue: queue(queue_name),
        ready_since: Some(now),
        now,
        interval,
        slow_down: NO_LIMIT,
        max_in_flight: NonZeroUsize::new(100).unwrap(),
        batches: NonZeroUsize::MIN,
        order: Default::default(),
    }
}

fn with_max_in_flight(mut request: ClaimRequest, n: usize) -> ClaimRequest {
    request.max_in_flight = NonZeroUsize::new(n).unwrap();
    request
}

fn ids(batch: &ClaimedBatch) -> Vec<u32> {
    batch.ids.iter().map(|id| id.get()).collect()
}

/// The batches a claim started; fails the test on any other answer.
async fn start(store: &dyn Store, request: ClaimRequest) -> Vec<ClaimedBatch> {
    match store.claim_batches(request).await.unwrap() {
        ClaimOutcome::Started(batches) => batches,
        other => panic!("expected a start, got {other:?}"),
    }
}

/// The one batch a claim started.
async fn start_one(store: &dyn Store, request: ClaimRequest) -> ClaimedBatch {
    let mut started = start(store, request).await;
    assert_eq!(started.len(), 1, "one batch per claim");
    started.remove(0)
}

/// A claim that starts the next batch on an idle queue, and the time it
/// carried: its slot is the start itself (ready now, nothing earlier in the
/// way).
async fn start_now(store: &dyn Store, request: ClaimRequest) -> (ClaimedBatch, Timestamp) {
    let since = request.now;
    let batch = start_one(store, request).await;
    (batch, since)
}

/// Asserts that `request` is refused with `NotBefore`, one `wait` after the
/// start that followed the caller's time `since` (see [`start_now`]). The
/// slot was decided on the store's clock and the answer is given on the
/// caller's: it falls within the window from `since` to this call's end.
async fn assert_not_before(
    store: &dyn Store,
    request: ClaimRequest,
    since: Timestamp,
    wait: Interval,
) {
    let asked_at = request.now;
    let outcome = store.claim_batches(request).await.unwrap();
    let window = now().as_micros() - since.as_micros();
    let ClaimOutcome::NotBefore(at) = outcome else {
        panic!("expected NotBefore, got {outcome:?}");
    };
    let latest = asked_at.as_micros() + wait.as_micros();
    let earliest = latest - window;
    assert!(
        (earliest - CLOCK_SLACK_US..=latest + CLOCK_SLACK_US).contains(&at.as_micros()),
        "NotBefore {at} is not one interval ({wait}) after the previous start: \
         expected {} to {}",
        Timestamp::from_micros(earliest),
        Timestamp::from_micros(latest),
    );
}

async fn assert_outcome(store: &dyn Store, request: ClaimRequest, expected: &str) {
    let outcome = store.claim_batches(request).await.unwrap();
    let name = match &outcome {
        ClaimOutcome::Started(_) => "started",
        ClaimOutcome::NotBefore(_) => "not before",
        ClaimOutcome::Busy => "busy",
        ClaimOutcome::Paused => "paused",
        ClaimOutcome::Idle => "idle",
    };
    assert_eq!(name, expected, "{outcome:?}");
}

async fn record(store: &dyn Store, id: IngestionId) -> IngestionRecord {
    store
        .ingestion(id)
        .await
        .unwrap()
        .expect("a stored request")
}

/// A started batch's slot and start, as the store recorded them (on the
/// clock that decided the claim).
async fn slot_and_start(store: &dyn Store, batch: &ClaimedBatch) -> (i64, i64) {
    let request = record(store, batch.id.ingestion).await;
    let stored = &request.batches[batch.id.position as usize];
    let (slot, started) = (stored.scheduled_at.unwrap(), stored.started_at.unwrap());
    assert_eq!(slot, batch.slot, "the claim answers the slot it stored");
    (slot.as_micros(), started.as_micros())
}

fn statuses(request: &IngestionRecord) -> Vec<BatchStatus> {
    request.batches.iter().map(|b| b.status).collect()
}

/// The statuses the request's own events announced, in order.
async fn announced(store: &dyn Store, id: IngestionId) -> Vec<IngestionStatus> {
    let events = store.events_after(0, Some(id), 1000).await.unwrap();
    events
        .iter()
        .filter_map(|event| match event.subject {
            EventSubject::Ingestion { status } => Some(status),
            EventSubject::Batch { .. } => None,
        })
        .collect()
}

async fn finish(store: &dyn Store, batch: &ClaimedBatch, end: AttemptEnd) -> bool {
    store
        .finish_attempt(batch.key, Vec::new(), end, now())
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// The cases.

async fn claims_take_interrupted_work_then_priority_then_arrival_then_position(store: &dyn Store) {
    submit(store, "default", Priority::Low, &[1, 2]).await;
    let interrupted = start_one(store, claim("default", NO_LIMIT)).await;
    assert_eq!(ids(&interrupted), [1]);
    submit(store, "default", Priority::High, &[3, 4]).await;
    submit(store, "default", Priority::High, &[5]).await;
    submit(store, "default", Priority::Medium, &[6]).await;
    // Work in another queue never comes into this one's order.
    submit(store, "alpha", Priority::High, &[7]).await;

    // The dispatcher of `default` died with batch 1 started: it goes back,
    // still `triggered` to clients, ahead of every priority.
    let released = store
        .release_unfinished(&queue("default"), now())
        .await
        .unwrap();
    assert_eq!(released, 1);
    let first = record(store, interrupted.id.ingestion).await;
    assert_eq!(
        statuses(&first),
        [BatchStatus::Retrying, BatchStatus::YetToStart]
    );
    assert_eq!(first.batches[0].status.as_str(), "triggered");

    let mut order = Vec::new();
    for _ in 0..6 {
        let batch = start_one(store, claim("default", NO_LIMIT)).await;
        order.push((ids(&batch), batch.attempt));
    }
    assert_eq!(
        order,
        [
            (vec![1], 2),
            (vec![3], 1),
            (vec![4], 1),
            (vec![5], 1),
            (vec![6], 1),
            (vec![2], 1),
        ]
    );
    assert_outcome(store, claim("default", NO_LIMIT), "idle").await;
}

async fn a_claim_within_the_interval_is_told_when_the_next_slot_is(store: &dyn Store) {
    submit(store, "default", Priority::Medium, &[1, 2, 3]).await;
    // An idle queue starts at once: the slot is the start itself. With an
    // interval, a claim for several starts one.
    let mut request = claim("default", HOUR);
    request.batches = NonZeroUsize::new(3).unwrap();
    let (first, since) = start_now(store, request).await;
    let (slot, started) = slot_and_start(store, &first).await;
    assert_eq!(slot, started);
    // Within the interval, whether the dispatcher was ready or waited: one
    // interval after that slot. The rate answers before the in-flight limit.
    assert_not_before(store, claim("default", HOUR), since, HOUR).await;
    let mut waited = with_max_in_flight(claim("default", HOUR), 1);
    waited.ready_since = None;
    assert_not_before(store, waited, since, HOUR).await;
    // The refusals took nothing: the next start is still the second batch.
    let second = start_one(store, claim("default", NO_LIMIT)).await;
    assert_eq!(ids(&second), [2]);
}

async fn a_backlog_runs_on_the_grid_and_a_late_claim_starts_a_new_one(store: &dyn Store) {
    let backlog: Vec<u32> = (1..=12).collect();
    submit(store, "default", Priority::Medium, &backlog).await;
    let first = start_one(store, claim("default", GRID)).await;
    let (mut previous, _) = slot_and_start(store, &first).await;

    // A dispatcher that waits for the time the store names and claims then.
    // A claim within the late tolerance of its slot takes the slot, exactly
    // one interval after the one before; a later one starts a new grid at its
    // start less the tolerance. Either way the slot is never after the start.
    // Up to eight starts, so that a loaded machine still shows the grid kept.
    let mut on_grid = 0;
    let mut starts = 0;
    while starts < 8 && on_grid < 3 {
        let mut request = claim("default", GRID);
        request.ready_since = None;
        match store.claim_batches(request).await.unwrap() {
            ClaimOutcome::NotBefore(at) => {
                let wait = at.as_micros() - now().as_micros();
                tokio::time::sleep(Duration::from_micros(wait.max(0) as u64)).await;
            }
            ClaimOutcome::Started(batches) => {
                let (slot, started) = slot_and_start(store, &batches[0]).await;
                let grid = previous + GRID.as_micros();
                assert!(slot <= started, "a slot after its start");
                assert!(started >= grid, "a start before its slot was allowed");
                assert_eq!(slot, grid.max(started - GRID_TOLERANCE_US));
                on_grid += usize::from(slot == grid);
                starts += 1;
                previous = slot;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(on_grid > 0, "no claim of {starts} kept the grid");

    // Far later than the slot: a new grid, at the start less the tolerance.
    tokio::time::sleep(2 * GRID.as_duration()).await;
    let mut late = claim("default", GRID);
    late.ready_since = None;
    let batch = start_one(store, late).await;
    let (slot, started) = slot_and_start(store, &batch).await;
    assert!(slot > previous + GRID.as_micros());
    assert_eq!(started - slot, GRID_TOLERANCE_US);

    // Ready later than the grid allows, and within the tolerance of now: the
    // slot is the moment the dispatcher became ready.
    tokio::time::sleep(2 * GRID.as_duration()).await;
    let mut ready = claim("default", GRID);
    ready.ready_since = Some(ready.now.saturating_add_micros(-10_000));
    let batch = start_one(store, ready).await;
    let (slot, started) = slot_and_start(store, &batch).await;
    assert_eq!(started - slot, 10_000);

    // Ready "in the future" (a clock that jumped): never a slot after now.
    tokio::time::sleep(2 * GRID.as_duration()).await;
    let mut future = claim("default", GRID);
    future.ready_since = Some(future.now.saturating_add_micros(HOUR.as_micros()));
    let batch = start_one(store, future).await;
    let (slot, started) = slot_and_start(store, &batch).await;
    assert_eq!(slot, started);
}

async fn the_in_flight_limit_holds_per_queue(store: &dyn Store) {
    submit(store, "alpha", Priority::Medium, &[1, 2, 3]).await;
    submit(store, "beta", Priority::Medium, &[4]).await;

    // No interval: one claim may start several, up to the in-flight limit.
    let mut request = with_max_in_flight(claim("alpha", NO_LIMIT), 2);
    request.batches = NonZeroUsize::new(5).unwrap();
    let started = start(store, request).await;
    assert_eq!(started.iter().map(ids).collect::<Vec<_>>(), [[1], [2]]);
    assert_outcome(
        store,
        with_max_in_flight(claim("alpha", NO_LIMIT), 2),
        "busy",
    )
    .await;

    // A full `alpha` holds nothing of `beta` back.
    let other = start_one(store, with_max_in_flight(claim("beta", NO_LIMIT), 1)).await;
    assert_eq!(ids(&other), [4]);
    assert_outcome(
        store,
        with_max_in_flight(claim("beta", NO_LIMIT), 1),
        "busy",
    )
    .await;
    assert_outcome(
        store,
        with_max_in_flight(claim("beta", NO_LIMIT), 2),
        "idle",
    )
    .await;

    // A batch that ends frees its place.
    assert!(!finish(store, &started[0], AttemptEnd::Completed).await);
    let third = start_one(store, with_max_in_flight(claim("alpha", NO_LIMIT), 2)).await;
    assert_eq!(ids(&third), [3]);
    // At the limit with nothing waiting: busy comes first.
    assert_outcome(
        store,
        with_max_in_flight(claim("alpha", NO_LIMIT), 2),
        "busy",
    )
    .await;
}

async fn queues_are_limited_and_paused_independently(store: &dyn Store) {
    submit(store, "alpha", Priority::Medium, &[1, 2]).await;
    submit(store, "beta", Priority::Medium, &[3, 4]).await;

    let (_, alpha_since) = start_now(store, claim("alpha", HOUR)).await;
    assert_not_before(store, claim("alpha", HOUR), alpha_since, HOUR).await;
    // `alpha`'s rate holds nothing of `beta` back.
    let (beta_first, beta_since) = start_now(store, claim("beta", HOUR)).await;
    assert_eq!(ids(&beta_first), [3]);
    assert_not_before(store, claim("beta", HOUR), beta_since, HOUR).await;

    // A paused queue answers so, before its rate; the other goes on.
    let pause = QueueChange {
        paused: Some(true),
        ..QueueChange::default()
    };
    assert!(store.change_queue(&queue("alpha"), pause).await.unwrap());
    let state = store.queue_state(&queue("alpha")).await.unwrap().unwrap();
    assert!(state.runtime.paused);
    assert_outcome(store, claim("alpha", HOUR), "paused").await;
    assert_outcome(store, claim("alpha", NO_LIMIT), "paused").await;
    let beta_second = start_one(store, claim("beta", NO_LIMIT)).await;
    assert_eq!(ids(&beta_second), [4]);

    let resume = QueueChange {
        paused: Some(false),
        ..QueueChange::default()
    };
    assert!(store.change_queue(&queue("alpha"), resume).await.unwrap());
    assert_not_before(store, claim("alpha", HOUR), alpha_since, HOUR).await;
    let alpha_second = start_one(store, claim("alpha", NO_LIMIT)).await;
    assert_eq!(ids(&alpha_second), [2]);

    // A queue the store does not know.
    let unknown = queue("gamma");
    assert!(
        !store
            .change_queue(&unknown, QueueChange::default())
            .await
            .unwrap()
    );
    assert_eq!(store.queue_state(&unknown).await.unwrap(), None);
}

async fn runtime_settings_replace_the_configured_ones(store: &dyn Store) {
    submit(store, "alpha", Priority::Medium, &[1, 2, 3, 4, 5]).await;
    let alpha = queue("alpha");

    // An interval set at runtime holds although the dispatcher has none.
    let hourly = QueueChange {
        interval: Some(Some(HOUR)),
        ..QueueChange::default()
    };
    assert!(store.change_queue(&alpha, hourly).await.unwrap());
    let runtime = store.queue_state(&alpha).await.unwrap().unwrap().runtime;
    assert_eq!(runtime.interval, Some(HOUR));
    let (_, since) = start_now(store, claim("alpha", NO_LIMIT)).await;
    assert_not_before(store, claim("alpha", NO_LIMIT), since, HOUR).await;
    // And it replaces the configured one both ways: shorter than configured.
    let none = QueueChange {
        interval: Some(Some(NO_LIMIT)),
        ..QueueChange::default()
    };
    assert!(store.change_queue(&alpha, none).await.unwrap());
    start_one(store, claim("alpha", HOUR)).await;

    // Back to the configured interval.
    let reset = QueueChange {
        interval: Some(None),
        ..QueueChange::default()
    };
    assert!(store.change_queue(&alpha, reset).await.unwrap());
    assert_eq!(
        store
            .queue_state(&alpha)
            .await
            .unwrap()
            .unwrap()
            .runtime
            .interval,
        None
    );
    start_one(store, claim("alpha", NO_LIMIT)).await;

    // Three processing now: a runtime limit of 3 is reached, whatever the
    // dispatcher's 100.
    let three = QueueChange {
        max_in_flight: Some(NonZeroUsize::new(3)),
        ..QueueChange::default()
    };
    assert!(store.change_queue(&alpha, three).await.unwrap());
    assert_eq!(
        store
            .queue_state(&alpha)
            .await
            .unwrap()
            .unwrap()
            .runtime
            .max_in_flight,
        NonZeroUsize::new(3)
    );
    assert_outcome(store, claim("alpha", NO_LIMIT), "busy").await;
    // And a runtime limit above the dispatcher's 1 lets a fourth start.
    let five = QueueChange {
        max_in_flight: Some(NonZeroUsize::new(5)),
        ..QueueChange::default()
    };
    assert!(store.change_queue(&alpha, five).await.unwrap());
    start_one(store, with_max_in_flight(claim("alpha", NO_LIMIT), 1)).await;
    // Back to the configured limit: 1, and four are processing.
    let reset = QueueChange {
        max_in_flight: Some(None),
        ..QueueChange::default()
    };
    assert!(store.change_queue(&alpha, reset).await.unwrap());
    assert_outcome(
        store,
        with_max_in_flight(claim("alpha", NO_LIMIT), 1),
        "busy",
    )
    .await;
    let last = start_one(store, claim("alpha", NO_LIMIT)).await;
    assert_eq!(ids(&last), [5]);
}

async fn slow_down_raises_the_spacing_but_never_lowers_it(store: &dyn Store) {
    submit(store, "beta", Priority::Medium, &[1, 2]).await;
    let slowed = |interval: Interval, slow_down: Interval| {
        let mut request = claim("beta", interval);
        request.slow_down = slow_down;
        request
    };
    let second = Interval::from_duration(Duration::from_secs(1));

    // No interval, but the upstream asks for an hour.
    let (_, since) = start_now(store, slowed(NO_LIMIT, HOUR)).await;
    assert_not_before(store, slowed(NO_LIMIT, HOUR), since, HOUR).await;
    // An hour configured, the upstream asking for a second: still an hour.
    assert_not_before(store, slowed(HOUR, second), since, HOUR).await;
    // An hour set at runtime, the upstream asking for a second: an hour.
    let hourly = QueueChange {
        interval: Some(Some(HOUR)),
        ..QueueChange::default()
    };
    assert!(store.change_queue(&queue("beta"), hourly).await.unwrap());
    assert_not_before(store, slowed(NO_LIMIT, second), since, HOUR).await;
    // No interval at runtime, the upstream asking for an hour: an hour.
    let none = QueueChange {
        interval: Some(Some(NO_LIMIT)),
        ..QueueChange::default()
    };
    assert!(store.change_queue(&queue("beta"), none).await.unwrap());
    assert_not_before(store, slowed(HOUR, HOUR), since, HOUR).await;
    // Without the slow-down, nothing holds it back.
    start_one(store, slowed(HOUR, NO_LIMIT)).await;
}

async fn a_request_ends_with_its_last_batch_and_its_status_derives_from_them(store: &dyn Store) {
    use BatchStatus::*;

    // One batch failed: the request ends `failed`, once its last batch ends.
    let failing = submit(store, "default", Priority::Medium, &[1, 2, 3]).await;
    let mut request = claim("default", NO_LIMIT);
    request.batches = NonZeroUsize::new(3).unwrap();
    let batches = start(store, request).await;
    assert_eq!(batches.len(), 3);
    assert!(!finish(store, &batches[0], AttemptEnd::Completed).await);
    assert!(!finish(store, &batches[1], AttemptEnd::Failed).await);
    let midway = record(store, failing).await;
    assert_eq!(statuses(&midway), [Completed, Failed, Triggered]);
    assert_eq!(midway.finished_at, None);
    assert_eq!(
        IngestionStatus::derive(statuses(&midway)),
        IngestionStatus::Triggered
    );
    assert!(finish(store, &batches[2], AttemptEnd::Completed).await);
    // The same attempt recorded twice ends nothing more.
    assert!(!finish(store, &batches[2], AttemptEnd::Completed).await);
    let ended = record(store, failing).await;
    assert_eq!(statuses(&ended), [Completed, Failed, Completed]);
    assert!(ended.finished_at.is_some());
    let derived = IngestionStatus::derive(statuses(&ended));
    assert_eq!(derived, IngestionStatus::Failed);
    assert_eq!(
        announced(store, failing).await,
        [
            IngestionStatus::YetToStart,
            IngestionStatus::Triggered,
            derived
        ]
    );

    // Every batch completed, one after a retry: `completed`.
    let completing = submit(store, "default", Priority::Medium, &[4, 5]).await;
    let mut request = claim("default", NO_LIMIT);
    request.batches = NonZeroUsize::new(2).unwrap();
    let batches = start(store, request).await;
    let soon = now();
    assert!(!finish(store, &batches[0], AttemptEnd::RetryAt(soon)).await);
    assert_eq!(
        statuses(&record(store, completing).await),
        [Retrying, Triggered]
    );
    assert!(!finish(store, &batches[1], AttemptEnd::Completed).await);
    let retried = start_one(store, claim("default", NO_LIMIT)).await;
    assert_eq!((ids(&retried), retried.attempt), (vec![4], 2));
    assert!(finish(store, &retried, AttemptEnd::Completed).await);
    let ended = record(store, completing).await;
    let derived = IngestionStatus::derive(statuses(&ended));
    assert_eq!(derived, IngestionStatus::Completed);
    assert_eq!(
        announced(store, completing).await,
        [
            IngestionStatus::YetToStart,
            IngestionStatus::Triggered,
            derived
        ]
    );
}

/// Many attempts ending at once, as an unthrottled queue ends them: a store
/// may record them together (PostgreSQL groups them into one commit), and
/// each must still be recorded as if alone. Two requests: `whole` (30
/// batches, all completed, one of them reported twice at once) ends once,
/// `failing` (20 batches: failed, retried, completed) does not end while its
/// retries wait.
async fn attempts_that_end_together_are_each_recorded_once(store: &dyn Store) {
    use BatchStatus::*;

    let whole = submit(
        store,
        "default",
        Priority::Medium,
        &(1..=30).collect::<Vec<_>>(),
    )
    .await;
    let failing = submit(
        store,
        "default",
        Priority::Medium,
        &(31..=50).collect::<Vec<_>>(),
    )
    .await;
    let mut request = with_max_in_flight(claim("default", NO_LIMIT), 64);
    request.batches = NonZeroUsize::new(64).unwrap();
    let batches = start(store, request).await;
    assert_eq!(batches.len(), 50);
    let later = Timestamp::from_micros(now().as_micros() + 3_600_000_000);
    let end_of = |id: u32| match id {
        1..=30 => AttemptEnd::Completed,
        _ if id.is_multiple_of(3) => AttemptEnd::Failed,
        _ if id % 3 == 1 => AttemptEnd::RetryAt(later),
        _ => AttemptEnd::Completed,
    };
    // Every attempt at once, and batch 7's twice.
    let attempts = batches
        .iter()
        .chain(batches.iter().filter(|b| ids(b) == [7]))
        .map(|batch| async move {
            let id = ids(batch)[0];
            let ended = store
                .finish_attempt(batch.key, Vec::new(), end_of(id), now())
                .await
                .unwrap();
            (id, ended)
        });
    let answers = futures_util::future::join_all(attempts).await;
    assert_eq!(answers.len(), 51);
    let ended: Vec<u32> = answers
        .iter()
        .filter(|(_, e)| *e)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        ended.len(),
        1,
        "only `whole` ended, and it is said once: {ended:?}"
    );
    assert!((1..=30).contains(&ended[0]), "{ended:?}");

    let whole_now = record(store, whole).await;
    assert_eq!(statuses(&whole_now), vec![Completed; 30]);
    assert!(whole_now.finished_at.is_some());
    assert!(whole_now.batches.iter().all(|b| b.completed_at.is_some()));
    assert_eq!(
        announced(store, whole).await,
        [
            IngestionStatus::YetToStart,
            IngestionStatus::Triggered,
            IngestionStatus::Completed
        ]
    );
    let failing_now = record(store, failing).await;
    let expected: Vec<BatchStatus> = (31..=50u32)
        .map(|id| match end_of(id) {
            AttemptEnd::Completed => Completed,
            AttemptEnd::Failed => Failed,
            AttemptEnd::RetryAt(_) => Retrying,
        })
        .collect();
    assert_eq!(statuses(&failing_now), expected);
    assert_eq!(
        failing_now.finished_at, None,
        "its retries are still to run"
    );
    // Each batch's end announced once: 30 + the 20 - 7 retrying, none twice.
    let events = store.events_after(0, None, 10_000).await.unwrap();
    let batch_ends: Vec<(IngestionId, u32)> = events
        .iter()
        .filter_map(|event| match event.subject {
            EventSubject::Batch {
                position,
                status: Completed | Failed,
            } => Some((event.ingestion, position)),
            _ => None,
        })
        .collect();
    let announced_count = batch_ends.len();
    let distinct: std::collections::HashSet<_> = batch_ends.iter().collect();
    assert_eq!(
        announced_count,
        distinct.len(),
        "a batch's end announced twice"
    );
    assert_eq!(announced_count, 30 + 13);
    let ids_in_order: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        ids_in_order.windows(2).all(|w| w[0] < w[1]),
        "event ids in order"
    );
    // The counts agree with the batches.
    let stats = store.stats().await.unwrap();
    let count = |status: BatchStatus| -> u64 {
        stats
            .batches
            .iter()
            .filter(|(_, s, _)| *s == status)
            .map(|(_, _, n)| *n)
            .sum()
    };
    assert_eq!(
        (count(Completed), count(Failed), count(Retrying)),
        (30 + 7, 6, 7)
    );
}

async fn cancelling_ends_what_has_not_started_and_counts_once(store: &dyn Store) {
    use BatchStatus::*;

    // Two batches processing, two waiting.
    let partly = submit(store, "default", Priority::Medium, &[1, 2, 3, 4]).await;
    let mut request = claim("default", NO_LIMIT);
    request.batches = NonZeroUsize::new(2).unwrap();
    let running = start(store, request).await;
    assert_eq!(
        store.cancel_ingestion(partly, now()).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        store.cancel_ingestion(partly, now()).await.unwrap(),
        Some(0)
    );
    let cancelled = record(store, partly).await;
    assert_eq!(
        statuses(&cancelled),
        [Triggered, Triggered, Cancelled, Cancelled]
    );
    assert_eq!(cancelled.finished_at, None);
    // The processing ones finish; one that would retry is cancelled instead,
    // and that ends the request.
    assert!(!finish(store, &running[0], AttemptEnd::Completed).await);
    let retry_at = now().saturating_add_micros(HOUR.as_micros());
    assert!(finish(store, &running[1], AttemptEnd::RetryAt(retry_at)).await);
    let ended = record(store, partly).await;
    assert_eq!(
        statuses(&ended),
        [Completed, Cancelled, Cancelled, Cancelled]
    );
    assert!(ended.finished_at.is_some());
    let derived = IngestionStatus::derive(statuses(&ended));
    assert_eq!(derived, IngestionStatus::Cancelled);
    assert_eq!(
        announced(store, partly).await,
        [
            IngestionStatus::YetToStart,
            IngestionStatus::Triggered,
            derived
        ]
    );
    assert_eq!(
        store.cancel_ingestion(partly, now()).await.unwrap(),
        Some(0)
    );
    // Nothing of it is left to claim, not even the retry.
    assert_outcome(store, claim("default", NO_LIMIT), "idle").await;

    // Nothing started: the cancel itself ends the request.
    let waiting = submit(store, "default", Priority::Low, &[5, 6]).await;
    assert_eq!(
        store.cancel_ingestion(waiting, now()).await.unwrap(),
        Some(2)
    );
    let ended = record(store, waiting).await;
    assert!(ended.finished_at.is_some());
    let derived = IngestionStatus::derive(statuses(&ended));
    assert_eq!(derived, IngestionStatus::Cancelled);
    assert_eq!(
        announced(store, waiting).await,
        [IngestionStatus::YetToStart, derived]
    );

    // A failure outweighs the cancel.
    let failing = submit(store, "default", Priority::High, &[7, 8]).await;
    let first = start_one(store, claim("default", NO_LIMIT)).await;
    assert_eq!(
        store.cancel_ingestion(failing, now()).await.unwrap(),
        Some(1)
    );
    assert!(finish(store, &first, AttemptEnd::Failed).await);
    let ended = record(store, failing).await;
    assert_eq!(statuses(&ended), [Failed, Cancelled]);
    let derived = IngestionStatus::derive(statuses(&ended));
    assert_eq!(derived, IngestionStatus::Failed);
    assert_eq!(announced(store, failing).await.last(), Some(&derived));

    // A batch between attempts has not started its next one: cancelled.
    let retrying = submit(store, "default", Priority::High, &[9]).await;
    let attempt = start_one(store, claim("default", NO_LIMIT)).await;
    let later = now().saturating_add_micros(HOUR.as_micros());
    assert!(!finish(store, &attempt, AttemptEnd::RetryAt(later)).await);
    assert_eq!(
        store.cancel_ingestion(retrying, now()).await.unwrap(),
        Some(1)
    );
    let ended = record(store, retrying).await;
    assert_eq!(statuses(&ended), [Cancelled]);
    assert_eq!(ended.batches[0].retry_at, None);
    assert!(ended.finished_at.is_some());
    assert_eq!(
        announced(store, retrying).await.last(),
        Some(&IngestionStatus::Cancelled)
    );

    // An unknown request.
    assert_eq!(
        store
            .cancel_ingestion(IngestionId::generate(), now())
            .await
            .unwrap(),
        None
    );
}

async fn a_retry_waits_for_its_time_without_holding_back_other_work(store: &dyn Store) {
    let id = submit(store, "default", Priority::High, &[1]).await;
    submit(store, "default", Priority::Low, &[2]).await;
    let first = start_one(store, claim("default", NO_LIMIT)).await;
    let retry_at = now().saturating_add_micros(HOUR.as_micros());
    let before = now();
    assert!(!finish(store, &first, AttemptEnd::RetryAt(retry_at)).await);
    let window = now().as_micros() - before.as_micros();
    let waiting = record(store, id).await;
    assert_eq!(statuses(&waiting), [BatchStatus::Retrying]);
    // As asked, or moved onto the database's clock by the skew of the call.
    let stored = waiting.batches[0].retry_at.unwrap();
    let kept = stored.as_micros() - retry_at.as_micros();
    assert!(
        (-CLOCK_SLACK_US..=window + CLOCK_SLACK_US).contains(&kept),
        "retry kept {kept} µs off the time asked"
    );

    // The retry is not due: the next waiting batch goes, whatever its priority.
    let other = start_one(store, claim("default", NO_LIMIT)).await;
    assert_eq!(ids(&other), [2]);
    // Then nothing until the retry is due. PostgreSQL keeps the retry time
    // on its own clock (as stored above, already moved by the first call's
    // skew) and answers it less the skew it measures during this call: the
    // bound is taken from the time stored, not the time asked, and assumes
    // the two clocks agree, as they do for a server on this machine.
    let request = claim("default", NO_LIMIT);
    let asked_at = request.now;
    let outcome = store.claim_batches(request).await.unwrap();
    let window = now().as_micros() - asked_at.as_micros();
    let ClaimOutcome::NotBefore(at) = outcome else {
        panic!("expected NotBefore, got {outcome:?}");
    };
    let (earliest, latest) = (stored.as_micros() - window, stored.as_micros());
    assert!(
        (earliest - CLOCK_SLACK_US..=latest + CLOCK_SLACK_US).contains(&at.as_micros()),
        "NotBefore {at}, the retry is due at {stored} (asked for {retry_at})"
    );
}

async fn every_change_is_announced_once_in_commit_order(store: &dyn Store) {
    use BatchStatus::*;
    let batch = |position, status| EventSubject::Batch { position, status };
    let whole = |status| EventSubject::Ingestion { status };

    let mixed = submit(store, "default", Priority::High, &[1, 2, 3]).await;
    let first = start_one(store, claim("default", NO_LIMIT)).await;
    // Between attempts and on its second start the batch reads `triggered`
    // all along: nothing to announce.
    assert!(!finish(store, &first, AttemptEnd::RetryAt(now())).await);
    let again = start_one(store, claim("default", NO_LIMIT)).await;
    assert_eq!((ids(&again), again.attempt), (vec![1], 2));
    let second = start_one(store, claim("default", NO_LIMIT)).await;
    assert_eq!(store.cancel_ingestion(mixed, now()).await.unwrap(), Some(1));
    assert!(!finish(store, &again, AttemptEnd::Completed).await);
    assert!(finish(store, &second, AttemptEnd::Failed).await);

    let waiting = submit(store, "default", Priority::Low, &[4, 5]).await;
    assert_eq!(
        store.cancel_ingestion(waiting, now()).await.unwrap(),
        Some(2)
    );

    let events = store.events_after(0, None, 1000).await.unwrap();
    let of = |id| {
        events
            .iter()
            .filter(|event| event.ingestion == id)
            .map(|event| event.subject)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(mixed),
        [
            whole(IngestionStatus::YetToStart),
            batch(0, Triggered),
            whole(IngestionStatus::Triggered),
            batch(1, Triggered),
            batch(2, Cancelled),
            batch(0, Completed),
            batch(1, Failed),
            whole(IngestionStatus::Failed),
        ]
    );
    assert_eq!(
        of(waiting),
        [
            whole(IngestionStatus::YetToStart),
            batch(0, Cancelled),
            batch(1, Cancelled),
            whole(IngestionStatus::Cancelled),
        ]
    );
    // In commit order, each once; a reader that resumes after an event gets
    // exactly the ones after it.
    assert!(events.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    assert_eq!(events.len(), 12);
    assert_eq!(store.latest_event().await.unwrap(), events[11].seq);
    let rest = store.events_after(events[5].seq, None, 1000).await.unwrap();
    assert_eq!(rest, events[6..]);
}

async fn queue_counts_match_the_batches(store: &dyn Store) {
    use BatchStatus::*;
    use Priority::*;

    submit(store, "alpha", High, &[1, 2, 3]).await;
    submit(store, "alpha", Low, &[4]).await;
    submit(store, "beta", Medium, &[5]).await;
    let done = start_one(store, claim("alpha", NO_LIMIT)).await;
    assert!(!finish(store, &done, AttemptEnd::Completed).await);
    start_one(store, claim("alpha", NO_LIMIT)).await;

    let counts = |name: &'static str| async move {
        let state = store.queue_state(&queue(name)).await.unwrap().unwrap();
        let mut batches = state.batches;
        batches.sort_by_key(|&(priority, status, _)| (priority.rank(), status.code()));
        batches
    };
    assert_eq!(
        counts("alpha").await,
        [
            (High, YetToStart, 1),
            (High, Triggered, 1),
            (High, Completed, 1),
            (Low, YetToStart, 1),
        ]
    );
    assert_eq!(counts("beta").await, [(Medium, YetToStart, 1)]);
    assert_eq!(counts("default").await, []);

    let mut waiting = store.waiting_batches().await.unwrap();
    waiting.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    assert_eq!(waiting, [(queue("alpha"), 2), (queue("beta"), 1)]);

    // The service-wide counts are the queues' together.
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.ingestions, 3);
    let mut batches = stats.batches;
    batches.sort_by_key(|&(priority, status, _)| (priority.rank(), status.code()));
    assert_eq!(
        batches,
        [
            (High, YetToStart, 1),
            (High, Triggered, 1),
            (High, Completed, 1),
            (Medium, YetToStart, 1),
            (Low, YetToStart, 1),
        ]
    );
    let running: Vec<u32> = stats.running.iter().map(|(id, _)| id.position).collect();
    assert_eq!(running, [1]);
    // The default queue never started anything.
    assert_eq!(stats.last_slot, None);
    store.check_ready().await.unwrap();
}

async fn outcomes_and_pages_read_back_as_written(store: &dyn Store) {
    let id = submit(store, "default", Priority::Medium, &[1, 2, 3]).await;
    let outcome = |item: u32, outcome: Outcome| IdOutcome {
        id: ItemId::new(item.into()).unwrap(),
        outcome,
        attempts: 1,
        at: now(),
    };
    // Data as an upstream may send it, a NUL character included.
    let fetched = vec![outcome(
        1,
        Outcome::Ok {
            data: serde_json::json!({"id": 1, "data": "nul \u{0} and ünïcode"}),
        },
    )];
    let first = start_one(store, claim("default", NO_LIMIT)).await;
    assert!(first.outcomes.is_empty());
    let done = store
        .finish_attempt(first.key, fetched.clone(), AttemptEnd::Completed, now())
        .await
        .unwrap();
    assert!(!done);

    // Outcomes of an attempt that will be retried come back with the batch.
    let flaky = vec![outcome(
        2,
        Outcome::Retrying {
            error: FetchFailure {
                kind: FailureKind::Transient,
                status: Some(503),
                message: "busy".into(),
            },
        },
    )];
    let second = start_one(store, claim("default", NO_LIMIT)).await;
    store
        .finish_attempt(second.key, flaky.clone(), AttemptEnd::RetryAt(now()), now())
        .await
        .unwrap();
    let retried = start_one(store, claim("default", NO_LIMIT)).await;
    assert_eq!((ids(&retried), retried.attempt), (vec![2], 2));
    assert_eq!(retried.outcomes, flaky);

    let all = store.batch_outcomes(id, None, 10).await.unwrap().unwrap();
    let positions: Vec<u32> = all.iter().map(|b| b.id.position).collect();
    assert_eq!(positions, [0, 1, 2]);
    assert_eq!(all[0].outcomes, fetched);
    assert_eq!(all[0].status, BatchStatus::Completed);
    assert_eq!(all[1].outcomes, flaky);
    assert!(all[2].outcomes.is_empty());
    let page = store.batch_outcomes(id, Some(0), 1).await.unwrap().unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id.position, 1);

    let page = store.ingestion_page(id, Some(0), 1).await.unwrap().unwrap();
    let positions: Vec<u32> = page.batches.iter().map(|b| b.id.position).collect();
    assert_eq!(positions, [1]);
    assert_eq!(page.batches[0].ids, [ItemId::new(2).unwrap()]);
    let page = store
        .ingestion_page(id, Some(2), 10)
        .await
        .unwrap()
        .unwrap();
    assert!(page.batches.is_empty());

    let unknown = IngestionId::generate();
    assert!(
        store
            .batch_outcomes(unknown, None, 10)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .ingestion_page(unknown, None, 10)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.ingestion(unknown).await.unwrap().is_none());
}

async fn an_idempotency_key_replays_conflicts_and_expires(store: &dyn Store) {
    let keyed = |fingerprint: u8, expires_at: Timestamp| {
        let mut new = new_ingestion("default", Priority::Medium, &[1, 2]);
        new.idempotency = Some(IdempotencyKey {
            key: "order-7".into(),
            fingerprint: [fingerprint; 32],
            expires_at,
        });
        new
    };
    let in_an_hour = now().saturating_add_micros(HOUR.as_micros());

    let original = keyed(1, in_an_hour);
    let id = original.id;
    assert_eq!(
        store.create_ingestion(original).await.unwrap(),
        Created::New(id)
    );
    let replay = keyed(1, in_an_hour);
    let replay_id = replay.id;
    assert_eq!(
        store.create_ingestion(replay).await.unwrap(),
        Created::Replayed(id)
    );
    assert!(store.ingestion(replay_id).await.unwrap().is_none());
    let other = keyed(2, in_an_hour);
    assert_eq!(
        store.create_ingestion(other).await.unwrap(),
        Created::KeyConflict
    );
    assert_eq!(store.recent_ingestions(10).await.unwrap().len(), 1);

    // A key whose time is over is free, whatever it was used for.
    let mut later = keyed(2, in_an_hour.saturating_add_micros(HOUR.as_micros()));
    later.created_at = in_an_hour.saturating_add_micros(1);
    let later_id = later.id;
    assert_eq!(
        store.create_ingestion(later).await.unwrap(),
        Created::New(later_id)
    );
    let recent = store.recent_ingestions(10).await.unwrap();
    let newest_first: Vec<IngestionId> = recent.iter().map(|r| r.id).collect();
    assert_eq!(newest_first, [later_id, id]);
    assert_eq!(recent[0].ids, 2);
    assert_eq!(recent[0].batches, [(BatchStatus::YetToStart, 2)]);
}

async fn a_callback_is_due_when_the_request_ends_and_held_while_delivered(store: &dyn Store) {
    let mut new = new_ingestion("default", Priority::Medium, &[1]);
    new.callback_url = Some("http://127.0.0.1:9/done".into());
    let id = new.id;
    store.create_ingestion(new).await.unwrap();
    let callback = |record: &IngestionRecord| record.callback.clone().unwrap();
    assert_eq!(
        callback(&record(store, id).await).state,
        CallbackState::Pending
    );
    // Not due before the request ends.
    assert_eq!(store.next_callback_due().await.unwrap(), None);
    let far = now().saturating_add_micros(HOUR.as_micros());
    let hold = Duration::from_secs(60);
    assert!(
        store
            .claim_due_callbacks(far, hold, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let batch = start_one(store, claim("default", NO_LIMIT)).await;
    let ended_at = now();
    let ended = store
        .finish_attempt(batch.key, Vec::new(), AttemptEnd::Completed, ended_at)
        .await
        .unwrap();
    assert!(ended);
    assert_eq!(store.next_callback_due().await.unwrap(), Some(ended_at));

    // Taken for delivery: held, so no one else delivers it meanwhile.
    let taken_at = ended_at.saturating_add_micros(1_000);
    let due = store.claim_due_callbacks(taken_at, hold, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].ingestion, due[0].attempts), (id, 0));
    assert_eq!(due[0].url, "http://127.0.0.1:9/done");
    assert!(
        store
            .claim_due_callbacks(taken_at, hold, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let held_until = taken_at.saturating_add_micros(hold.as_micros() as i64);
    assert_eq!(store.next_callback_due().await.unwrap(), Some(held_until));

    // A failed delivery is due again when the policy says.
    let retry = taken_at.saturating_add_micros(5_000_000);
    let delivery = CallbackDelivery::RetryAt(retry, "connection refused".into());
    store.finish_callback(id, delivery).await.unwrap();
    let state = callback(&record(store, id).await);
    assert_eq!(
        (state.state, state.attempts, state.last_error.as_deref()),
        (CallbackState::Pending, 1, Some("connection refused"))
    );
    assert_eq!(store.next_callback_due().await.unwrap(), Some(retry));
    let due = store.claim_due_callbacks(retry, hold, 10).await.unwrap();
    assert_eq!(due[0].attempts, 1);

    store
        .finish_callback(id, CallbackDelivery::GaveUp("still refused".into()))
        .await
        .unwrap();
    let state = callback(&record(store, id).await);
    assert_eq!((state.state, state.attempts), (CallbackState::GaveUp, 2));
    assert_eq!(store.next_callback_due().await.unwrap(), None);
    assert!(
        store
            .claim_due_callbacks(far, hold, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Delivered, on a second request.
    let mut new = new_ingestion("default", Priority::Medium, &[2]);
    new.callback_url = Some("http://127.0.0.1:9/done".into());
    let delivered = new.id;
    store.create_ingestion(new).await.unwrap();
    assert_eq!(
        store.cancel_ingestion(delivered, now()).await.unwrap(),
        Some(1)
    );
    let due = store.claim_due_callbacks(far, hold, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    store
        .finish_callback(delivered, CallbackDelivery::Delivered)
        .await
        .unwrap();
    let state = callback(&record(store, delivered).await);
    assert_eq!(
        (state.state, state.attempts, state.last_error),
        (CallbackState::Delivered, 1, None)
    );
    assert_eq!(store.next_callback_due().await.unwrap(), None);
}

/// A node whose clock is ten minutes off the database's. The store is told
/// the node's time in every call, and both stores keep a retry for the time
/// the node asked, on the node's clock: SQLite has no other clock, and
/// PostgreSQL converts the node's times by the skew it measures.
///
/// Found different, and fixed: PostgreSQL compared the retry time, as the
/// node wrote it, with the database's clock, so a node ten minutes behind had
/// its five-minute retry start at once. `sluice_finish` now moves it onto the
/// database's clock by the node's skew as it is written.
async fn a_retry_waits_for_its_time_on_a_node_whose_clock_is_off(store: &dyn Store) {
    // A queue for each node, so each sees only its own times.
    for (queue_name, offset_minutes) in [("alpha", -10_i64), ("beta", 10)] {
        let offset = offset_minutes * 60_000_000;
        let node_now = || now().saturating_add_micros(offset);
        let on_node = |mut request: ClaimRequest| {
            request.now = request.now.saturating_add_micros(offset);
            request.ready_since = Some(request.now);
            request
        };
        submit(store, queue_name, Priority::Medium, &[1]).await;
        let batch = start_one(store, on_node(claim(queue_name, NO_LIMIT))).await;
        // Five minutes on the node's clock.
        let retry_at = node_now().saturating_add_micros(5 * 60_000_000);
        let end = AttemptEnd::RetryAt(retry_at);
        let ended = store
            .finish_attempt(batch.key, Vec::new(), end, node_now())
            .await
            .unwrap();
        assert!(!ended);
        let outcome = store
            .claim_batches(on_node(claim(queue_name, NO_LIMIT)))
            .await
            .unwrap();
        let ClaimOutcome::NotBefore(at) = outcome else {
            panic!("node {offset_minutes:+} min: the retry due at {retry_at} gave {outcome:?}");
        };
        // Within a second: the skew measured in one call is not exact.
        let error = (at.as_micros() - retry_at.as_micros()).abs();
        assert!(
            error < 1_000_000,
            "node {offset_minutes:+} min: NotBefore {at}, retry at {retry_at}"
        );
    }
}

// ---------------------------------------------------------------------------
// Fairness and aging (issue 13): who goes next inside a priority, and how
// long waiting lifts a batch. Ids name the tenant and group a batch belongs
// to (see `Lanes`), so a claim sequence reads as a string like "ABAB…".

on_both_stores!(
    a_tenant_that_arrives_behind_a_backlog_takes_every_other_turn,
    weights_give_turns_in_proportion,
    fifo_keeps_the_contracts_order_with_tenants,
    groups_take_turns_inside_a_tenant_and_tenantless_requests_are_one_tenant,
    priorities_come_before_tenant_turns,
    aging_lifts_a_batch_that_waited_and_only_with_aging_set,
    a_tenant_back_from_idle_gets_no_banked_turns,
    cancelled_work_gives_up_its_turns,
    a_claim_of_several_takes_them_in_turn,
    a_due_retry_goes_first_in_its_priority,
    turns_hold_when_each_batch_completes_before_the_next_claim,
    a_tenant_that_arrives_during_claims_joins_at_the_current_turn,
    a_group_back_from_idle_gets_no_banked_turns,
);

/// Generous enough that a fairness case is never refused for being busy.
const MANY_IN_FLIGHT: usize = 10_000;

/// A request of `tenant` (and `group`) whose every id is a batch of its own.
async fn submit_as(
    store: &dyn Store,
    queue_name: &str,
    priority: Priority,
    tenant: Option<&str>,
    group: Option<&str>,
    ids: &[u32],
) -> IngestionId {
    let new = NewIngestion {
        tenant: tenant.map(|t| TenantName::parse(t).unwrap()),
        group: group.map(|g| GroupName::parse(g).unwrap()),
        ..new_ingestion(queue_name, priority, ids)
    };
    let id = new.id;
    assert_eq!(store.create_ingestion(new).await.unwrap(), Created::New(id));
    id
}

/// A claim of one batch with tenant fairness, no rate limit and room in flight.
fn fair_claim(queue_name: &str) -> ClaimRequest {
    ordered(
        queue_name,
        DispatchOrder {
            fairness: Fairness::Tenant,
            ..DispatchOrder::default()
        },
    )
}

/// A claim of one batch in `order`, no rate limit and room in flight.
fn ordered(queue_name: &str, order: DispatchOrder) -> ClaimRequest {
    ClaimRequest {
        order,
        ..with_max_in_flight(claim(queue_name, NO_LIMIT), MANY_IN_FLIGHT)
    }
}

/// A fair claim with `tenant` weighing `weight` (the others 1).
fn weighted(queue_name: &str, tenant: &str, weight: u32) -> ClaimRequest {
    let weights = [(
        TenantName::parse(tenant).unwrap(),
        NonZeroU32::new(weight).unwrap(),
    )];
    ordered(
        queue_name,
        DispatchOrder {
            fairness: Fairness::Tenant,
            weights: Arc::new(weights.into_iter().collect()),
            aging: None,
        },
    )
}

/// The ids of `n` single-batch claims made with `request`, in claim order.
async fn claim_ids(store: &dyn Store, n: usize, request: impl Fn() -> ClaimRequest) -> Vec<u32> {
    let mut order = Vec::with_capacity(n);
    for _ in 0..n {
        let batch = start_one(store, request()).await;
        assert_eq!(batch.ids.len(), 1);
        order.push(ids(&batch)[0]);
    }
    order
}

/// Which letter a batch's id stands for: ids `k*1000+1 ..= k*1000+999` are
/// the `k`th lane (A, B, C, …).
fn lane(id: u32) -> char {
    char::from(b'A' + u8::try_from(id / 1000).unwrap())
}

fn lanes(order: &[u32]) -> String {
    order.iter().map(|&id| lane(id)).collect()
}

/// `n` ids of lane `letter`, from its first.
fn lane_ids(letter: char, n: u32) -> Vec<u32> {
    let base = (u32::from(letter) - u32::from('A')) * 1000;
    (base + 1..=base + n).collect()
}

/// The ids of `letter` in `order` are its own first ones, in order: inside a
/// lane, the contract's order.
fn assert_lane_in_order(order: &[u32], letter: char) {
    let mine: Vec<u32> = order
        .iter()
        .copied()
        .filter(|&id| lane(id) == letter)
        .collect();
    let first = lane_ids(letter, mine.len() as u32);
    assert_eq!(mine, first, "lane {letter} out of its own order");
}

/// No lane takes two turns in a row in `sequence`.
fn assert_alternates(sequence: &str) {
    let chars: Vec<char> = sequence.chars().collect();
    for pair in chars.windows(2) {
        assert_ne!(pair[0], pair[1], "two turns in a row in {sequence}");
    }
}

async fn a_tenant_that_arrives_behind_a_backlog_takes_every_other_turn(store: &dyn Store) {
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("a"),
        None,
        &lane_ids('A', 100),
    )
    .await;
    let before = claim_ids(store, 3, || fair_claim("default")).await;
    assert_eq!(lanes(&before), "AAA", "alone, A takes every turn");
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("b"),
        None,
        &lane_ids('B', 10),
    )
    .await;

    let order = claim_ids(store, 20, || fair_claim("default")).await;
    let sequence = lanes(&order);
    eprintln!("fairness A100 then B10 (store): AAA|{sequence}");
    assert_eq!(
        sequence.matches('B').count(),
        10,
        "B's 10 within 20 claims: {sequence}"
    );
    assert_alternates(&sequence);
    assert_lane_in_order(&[before.clone(), order.clone()].concat(), 'A');
    assert_lane_in_order(&order, 'B');
    // B is done: A has every turn again.
    let rest = claim_ids(store, 5, || fair_claim("default")).await;
    assert_eq!(lanes(&rest), "AAAAA");
}

async fn weights_give_turns_in_proportion(store: &dyn Store) {
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("a"),
        None,
        &lane_ids('A', 60),
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("b"),
        None,
        &lane_ids('B', 60),
    )
    .await;
    let order = claim_ids(store, 40, || weighted("default", "a", 3)).await;
    let sequence = lanes(&order);
    eprintln!("fairness weights a=3 b=1 (store): {sequence}");
    assert_eq!(sequence.matches('A').count(), 30, "{sequence}");
    assert_eq!(sequence.matches('B').count(), 10, "{sequence}");
    // Spread out, not 30 then 10: every prefix is within 2 of 3:1.
    for n in 1..=order.len() {
        let b = sequence[..n].matches('B').count() as f64;
        assert!(
            (b - n as f64 / 4.0).abs() <= 2.0,
            "prefix {n} of {sequence} has {b} B"
        );
    }
    assert_lane_in_order(&order, 'A');
    assert_lane_in_order(&order, 'B');

    // A weight is per tenant: in another queue, b weighted 3 turns it round.
    submit_as(
        store,
        "alpha",
        Priority::Medium,
        Some("a"),
        None,
        &lane_ids('A', 30),
    )
    .await;
    submit_as(
        store,
        "alpha",
        Priority::Medium,
        Some("b"),
        None,
        &lane_ids('B', 30),
    )
    .await;
    let reversed = claim_ids(store, 20, || weighted("alpha", "b", 3)).await;
    let sequence = lanes(&reversed);
    eprintln!("fairness weights a=1 b=3 (store): {sequence}");
    assert_eq!(
        sequence.matches('B').count(),
        15,
        "b weighted 3: {sequence}"
    );
}

async fn fifo_keeps_the_contracts_order_with_tenants(store: &dyn Store) {
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("a"),
        None,
        &lane_ids('A', 100),
    )
    .await;
    let fifo = || with_max_in_flight(claim("default", NO_LIMIT), MANY_IN_FLIGHT);
    let mut order = claim_ids(store, 3, fifo).await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("b"),
        None,
        &lane_ids('B', 10),
    )
    .await;
    order.extend(claim_ids(store, 107, fifo).await);
    let expected: Vec<u32> = [lane_ids('A', 100), lane_ids('B', 10)].concat();
    assert_eq!(order, expected, "fifo: oldest request first, then position");
    assert_outcome(store, fifo(), "idle").await;
}

async fn groups_take_turns_inside_a_tenant_and_tenantless_requests_are_one_tenant(
    store: &dyn Store,
) {
    // Tenant t: groups g1 (A) and g2 (B), g1 first; tenant u (C) alone.
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("t"),
        Some("g1"),
        &lane_ids('A', 20),
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("t"),
        Some("g2"),
        &lane_ids('B', 20),
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("u"),
        None,
        &lane_ids('C', 20),
    )
    .await;
    let order = claim_ids(store, 20, || fair_claim("default")).await;
    let sequence = lanes(&order);
    eprintln!("fairness groups g1=A g2=B of t, tenant u=C (store): {sequence}");
    // Tenants alternate: t (A or B) and u (C) ...
    let tenants: String = sequence
        .chars()
        .map(|c| if c == 'C' { 'u' } else { 't' })
        .collect();
    assert_alternates(&tenants);
    // ... and t's turns alternate between its groups.
    let groups: String = sequence.chars().filter(|&c| c != 'C').collect();
    assert_eq!(groups.len(), 10, "{sequence}");
    assert_alternates(&groups);
    for letter in ['A', 'B', 'C'] {
        assert_lane_in_order(&order, letter);
    }

    // In another queue: two requests without a tenant (D then E) are one
    // tenant, in the contract's order, sharing turns with tenant v (F).
    submit_as(
        store,
        "alpha",
        Priority::Medium,
        None,
        None,
        &lane_ids('D', 20),
    )
    .await;
    submit_as(
        store,
        "alpha",
        Priority::Medium,
        None,
        None,
        &lane_ids('E', 20),
    )
    .await;
    submit_as(
        store,
        "alpha",
        Priority::Medium,
        Some("v"),
        None,
        &lane_ids('F', 20),
    )
    .await;
    let order = claim_ids(store, 20, || fair_claim("alpha")).await;
    let sequence = lanes(&order);
    eprintln!("fairness tenantless D, E and tenant v=F (store): {sequence}");
    assert_eq!(sequence.matches('F').count(), 10, "{sequence}");
    assert_eq!(sequence.matches('D').count(), 10, "D before E: {sequence}");
    let tenants: String = sequence
        .chars()
        .map(|c| if c == 'F' { 'v' } else { '-' })
        .collect();
    assert_alternates(&tenants);

    // Groups of a request without a tenant take turns too (G and H).
    submit_as(
        store,
        "beta",
        Priority::Medium,
        None,
        Some("g1"),
        &lane_ids('G', 10),
    )
    .await;
    submit_as(
        store,
        "beta",
        Priority::Medium,
        None,
        Some("g2"),
        &lane_ids('H', 10),
    )
    .await;
    let order = claim_ids(store, 10, || fair_claim("beta")).await;
    let sequence = lanes(&order);
    assert_eq!(sequence.matches('H').count(), 5, "{sequence}");
    assert_alternates(&sequence);
}

async fn priorities_come_before_tenant_turns(store: &dyn Store) {
    // b's LOW is the oldest request; a and b share MEDIUM.
    submit_as(
        store,
        "default",
        Priority::Low,
        Some("b"),
        None,
        &lane_ids('C', 3),
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("a"),
        None,
        &lane_ids('A', 10),
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("b"),
        None,
        &lane_ids('B', 10),
    )
    .await;
    let mut order = claim_ids(store, 3, || fair_claim("default")).await;
    // Whoever's turn is next, every waiting HIGH goes first: d's three (D),
    // arriving after the turns began, and then a's one (E).
    let next = lane(*order.last().unwrap());
    submit_as(
        store,
        "default",
        Priority::High,
        Some("d"),
        None,
        &lane_ids('D', 3),
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::High,
        Some("a"),
        None,
        &lane_ids('E', 1),
    )
    .await;
    order.extend(claim_ids(store, 24, || fair_claim("default")).await);
    let sequence = lanes(&order);
    eprintln!("fairness priorities (store; {next} went last before HIGH came): {sequence}");
    let high = &sequence[3..7];
    assert!(high.chars().all(|c| c == 'D' || c == 'E'), "{sequence}");
    assert_eq!(high.matches('D').count(), 3, "{sequence}");
    let medium = &sequence[7..24];
    assert!(medium.chars().all(|c| c == 'A' || c == 'B'), "{sequence}");
    assert!(
        !medium.contains("AAA") && !medium.contains("BBB"),
        "{sequence}"
    );
    assert_alternates(&sequence[..3]);
    assert_eq!(
        &sequence[24..],
        "CCC",
        "LOW last, whatever b's turn: {sequence}"
    );
    assert_outcome(store, fair_claim("default"), "idle").await;
}

async fn aging_lifts_a_batch_that_waited_and_only_with_aging_set(store: &dyn Store) {
    const AGING_US: i64 = 10_000_000;
    let aging = Interval::from_duration(Duration::from_micros(AGING_US as u64));
    // In each queue: a LOW created 25 s ago (two agings: ranks as HIGH), a
    // LOW created 15 s ago (one aging: MEDIUM), then HIGH and MEDIUM now.
    for queue_name in ["default", "alpha"] {
        for (letter, waited) in [('A', 25_000_000), ('B', 15_000_000)] {
            let mut old = new_ingestion(queue_name, Priority::Low, &lane_ids(letter, 2));
            old.created_at = now().saturating_add_micros(-waited);
            old.tenant = Some(TenantName::parse("late").unwrap());
            store.create_ingestion(old).await.unwrap();
        }
        submit_as(
            store,
            queue_name,
            Priority::High,
            Some("h"),
            None,
            &lane_ids('C', 2),
        )
        .await;
        submit_as(
            store,
            queue_name,
            Priority::Medium,
            Some("m"),
            None,
            &lane_ids('D', 2),
        )
        .await;
    }
    for fairness in [Fairness::Tenant, Fairness::Fifo] {
        let queue_name = if fairness == Fairness::Tenant {
            "default"
        } else {
            "alpha"
        };
        let aged = || {
            ordered(
                queue_name,
                DispatchOrder {
                    fairness,
                    aging: Some(aging),
                    ..DispatchOrder::default()
                },
            )
        };
        let sequence = lanes(&claim_ids(store, 8, aged).await);
        eprintln!("aging {fairness:?} (store): {sequence}");
        // Aged batches go before the work native to the level they reached.
        assert_eq!(sequence, "AACCBBDD", "{fairness:?} with aging");
    }

    // Without aging the same batches wait for every HIGH and MEDIUM.
    for (letter, waited) in [('A', 25_000_000), ('B', 15_000_000)] {
        let mut old = new_ingestion("beta", Priority::Low, &lane_ids(letter, 2));
        old.created_at = now().saturating_add_micros(-waited);
        store.create_ingestion(old).await.unwrap();
    }
    submit_as(
        store,
        "beta",
        Priority::High,
        Some("h"),
        None,
        &lane_ids('C', 2),
    )
    .await;
    submit_as(
        store,
        "beta",
        Priority::Medium,
        Some("m"),
        None,
        &lane_ids('D', 2),
    )
    .await;
    let sequence = lanes(&claim_ids(store, 8, || fair_claim("beta")).await);
    assert_eq!(sequence, "CCDDAABB", "without aging");
}

async fn a_tenant_back_from_idle_gets_no_banked_turns(store: &dyn Store) {
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("a"),
        None,
        &lane_ids('A', 100),
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("b"),
        None,
        &[1001, 1002],
    )
    .await;
    let first = lanes(&claim_ids(store, 12, || fair_claim("default")).await);
    assert_eq!(first.matches('B').count(), 2, "{first}");
    assert_alternates(&first[..4]);
    // A ran alone for eight turns; b comes back and joins at the current
    // turn, with no credit for the time it had nothing waiting.
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("b"),
        None,
        &(1003..=1012).collect::<Vec<_>>(),
    )
    .await;
    let order = claim_ids(store, 20, || fair_claim("default")).await;
    let sequence = lanes(&order);
    eprintln!("fairness idle b back (store): {first}|{sequence}");
    assert_eq!(sequence.matches('B').count(), 10, "{sequence}");
    assert_alternates(&sequence);
}

async fn cancelled_work_gives_up_its_turns(store: &dyn Store) {
    let a = submit_as(
        store,
        "default",
        Priority::Medium,
        Some("a"),
        None,
        &lane_ids('A', 10),
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("b"),
        None,
        &lane_ids('B', 10),
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("c"),
        None,
        &lane_ids('C', 10),
    )
    .await;
    let first = lanes(&claim_ids(store, 3, || fair_claim("default")).await);
    assert_eq!(first.len(), 3);
    for letter in ['A', 'B', 'C'] {
        assert!(first.contains(letter), "{first}");
    }
    assert_eq!(store.cancel_ingestion(a, now()).await.unwrap(), Some(9));
    // a's turns go to the others; nothing of a's starts, and the queue is
    // never idle while b and c wait.
    let order = claim_ids(store, 18, || fair_claim("default")).await;
    let sequence = lanes(&order);
    eprintln!("fairness a cancelled (store): {first}|{sequence}");
    assert!(!sequence.contains('A'), "{sequence}");
    assert_alternates(&sequence);
    assert_outcome(store, fair_claim("default"), "idle").await;
    // a comes back with new work, and has turns again.
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("a"),
        None,
        &[11, 12],
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("b"),
        None,
        &[1011, 1012],
    )
    .await;
    // (b keeps the turn it paid for before it went idle, so a, joining
    // where the turns are, may take two in a row: "AABB".)
    let back = lanes(&claim_ids(store, 4, || fair_claim("default")).await);
    eprintln!("fairness a and b back (store): {back}");
    assert_eq!(back.matches('A').count(), 2, "{back}");
    assert_outcome(store, fair_claim("default"), "idle").await;
}

async fn a_claim_of_several_takes_them_in_turn(store: &dyn Store) {
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("a"),
        None,
        &lane_ids('A', 10),
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("b"),
        None,
        &lane_ids('B', 10),
    )
    .await;
    let mut sequence = String::new();
    for _ in 0..3 {
        let mut request = fair_claim("default");
        request.batches = NonZeroUsize::new(4).unwrap();
        let started = start(store, request).await;
        assert_eq!(started.len(), 4, "no interval: four in one claim");
        sequence.extend(started.iter().map(|b| lane(ids(b)[0])));
    }
    eprintln!("fairness claims of 4 (store): {sequence}");
    assert_alternates(&sequence);
}

async fn a_due_retry_goes_first_in_its_priority(store: &dyn Store) {
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("a"),
        None,
        &lane_ids('A', 10),
    )
    .await;
    submit_as(
        store,
        "default",
        Priority::Medium,
        Some("b"),
        None,
        &lane_ids('B', 10),
    )
    .await;
    let failed = start_one(store, fair_claim("default")).await;
    let retried = ids(&failed)[0];
    let end = AttemptEnd::RetryAt(now());
    assert!(
        !store
            .finish_attempt(failed.key, Vec::new(), end, now())
            .await
            .unwrap()
    );
    // Due now: it goes before the other tenant's turn ...
    let again = start_one(store, fair_claim("default")).await;
    assert_eq!((ids(&again)[0], again.attempt), (retried, 2));
    // ... and the turns go on.
    let sequence = lanes(&claim_ids(store, 6, || fair_claim("default")).await);
    eprintln!(
        "fairness after a retry of {} (store): {sequence}",
        lane(retried)
    );
    assert_alternates(&sequence);
    assert_eq!(sequence.matches('A').count(), 3, "{sequence}");
}

/// As the dispatcher runs a queue with one batch in flight: each claim's batch
/// completes before the next claim.
async fn turns_hold_when_each_batch_completes_before_the_next_claim(store: &dyn Store) {
    let run = |n: usize| async move {
        let mut order = Vec::new();
        for _ in 0..n {
            let batch = start_one(store, fair_claim("default")).await;
            order.push(ids(&batch)[0]);
            finish(store, &batch, AttemptEnd::Completed).await;
        }
        order
    };
    let medium = Priority::Medium;
    submit_as(
        store,
        "default",
        medium,
        Some("a"),
        None,
        &lane_ids('A', 100),
    )
    .await;
    let mut before = lanes(&run(3).await);
    // b comes while one of a's is processing.
    let processing = start_one(store, fair_claim("default")).await;
    before.push(lane(ids(&processing)[0]));
    submit_as(
        store,
        "default",
        medium,
        Some("b"),
        None,
        &lane_ids('B', 10),
    )
    .await;
    finish(store, &processing, AttemptEnd::Completed).await;
    let sequence = lanes(&run(20).await);
    eprintln!("fairness A100 then B10, each completed (store): {before}|{sequence}");
    assert_eq!(sequence.matches('B').count(), 10, "{sequence}");
    assert_alternates(&sequence);
}

/// b's request is stored while claims go on (as on a busy node, or another
/// node): it joins where the turns are when it commits, not where they were
/// when its transaction began.
async fn a_tenant_that_arrives_during_claims_joins_at_the_current_turn(store: &dyn Store) {
    let medium = Priority::Medium;
    submit_as(
        store,
        "default",
        medium,
        Some("a"),
        None,
        &lane_ids('A', 400),
    )
    .await;
    // Until all of b's 10 have started, however fast the claims go (a quick
    // machine makes dozens before b commits).
    let claims = async {
        let mut order = Vec::new();
        while order.iter().filter(|&&id| lane(id) == 'B').count() < 10 && order.len() < 410 {
            let batch = start_one(store, fair_claim("default")).await;
            order.push(ids(&batch)[0]);
            finish(store, &batch, AttemptEnd::Completed).await;
        }
        order
    };
    let arrival = async {
        // A few claims in, while they go on.
        tokio::time::sleep(Duration::from_millis(30)).await;
        submit_as(
            store,
            "default",
            medium,
            Some("b"),
            None,
            &lane_ids('B', 10),
        )
        .await;
    };
    let (order, ()) = tokio::join!(claims, arrival);
    let sequence = lanes(&order);
    let first_b = sequence.find('B').expect("b started");
    eprintln!(
        "fairness b arrives during claims (store): {}|{}",
        &sequence[..first_b],
        &sequence[first_b..]
    );
    assert_eq!(sequence.matches('B').count(), 10, "{sequence}");
    assert_alternates(&sequence[first_b..]);
}

async fn a_group_back_from_idle_gets_no_banked_turns(store: &dyn Store) {
    // One tenant, t: its groups g1 (A) and g2 (B) share its turns.
    let medium = Priority::Medium;
    submit_as(
        store,
        "default",
        medium,
        Some("t"),
        Some("g1"),
        &lane_ids('A', 100),
    )
    .await;
    submit_as(
        store,
        "default",
        medium,
        Some("t"),
        Some("g2"),
        &[1001, 1002],
    )
    .await;
    let first = lanes(&claim_ids(store, 12, || fair_claim("default")).await);
    assert_eq!(first.matches('B').count(), 2, "{first}");
    let again: Vec<u32> = (1003..=1012).collect();
    submit_as(store, "default", medium, Some("t"), Some("g2"), &again).await;
    let sequence = lanes(&claim_ids(store, 20, || fair_claim("default")).await);
    eprintln!("fairness idle group g2 back (store): {first}|{sequence}");
    assert_eq!(sequence.matches('B').count(), 10, "{sequence}");
    assert_alternates(&sequence);
}
