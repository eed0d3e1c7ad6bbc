//! Pruning on SQLite: each chunk is one job on the writer thread, in the next
//! group commit, so it holds the single writer no longer than any other
//! write, and ingests keep flowing between chunks.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

use super::writer::Job;
use crate::domain::Timestamp;
use crate::store::{Prune, Pruned, StoreError};

pub(super) struct SqlitePrune {
    pub(super) writes: mpsc::Sender<Job>,
}

#[async_trait]
impl Prune for SqlitePrune {
    async fn prune_chunk(
        &self,
        ended_before: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<Option<Pruned>, StoreError> {
        // One process owns the file (see the lock), so no other node prunes.
        super::write_via(&self.writes, move |conn| {
            prune_chunk(conn, ended_before, now, limit).map(Some)
        })
        .await
    }

    async fn record_pass(&self, at: Timestamp) -> Result<(), StoreError> {
        super::write_via(&self.writes, move |conn| {
            conn.prepare_cached("UPDATE pruning SET last_pass_at = ?1 WHERE id = 1")?
                .execute([at.as_micros()])?;
            Ok(())
        })
        .await
    }
}

pub(super) fn prune_chunk(
    conn: &Connection,
    ended_before: Timestamp,
    now: Timestamp,
    limit: usize,
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    let newest_event: Option<i64> = conn
        .prepare_cached("SELECT max(seq) FROM events")?
        .query_row([], |row| row.get(0))?;
    let held: Option<i64> = conn
        .prepare_cached("SELECT held_event FROM pruning WHERE id = 1")?
        .query_row([], |row| row.get(0))?;
    if let Some(held) = held
        && Some(held) != newest_event
    {
        pruned.events += conn
            .prepare_cached("DELETE FROM events WHERE seq = ?1")?
            .execute([held])? as u64;
        conn.prepare_cached("UPDATE pruning SET held_event = NULL WHERE id = 1")?
            .execute([])?;
    }

    // The newest request stays, whatever its age: see the migration.
    let seqs: Vec<i64> = conn
        .prepare_cached(
            "SELECT seq FROM ingestions
             WHERE open_batches = 0 AND finished_at < ?1
               AND (callback_state IS NULL OR callback_state <> 0)
               AND seq < (SELECT max(seq) FROM ingestions)
             ORDER BY finished_at LIMIT ?2",
        )?
        .query_map(params![ended_before.as_micros(), limit as i64], |row| {
            row.get(0)
        })?
        .collect::<Result<_, _>>()?;
    for &seq in &seqs {
        pruned.events += conn
            .prepare_cached("DELETE FROM events WHERE ingestion_seq = ?1 AND seq <> ?2")?
            .execute(params![seq, newest_event.unwrap_or(0)])? as u64;
        pruned.batches += conn
            .prepare_cached("DELETE FROM batches WHERE ingestion_seq = ?1")?
            .execute([seq])? as u64;
        conn.prepare_cached("DELETE FROM ingestions WHERE seq = ?1")?
            .execute([seq])?;
    }
    pruned.ingestions = seqs.len() as u64;
    if !seqs.is_empty() {
        conn.prepare_cached("UPDATE pruning SET ingestions = ingestions + ?1 WHERE id = 1")?
            .execute([seqs.len() as i64])?;
        // The newest event may have been one of theirs: kept for now.
        let orphan: Option<i64> = conn
            .prepare_cached(
                "SELECT e.seq FROM events e WHERE e.seq = ?1
                 AND NOT EXISTS (SELECT 1 FROM ingestions i WHERE i.seq = e.ingestion_seq)",
            )?
            .query_row([newest_event.unwrap_or(0)], |row| row.get(0))
            .optional()?;
        if orphan.is_some() {
            conn.prepare_cached("UPDATE pruning SET held_event = ?1 WHERE id = 1")?
                .execute([orphan])?;
        }
    }

    pruned.idempotency_keys = conn
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE key IN
                (SELECT key FROM idempotency_keys WHERE expires_at <= ?1
                 ORDER BY expires_at LIMIT ?2)",
        )?
        .execute(params![now.as_micros(), limit as i64])? as u64;
    Ok(pruned)
}
