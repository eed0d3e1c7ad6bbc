//! The writes, each run by the writer thread inside its own savepoint.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::{
    BatchId, BatchStatus, IdOutcome, IngestionId, IngestionStatus, Interval, Timestamp, stored_name,
};
use crate::queue::QueueName;
use crate::store::codec::{self, decode_ids, earlier_outcomes, encode_ids, encode_outcomes};
use crate::store::{
    AttemptEnd, BatchKey, CallbackDelivery, ClaimOutcome, ClaimRequest, ClaimedBatch, Created,
    DueCallback, NewIngestion, QueueChange, StoreError,
};

const YET_TO_START: i64 = 0;
const TRIGGERED: i64 = 1;
const RETRYING: i64 = 3;
const CANCELLED: i64 = 5;

/// Callback states.
const CALLBACK_PENDING: i64 = 0;
const CALLBACK_DELIVERED: i64 = 1;
const CALLBACK_GAVE_UP: i64 = 2;

pub fn create_ingestion(conn: &Connection, new: &NewIngestion) -> Result<Created, StoreError> {
    if let Some(key) = &new.idempotency {
        let existing: Option<(Vec<u8>, [u8; 16])> = conn
            .prepare_cached(
                "SELECT fingerprint, ingestion_id FROM idempotency_keys
                 WHERE key = ?1 AND expires_at > ?2",
            )?
            .query_row(params![key.key, new.created_at.as_micros()], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        if let Some((fingerprint, id)) = existing {
            return Ok(if fingerprint == key.fingerprint {
                Created::Replayed(IngestionId::from_bytes(id))
            } else {
                Created::KeyConflict
            });
        }
        conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, ingestion_id, expires_at)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            key.key,
            key.fingerprint.as_slice(),
            new.id.as_bytes(),
            key.expires_at.as_micros()
        ])?;
    }

    let batches = new.batches();
    let queue = queue_id(conn, &new.queue)?;
    let (tenant, group) = (
        stored_name(new.tenant.as_ref()),
        stored_name(new.group.as_ref()),
    );
    let flow = super::fair::join_flow(
        conn,
        queue,
        new.priority,
        tenant,
        group,
        batches.len() as i64,
    )?;
    conn.prepare_cached(
        "INSERT INTO ingestions (id, priority, created_at, open_batches, callback_url, callback_state, queue,
                                 tenant, grp)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        new.id.as_bytes(),
        new.priority.rank(),
        new.created_at.as_micros(),
        batches.len() as i64,
        new.callback_url,
        new.callback_url.as_ref().map(|_| CALLBACK_PENDING),
        queue,
        tenant,
        group,
    ])?;
    let seq = conn.last_insert_rowid();
    record_event(
        conn,
        seq,
        None,
        IngestionStatus::YetToStart.code(),
        new.created_at,
    )?;
    // Counted here, once per request; later changes by a trigger (0002).
    conn.prepare_cached(
        "UPDATE batch_counts SET n = n + ?1 WHERE queue = ?2 AND priority = ?3 AND status = 0",
    )?
    .execute(params![batches.len() as i64, queue, new.priority.rank()])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO batches (ingestion_seq, position, priority, ids, queue, flow)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (position, ids) in batches.enumerate() {
        insert.execute(params![
            seq,
            position as i64,
            new.priority.rank(),
            encode_ids(ids),
            queue,
            flow
        ])?;
    }
    Ok(Created::New(new.id))
}

/// The row id of a queue the store knows.
fn queue_id(conn: &Connection, name: &QueueName) -> Result<i64, StoreError> {
    conn.prepare_cached("SELECT id FROM queues WHERE name = ?1")?
        .query_row([name.as_str()], |row| row.get(0))
        .optional()?
        .ok_or_else(|| StoreError::Corrupt(format!("the store has no queue {name}")))
}

/// Adds a row, and a zero count per priority and status, for each queue
/// the store does not have yet.
pub fn register_queues(conn: &Connection, names: &[QueueName]) -> Result<(), StoreError> {
    for name in names {
        let added = conn
            .prepare_cached(
                "INSERT INTO queues (id, name)
                 SELECT (SELECT coalesce(max(id), 0) + 1 FROM queues), ?1
                 WHERE NOT EXISTS (SELECT 1 FROM queues WHERE name = ?1)",
            )?
            .execute([name.as_str()])?;
        if added > 0 {
            conn.prepare_cached(
                "INSERT INTO batch_counts (queue, priority, status, n)
                 SELECT q.id, p.value, s.value, 0
                 FROM queues q, json_each('[0, 1, 2]') AS p, json_each('[0, 1, 2, 3, 4, 5]') AS s
                 WHERE q.name = ?1",
            )?
            .execute([name.as_str()])?;
        }
    }
    Ok(())
}

/// Applies an operator's change; `false` if there is no such queue.
pub fn change_queue(
    conn: &Connection,
    name: &QueueName,
    change: &QueueChange,
) -> Result<bool, StoreError> {
    // One statement, as on PostgreSQL: a field left out keeps its value.
    let changed = conn
        .prepare_cached(
            "UPDATE queues SET
                 paused = coalesce(?2, paused),
                 interval_us = CASE WHEN ?3 THEN ?4 ELSE interval_us END,
                 max_in_flight = CASE WHEN ?5 THEN ?6 ELSE max_in_flight END
             WHERE name = ?1",
        )?
        .execute(params![
            name.as_str(),
            change.paused,
            change.interval.is_some(),
            change.interval.flatten().map(Interval::as_micros),
            change.max_in_flight.is_some(),
            change.max_in_flight.flatten().map(|n| n.get() as i64),
        ])?;
    Ok(changed > 0)
}

/// Claims up to `request.batches` batches, one after the other in the same
/// transaction, each checked against the rate and in-flight limits as if it
/// were claimed alone; stops at the first that may not start now.
pub fn claim_batches(conn: &Connection, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
    let mut started = Vec::new();
    while started.len() < request.batches.get() {
        match claim_one(conn, &request)? {
            Claim::Started(batch) => started.push(batch),
            Claim::Not(outcome) if started.is_empty() => return Ok(outcome),
            Claim::Not(_) => break,
        }
    }
    Ok(ClaimOutcome::Started(started))
}

enum Claim {
    Started(ClaimedBatch),
    Not(ClaimOutcome),
}

fn claim_one(conn: &Connection, request: &ClaimRequest) -> Result<Claim, StoreError> {
    let (queue, runtime) = super::reads::queue_runtime(conn, &request.queue)?
        .ok_or_else(|| StoreError::Corrupt(format!("the store has no queue {}", request.queue)))?;
    if runtime.paused {
        return Ok(Claim::Not(ClaimOutcome::Paused));
    }
    let request = &request.in_force(&runtime);
    let last_slot = runtime.last_slot;
    if let Some(next) = request.next_allowed(last_slot) {
        return Ok(Claim::Not(ClaimOutcome::NotBefore(next)));
    }

    let running: i64 = conn
        .prepare_cached("SELECT count(*) FROM batches WHERE queue = ?1 AND status = 1")?
        .query_row([queue], |row| row.get(0))?;
    if running >= request.max_in_flight.get() as i64 {
        return Ok(Claim::Not(ClaimOutcome::Busy));
    }

    let next = match super::fair::next_batch(conn, queue, request.now, &request.order)? {
        None => None,
        Some((seq, position)) => Some(
            conn.prepare_cached(
                "SELECT b.ingestion_seq, b.position, b.priority, b.ids, b.attempts, b.results, i.id,
                        b.status, i.started, b.lane, b.flow
                 FROM batches b JOIN ingestions i ON i.seq = b.ingestion_seq
                 WHERE b.ingestion_seq = ?1 AND b.position = ?2",
            )?
            .query_row(params![seq, position], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, u32>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                    row.get::<_, u32>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, [u8; 16]>(6)?,
                    row.get::<_, i64>(7)?,
                    row.get::<_, bool>(8)?,
                    row.get::<_, i64>(9)? == 1,
                    row.get::<_, i64>(10)?,
                ))
            })?,
        ),
    };
    let Some((
        ingestion_seq,
        position,
        priority,
        ids,
        attempts,
        results,
        ingestion_id,
        status,
        ingestion_started,
        in_fresh_lane,
        flow,
    )) = next
    else {
        let next_retry: Option<i64> = conn
            .prepare_cached("SELECT min(retry_at) FROM batches WHERE queue = ?1 AND status = 3")?
            .query_row([queue], |row| row.get(0))?;
        return Ok(Claim::Not(match next_retry {
            Some(at) => ClaimOutcome::NotBefore(Timestamp::from_micros(at)),
            None => ClaimOutcome::Idle,
        }));
    };

    let was_retrying = status == RETRYING;
    if status == YET_TO_START && in_fresh_lane {
        super::fair::take_turn(conn, flow, &request.order)?;
    }
    let slot = request.slot_after(last_slot);
    conn.prepare_cached(
        "UPDATE batches
         SET status = 1, lane = 1, attempts = attempts + 1, retry_at = NULL,
             scheduled_at = ?1, started_at = ?2
         WHERE ingestion_seq = ?3 AND position = ?4",
    )?
    .execute(params![
        slot.as_micros(),
        request.now.as_micros(),
        ingestion_seq,
        position
    ])?;
    conn.prepare_cached("UPDATE queues SET last_slot = ?2 WHERE id = ?1")?
        .execute(params![queue, slot.as_micros()])?;
    // Between attempts a batch already reads `triggered`: no change to announce.
    if !was_retrying {
        record_event(conn, ingestion_seq, Some(position), TRIGGERED, request.now)?;
    }
    if !ingestion_started {
        conn.prepare_cached("UPDATE ingestions SET started = 1 WHERE seq = ?1")?
            .execute([ingestion_seq])?;
        record_event(
            conn,
            ingestion_seq,
            None,
            IngestionStatus::Triggered.code(),
            request.now,
        )?;
    }

    let id = BatchId {
        ingestion: IngestionId::from_bytes(ingestion_id),
        position,
    };
    Ok(Claim::Started(ClaimedBatch {
        key: BatchKey {
            ingestion_seq,
            position,
        },
        id,
        priority: codec::priority(priority)?,
        ids: decode_ids(&ids)?,
        attempt: attempts + 1,
        slot,
        outcomes: earlier_outcomes(results.as_deref(), id),
    }))
}

pub fn finish_attempt(
    conn: &Connection,
    batch: BatchKey,
    outcomes: &[IdOutcome],
    end: AttemptEnd,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let results = encode_outcomes(outcomes)?;
    let cancelled = conn
        .prepare_cached("SELECT cancelled_at IS NOT NULL FROM ingestions WHERE seq = ?1")?
        .query_row([batch.ingestion_seq], |row| row.get::<_, bool>(0))?;
    let (status, retry_at, completed_at) = match end {
        AttemptEnd::Completed => (BatchStatus::Completed, None, Some(at)),
        AttemptEnd::Failed => (BatchStatus::Failed, None, Some(at)),
        // The request was cancelled while this attempt ran: no more attempts.
        AttemptEnd::RetryAt(_) if cancelled => (BatchStatus::Cancelled, None, Some(at)),
        AttemptEnd::RetryAt(when) => (BatchStatus::Retrying, Some(when), None),
    };
    let changed = conn
        .prepare_cached(
            "UPDATE batches SET status = ?1, retry_at = ?2, completed_at = ?3, results = ?4
             WHERE ingestion_seq = ?5 AND position = ?6 AND status = 1",
        )?
        .execute(params![
            status.code(),
            retry_at.map(Timestamp::as_micros),
            completed_at.map(Timestamp::as_micros),
            results,
            batch.ingestion_seq,
            batch.position
        ])?;
    if changed == 0 || !status.is_final() {
        return Ok(false);
    }
    record_event(
        conn,
        batch.ingestion_seq,
        Some(batch.position),
        status.code(),
        at,
    )?;
    close_batches(conn, batch.ingestion_seq, 1, at)
}

/// Appends a status change to the events table, in this commit.
fn record_event(
    conn: &Connection,
    ingestion_seq: i64,
    position: Option<u32>,
    status: i64,
    at: Timestamp,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO events (ingestion_seq, position, status, at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![ingestion_seq, position, status, at.as_micros()])?;
    Ok(())
}

/// Counts `n` batches of a request as ended; when none is left open, the
/// request has ended and its callback (if any) becomes due. Returns whether
/// the request ended.
fn close_batches(conn: &Connection, seq: i64, n: i64, at: Timestamp) -> Result<bool, StoreError> {
    let open: i64 = conn
        .prepare_cached(
            "UPDATE ingestions SET open_batches = open_batches - ?1 WHERE seq = ?2
             RETURNING open_batches",
        )?
        .query_row(params![n, seq], |row| row.get(0))?;
    if open > 0 {
        return Ok(false);
    }
    conn.prepare_cached(
        "UPDATE ingestions
         SET finished_at = ?1,
             callback_due_at = CASE WHEN callback_state = 0 THEN ?1 END
         WHERE seq = ?2",
    )?
    .execute(params![at.as_micros(), seq])?;
    let (any_failed, any_cancelled): (bool, bool) = conn
        .prepare_cached(
            "SELECT coalesce(max(status = 4), 0), coalesce(max(status = 5), 0)
             FROM batches WHERE ingestion_seq = ?1",
        )?
        .query_row([seq], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let status = if any_failed {
        IngestionStatus::Failed
    } else if any_cancelled {
        IngestionStatus::Cancelled
    } else {
        IngestionStatus::Completed
    };
    record_event(conn, seq, None, status.code(), at)?;
    Ok(true)
}

pub fn cancel_ingestion(
    conn: &Connection,
    id: IngestionId,
    at: Timestamp,
) -> Result<Option<u64>, StoreError> {
    let Some(seq) = conn
        .prepare_cached("SELECT seq FROM ingestions WHERE id = ?1")?
        .query_row([id.as_bytes()], |row| row.get::<_, i64>(0))
        .optional()?
    else {
        return Ok(None);
    };
    conn.prepare_cached(
        "UPDATE ingestions SET cancelled_at = coalesce(cancelled_at, ?1) WHERE seq = ?2",
    )?
    .execute(params![at.as_micros(), seq])?;
    let positions: Vec<u32> = conn
        .prepare_cached(
            "UPDATE batches SET status = ?1, retry_at = NULL, completed_at = ?2
             WHERE ingestion_seq = ?3 AND status IN (?4, ?5)
             RETURNING position",
        )?
        .query_map(
            params![CANCELLED, at.as_micros(), seq, YET_TO_START, RETRYING],
            |row| row.get(0),
        )?
        .collect::<Result<_, _>>()?;
    let cancelled = positions.len() as i64;
    for position in positions {
        record_event(conn, seq, Some(position), CANCELLED, at)?;
    }
    if cancelled > 0 {
        close_batches(conn, seq, cancelled, at)?;
    }
    Ok(Some(cancelled as u64))
}

/// Puts every `triggered` batch back in the queue, in the lane that is served
/// before any other waiting batch. It had started, so it still reads
/// `triggered` (a status never goes backwards) and announces no change; as a
/// batch between attempts it no longer counts as processing.
pub fn requeue_triggered(conn: &Connection) -> Result<u64, StoreError> {
    let requeued = conn
        .prepare_cached(
            "UPDATE batches SET status = ?1, lane = 0, retry_at = NULL WHERE status = ?2",
        )?
        .execute(params![RETRYING, TRIGGERED])?;
    Ok(requeued as u64)
}

/// As `requeue_triggered`, for one queue's batches only.
pub fn requeue_queue(conn: &Connection, queue: &QueueName) -> Result<u64, StoreError> {
    let requeued = conn
        .prepare_cached(
            "UPDATE batches SET status = ?1, lane = 0, retry_at = NULL
             WHERE status = ?2 AND queue = (SELECT id FROM queues WHERE name = ?3)",
        )?
        .execute(params![RETRYING, TRIGGERED, queue.as_str()])?;
    Ok(requeued as u64)
}

pub fn claim_due_callbacks(
    conn: &Connection,
    now: Timestamp,
    hold: Duration,
    limit: usize,
) -> Result<Vec<DueCallback>, StoreError> {
    let held_until = now.saturating_add_micros(hold.as_micros() as i64);
    let mut stmt = conn.prepare_cached(
        "UPDATE ingestions SET callback_due_at = ?1
         WHERE seq IN (SELECT seq FROM ingestions
                       WHERE callback_state = 0 AND callback_due_at <= ?2
                       ORDER BY callback_due_at LIMIT ?3)
         RETURNING id, callback_url, callback_attempts",
    )?;
    let rows = stmt.query_map(
        params![held_until.as_micros(), now.as_micros(), limit as i64],
        |row| {
            Ok(DueCallback {
                ingestion: IngestionId::from_bytes(row.get(0)?),
                url: row.get(1)?,
                attempts: row.get(2)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn finish_callback(
    conn: &Connection,
    ingestion: IngestionId,
    delivery: &CallbackDelivery,
) -> Result<(), StoreError> {
    let (state, due, error) = match delivery {
        CallbackDelivery::Delivered => (CALLBACK_DELIVERED, None, None),
        CallbackDelivery::RetryAt(at, error) => {
            (CALLBACK_PENDING, Some(at.as_micros()), Some(error))
        }
        CallbackDelivery::GaveUp(error) => (CALLBACK_GAVE_UP, None, Some(error)),
    };
    conn.prepare_cached(
        "UPDATE ingestions
         SET callback_state = ?1, callback_due_at = ?2, callback_error = ?3,
             callback_attempts = callback_attempts + 1
         WHERE id = ?4",
    )?
    .execute(params![state, due, error, ingestion.as_bytes()])?;
    Ok(())
}
