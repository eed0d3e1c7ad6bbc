//! Group commit for PostgreSQL writes: callers hand a job to a task, which
//! takes every job that arrived while its previous group was being written and
//! writes them together, in one statement and one commit, then answers each
//! caller. Under light load a group is one job and costs what a lone write
//! does; under load one WAL flush and one round trip serve many.
//!
//! A group runs as a task of its own, so a panic while writing it fails that
//! group's callers and not the next group. The task ends when the store that
//! owns the [`Grouper`] is dropped.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// Jobs queued beyond this wait for a free place (back-pressure).
const QUEUED: usize = 4_096;

/// A job and where its answer goes.
type Waiting<J, A> = (J, oneshot::Sender<Result<A, StoreError>>);

/// Hands jobs of type `J` to a writer task that answers each with an `A`.
pub(super) struct Grouper<J, A> {
    jobs: mpsc::Sender<Waiting<J, A>>,
    /// What the group is for, in errors and logs.
    what: &'static str,
}

impl<J: Send + 'static, A: Send + 'static> Grouper<J, A> {
    /// Starts the writer task: `write` gets up to `max` jobs at a time, and
    /// must answer with exactly one result per job, in their order.
    pub(super) fn start<W, F>(what: &'static str, max: usize, write: W) -> Self
    where
        W: Fn(Vec<J>) -> F + Send + Sync + 'static,
        F: Future<Output = Vec<Result<A, StoreError>>> + Send + 'static,
    {
        let (jobs, mut queued) = mpsc::channel::<Waiting<J, A>>(QUEUED);
        let write = Arc::new(write);
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(max);
            while queued.recv_many(&mut group, max).await > 0 {
                let (jobs, answers): (Vec<J>, Vec<_>) = group.drain(..).unzip();
                let count = jobs.len();
                let write = Arc::clone(&write);
                let results = match tokio::spawn(async move { write(jobs).await }).await {
                    Ok(results) if results.len() == count => results,
                    Ok(results) => {
                        tracing::error!(
                            what,
                            count,
                            answers = results.len(),
                            "group write answered wrongly"
                        );
                        failed(what, count)
                    }
                    Err(error) => {
                        tracing::error!(what, count, %error, "group write panicked");
                        failed(what, count)
                    }
                };
                for (answer, result) in answers.into_iter().zip(results) {
                    // A caller that went away no longer needs its answer.
                    let _ = answer.send(result);
                }
            }
        });
        Self { jobs, what }
    }

    /// Queues `job` and waits until its group is written.
    pub(super) async fn submit(&self, job: J) -> Result<A, StoreError> {
        let (answer, answered) = oneshot::channel();
        let stopped = || StoreError::Unavailable(format!("the {} writer has stopped", self.what));
        self.jobs.send((job, answer)).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// The answers of a group whose write did not answer.
fn failed<A>(what: &str, count: usize) -> Vec<Result<A, StoreError>> {
    (0..count)
        .map(|_| {
            Err(StoreError::Unavailable(format!(
                "the {what} group write failed"
            )))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_that_wait_together_are_written_together_and_each_gets_its_answer() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let grouper = Arc::new(Grouper::start("test", 64, move |jobs: Vec<u32>| {
            seen.lock().unwrap().push(jobs.len());
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                jobs.into_iter().map(|j| Ok(j * 2)).collect()
            }
        }));
        let calls: Vec<_> = (0..100u32)
            .map(|j| {
                let grouper = Arc::clone(&grouper);
                tokio::spawn(async move { grouper.submit(j).await })
            })
            .collect();
        for (j, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), j as u32 * 2);
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.iter().all(|&n| n <= 64), "{sizes:?}");
        assert!(
            sizes.len() < 100,
            "100 waiting jobs were written one by one: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_group_that_panics_fails_its_callers_and_the_next_group_is_written() {
        let grouper = Grouper::start("test", 8, |jobs: Vec<u32>| async move {
            assert!(!jobs.contains(&13), "unlucky");
            jobs.into_iter().map(Ok).collect()
        });
        assert!(matches!(
            grouper.submit(13).await,
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(grouper.submit(7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_write_that_answers_the_wrong_number_of_jobs_fails_them_all() {
        let grouper = Grouper::start("test", 8, |_jobs: Vec<u32>| async move {
            Vec::<Result<u32, StoreError>>::new()
        });
        assert!(matches!(
            grouper.submit(1).await,
            Err(StoreError::Unavailable(_))
        ));
    }
}
