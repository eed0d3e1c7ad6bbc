//! Read-only queries, run on the reader pool.

use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::{BatchId, BatchStatus, IngestionId, Priority, Timestamp};
use crate::store::codec::decode_ids;
use crate::store::{BatchRecord, IngestionRecord, QueueStats, StoreError};

pub fn ingestion(
    conn: &Connection,
    id: IngestionId,
) -> Result<Option<IngestionRecord>, StoreError> {
    let head = conn
        .prepare_cached("SELECT seq, priority, created_at FROM ingestions WHERE id = ?1")?
        .query_row([id.as_bytes()], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })
        .optional()?;
    let Some((seq, priority, created_at)) = head else {
        return Ok(None);
    };

    let mut stmt = conn.prepare_cached(
        "SELECT position, status, attempts, ids, scheduled_at, started_at, completed_at
         FROM batches WHERE ingestion_seq = ?1 ORDER BY position",
    )?;
    let mut rows = stmt.query([seq])?;
    let mut batches = Vec::new();
    while let Some(row) = rows.next()? {
        let position: u32 = row.get(0)?;
        batches.push(BatchRecord {
            id: BatchId {
                ingestion: id,
                position,
            },
            status: status(row.get(1)?)?,
            attempts: row.get(2)?,
            ids: decode_ids(
                row.get_ref(3)?
                    .as_blob()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            )?,
            scheduled_at: row.get::<_, Option<i64>>(4)?.map(Timestamp::from_micros),
            started_at: row.get::<_, Option<i64>>(5)?.map(Timestamp::from_micros),
            completed_at: row.get::<_, Option<i64>>(6)?.map(Timestamp::from_micros),
        });
    }

    Ok(Some(IngestionRecord {
        id,
        priority: priority_of(priority)?,
        created_at: Timestamp::from_micros(created_at),
        batches,
    }))
}

pub fn batch_results(
    conn: &Connection,
    batch: BatchId,
) -> Result<Option<Vec<serde_json::Value>>, StoreError> {
    let results: Option<Option<String>> = conn
        .prepare_cached(
            "SELECT b.results FROM batches b JOIN ingestions i ON i.seq = b.ingestion_seq
             WHERE i.id = ?1 AND b.position = ?2",
        )?
        .query_row(params![batch.ingestion.as_bytes(), batch.position], |row| {
            row.get(0)
        })
        .optional()?;
    results
        .flatten()
        .map(|json| {
            serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("results: {e}")))
        })
        .transpose()
}

pub fn stats(conn: &Connection) -> Result<QueueStats, StoreError> {
    let ingestions: i64 = conn
        .prepare_cached("SELECT count(*) FROM ingestions")?
        .query_row([], |row| row.get(0))?;
    let mut stmt = conn.prepare_cached(
        "SELECT priority, status, count(*) FROM batches GROUP BY priority, status",
    )?;
    let mut rows = stmt.query([])?;
    let mut batches = Vec::new();
    while let Some(row) = rows.next()? {
        let count: i64 = row.get(2)?;
        batches.push((
            priority_of(row.get(0)?)?,
            status(row.get(1)?)?,
            count as u64,
        ));
    }
    Ok(QueueStats {
        ingestions: ingestions as u64,
        batches,
    })
}

pub fn priority_of(rank: i64) -> Result<Priority, StoreError> {
    Priority::from_rank(rank).ok_or_else(|| StoreError::Corrupt(format!("priority rank {rank}")))
}

fn status(code: i64) -> Result<BatchStatus, StoreError> {
    BatchStatus::from_code(code).ok_or_else(|| StoreError::Corrupt(format!("batch status {code}")))
}
