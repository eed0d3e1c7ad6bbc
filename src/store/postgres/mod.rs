//! The shared store: several `sluice serve` nodes on one PostgreSQL database
//! behave as one service.
//!
//! - **Claims** run `sluice_claim()` (see `migrations/postgres`), one round trip
//!   that locks the rate limiter's row, checks the rate and the in-flight limit
//!   on the database's clock, and takes the next batch with `FOR UPDATE SKIP
//!   LOCKED`. One rate for the cluster, whichever node claims.
//! - **Leases.** A claimed batch belongs to its node until `lease_expires_at`.
//!   The node renews its leases every heartbeat; any node re-queues batches
//!   whose lease ran out (their node died), and a node that stops cleanly hands
//!   its unfinished batches back at once.
//! - **Wake-ups.** New work, completions and re-queues `NOTIFY sluice_work`;
//!   every node `LISTEN`s, with a slow poll as a fallback.

mod background;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::codec::{decode_ids, encode_ids};
use super::{
    BatchKey, BatchRecord, ClaimOutcome, ClaimRequest, ClaimedBatch, IngestionRecord, NewIngestion,
    QueueStats, Store, StoreError,
};
use crate::domain::{BatchId, BatchStatus, IngestionId, Priority, Timestamp};

/// The channel on which nodes tell each other that a claim may now succeed.
const WAKE_CHANNEL: &str = "sluice_work";
/// How many batches one INSERT carries when a large request is stored.
const INSERT_CHUNK: usize = 10_000;

/// How the nodes of a cluster hand work to each other.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// How long a claim stays with its node without a heartbeat.
    pub lease: Duration,
    /// How often a node renews its leases and looks for expired ones.
    pub heartbeat: Duration,
    /// How often an idle node asks for work even without a notification.
    pub poll: Duration,
}

pub struct PostgresStore {
    pool: PgPool,
    /// This process, as the owner of its leases.
    node: Uuid,
    leases: LeaseSettings,
}

impl PostgresStore {
    /// Connects to a `postgres://` URL and applies pending migrations; several
    /// nodes may start at once (the migrator takes an advisory lock).
    pub async fn open(url: &str, leases: LeaseSettings) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrating the database: {e}")))?;
        Ok(Self {
            pool,
            node: Uuid::now_v7(),
            leases,
        })
    }

    /// Puts back in the queue every batch whose lease has run out.
    async fn requeue_expired(&self) -> Result<u64, StoreError> {
        requeue(
            &self.pool,
            "WHERE status = 1 AND lease_expires_at < sluice_now_us()",
            None,
        )
        .await
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_ingestion(&self, new: NewIngestion) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let seq: i64 = sqlx::query(
            "INSERT INTO ingestions (id, priority, created_at) VALUES ($1, $2, $3) RETURNING seq",
        )
        .bind(Uuid::from_bytes(*new.id.as_bytes()))
        .bind(new.priority.rank() as i16)
        .bind(new.created_at.as_micros())
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?
        .get(0);

        let batches: Vec<Vec<u8>> = new.batches().map(encode_ids).collect();
        for (chunk_index, chunk) in batches.chunks(INSERT_CHUNK).enumerate() {
            let first = (chunk_index * INSERT_CHUNK) as i32;
            sqlx::query(
                "INSERT INTO batches (ingestion_seq, position, priority, ids)
                 SELECT $1, $2 + ord - 1, $3, ids FROM unnest($4::bytea[]) WITH ORDINALITY AS t (ids, ord)",
            )
            .bind(seq)
            .bind(first)
            .bind(new.priority.rank() as i16)
            .bind(chunk)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        notify(&mut *tx).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn ingestion(&self, id: IngestionId) -> Result<Option<IngestionRecord>, StoreError> {
        let Some(head) =
            sqlx::query("SELECT seq, priority, created_at FROM ingestions WHERE id = $1")
                .bind(Uuid::from_bytes(*id.as_bytes()))
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let seq: i64 = head.get(0);
        let rows = sqlx::query(
            "SELECT position, status, attempts, ids, scheduled_at, started_at, completed_at
             FROM batches WHERE ingestion_seq = $1 ORDER BY position",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let batches = rows
            .iter()
            .map(|row| {
                let position: i32 = row.get(0);
                Ok(BatchRecord {
                    id: BatchId {
                        ingestion: id,
                        position: position as u32,
                    },
                    status: status(row.get(1))?,
                    attempts: row.get::<i32, _>(2) as u32,
                    ids: decode_ids(row.get(3))?,
                    scheduled_at: row.get::<Option<i64>, _>(4).map(Timestamp::from_micros),
                    started_at: row.get::<Option<i64>, _>(5).map(Timestamp::from_micros),
                    completed_at: row.get::<Option<i64>, _>(6).map(Timestamp::from_micros),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(IngestionRecord {
            id,
            priority: priority(head.get(1))?,
            created_at: Timestamp::from_micros(head.get(2)),
            batches,
        }))
    }

    async fn claim_next_batch(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let row = sqlx::query("SELECT * FROM sluice_claim($1, $2, $3, $4, $5, $6)")
            .bind(self.node)
            .bind(request.ready_at.as_micros())
            .bind(request.now.as_micros())
            .bind(request.interval.as_micros())
            .bind(i32::try_from(request.max_in_flight.get()).unwrap_or(i32::MAX))
            .bind(micros(self.leases.lease))
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        let outcome: &str = row.get("outcome");
        Ok(match outcome {
            "not_before" => ClaimOutcome::NotBefore(Timestamp::from_micros(row.get("not_before"))),
            "busy" => ClaimOutcome::Busy,
            "idle" => ClaimOutcome::Idle,
            "started" => {
                let ingestion_seq: i64 = row.get("ingestion_seq");
                let position = row.get::<i32, _>("batch_position") as u32;
                let ingestion: Uuid = row.get("ingestion_id");
                ClaimOutcome::Started(ClaimedBatch {
                    key: BatchKey {
                        ingestion_seq,
                        position,
                    },
                    id: BatchId {
                        ingestion: IngestionId::from_bytes(ingestion.into_bytes()),
                        position,
                    },
                    priority: priority(row.get("priority"))?,
                    ids: decode_ids(row.get("ids"))?,
                    attempt: row.get::<i32, _>("attempts") as u32,
                    slot: Timestamp::from_micros(row.get("slot")),
                })
            }
            other => return Err(StoreError::Corrupt(format!("claim outcome {other:?}"))),
        })
    }

    async fn complete_batch(
        &self,
        batch: BatchKey,
        results: Vec<serde_json::Value>,
        completed_at: Timestamp,
    ) -> Result<(), StoreError> {
        // Only the lease holder completes: a node whose lease ran out while it
        // worked must not overwrite the run that rescued its batch.
        let completed = sqlx::query(
            "WITH done AS (
                 UPDATE batches
                 SET status = 2, completed_at = $1, results = $2, lease_owner = NULL, lease_expires_at = NULL
                 WHERE ingestion_seq = $3 AND position = $4 AND status = 1 AND lease_owner = $5
                 RETURNING 1
             )
             SELECT pg_notify($6, '') FROM done",
        )
        .bind(completed_at.as_micros())
        .bind(sqlx::types::Json(&results))
        .bind(batch.ingestion_seq)
        .bind(batch.position as i32)
        .bind(self.node)
        .bind(WAKE_CHANNEL)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        if completed.is_none() {
            tracing::warn!(
                ?batch,
                "lease lost before completion; another node re-ran the batch"
            );
        }
        Ok(())
    }

    async fn batch_results(
        &self,
        batch: BatchId,
    ) -> Result<Option<Vec<serde_json::Value>>, StoreError> {
        let row = sqlx::query(
            "SELECT b.results FROM batches b JOIN ingestions i ON i.seq = b.ingestion_seq
             WHERE i.id = $1 AND b.position = $2",
        )
        .bind(Uuid::from_bytes(*batch.ingestion.as_bytes()))
        .bind(batch.position as i32)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row
            .and_then(|r| r.get::<Option<sqlx::types::Json<Vec<serde_json::Value>>>, _>(0))
            .map(|json| json.0))
    }

    async fn requeue_interrupted(&self) -> Result<u64, StoreError> {
        self.requeue_expired().await
    }

    async fn release_unfinished(&self) -> Result<u64, StoreError> {
        requeue(
            &self.pool,
            "WHERE status = 1 AND lease_owner = $1",
            Some(self.node),
        )
        .await
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let ingestions: i64 = sqlx::query("SELECT count(*) FROM ingestions")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?
            .get(0);
        let rows =
            sqlx::query("SELECT priority, status, count(*) FROM batches GROUP BY priority, status")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        let batches = rows
            .iter()
            .map(|row| {
                Ok((
                    priority(row.get(0))?,
                    status(row.get(1))?,
                    row.get::<i64, _>(2) as u64,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(QueueStats {
            ingestions: ingestions as u64,
            batches,
        })
    }

    fn watch(&self, wake: Arc<Notify>, shutdown: CancellationToken) {
        tokio::spawn(background::run(
            self.pool.clone(),
            self.node,
            self.leases,
            wake,
            shutdown,
        ));
    }
}

/// Puts `triggered` batches matching `filter` back in the queue, first in their
/// priority, and wakes every node if there were any.
async fn requeue(pool: &PgPool, filter: &str, node: Option<Uuid>) -> Result<u64, StoreError> {
    let sql = format!(
        "WITH back AS (
             UPDATE batches
             SET status = 0, lane = 0, lease_owner = NULL, lease_expires_at = NULL,
                 scheduled_at = NULL, started_at = NULL
             {filter}
             RETURNING 1
         ), counted AS (SELECT count(*) AS n FROM back)
         SELECT n, CASE WHEN n > 0 THEN pg_notify('{WAKE_CHANNEL}', '') END FROM counted"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    if let Some(node) = node {
        query = query.bind(node);
    }
    let n: i64 = query.fetch_one(pool).await.map_err(unavailable)?.get(0);
    Ok(n as u64)
}

async fn notify<'e>(
    executor: impl Executor<'e, Database = sqlx::Postgres>,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(executor)
        .await
        .map_err(unavailable)?;
    Ok(())
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn priority(rank: i16) -> Result<Priority, StoreError> {
    Priority::from_rank(rank.into())
        .ok_or_else(|| StoreError::Corrupt(format!("priority rank {rank}")))
}

fn status(code: i16) -> Result<BatchStatus, StoreError> {
    BatchStatus::from_code(code.into())
        .ok_or_else(|| StoreError::Corrupt(format!("batch status {code}")))
}
