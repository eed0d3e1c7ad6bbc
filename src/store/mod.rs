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

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{
    BatchId, BatchSize, BatchStatus, IngestionId, Interval, ItemId, Priority, Timestamp,
};

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
}

/// A validated request, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewIngestion {
    pub id: IngestionId,
    pub priority: Priority,
    pub ids: Vec<ItemId>,
    pub batch_size: BatchSize,
    pub created_at: Timestamp,
}

impl NewIngestion {
    /// The request's batches, in order.
    pub fn batches(&self) -> impl ExactSizeIterator<Item = &[ItemId]> {
        self.ids.chunks(self.batch_size.get())
    }
}

/// A stored request, as clients see it.
#[derive(Debug, Clone)]
pub struct IngestionRecord {
    pub id: IngestionId,
    pub priority: Priority,
    pub created_at: Timestamp,
    pub batches: Vec<BatchRecord>,
}

#[derive(Debug, Clone)]
pub struct BatchRecord {
    pub id: BatchId,
    pub ids: Vec<ItemId>,
    pub status: BatchStatus,
    pub attempts: u32,
    /// The slot of the latest start on the rate limiter's grid.
    pub scheduled_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
}

/// Where a stored batch lives: its request's arrival number and its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchKey {
    pub ingestion_seq: i64,
    pub position: u32,
}

/// What the dispatcher asks for when it wants to start a batch.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest {
    /// When the dispatcher became ready to start (it had a free processing slot
    /// and knew of work). The start's slot is `max(ready_at, previous slot +
    /// interval)`, so a backlog runs on an exact grid without drift.
    pub ready_at: Timestamp,
    /// The time now, recorded as the batch's `started_at`.
    pub now: Timestamp,
    /// The minimum spacing between two starts; zero for no limit.
    pub interval: Interval,
    /// How many batches may be `triggered` at once, across the whole service.
    pub max_in_flight: NonZeroUsize,
}

/// The answer to a [`ClaimRequest`].
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// The batch is now `triggered`, and the start is committed.
    Started(ClaimedBatch),
    /// The rate limit allows no start before this time.
    NotBefore(Timestamp),
    /// `max_in_flight` batches are processing; wait for one to complete.
    Busy,
    /// No batch is waiting.
    Idle,
}

#[derive(Debug, Clone)]
pub struct ClaimedBatch {
    pub key: BatchKey,
    pub id: BatchId,
    pub priority: Priority,
    pub ids: Vec<ItemId>,
    /// 1 on the first run; more when a crash interrupted earlier runs.
    pub attempt: u32,
    /// The slot this start took on the rate limiter's grid.
    pub slot: Timestamp,
}

/// How many batches are in each state, per priority, and how many requests exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub ingestions: u64,
    /// `(priority, status, number of batches)`, only for non-zero counts.
    pub batches: Vec<(Priority, BatchStatus, u64)>,
}

impl QueueStats {
    pub fn batches_in(&self, status: BatchStatus) -> u64 {
        self.batches
            .iter()
            .filter(|(_, s, _)| *s == status)
            .map(|(_, _, n)| n)
            .sum()
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a request and all its batches; returns once they are durable.
    async fn create_ingestion(&self, new: NewIngestion) -> Result<(), StoreError>;

    /// A request and its batches, in order; `None` if unknown.
    async fn ingestion(&self, id: IngestionId) -> Result<Option<IngestionRecord>, StoreError>;

    /// Starts the next batch in dispatch order if the rate limit allows it.
    async fn claim_next_batch(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError>;

    /// Records a batch's per-id results and marks it `completed`.
    async fn complete_batch(
        &self,
        batch: BatchKey,
        results: Vec<serde_json::Value>,
        completed_at: Timestamp,
    ) -> Result<(), StoreError>;

    /// The stored per-id results of a request's batch, in id order; `None` if the
    /// batch has not completed.
    async fn batch_results(
        &self,
        batch: BatchId,
    ) -> Result<Option<Vec<serde_json::Value>>, StoreError>;

    /// Puts batches that were `triggered` when a previous process died back in
    /// the queue, ahead of other waiting batches of their priority. Returns how
    /// many. Called once, at start.
    async fn requeue_interrupted(&self) -> Result<u64, StoreError>;

    /// Hands the batches this process still has `triggered` back to the queue,
    /// ahead of other waiting batches of their priority: called at shutdown,
    /// once the grace period is over, so nobody waits for them.
    async fn release_unfinished(&self) -> Result<u64, StoreError>;

    /// Counts for operators and tests.
    async fn stats(&self) -> Result<QueueStats, StoreError>;

    /// Starts what the store runs in the background until `shutdown`, calling
    /// `wake` whenever a claim may now succeed because of something another
    /// process did. The PostgreSQL store listens for other nodes' work and
    /// keeps its leases; a store used by one process needs nothing.
    fn watch(&self, _wake: Arc<Notify>, _shutdown: CancellationToken) {}
}

/// Opens the store a database URL names: `sqlite:` or `postgres:`.
pub async fn open(url: &str, leases: postgres::LeaseSettings) -> Result<SharedStore, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(url, leases).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else {
        Err(StoreError::Unavailable(format!(
            "unknown database URL {url:?}: use sqlite://PATH or postgres://…"
        )))
    }
}
