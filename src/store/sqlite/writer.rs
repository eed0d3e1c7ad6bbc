//! The writer thread: every write to the database, applied in group commits.
//!
//! A write is a job: a function run against the connection inside its own
//! savepoint. The thread takes all the jobs waiting, runs each, commits once,
//! and only then answers each caller with its job's result (or the commit's
//! error). One failing job rolls back alone; the rest of its group commits,
//! unless the failure made SQLite roll back the whole transaction: then the
//! whole group fails, and says so.

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// The most jobs one commit takes: enough to spread an fsync over many
/// requests, few enough that the first caller in a group is not kept waiting.
const MAX_GROUP: usize = 1024;

/// Sends a job's answer once its group's commit is known.
type Answer = Box<dyn FnOnce(&Result<(), StoreError>) + Send>;

/// Runs a write (if given a connection) and says whether it succeeded.
type Run = Box<dyn FnOnce(Option<&Connection>) -> (bool, Answer) + Send>;

/// A write waiting for the writer thread.
pub struct Job(Run);

impl Job {
    /// Wraps `op`; its result reaches `reply` after the commit. `op` runs only
    /// if a transaction could be opened.
    pub fn new<T: Send + 'static>(
        op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        reply: oneshot::Sender<Result<T, StoreError>>,
    ) -> Self {
        Self(Box::new(move |conn| {
            // A job that panics (a bug) fails alone, its savepoint rolled
            // back like any failed job's: the one writer thread must outlive
            // it, or every later write would fail.
            let result = conn.map(|conn| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(conn))).unwrap_or_else(
                    |payload| {
                        let panic = crate::supervisor::payload_message(payload.as_ref());
                        tracing::error!(%panic, "a write panicked; it is rolled back");
                        Err(StoreError::Unavailable(format!(
                            "the write failed: {panic}"
                        )))
                    },
                )
            });
            let ok = matches!(result, Some(Ok(_)));
            let answer: Answer = Box::new(move |commit| {
                let answer = match (commit, result) {
                    (Ok(()), Some(result)) => result,
                    // The job's own failure (say, the disk is full) tells its
                    // caller more than the group's.
                    (Err(_), Some(Err(own))) => Err(own),
                    (Err(e), _) => Err(e.clone()),
                    (Ok(()), None) => Err(StoreError::Unavailable("write not run".into())),
                };
                // A caller that has gone away (its client hung up) is no error.
                let _ = reply.send(answer);
            });
            (ok, answer)
        }))
    }
}

pub fn run(mut conn: Connection, mut queue: mpsc::Receiver<Job>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = queue.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(&mut conn, &mut group);
    }
    tracing::debug!("sqlite writer stopped");
}

fn commit_group(conn: &mut Connection, group: &mut Vec<Job>) {
    let mut answers = Vec::with_capacity(group.len());
    let commit = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(mut tx) => {
            for Job(job) in group.drain(..) {
                // After some errors (SQLITE_FULL or SQLITE_IOERR while SQLite
                // spills its page cache to the disk, among others) SQLite rolls
                // the whole transaction back by itself. A savepoint taken after
                // that would open a transaction of its own, committed when it is
                // released, while the group's COMMIT fails: the job would be
                // stored yet answered as failed (a request answered 503 but
                // kept; a claim committed that the dispatcher never sees). So
                // once the transaction is gone, no more job runs.
                if tx.is_autocommit() {
                    answers.push(job(None).1);
                    continue;
                }
                let Ok(mut savepoint) = tx.savepoint() else {
                    answers.push(job(None).1);
                    continue;
                };
                let (ok, answer) = job(Some(&savepoint));
                let kept = if savepoint.is_autocommit() {
                    // Gone with the whole transaction: nothing left to close.
                    savepoint.set_drop_behavior(rusqlite::DropBehavior::Ignore);
                    Ok(())
                } else if ok {
                    savepoint.commit()
                } else {
                    savepoint.finish()
                };
                if let Err(e) = kept {
                    tracing::error!(error = %e, "closing a savepoint failed");
                }
                answers.push(answer);
            }
            if tx.is_autocommit() {
                Err(StoreError::Unavailable(
                    "SQLite rolled back a group of writes after one of them failed".into(),
                ))
            } else {
                tx.commit().map_err(StoreError::from)
            }
        }
        Err(e) => {
            answers.extend(group.drain(..).map(|Job(job)| job(None).1));
            Err(StoreError::from(e))
        }
    };
    if let Err(e) = &commit {
        tracing::error!(error = %e, jobs = answers.len(), "group commit failed");
    }
    for answer in answers {
        answer(&commit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that inserts one row of `bytes` random bytes, with its answer.
    fn insert(bytes: usize) -> (Job, oneshot::Receiver<Result<(), StoreError>>) {
        let (reply, answer) = oneshot::channel();
        let job = Job::new(
            move |conn| {
                conn.execute("INSERT INTO t VALUES (randomblob(?1))", [bytes as i64])?;
                Ok(())
            },
            reply,
        );
        (job, answer)
    }

    /// A job that panics after writing fails alone: its row is rolled back,
    /// its neighbours commit, and the thread goes on to the next group.
    #[test]
    fn a_write_that_panics_fails_alone_and_the_writer_goes_on() {
        let dir = tempfile::TempDir::new().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB);").unwrap();
        let (queue, jobs) = mpsc::channel(8);
        let writer = std::thread::spawn(move || run(conn, jobs));

        let (before, before_answer) = insert(10);
        let (reply, panicked_answer) = oneshot::channel::<Result<(), StoreError>>();
        let panics = Job::new(
            |conn| {
                conn.execute("INSERT INTO t VALUES (x'00')", [])?;
                panic!("a bug in a write");
            },
            reply,
        );
        let (after, after_answer) = insert(10);
        for job in [before, panics, after] {
            queue.blocking_send(job).unwrap();
        }
        assert!(before_answer.blocking_recv().unwrap().is_ok());
        assert!(matches!(
            panicked_answer.blocking_recv().unwrap(),
            Err(StoreError::Unavailable(message)) if message.contains("a bug in a write")
        ));
        assert!(after_answer.blocking_recv().unwrap().is_ok());
        let (later, later_answer) = insert(10);
        queue.blocking_send(later).unwrap();
        assert!(
            later_answer.blocking_recv().unwrap().is_ok(),
            "the writer lives on"
        );
        drop(queue);
        writer.join().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 3, "the panicked job's row was rolled back");
    }

    /// A write fails so that SQLite rolls the whole transaction back by itself
    /// (here the database's page limit, under a cache too small to hold the
    /// write: as on a full disk). The jobs after it must not run on their own
    /// and commit while the group is answered as failed: nothing of the group
    /// is stored, every caller hears so, and the next group commits.
    #[test]
    fn a_write_that_makes_sqlite_roll_back_fails_its_whole_group() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (x BLOB);
             PRAGMA max_page_count = 64; PRAGMA cache_size = 8;",
        )
        .unwrap();

        let (before, before_answer) = insert(10);
        let (too_big, too_big_answer) = insert(1 << 20);
        let (after, after_answer) = insert(10);
        commit_group(&mut conn, &mut vec![before, too_big, after]);
        assert!(conn.is_autocommit(), "no transaction left open");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 0, "nothing of the failed group is stored");
        for (what, answer) in [
            ("before", before_answer),
            ("too big", too_big_answer),
            ("after", after_answer),
        ] {
            assert!(
                matches!(answer.blocking_recv(), Ok(Err(StoreError::Unavailable(_)))),
                "the write {what} the failure hears that it failed"
            );
        }

        let (next, next_answer) = insert(10);
        commit_group(&mut conn, &mut vec![next]);
        assert!(matches!(next_answer.blocking_recv(), Ok(Ok(()))));
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }
}
