//! The writer thread: every write to the database, applied in group commits.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::reads::priority_of;
use crate::domain::{BatchId, BatchStatus, IngestionId, Timestamp};
use crate::store::codec::{decode_ids, encode_ids};
use crate::store::{BatchKey, ClaimOutcome, ClaimRequest, ClaimedBatch, NewIngestion, StoreError};

/// The most commands one commit takes: enough to spread an fsync over many
/// requests, few enough that the first caller in a group is not kept waiting.
const MAX_GROUP: usize = 1024;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum Command {
    CreateIngestion(NewIngestion, Reply<()>),
    Claim(ClaimRequest, Reply<ClaimOutcome>),
    Complete {
        batch: BatchKey,
        results: Vec<serde_json::Value>,
        completed_at: Timestamp,
        reply: Reply<()>,
    },
    /// Puts every `triggered` batch back in the queue: at start, after a crash,
    /// and at shutdown, for batches the grace period did not let finish. Only
    /// one process uses the file (see the lock), so all of them are ours.
    RequeueTriggered(Reply<u64>),
}

/// A command's answer, held back until its group has committed.
enum Answer {
    Unit(Reply<()>, Result<(), StoreError>),
    Claim(Reply<ClaimOutcome>, Result<ClaimOutcome, StoreError>),
    Count(Reply<u64>, Result<u64, StoreError>),
}

impl Answer {
    /// Sends the answer, or the commit's error if the group did not commit.
    /// A caller that has gone away (its HTTP client hung up) is not an error.
    fn send(self, commit: &Result<(), StoreError>) {
        fn pick<T>(
            own: Result<T, StoreError>,
            commit: &Result<(), StoreError>,
        ) -> Result<T, StoreError> {
            match commit {
                Ok(()) => own,
                Err(e) => Err(e.clone()),
            }
        }
        match self {
            Answer::Unit(reply, own) => drop(reply.send(pick(own, commit))),
            Answer::Claim(reply, own) => drop(reply.send(pick(own, commit))),
            Answer::Count(reply, own) => drop(reply.send(pick(own, commit))),
        }
    }
}

pub fn run(mut conn: Connection, mut queue: mpsc::Receiver<Command>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = queue.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(command) => group.push(command),
                Err(_) => break,
            }
        }
        commit_group(&mut conn, &mut group);
    }
    tracing::debug!("sqlite writer stopped");
}

fn commit_group(conn: &mut Connection, group: &mut Vec<Command>) {
    let mut answers = Vec::with_capacity(group.len());
    let commit = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(mut tx) => {
            for command in group.drain(..) {
                answers.push(apply_in_savepoint(&mut tx, command));
            }
            tx.commit().map_err(StoreError::from)
        }
        Err(e) => {
            let error = StoreError::from(e);
            answers.extend(group.drain(..).map(|c| refuse(c, error.clone())));
            Err(error)
        }
    };
    if let Err(e) = &commit {
        tracing::error!(error = %e, commands = answers.len(), "group commit failed");
    }
    for answer in answers {
        answer.send(&commit);
    }
}

/// Runs one command in its own savepoint, so that one failing command rolls
/// back alone and the rest of its group still commits.
fn apply_in_savepoint(tx: &mut Transaction<'_>, command: Command) -> Answer {
    let mut savepoint = match tx.savepoint() {
        Ok(sp) => sp,
        Err(e) => return refuse(command, e.into()),
    };
    let answer = match command {
        Command::CreateIngestion(new, reply) => {
            Answer::Unit(reply, create_ingestion(&savepoint, &new))
        }
        Command::Claim(request, reply) => {
            Answer::Claim(reply, claim_next_batch(&savepoint, request))
        }
        Command::Complete {
            batch,
            results,
            completed_at,
            reply,
        } => Answer::Unit(
            reply,
            complete_batch(&savepoint, batch, &results, completed_at),
        ),
        Command::RequeueTriggered(reply) => Answer::Count(reply, requeue_triggered(&savepoint)),
    };
    let ok = match &answer {
        Answer::Unit(_, r) => r.is_ok(),
        Answer::Claim(_, r) => r.is_ok(),
        Answer::Count(_, r) => r.is_ok(),
    };
    if ok {
        if let Err(e) = savepoint.commit() {
            return answer_with_error(answer, e.into());
        }
    } else if let Err(e) = savepoint.rollback() {
        tracing::error!(error = %e, "rolling back a savepoint failed");
    }
    answer
}

fn refuse(command: Command, error: StoreError) -> Answer {
    match command {
        Command::CreateIngestion(_, reply) | Command::Complete { reply, .. } => {
            Answer::Unit(reply, Err(error))
        }
        Command::Claim(_, reply) => Answer::Claim(reply, Err(error)),
        Command::RequeueTriggered(reply) => Answer::Count(reply, Err(error)),
    }
}

fn answer_with_error(answer: Answer, error: StoreError) -> Answer {
    match answer {
        Answer::Unit(reply, _) => Answer::Unit(reply, Err(error)),
        Answer::Claim(reply, _) => Answer::Claim(reply, Err(error)),
        Answer::Count(reply, _) => Answer::Count(reply, Err(error)),
    }
}

fn create_ingestion(conn: &Connection, new: &NewIngestion) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO ingestions (id, priority, created_at) VALUES (?1, ?2, ?3)")?
        .execute(params![
            new.id.as_bytes(),
            new.priority.rank(),
            new.created_at.as_micros()
        ])?;
    let seq = conn.last_insert_rowid();
    let mut insert = conn.prepare_cached(
        "INSERT INTO batches (ingestion_seq, position, priority, ids) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (position, ids) in new.batches().enumerate() {
        insert.execute(params![
            seq,
            position as i64,
            new.priority.rank(),
            encode_ids(ids)
        ])?;
    }
    Ok(())
}

fn claim_next_batch(conn: &Connection, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
    let last_slot: Option<i64> = conn
        .prepare_cached("SELECT last_slot FROM rate_limiter WHERE id = 1")?
        .query_row([], |row| row.get(0))
        .optional()?;
    let mut slot = request.ready_at;
    if let Some(last) = last_slot {
        let next = Timestamp::from_micros(last).saturating_add_micros(request.interval.as_micros());
        if request.now < next {
            return Ok(ClaimOutcome::NotBefore(next));
        }
        slot = slot.max(next);
    }

    let running: i64 = conn
        .prepare_cached("SELECT count(*) FROM batches WHERE status = 1")?
        .query_row([], |row| row.get(0))?;
    if running >= request.max_in_flight.get() as i64 {
        return Ok(ClaimOutcome::Busy);
    }

    let next = conn
        .prepare_cached(
            "SELECT b.ingestion_seq, b.position, b.priority, b.ids, b.attempts, i.id
             FROM batches b JOIN ingestions i ON i.seq = b.ingestion_seq
             WHERE b.status = 0
             ORDER BY b.priority, b.lane, b.ingestion_seq, b.position
             LIMIT 1",
        )?
        .query_row([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, u32>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Vec<u8>>(3)?,
                row.get::<_, u32>(4)?,
                row.get::<_, [u8; 16]>(5)?,
            ))
        })
        .optional()?;
    let Some((ingestion_seq, position, priority, ids, attempts, ingestion_id)) = next else {
        return Ok(ClaimOutcome::Idle);
    };

    conn.prepare_cached(
        "UPDATE batches
         SET status = ?1, lane = 1, attempts = attempts + 1, scheduled_at = ?5, started_at = ?2
         WHERE ingestion_seq = ?3 AND position = ?4",
    )?
    .execute(params![
        BatchStatus::Triggered.code(),
        request.now.as_micros(),
        ingestion_seq,
        position,
        slot.as_micros()
    ])?;
    conn.prepare_cached(
        "INSERT INTO rate_limiter (id, last_slot) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET last_slot = excluded.last_slot",
    )?
    .execute([slot.as_micros()])?;

    Ok(ClaimOutcome::Started(ClaimedBatch {
        key: BatchKey {
            ingestion_seq,
            position,
        },
        id: BatchId {
            ingestion: IngestionId::from_bytes(ingestion_id),
            position,
        },
        priority: priority_of(priority)?,
        ids: decode_ids(&ids)?,
        attempt: attempts + 1,
        slot,
    }))
}

fn complete_batch(
    conn: &Connection,
    batch: BatchKey,
    results: &[serde_json::Value],
    completed_at: Timestamp,
) -> Result<(), StoreError> {
    let results = serde_json::to_string(results).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached(
        "UPDATE batches SET status = ?1, completed_at = ?2, results = ?3
         WHERE ingestion_seq = ?4 AND position = ?5 AND status = ?6",
    )?
    .execute(params![
        BatchStatus::Completed.code(),
        completed_at.as_micros(),
        results,
        batch.ingestion_seq,
        batch.position,
        BatchStatus::Triggered.code(),
    ])?;
    Ok(())
}

fn requeue_triggered(conn: &Connection) -> Result<u64, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE batches SET status = ?1, lane = 0, scheduled_at = NULL, started_at = NULL
             WHERE status = ?2",
        )?
        .execute(params![
            BatchStatus::YetToStart.code(),
            BatchStatus::Triggered.code()
        ])?;
    Ok(n as u64)
}
