//! Read-only queries, run on the reader pool.

use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::{BatchId, BatchStatus, IngestionId, Priority, TenantName, Timestamp};
use crate::queue::QueueName;
use crate::store::codec::{self, decode_ids, decode_outcomes, event};
use crate::store::{
    BatchOutcomes, BatchRecord, CallbackRecord, Event, IngestionRecord, IngestionSummary,
    QueueRuntime, QueueState, QueueStats, StoreError,
};

/// The answer of a read bounded by size: a big answer is read elsewhere.
pub enum Bounded<T> {
    Within(T),
    Larger,
}

pub fn ingestion(
    conn: &Connection,
    id: IngestionId,
) -> Result<Option<IngestionRecord>, StoreError> {
    match ingestion_bounded(conn, id, None)? {
        Bounded::Within(record) => Ok(record),
        Bounded::Larger => unreachable!("an unbounded read is never larger"),
    }
}

/// A request and its batches, unless it has more than `max_batches` batches.
pub fn ingestion_bounded(
    conn: &Connection,
    id: IngestionId,
    max_batches: Option<u32>,
) -> Result<Bounded<Option<IngestionRecord>>, StoreError> {
    let Some((seq, mut record)) = ingestion_head(conn, id)? else {
        return Ok(Bounded::Within(None));
    };
    if let Some(max) = max_batches {
        // One seek in the primary key: the last position.
        let last: Option<u32> = conn
            .prepare_cached("SELECT max(position) FROM batches WHERE ingestion_seq = ?1")?
            .query_row([seq], |row| row.get(0))?;
        if last.is_some_and(|last| last >= max) {
            return Ok(Bounded::Larger);
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT position, status, attempts, ids, retry_at, scheduled_at, started_at, completed_at
         FROM batches WHERE ingestion_seq = ?1 ORDER BY position",
    )?;
    let mut rows = stmt.query([seq])?;
    while let Some(row) = rows.next()? {
        record.batches.push(batch_record(row, id)?);
    }
    Ok(Bounded::Within(Some(record)))
}

/// A request with at most `limit` of its batches after position `after`.
pub fn ingestion_page(
    conn: &Connection,
    id: IngestionId,
    after: Option<u32>,
    limit: usize,
) -> Result<Option<IngestionRecord>, StoreError> {
    let Some((seq, mut record)) = ingestion_head(conn, id)? else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT position, status, attempts, ids, retry_at, scheduled_at, started_at, completed_at
         FROM batches WHERE ingestion_seq = ?1 AND position > ?2 ORDER BY position LIMIT ?3",
    )?;
    let after = after.map_or(-1, i64::from);
    let mut rows = stmt.query(params![seq, after, limit as i64])?;
    record.batches.reserve(limit.min(4096));
    while let Some(row) = rows.next()? {
        record.batches.push(batch_record(row, id)?);
    }
    Ok(Some(record))
}

/// A request's arrival number and its record without batches; `None` if unknown.
fn ingestion_head(
    conn: &Connection,
    id: IngestionId,
) -> Result<Option<(i64, IngestionRecord)>, StoreError> {
    let head = conn
        .prepare_cached(
            "SELECT i.seq, i.priority, i.created_at, i.finished_at, i.callback_url,
                    i.callback_state, i.callback_attempts, i.callback_error, q.name,
                    i.tenant, i.grp
             FROM ingestions i JOIN queues q ON q.id = i.queue WHERE i.id = ?1",
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
                row.get::<_, String>(8)?,
                row.get::<_, String>(9)?,
                row.get::<_, String>(10)?,
            ))
        })
        .optional()?;
    let Some((
        seq,
        priority,
        created_at,
        finished_at,
        url,
        state,
        attempts,
        error,
        queue,
        tenant,
        group,
    )) = head
    else {
        return Ok(None);
    };
    let record = IngestionRecord {
        id,
        queue: codec::queue_name(&queue)?,
        tenant: codec::optional_name(&tenant, "tenant")?,
        group: codec::optional_name(&group, "group")?,
        priority: codec::priority(priority)?,
        created_at: Timestamp::from_micros(created_at),
        finished_at: codec::time(finished_at),
        callback: url
            .map(|url| {
                Ok::<_, StoreError>(CallbackRecord {
                    url,
                    state: codec::callback_state(state)?,
                    attempts,
                    last_error: error,
                })
            })
            .transpose()?,
        batches: Vec::new(),
    };
    Ok(Some((seq, record)))
}

/// A row of `position, status, attempts, ids, retry_at, scheduled_at,
/// started_at, completed_at` of request `id`'s batches.
fn batch_record(row: &rusqlite::Row<'_>, id: IngestionId) -> Result<BatchRecord, StoreError> {
    Ok(BatchRecord {
        id: BatchId {
            ingestion: id,
            position: row.get(0)?,
        },
        status: codec::status(row.get(1)?)?,
        attempts: row.get(2)?,
        ids: decode_ids(
            row.get_ref(3)?
                .as_blob()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        )?,
        retry_at: codec::time(row.get(4)?),
        scheduled_at: codec::time(row.get(5)?),
        started_at: codec::time(row.get(6)?),
        completed_at: codec::time(row.get(7)?),
    })
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
            status: codec::status(row.get(1)?)?,
            ids: decode_ids(
                row.get_ref(2)?
                    .as_blob()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            )?,
            outcomes: decode_outcomes(row.get_ref(3)?.as_str_or_null().ok().flatten())?,
        });
    }
    Ok(Some(page))
}

pub fn events_after(
    conn: &Connection,
    after: u64,
    ingestion: Option<IngestionId>,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let sql = match ingestion {
        Some(_) => {
            "SELECT e.seq, i.id, e.position, e.status, e.at FROM events e
             JOIN ingestions i ON i.seq = e.ingestion_seq
             WHERE i.id = ?1 AND e.seq > ?2 ORDER BY e.seq LIMIT ?3"
        }
        None => {
            "SELECT e.seq, i.id, e.position, e.status, e.at FROM events e
             JOIN ingestions i ON i.seq = e.ingestion_seq
             WHERE ?1 IS NULL AND e.seq > ?2 ORDER BY e.seq LIMIT ?3"
        }
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![
        ingestion.map(|id| *id.as_bytes()),
        after as i64,
        limit as i64
    ])?;
    collect_events(&mut rows)
}

/// Up to `limit` events after `after` of `tenant`'s requests.
pub fn tenant_events_after(
    conn: &Connection,
    after: u64,
    tenant: &TenantName,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.seq, i.id, e.position, e.status, e.at FROM events e
         JOIN ingestions i ON i.seq = e.ingestion_seq
         WHERE i.tenant = ?1 AND e.seq > ?2 ORDER BY e.seq LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![tenant.as_str(), after as i64, limit as i64])?;
    collect_events(&mut rows)
}

/// The events of rows of `seq, ingestion id, position, status, at`.
fn collect_events(rows: &mut rusqlite::Rows<'_>) -> Result<Vec<Event>, StoreError> {
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        events.push(event(
            row.get(0)?,
            IngestionId::from_bytes(row.get(1)?),
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
        )?);
    }
    Ok(events)
}

pub fn latest_event(conn: &Connection) -> Result<u64, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT max(seq) FROM events")?
        .query_row([], |row| row.get(0))?;
    Ok(seq.unwrap_or(0) as u64)
}

pub fn recent_ingestions(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<IngestionSummary>, StoreError> {
    recent_of(conn, None, limit)
}

/// The most recent requests of `tenant`, newest first.
pub fn tenant_ingestions(
    conn: &Connection,
    tenant: &TenantName,
    limit: usize,
) -> Result<Vec<IngestionSummary>, StoreError> {
    recent_of(conn, Some(tenant), limit)
}

/// The most recent requests, of one tenant or of all.
fn recent_of(
    conn: &Connection,
    tenant: Option<&TenantName>,
    limit: usize,
) -> Result<Vec<IngestionSummary>, StoreError> {
    // Two statements rather than `?2 IS NULL OR …`, so that each has its index.
    let mut stmt = conn.prepare_cached(match tenant {
        None => {
            "SELECT i.seq, i.id, i.priority, i.created_at, i.finished_at, q.name, i.tenant, i.grp
             FROM ingestions i JOIN queues q ON q.id = i.queue
             WHERE ?2 IS NULL ORDER BY i.seq DESC LIMIT ?1"
        }
        Some(_) => {
            "SELECT i.seq, i.id, i.priority, i.created_at, i.finished_at, q.name, i.tenant, i.grp
             FROM ingestions i JOIN queues q ON q.id = i.queue
             WHERE i.tenant = ?2 ORDER BY i.seq DESC LIMIT ?1"
        }
    })?;
    // Each request's counts come from a second query: collect the heads first.
    struct Head {
        seq: i64,
        id: [u8; 16],
        priority: i64,
        created_at: i64,
        finished_at: Option<i64>,
        queue: String,
        tenant: String,
        group: String,
    }
    let heads: Vec<Head> = stmt
        .query_map(
            params![limit as i64, tenant.map(TenantName::as_str)],
            |row| {
                Ok(Head {
                    seq: row.get(0)?,
                    id: row.get(1)?,
                    priority: row.get(2)?,
                    created_at: row.get(3)?,
                    finished_at: row.get(4)?,
                    queue: row.get(5)?,
                    tenant: row.get(6)?,
                    group: row.get(7)?,
                })
            },
        )?
        .collect::<Result<_, _>>()?;
    let mut counts = conn.prepare_cached(
        "SELECT status, count(*), sum(length(ids)) / 4 FROM batches
         WHERE ingestion_seq = ?1 GROUP BY status",
    )?;
    heads
        .into_iter()
        .map(|head| {
            let mut summary = IngestionSummary {
                id: IngestionId::from_bytes(head.id),
                queue: codec::queue_name(&head.queue)?,
                tenant: codec::optional_name(&head.tenant, "tenant")?,
                group: codec::optional_name(&head.group, "group")?,
                priority: codec::priority(head.priority)?,
                created_at: Timestamp::from_micros(head.created_at),
                finished_at: codec::time(head.finished_at),
                ids: 0,
                batches: Vec::new(),
            };
            let mut rows = counts.query([head.seq])?;
            while let Some(row) = rows.next()? {
                let (n, id_count): (i64, i64) = (row.get(1)?, row.get(2)?);
                summary.ids += id_count as u64;
                summary
                    .batches
                    .push((codec::status(row.get(0)?)?, n as u64));
            }
            Ok(summary)
        })
        .collect()
}

pub fn next_callback_due(conn: &Connection) -> Result<Option<Timestamp>, StoreError> {
    let due: Option<i64> = conn
        .prepare_cached("SELECT min(callback_due_at) FROM ingestions WHERE callback_state = 0")?
        .query_row([], |row| row.get(0))?;
    Ok(codec::time(due))
}

pub fn stats(conn: &Connection) -> Result<QueueStats, StoreError> {
    // `seq` is a rowid, handed out as max + 1, and pruning never deletes the
    // newest request: the largest less those pruned is the count, found in one
    // seek rather than a scan.
    let (ingestions, last_prune_at): (i64, Option<i64>) = conn
        .prepare_cached(
            "SELECT coalesce((SELECT max(seq) FROM ingestions), 0) - p.ingestions, p.last_pass_at
             FROM pruning p WHERE p.id = 1",
        )?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let oldest_ingestion_at: Option<i64> = conn
        .prepare_cached("SELECT created_at FROM ingestions ORDER BY seq LIMIT 1")?
        .query_row([], |row| row.get(0))
        .optional()?;
    let batches = batch_counts(
        conn,
        "SELECT priority, status, sum(n) FROM batch_counts
         GROUP BY priority, status HAVING sum(n) > 0",
        [],
    )?;
    let last_slot: Option<i64> = conn
        .prepare_cached("SELECT last_slot FROM queues WHERE id = 0")?
        .query_row([], |row| row.get(0))
        .optional()?
        .flatten();
    let mut stmt = conn.prepare_cached(
        "SELECT i.id, b.position, b.started_at FROM batches b
         JOIN ingestions i ON i.seq = b.ingestion_seq
         WHERE b.status = 1 ORDER BY b.started_at LIMIT 100",
    )?;
    let running = stmt
        .query_map([], |row| {
            Ok((
                BatchId {
                    ingestion: IngestionId::from_bytes(row.get(0)?),
                    position: row.get(1)?,
                },
                Timestamp::from_micros(row.get::<_, Option<i64>>(2)?.unwrap_or_default()),
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(QueueStats {
        ingestions: ingestions as u64,
        batches,
        last_slot: codec::time(last_slot),
        running,
        oldest_ingestion_at: codec::time(oldest_ingestion_at),
        last_prune_at: codec::time(last_prune_at),
    })
}

/// `(priority, status, n)` rows as kept counts.
fn batch_counts(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<(Priority, BatchStatus, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut batches = Vec::new();
    while let Some(row) = rows.next()? {
        batches.push(codec::batch_count(row.get(0)?, row.get(1)?, row.get(2)?)?);
    }
    Ok(batches)
}

/// A queue's row id and stored state; `None` if there is no such queue.
pub fn queue_runtime(
    conn: &Connection,
    name: &QueueName,
) -> Result<Option<(i64, QueueRuntime)>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT id, paused, interval_us, max_in_flight, last_slot FROM queues WHERE name = ?1",
        )?
        .query_row([name.as_str()], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, bool>(1)?,
                row.get::<_, Option<i64>>(2)?,
                row.get::<_, Option<i64>>(3)?,
                row.get::<_, Option<i64>>(4)?,
            ))
        })
        .optional()?;
    let Some((id, paused, interval, max_in_flight, last_slot)) = row else {
        return Ok(None);
    };
    Ok(Some((
        id,
        codec::queue_runtime(paused, interval, max_in_flight, last_slot),
    )))
}

pub fn queue_state(conn: &Connection, name: &QueueName) -> Result<Option<QueueState>, StoreError> {
    let Some((id, runtime)) = queue_runtime(conn, name)? else {
        return Ok(None);
    };
    let batches = batch_counts(
        conn,
        "SELECT priority, status, n FROM batch_counts WHERE queue = ?1 AND n > 0",
        [id],
    )?;
    Ok(Some(QueueState { runtime, batches }))
}

pub fn waiting_batches(conn: &Connection) -> Result<Vec<(QueueName, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT q.name, sum(c.n) FROM batch_counts c JOIN queues q ON q.id = c.queue
         WHERE c.status IN (0, 3) GROUP BY q.name HAVING sum(c.n) > 0",
    )?;
    let mut rows = stmt.query([])?;
    let mut waiting = Vec::new();
    while let Some(row) = rows.next()? {
        let (name, n): (String, i64) = (row.get(0)?, row.get(1)?);
        waiting.push((codec::queue_name(&name)?, n as u64));
    }
    Ok(waiting)
}

pub fn oldest_event(conn: &Connection) -> Result<Option<u64>, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT min(seq) FROM events")?
        .query_row([], |row| row.get(0))?;
    Ok(seq.map(|seq| seq as u64))
}
