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

    // A flow with nothing waiting is made again, at the current turn, by the
    // next request that needs it: what it loses is the turn it stood at,
    // which is what an idle flow rejoins at anyway.
    pruned.flows = conn
        .prepare_cached(
            "DELETE FROM fair_flows WHERE id IN
                (SELECT f.id FROM fair_flows f
                 WHERE f.waiting = 0 AND NOT EXISTS
                     (SELECT 1 FROM batches b WHERE b.flow = f.id AND b.status = 0 AND b.lane = 1)
                 LIMIT ?1)",
        )?
        .execute([limit as i64])? as u64;
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::schema;

    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::TempDir::new().unwrap();
        let mut conn = schema::open_writer(&dir.path().join("t.db")).unwrap();
        schema::migrate(&mut conn).unwrap();
        (dir, conn)
    }

    /// An ended request with one completed batch and one event, finished at `at`.
    fn ended_request(conn: &Connection, id: u8, at: i64) -> i64 {
        conn.execute(
            "INSERT INTO ingestions (id, priority, created_at, open_batches, finished_at)
             VALUES (?1, 0, ?2, 0, ?2)",
            params![vec![id; 16], at],
        )
        .unwrap();
        let seq = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO batches (ingestion_seq, position, priority, status, ids)
             VALUES (?1, 0, 0, 2, x'01000000')",
            [seq],
        )
        .unwrap();
        conn.execute(
            "UPDATE batch_counts SET n = n + 1 WHERE priority = 0 AND status = 2",
            [],
        )
        .unwrap();
        event(conn, seq);
        seq
    }

    fn event(conn: &Connection, ingestion_seq: i64) -> i64 {
        conn.execute(
            "INSERT INTO events (ingestion_seq, status, at) VALUES (?1, 2, 0)",
            [ingestion_seq],
        )
        .unwrap();
        conn.last_insert_rowid()
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |row| row.get(0)).unwrap()
    }

    /// Pruning never deletes the newest event, even of a pruned request, so
    /// that SQLite cannot hand its id out again; it goes once a newer exists.
    #[test]
    fn the_newest_event_is_held_back_until_a_newer_one_exists() {
        let (_dir, conn) = database();
        let older = ended_request(&conn, 1, 10);
        let newer = ended_request(&conn, 2, 20);
        // The older request's last event is the newest of all.
        let newest = event(&conn, older);
        let later = Timestamp::from_micros(1_000);

        let pruned = prune_chunk(&conn, later, later, 100).unwrap();
        assert_eq!(pruned.ingestions, 1, "the newest request is kept");
        assert_eq!(count(&conn, "SELECT count(*) FROM ingestions"), 1);
        assert_eq!(count(&conn, "SELECT max(seq) FROM events"), newest);
        assert_eq!(
            count(&conn, "SELECT count(*) FROM batch_counts WHERE n <> 0"),
            1,
            "one batch left counted"
        );
        assert_eq!(count(&conn, "SELECT sum(n) FROM batch_counts"), 1);

        let next = event(&conn, newer);
        assert_eq!(next, newest + 1, "no id handed out twice");
        let pruned = prune_chunk(&conn, later, later, 100).unwrap();
        assert_eq!(pruned.events, 1, "the held event goes now");
        assert_eq!(
            count(
                &conn,
                &format!("SELECT count(*) FROM events WHERE seq = {newest}")
            ),
            0
        );
    }

    #[test]
    fn a_request_that_ended_recently_or_has_a_pending_callback_stays() {
        let (_dir, conn) = database();
        let pending = ended_request(&conn, 1, 10);
        conn.execute(
            "UPDATE ingestions SET callback_url = 'http://x', callback_state = 0 WHERE seq = ?1",
            [pending],
        )
        .unwrap();
        ended_request(&conn, 2, 500);
        ended_request(&conn, 3, 600);
        let cutoff = Timestamp::from_micros(100);
        let pruned = prune_chunk(&conn, cutoff, cutoff, 100).unwrap();
        assert_eq!(pruned, Pruned::default());
        assert_eq!(count(&conn, "SELECT count(*) FROM ingestions"), 3);
    }
}
