//! The writer thread: every write to the database, applied in group commits.
//!
//! A write is a job: a function run against the connection inside its own
//! savepoint. The thread takes all the jobs waiting, runs each, commits once,
//! and only then answers each caller with its job's result (or the commit's
//! error). One failing job rolls back alone; the rest of its group commits.

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
            let result = conn.map(op);
            let ok = matches!(result, Some(Ok(_)));
            let answer: Answer = Box::new(move |commit| {
                let answer = match (commit, result) {
                    (Ok(()), Some(result)) => result,
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
                let Ok(savepoint) = tx.savepoint() else {
                    answers.push(job(None).1);
                    continue;
                };
                let (ok, answer) = job(Some(&savepoint));
                let kept = if ok {
                    savepoint.commit()
                } else {
                    savepoint.finish()
                };
                if let Err(e) = kept {
                    tracing::error!(error = %e, "closing a savepoint failed");
                }
                answers.push(answer);
            }
            tx.commit().map_err(StoreError::from)
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
