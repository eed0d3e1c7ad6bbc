//! Read-only queries, run on the reader pool.

use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::{BatchId, BatchStatus, IdOutcome, IngestionId, Priority, Timestamp};
use crate::store::codec::decode_ids;
use crate::store::{
    BatchOutcomes, BatchRecord, CallbackRecord, CallbackState, IngestionRecord, QueueStats,
    StoreError,
};

pub fn ingestion(
    conn: &Connection,
    id: IngestionId,
) -> Result<Option<IngestionRecord>, StoreError> {
    let head = conn
        .prepare_cached(
            "SELECT seq, priority, created_at, finished_at, callback_url, callback_state,
                    callback_attempts, callback_error
             FROM ingestions WHERE id = ?1",
        )?
        .query_row([id.as_bytes()], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Option<i64>>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, Option<i64>>(5)?,
                row.get::<_, u32>(6)?,
                row.get::<_, Option<String>>(7)?,
            ))
        })
        .optional()?;
    let Some((seq, priority, created_at, finished_at, url, state, attempts, error)) = head else {
        return Ok(None);
    };

    let mut stmt = conn.prepare_cached(
        "SELECT position, status, attempts, ids, retry_at, scheduled_at, started_at, completed_at
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
            retry_at: time(row.get(4)?),
            scheduled_at: time(row.get(5)?),
            started_at: time(row.get(6)?),
            completed_at: time(row.get(7)?),
        });
    }

    Ok(Some(IngestionRecord {
        id,
        priority: priority_of(priority)?,
        created_at: Timestamp::from_micros(created_at),
        finished_at: time(finished_at),
        callback: url
            .map(|url| {
                Ok::<_, StoreError>(CallbackRecord {
                    url,
                    state: callback_state(state)?,
                    attempts,
                    last_error: error,
                })
            })
            .transpose()?,
        batches,
    }))
}

pub fn batch_outcomes(
    conn: &Connection,
    id: IngestionId,
    after: Option<u32>,
    limit: usize,
) -> Result<Option<Vec<BatchOutcomes>>, StoreError> {
    let Some(seq) = conn
        .prepare_cached("SELECT seq FROM ingestions WHERE id = ?1")?
        .query_row([id.as_bytes()], |row| row.get::<_, i64>(0))
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT position, status, ids, results FROM batches
         WHERE ingestion_seq = ?1 AND position > ?2 ORDER BY position LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![seq, after.map_or(-1, i64::from), limit as i64])?;
    let mut page = Vec::new();
    while let Some(row) = rows.next()? {
        page.push(BatchOutcomes {
            id: BatchId {
                ingestion: id,
                position: row.get(0)?,
            },
            status: status(row.get(1)?)?,
            ids: decode_ids(
                row.get_ref(2)?
                    .as_blob()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            )?,
            outcomes: outcomes_of(row.get_ref(3)?.as_str_or_null().ok().flatten())?,
        });
    }
    Ok(Some(page))
}

pub fn next_callback_due(conn: &Connection) -> Result<Option<Timestamp>, StoreError> {
    let due: Option<i64> = conn
        .prepare_cached("SELECT min(callback_due_at) FROM ingestions WHERE callback_state = 0")?
        .query_row([], |row| row.get(0))?;
    Ok(time(due))
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

/// The outcomes stored with a batch (a JSON array), or none yet.
pub fn outcomes_of(json: Option<&str>) -> Result<Vec<IdOutcome>, StoreError> {
    json.map_or(Ok(Vec::new()), |json| {
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("results: {e}")))
    })
}

pub fn priority_of(rank: i64) -> Result<Priority, StoreError> {
    Priority::from_rank(rank).ok_or_else(|| StoreError::Corrupt(format!("priority rank {rank}")))
}

fn status(code: i64) -> Result<BatchStatus, StoreError> {
    BatchStatus::from_code(code).ok_or_else(|| StoreError::Corrupt(format!("batch status {code}")))
}

fn callback_state(code: Option<i64>) -> Result<CallbackState, StoreError> {
    match code {
        Some(0) | None => Ok(CallbackState::Pending),
        Some(1) => Ok(CallbackState::Delivered),
        Some(2) => Ok(CallbackState::GaveUp),
        Some(other) => Err(StoreError::Corrupt(format!("callback state {other}"))),
    }
}

fn time(micros: Option<i64>) -> Option<Timestamp> {
    micros.map(Timestamp::from_micros)
}
