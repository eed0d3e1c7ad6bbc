//! Durable storage of requests, batches and the dispatcher's rate-limit state.
//!
//! Everything Sluice persists goes through the [`Store`] trait, so backends sit
//! side by side: [`sqlite`] is the embedded default. A store must:
//! - commit a request and all its batches before `create_ingestion` returns, and
//!   may group many callers into one commit (the SQLite store does);
//! - claim batches in the contract's order (priority, then arrival, then position
//!   in the request), taking the rate limit in the same commit as the claim;
//! - commit every transition before returning, so no client sees a state that a
//!   crash could take back.

mod codec;
pub mod postgres;
pub mod sqlite;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::domain::{
    BatchId, BatchSize, BatchStatus, GroupName, IdOutcome, IngestionId, IngestionStatus, Interval,
    ItemId, Priority, TenantName, Timestamp,
};
use crate::queue::{DispatchOrder, QueueName};
use crate::signals::Signals;

/// The one store handle that the API and the dispatcher share.
pub type SharedStore = Arc<dyn Store>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database failed or could not be reached; the operation did not happen.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store's background writer has stopped (the service is shutting down).
    #[error("the store is closed")]
    Closed,
    /// The database holds something this version cannot read.
    #[error("the store holds unexpected data: {0}")]
    Corrupt(String),
    /// The database refused what it was given for its content (too large, a
    /// value it cannot represent), not because it is down: asking again
    /// would fail the same way.
    #[error("the store refused the data: {0}")]
    Rejected(String),
}

/// A validated request, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewIngestion {
    pub id: IngestionId,
    /// A queue the store knows (see [`Store::register_queues`]).
    pub queue: QueueName,
    pub priority: Priority,
    pub ids: Vec<ItemId>,
    pub batch_size: BatchSize,
    pub created_at: Timestamp,
    /// Where to POST the final status once the request has ended.
    pub callback_url: Option<String>,
    pub idempotency: Option<IdempotencyKey>,
    /// The tenant of the key that submitted it; `None` for a key without one.
    pub tenant: Option<TenantName>,
    /// Whom inside its tenant the request is for, as the request named it.
    pub group: Option<GroupName>,
}

impl NewIngestion {
    /// The request's batches, in order.
    pub fn batches(&self) -> impl ExactSizeIterator<Item = &[ItemId]> {
        self.ids.chunks(self.batch_size.get())
    }
}

/// An `Idempotency-Key` and what it promises.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// A digest of the request's content: the same key with other content is a
    /// client error, not a replay.
    pub fingerprint: [u8; 32],
    /// Until when the key holds; an expired key is free for a new request.
    pub expires_at: Timestamp,
}

/// What `create_ingestion` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new request, now durable.
    New(IngestionId),
    /// The idempotency key was used before with the same content: that request.
    Replayed(IngestionId),
    /// The idempotency key was used before with other content; nothing stored.
    KeyConflict,
}

/// A stored request, as clients see it.
#[derive(Debug, Clone)]
pub struct IngestionRecord {
    pub id: IngestionId,
    pub queue: QueueName,
    pub tenant: Option<TenantName>,
    pub group: Option<GroupName>,
    pub priority: Priority,
    pub created_at: Timestamp,
    /// When the last batch ended.
    pub finished_at: Option<Timestamp>,
    pub callback: Option<CallbackRecord>,
    pub batches: Vec<BatchRecord>,
}

#[derive(Debug, Clone)]
pub struct BatchRecord {
    pub id: BatchId,
    pub ids: Vec<ItemId>,
    pub status: BatchStatus,
    pub attempts: u32,
    /// Retrying: when the next attempt may start.
    pub retry_at: Option<Timestamp>,
    /// The slot of the latest start on the rate limiter's grid.
    pub scheduled_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    /// When the batch ended: completed, failed or cancelled.
    pub completed_at: Option<Timestamp>,
}

/// The completion callback of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRecord {
    pub url: String,
    pub state: CallbackState,
    pub attempts: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackState {
    /// The request has not ended, or delivery is under way.
    Pending,
    Delivered,
    /// Every attempt failed.
    GaveUp,
}

/// A batch with the outcomes of its ids so far, for the results API.
#[derive(Debug, Clone)]
pub struct BatchOutcomes {
    pub id: BatchId,
    pub ids: Vec<ItemId>,
    pub status: BatchStatus,
    /// One entry per id fetched so far, in the ids' order.
    pub outcomes: Vec<IdOutcome>,
}

/// Where a stored batch lives: its request's arrival number and its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchKey {
    pub ingestion_seq: i64,
    pub position: u32,
}

/// What the dispatcher asks for when it wants to start a batch of a queue.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub queue: QueueName,
    /// Since when the dispatcher has been ready to start: it learnt of work or
    /// of a free processing slot then. `None` when it has been waiting for the
    /// time the store named (`NotBefore`), and so was ready for that slot. The
    /// start's slot is `max(ready_since, previous slot + interval)`, so a
    /// backlog runs on an exact grid without drift.
    pub ready_since: Option<Timestamp>,
    /// The time now, recorded as the batch's `started_at`.
    pub now: Timestamp,
    /// The minimum spacing between two starts in the queue, zero for no
    /// limit, as configured: an interval set at runtime, kept in the queue's
    /// row, replaces it.
    pub interval: Interval,
    /// The spacing the queue's upstream asks for now (adaptive rate): the
    /// claim keeps at least this much, whatever the interval.
    pub slow_down: Interval,
    /// How many of the queue's batches may be `triggered` at once, across the
    /// whole service, as configured; a limit set at runtime replaces it.
    pub max_in_flight: NonZeroUsize,
    /// At most this many starts in one claim. The store takes several in one
    /// commit only when the rate allows them all now (no interval): that is
    /// what makes an unthrottled dispatcher cost one commit per group rather
    /// than one per batch.
    pub batches: NonZeroUsize,
    /// The queue's order inside a priority: fair turns and aging.
    pub order: DispatchOrder,
}

impl ClaimRequest {
    /// The request with the queue's stored runtime settings in force: the
    /// claim's own view, read in the same commit.
    pub fn in_force(&self, runtime: &QueueRuntime) -> Self {
        let interval = runtime.interval.unwrap_or(self.interval);
        Self {
            interval: interval.max(self.slow_down),
            max_in_flight: runtime.max_in_flight.unwrap_or(self.max_in_flight),
            ..self.clone()
        }
    }

    /// The slot of a start claimed now, given the previous slot.
    ///
    /// A claim that comes later than its slot by more than a small tolerance
    /// (a slow store, a starved process) starts a new grid at `now` instead:
    /// the previous starts were late too, and keeping the old grid would let
    /// the next start follow this one by less than an interval.
    pub fn slot_after(&self, previous: Option<Timestamp>) -> Timestamp {
        let tolerance = self.interval.late_tolerance_micros();
        let mut slot = self.now.saturating_add_micros(-tolerance);
        if let Some(ready_since) = self.ready_since {
            slot = slot.max(ready_since);
        }
        if let Some(previous) = previous {
            slot = slot.max(previous.saturating_add_micros(self.interval.as_micros()));
        }
        slot.min(self.now)
    }

    /// When the rate limit next allows a start, given the previous slot.
    pub fn next_allowed(&self, previous: Option<Timestamp>) -> Option<Timestamp> {
        let next = previous?.saturating_add_micros(self.interval.as_micros());
        (self.now < next).then_some(next)
    }
}

/// The answer to a [`ClaimRequest`].
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// These batches (one or more, in dispatch order) are now `triggered`, and
    /// their starts are committed.
    Started(Vec<ClaimedBatch>),
    /// No start before this time: the rate limit, or the earliest retry.
    NotBefore(Timestamp),
    /// `max_in_flight` batches are processing; wait for one to complete.
    Busy,
    /// The queue is paused: nothing starts until it is resumed.
    Paused,
    /// No batch is waiting.
    Idle,
}

#[derive(Debug, Clone)]
pub struct ClaimedBatch {
    pub key: BatchKey,
    pub id: BatchId,
    pub priority: Priority,
    pub ids: Vec<ItemId>,
    /// 1 on the first run; more after retries or a crash.
    pub attempt: u32,
    /// The slot this start took on the rate limiter's grid.
    pub slot: Timestamp,
    /// Outcomes of earlier attempts, one per id fetched so far.
    pub outcomes: Vec<IdOutcome>,
}

/// How an attempt at a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Every id has its data.
    Completed,
    /// Every id has a final outcome, and one or more is an error.
    Failed,
    /// Some ids failed transiently: back to the queue, in its place, not before
    /// this time.
    RetryAt(Timestamp),
}

/// A completion callback that is due.
#[derive(Debug, Clone)]
pub struct DueCallback {
    pub ingestion: IngestionId,
    pub url: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// How a callback delivery went.
#[derive(Debug, Clone)]
pub enum CallbackDelivery {
    Delivered,
    RetryAt(Timestamp, String),
    GaveUp(String),
}

/// One status change, as the live progress streams serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Increasing in commit order: the SSE event id.
    pub seq: u64,
    pub ingestion: IngestionId,
    pub subject: EventSubject,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSubject {
    Batch { position: u32, status: BatchStatus },
    Ingestion { status: IngestionStatus },
}

/// A request in a list: its state without its batches.
#[derive(Debug, Clone)]
pub struct IngestionSummary {
    pub id: IngestionId,
    pub queue: QueueName,
    pub tenant: Option<TenantName>,
    pub group: Option<GroupName>,
    pub priority: Priority,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub ids: u64,
    /// `(status, number of batches)` for the statuses it has.
    pub batches: Vec<(BatchStatus, u64)>,
}

/// What the store keeps of a queue besides its batches: changed only by an
/// operator (`pause`, `resume`, `PATCH`) and by its claims (`last_slot`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueRuntime {
    pub paused: bool,
    /// Set at runtime; `None`: the configured interval.
    pub interval: Option<Interval>,
    /// Set at runtime; `None`: the configured limit.
    pub max_in_flight: Option<NonZeroUsize>,
    /// The slot of the queue's latest start, if any.
    pub last_slot: Option<Timestamp>,
}

/// A queue as the store sees it: its row, and its batches by priority and
/// status (only non-zero counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueState {
    pub runtime: QueueRuntime,
    pub batches: Vec<(Priority, BatchStatus, u64)>,
}

/// An operator's change to a queue; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueChange {
    pub paused: Option<bool>,
    /// `Some(None)` returns the interval to the configured one.
    pub interval: Option<Option<Interval>>,
    /// `Some(None)` returns the limit to the configured one.
    pub max_in_flight: Option<Option<NonZeroUsize>>,
}

/// How many batches are in each state, per priority, and how many requests exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub ingestions: u64,
    /// `(priority, status, number of batches)`, only for non-zero counts.
    pub batches: Vec<(Priority, BatchStatus, u64)>,
    /// The slot of the latest start, if any.
    pub last_slot: Option<Timestamp>,
    /// The batches processing now, with their start times (at most 100).
    pub running: Vec<(BatchId, Timestamp)>,
    /// When the oldest request still kept arrived.
    pub oldest_ingestion_at: Option<Timestamp>,
    /// When the last pruning pass ended, on any node.
    pub last_prune_at: Option<Timestamp>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a request and all its batches; returns once they are durable.
    /// With an idempotency key, a replay stores nothing.
    async fn create_ingestion(&self, new: NewIngestion) -> Result<Created, StoreError>;

    /// A request and its batches, in order; `None` if unknown.
    async fn ingestion(&self, id: IngestionId) -> Result<Option<IngestionRecord>, StoreError>;

    /// A request with at most `limit` of its batches: those after position
    /// `after` (from the first with `None`), in order; `None` if unknown. A
    /// large request is read page by page with it, in constant memory.
    async fn ingestion_page(
        &self,
        id: IngestionId,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Option<IngestionRecord>, StoreError>;

    /// Starts the next batches in dispatch order, as many as the rate limit,
    /// the in-flight limit and `request.batches` allow, in one commit.
    async fn claim_batches(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError>;

    /// Records an attempt's outcomes (all the batch's outcomes so far) and where
    /// the batch goes next. Returns whether this ended the whole request.
    async fn finish_attempt(
        &self,
        batch: BatchKey,
        outcomes: Vec<IdOutcome>,
        end: AttemptEnd,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Cancels the request's batches that have not started (or are waiting for
    /// a retry); a batch processing now finishes. `None` if the request is
    /// unknown; otherwise how many batches were cancelled (0 the second time).
    async fn cancel_ingestion(
        &self,
        id: IngestionId,
        at: Timestamp,
    ) -> Result<Option<u64>, StoreError>;

    /// Up to `limit` batches of a request after position `after`, with their
    /// outcomes; `None` if the request is unknown.
    async fn batch_outcomes(
        &self,
        id: IngestionId,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Option<Vec<BatchOutcomes>>, StoreError>;

    /// Puts batches that were processing when a previous process died back in
    /// the queue, ahead of every other waiting batch whatever its priority;
    /// they still read `triggered` (a status never goes backwards) and no
    /// longer count as processing. Returns how many. Called once, at start.
    async fn requeue_interrupted(&self, at: Timestamp) -> Result<u64, StoreError>;

    /// Hands the batches of `queue` this process is still processing back to the queue,
    /// as `requeue_interrupted` does: called at shutdown once the grace period
    /// is over, so nobody waits for them, and by a dispatcher restarted after
    /// a panic, for the batches its dead run abandoned.
    async fn release_unfinished(&self, queue: &QueueName, at: Timestamp)
    -> Result<u64, StoreError>;

    /// Takes up to `limit` callbacks due at `now`, and holds them for `hold` so
    /// no other process delivers them meanwhile.
    async fn claim_due_callbacks(
        &self,
        now: Timestamp,
        hold: Duration,
        limit: usize,
    ) -> Result<Vec<DueCallback>, StoreError>;

    /// Records how a delivery went.
    async fn finish_callback(
        &self,
        ingestion: IngestionId,
        delivery: CallbackDelivery,
    ) -> Result<(), StoreError>;

    /// When the next pending callback is due, if any.
    async fn next_callback_due(&self) -> Result<Option<Timestamp>, StoreError>;

    /// Up to `limit` events after `after`, of one request or of all.
    async fn events_after(
        &self,
        after: u64,
        ingestion: Option<IngestionId>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// The id of the latest event (0 if none).
    async fn latest_event(&self) -> Result<u64, StoreError>;

    /// The id of the oldest event still kept, if any: events before it may
    /// have been pruned. A store that never prunes keeps them all.
    async fn oldest_event(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// The most recent requests, newest first, without their batches.
    async fn recent_ingestions(&self, limit: usize) -> Result<Vec<IngestionSummary>, StoreError>;

    /// The most recent requests of `tenant`, newest first, without their
    /// batches: what `GET /ingestions` lists to a tenant's key.
    async fn tenant_ingestions(
        &self,
        tenant: &TenantName,
        limit: usize,
    ) -> Result<Vec<IngestionSummary>, StoreError>;

    /// Up to `limit` events after `after` of `tenant`'s requests: what
    /// `GET /events` streams to a tenant's key.
    async fn tenant_events_after(
        &self,
        after: u64,
        tenant: &TenantName,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// How many batches wait to start (including those between attempts),
    /// per queue that has any.
    async fn waiting_batches(&self) -> Result<Vec<(QueueName, u64)>, StoreError>;

    /// Makes sure the store has a row for each of these queues; called at
    /// start, before anything else uses them. Queues it has that are not
    /// named keep their rows (and their work, which waits until the queue is
    /// configured again).
    async fn register_queues(&self, names: &[QueueName]) -> Result<(), StoreError>;

    /// A queue's row and batch counts; `None` if the store has no such queue.
    async fn queue_state(&self, name: &QueueName) -> Result<Option<QueueState>, StoreError>;

    /// Applies an operator's change to a queue, durably, and wakes every
    /// node's dispatcher so it takes effect from the next slot. `false` if
    /// the store has no such queue.
    async fn change_queue(&self, name: &QueueName, change: QueueChange)
    -> Result<bool, StoreError>;

    /// Whether the store answers and its schema is current.
    async fn check_ready(&self) -> Result<(), StoreError>;

    /// Counts for operators and tests.
    async fn stats(&self) -> Result<QueueStats, StoreError>;

    /// What the store runs in the background until `shutdown`, sending
    /// `signals` for what other processes did; the caller starts each part,
    /// and starts it again if it stops. The PostgreSQL store listens for
    /// other nodes' work and keeps its leases; a store used by one process
    /// needs nothing.
    fn background(&self, _signals: Signals, _shutdown: CancellationToken) -> Vec<BackgroundPart> {
        Vec::new()
    }

    /// How this store deletes what it keeps no longer, if it can.
    fn pruning(&self) -> Option<Arc<dyn Prune>> {
        None
    }
}

/// What one chunk of pruning deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub ingestions: u64,
    pub batches: u64,
    pub events: u64,
    pub idempotency_keys: u64,
    /// Fair-turn flows (a queue, priority, tenant and group) with nothing
    /// waiting: one is made for every group a request names, so without this
    /// they would pile up forever.
    pub flows: u64,
}

impl Pruned {
    pub fn add(&mut self, other: Pruned) {
        self.ingestions += other.ingestions;
        self.batches += other.batches;
        self.events += other.events;
        self.idempotency_keys += other.idempotency_keys;
        self.flows += other.flows;
    }
}

/// The capability to delete ended work: the background pruner's only view of
/// the store. Each call is one short transaction, so that pruning a long
/// history never holds the database for long.
#[async_trait]
pub trait Prune: Send + Sync + 'static {
    /// Deletes up to `limit` requests that ended before `ended_before` and
    /// whose callback, if any, is no longer pending, each with its batches,
    /// results and events; and up to `limit` idempotency keys expired at
    /// `now`. `None` when another node is pruning now: this one leaves it be.
    async fn prune_chunk(
        &self,
        ended_before: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<Option<Pruned>, StoreError>;

    /// Records that a pruning pass ended at `at`, for `/stats`.
    async fn record_pass(&self, at: Timestamp) -> Result<(), StoreError>;
}

/// A part of the store's background work, named for logs and `/readyz`.
pub struct BackgroundPart {
    pub name: &'static str,
    /// Makes one run of the part; called again for each restart.
    pub run: crate::supervisor::Part,
}

/// Opens the store a database URL names: `sqlite:` or `postgres:`.
pub async fn open(url: &str, leases: postgres::LeaseSettings) -> Result<SharedStore, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(url, leases).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else {
        Err(StoreError::Unavailable(format!(
            "unknown database URL {:?}: use sqlite://PATH or postgres://…",
            crate::redact::redacted_url(url)
        )))
    }
}
