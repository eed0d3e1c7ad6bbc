//! Pruning on PostgreSQL: each chunk is one short transaction, in the lock
//! order of the migrations (requests, then their batches, then their events),
//! and holds the pruning lock, so that only one node prunes at a time.

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::Row;

use super::unavailable;
use crate::domain::Timestamp;
use crate::store::{Prune, Pruned, StoreError};

/// The advisory lock a chunk holds (see `migrations/postgres/0003_retention.sql`).
const PRUNING_LOCK: i64 = 7311002;

pub(super) struct PostgresPrune {
    pub(super) pool: PgPool,
}

#[async_trait]
impl Prune for PostgresPrune {
    async fn prune_chunk(
        &self,
        ended_before: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<Option<Pruned>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let ours: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1)")
            .bind(PRUNING_LOCK)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?
            .get(0);
        if !ours {
            return Ok(None);
        }
        // A request locked elsewhere (its callback being delivered) waits for
        // the next chunk rather than holding this one up.
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT seq FROM ingestions
             WHERE open_batches = 0 AND finished_at < $1
               AND (callback_state IS NULL OR callback_state <> 0)
             ORDER BY finished_at LIMIT $2
             FOR UPDATE SKIP LOCKED",
        )
        .bind(ended_before.as_micros())
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        let mut pruned = Pruned {
            ingestions: seqs.len() as u64,
            ..Pruned::default()
        };
        if !seqs.is_empty() {
            pruned.batches = sqlx::query("DELETE FROM batches WHERE ingestion_seq = ANY($1)")
                .bind(&seqs)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected();
            pruned.events = sqlx::query("DELETE FROM events WHERE ingestion_seq = ANY($1)")
                .bind(&seqs)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?
                .rows_affected();
            sqlx::query("DELETE FROM ingestions WHERE seq = ANY($1)")
                .bind(&seqs)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        pruned.idempotency_keys = sqlx::query(
            "DELETE FROM idempotency_keys WHERE key IN
                (SELECT key FROM idempotency_keys WHERE expires_at <= $1
                 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(now.as_micros())
        .bind(limit as i64)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(pruned))
    }

    async fn record_pass(&self, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE pruning SET last_pass_at = $1 WHERE id = 1")
            .bind(at.as_micros())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
