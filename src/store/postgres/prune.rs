//! Pruning on PostgreSQL: each chunk is one short transaction, in the lock
//! order of the migrations (requests, then their batches, then their events),
//! and holds the pruning lock, so that only one node prunes at a time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::Row;

use super::unavailable;
use crate::domain::Timestamp;
use crate::store::{Prune, Pruned, StoreError};

/// The advisory lock a chunk holds (see `migrations/postgres/0003_retention.sql`).
const PRUNING_LOCK: i64 = 7311002;

/// With autovacuum off, the pruning node vacuums the pruned tables itself,
/// at most this often.
const VACUUM_EVERY: Duration = Duration::from_secs(60);

/// Every table whose rows are deleted or updated as work goes through: the
/// four pruning deletes from, and the small rows every request and claim
/// updates. The turns' rows (`fair_tenants`, `fair_flows`) are updated on
/// every claim in a column their partial indexes hold, so those updates are
/// never HOT: unvacuumed, their heap and indexes grow with every batch
/// started, whatever is pruned. `TRUNCATE false`: giving empty pages at a
/// table's end back to the system takes an exclusive lock on the table, which
/// every claim and completion would queue behind; they are reused instead.
const VACUUMED: &str = "VACUUM (ANALYZE, TRUNCATE false) ingestions, batches, events, idempotency_keys, \
                        fair_tenants, fair_flows, fair_clocks, queues, pruning";

pub(super) struct PostgresPrune {
    pub(super) pool: PgPool,
    /// When this node last vacuumed, if it has.
    pub(super) last_vacuum: Mutex<Option<Instant>>,
}

impl PostgresPrune {
    pub(super) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            last_vacuum: Mutex::new(None),
        }
    }

    /// Pruning frees rows, but only vacuum makes their space reusable. The
    /// tables' autovacuum settings (0003) do it where autovacuum runs, as it
    /// does by default; a server with `autovacuum = off` applies none of
    /// them, and would grow with every pruned row, so there the node that
    /// prunes vacuums, at most once every [`VACUUM_EVERY`]. A plain VACUUM
    /// takes no lock that requests or claims wait for.
    async fn vacuum_if_nobody_does(&self) -> Result<(), StoreError> {
        {
            let last = self.last_vacuum.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < VACUUM_EVERY) {
                return Ok(());
            }
        }
        let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        *self.last_vacuum.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        if autovacuum != "off" {
            return Ok(());
        }
        let started = Instant::now();
        // One statement, outside any transaction block, as VACUUM must be.
        match sqlx::raw_sql(VACUUMED).execute(&self.pool).await {
            Ok(_) => tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "autovacuum is off on this server: the pruner vacuumed the pruned tables"
            ),
            // Not the owner, say: pruning still works; the space is not reused.
            Err(error) => tracing::warn!(
                %error,
                "autovacuum is off on this server and the pruner cannot vacuum: \
                 pruned space will not be reused"
            ),
        }
        Ok(())
    }
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
        // As on SQLite: a flow with nothing waiting goes, and the next request
        // that needs it makes it again at the current turn. A flow a new
        // request or a claim holds is skipped.
        pruned.flows = sqlx::query(
            "DELETE FROM fair_flows WHERE id IN
                (SELECT f.id FROM fair_flows f
                 WHERE f.waiting = 0 AND NOT EXISTS
                     (SELECT 1 FROM batches b WHERE b.flow = f.id AND b.status = 0 AND b.lane = 1)
                 LIMIT $1 FOR UPDATE SKIP LOCKED)",
        )
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
        self.vacuum_if_nobody_does().await
    }
}
