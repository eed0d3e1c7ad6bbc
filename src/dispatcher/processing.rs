//! Processing one started batch: fetch the ids that still need it, store the
//! outcomes, and decide where the batch goes next.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tracing::Instrument;

use super::adaptive::AdaptiveRate;
use crate::domain::Interval;
use crate::domain::{Clock, FailureKind, FetchFailure, IdOutcome, Outcome, Timestamp};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::queue::Queue;
use crate::store::{AttemptEnd, ClaimedBatch, Store, StoreError};
use crate::upstream::{FetchError, Fetcher};

/// How soon, then at most how often, recording an attempt is tried again while
/// the store fails (a full disk, a database restarting).
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(2);

/// When a batch with transient failures is tried again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per batch, the first included; then the batch fails.
    pub max_attempts: u32,
    /// The wait after the first attempt; it doubles with each attempt.
    pub base: Duration,
    /// The longest wait between two attempts.
    pub cap: Duration,
}

impl RetryPolicy {
    /// Exponential backoff with jitter (half to all of the doubled wait), never
    /// sooner than the upstream's `Retry-After`.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let doubled = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let jittered = doubled.mul_f64(0.5 + fastrand::f64() / 2.0);
        jittered.max(retry_after.unwrap_or_default())
    }
}

/// Processes a batch of `queue`, whose interval in force is `interval`;
/// returns whether it ended its request.
pub async fn process(
    store: &dyn Store,
    queue: &Queue,
    interval: Interval,
    clock: Clock,
    metrics: &Metrics,
    batch: ClaimedBatch,
) -> bool {
    let span = tracing::info_span!(
        "batch",
        queue = %queue.name,
        ingestion_id = %batch.id.ingestion,
        batch_id = %batch.id,
        priority = %batch.priority
    );
    let pushback = queue.adaptive.as_ref().map(|adaptive| Pushback {
        adaptive,
        interval: interval.as_duration(),
    });
    run(
        store,
        queue.fetcher.as_ref(),
        pushback,
        clock,
        queue.settings.retry,
        metrics,
        batch,
    )
    .instrument(span)
    .await
}

/// Where an adaptive queue's fetches report how the upstream answered.
#[derive(Clone, Copy)]
struct Pushback<'a> {
    adaptive: &'a AdaptiveRate,
    /// The queue's interval in force: the floor the slow-down returns to.
    interval: Duration,
}

impl Pushback<'_> {
    /// 429 Too Many Requests and 503 Service Unavailable say "slower"; any
    /// other answer says nothing about the rate.
    fn heard(&self, result: &Result<serde_json::Value, FetchError>) {
        match result {
            Ok(_) => self.adaptive.succeeded(self.interval),
            Err(error) if matches!(error.failure().status, Some(429 | 503)) => {
                self.adaptive.throttled(self.interval, error.retry_after());
            }
            Err(_) => {}
        }
    }
}

async fn run(
    store: &dyn Store,
    fetcher: &dyn Fetcher,
    pushback: Option<Pushback<'_>>,
    clock: Clock,
    retry: RetryPolicy,
    metrics: &Metrics,
    batch: ClaimedBatch,
) -> bool {
    tracing::info!(
        ids = batch.ids.len(),
        attempt = batch.attempt,
        "batch triggered"
    );
    // A panic while fetching (a bug, a fetcher's) ends this attempt as a
    // transient failure of the batch, retried like any other: the batch never
    // stays `triggered`, holding its processing slot.
    // Starts beyond the budget come only from re-runs of interrupted attempts
    // (a crash, a lost lease, a shutdown's grace running out). Such a batch
    // goes before all other waiting work, so one that kills the process
    // (an answer that exhausts memory, say) would otherwise run first after
    // every restart and hold the queue forever.
    if batch.attempt > retry.max_attempts {
        let reason = format!(
            "interrupted before it could finish, {} starts with --max-attempts {}: not run again",
            batch.attempt - 1,
            retry.max_attempts
        );
        tracing::error!(attempt = batch.attempt, "{reason}");
        let (outcomes, end) = unfinished_ids_fail(&batch, clock, retry, &reason);
        return record(store, &batch, outcomes, end, clock).await;
    }
    let (outcomes, end) = match AssertUnwindSafe(attempt(fetcher, pushback, clock, retry, &batch))
        .catch_unwind()
        .await
    {
        Ok(attempted) => attempted,
        Err(payload) => {
            let panic = crate::supervisor::payload_message(payload.as_ref());
            tracing::error!(%panic, "processing the batch panicked; a transient failure");
            unfinished_ids_fail(
                &batch,
                clock,
                retry,
                &format!("processing panicked: {panic}"),
            )
        }
    };
    let ended = match &end {
        AttemptEnd::Completed => {
            tracing::info!("batch completed");
            "completed"
        }
        AttemptEnd::Failed => {
            tracing::warn!("batch failed");
            "failed"
        }
        AttemptEnd::RetryAt(at) => {
            tracing::info!(retry_at = %at, "batch will be retried");
            "retry"
        }
    };
    metrics
        .batch_attempts
        .get_or_create(&OutcomeLabels { outcome: ended })
        .inc();
    // The ids fetched in this attempt: those whose attempt count went up.
    let fetched_now = outcomes.iter().enumerate().filter(|(i, now)| {
        batch
            .outcomes
            .get(*i)
            .is_none_or(|before| before.attempts < now.attempts)
    });
    for (_, outcome) in fetched_now {
        metrics
            .ids_fetched
            .get_or_create(&OutcomeLabels {
                outcome: outcome.outcome.label(),
            })
            .inc();
    }
    record(store, &batch, outcomes, end, clock).await
}

/// Fetches every id without a final outcome, and merges the new outcomes with
/// those of earlier attempts.
async fn attempt(
    fetcher: &dyn Fetcher,
    pushback: Option<Pushback<'_>>,
    clock: Clock,
    retry: RetryPolicy,
    batch: &ClaimedBatch,
) -> (Vec<IdOutcome>, AttemptEnd) {
    let previous = |i: usize| batch.outcomes.get(i).filter(|o| o.id == batch.ids[i]);
    let pending: Vec<bool> = (0..batch.ids.len())
        .map(|i| previous(i).is_none_or(|o| !o.outcome.is_final()))
        .collect();
    let ids: Vec<_> = (0..batch.ids.len())
        .filter(|&i| pending[i])
        .map(|i| batch.ids[i])
        .collect();
    let mut fetched = fetcher.fetch_all(&ids).await.into_iter();
    let at = clock.now();
    let last_attempt = batch.attempt >= retry.max_attempts;

    let mut retry_after: Option<Duration> = None;
    let mut outcomes = Vec::with_capacity(batch.ids.len());
    for (i, &id) in batch.ids.iter().enumerate() {
        let earlier = previous(i);
        if !pending[i] {
            outcomes.push(earlier.cloned().expect("a settled id has an outcome"));
            continue;
        }
        let result = fetched.next().expect("one result per fetched id");
        if let Some(pushback) = pushback {
            pushback.heard(&result);
        }
        let outcome = match result {
            Ok(data) => Outcome::Ok { data },
            Err(error) => {
                let failure = error.failure();
                if error.retry_after().is_some() {
                    retry_after = retry_after.max(error.retry_after());
                }
                match failure.kind {
                    FailureKind::Transient if !last_attempt => Outcome::Retrying { error: failure },
                    _ => Outcome::Error { error: failure },
                }
            }
        };
        outcomes.push(IdOutcome {
            id,
            outcome,
            attempts: earlier.map_or(0, |o| o.attempts) + 1,
            at,
        });
    }

    let end = end_of(&outcomes, batch, retry, at, retry_after);
    (outcomes, end)
}

/// Ends an attempt that panicked outside the fetching (in recording it, say):
/// the same transient failure as a panic while fetching, recorded once; returns
/// whether that ended the request. Recording is retried while the store is
/// down; if the store panics too, the batch stays `triggered` until the
/// dispatcher or the service restarts and hands it back.
pub async fn end_after_panic(
    store: &dyn Store,
    clock: Clock,
    retry: RetryPolicy,
    batch: &ClaimedBatch,
    panic: &str,
) -> bool {
    tracing::error!(batch_id = %batch.id, %panic, "processing the batch panicked; a transient failure");
    let (outcomes, end) = unfinished_ids_fail(
        batch,
        clock,
        retry,
        &format!("processing panicked: {panic}"),
    );
    // Through `record`, which asks again while the store is down: giving up
    // would leave the batch `triggered`, its lease renewed on PostgreSQL for as
    // long as this node lives. Only a store that panics itself ends the wait.
    let recorded = AssertUnwindSafe(record(store, batch, outcomes, end, clock))
        .catch_unwind()
        .await;
    match recorded {
        Ok(request_ended) => request_ended,
        Err(_) => {
            tracing::error!(batch_id = %batch.id, "cannot record the panicked attempt; the batch runs again after a restart");
            false
        }
    }
}

/// The end of an attempt that did not fetch (it panicked, or ran out of
/// starts): every id still to fetch failed transiently, in error after the
/// last attempt; earlier outcomes stay.
fn unfinished_ids_fail(
    batch: &ClaimedBatch,
    clock: Clock,
    retry: RetryPolicy,
    reason: &str,
) -> (Vec<IdOutcome>, AttemptEnd) {
    let at = clock.now();
    let last_attempt = batch.attempt >= retry.max_attempts;
    let outcomes: Vec<IdOutcome> = batch
        .ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let earlier = batch.outcomes.get(i).filter(|o| o.id == id);
            match earlier {
                Some(settled) if settled.outcome.is_final() => settled.clone(),
                _ => {
                    let error = FetchFailure {
                        kind: FailureKind::Transient,
                        status: None,
                        message: reason.to_owned(),
                    };
                    IdOutcome {
                        id,
                        outcome: if last_attempt {
                            Outcome::Error { error }
                        } else {
                            Outcome::Retrying { error }
                        },
                        attempts: earlier.map_or(0, |o| o.attempts) + 1,
                        at,
                    }
                }
            }
        })
        .collect();
    let end = end_of(&outcomes, batch, retry, at, None);
    (outcomes, end)
}

/// Where a batch goes after an attempt with these outcomes: retried while an
/// id waits for another fetch, otherwise completed or failed.
fn end_of(
    outcomes: &[IdOutcome],
    batch: &ClaimedBatch,
    retry: RetryPolicy,
    at: Timestamp,
    retry_after: Option<Duration>,
) -> AttemptEnd {
    if outcomes.iter().any(|o| !o.outcome.is_final()) {
        let wait = retry.backoff(batch.attempt, retry_after);
        AttemptEnd::RetryAt(at.saturating_add_micros(wait.as_micros() as i64))
    } else if outcomes
        .iter()
        .all(|o| matches!(o.outcome, Outcome::Ok { .. }))
    {
        AttemptEnd::Completed
    } else {
        AttemptEnd::Failed
    }
}

/// Records the attempt, trying until the store takes it.
///
/// Giving up would leave the batch `triggered`, holding a processing slot: with
/// SQLite until the next start, and on PostgreSQL for as long as this node lives,
/// since its heartbeat renews the leases of the batches it processes. So while
/// the store is down the outcome is kept and the store asked again, with
/// backoff, and nothing is fetched twice. A shutdown ends the wait (the batch
/// then runs again, at the next start or on another node).
///
/// An outcome the store refuses for its content would be refused forever: the
/// answers of this attempt are then replaced by errors saying so, and if even
/// that is refused, every id ends in that error.
async fn record(
    store: &dyn Store,
    batch: &ClaimedBatch,
    mut outcomes: Vec<IdOutcome>,
    mut end: AttemptEnd,
    clock: Clock,
) -> bool {
    let at: Timestamp = clock.now();
    let mut wait = RECORD_RETRY_FIRST;
    let mut refusals = 0;
    loop {
        match store
            .finish_attempt(batch.key, outcomes.clone(), end, at)
            .await
        {
            Ok(ended) => return ended,
            Err(StoreError::Closed) => {
                tracing::error!("the store closed; the batch will run again at the next start");
                return false;
            }
            Err(StoreError::Rejected(reason)) if refusals < 2 => {
                refusals += 1;
                tracing::error!(%reason, "the store refused the outcome; its ids end in error");
                let message = format!("the store refused the upstream's answer: {reason}");
                (outcomes, end) = if refusals == 1 {
                    refuse_answers(batch, outcomes, end, &message)
                } else {
                    refuse_all(outcomes, &message)
                };
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    retry_in = ?wait,
                    "cannot record the attempt yet; keeping its outcome and retrying"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECORD_RETRY_MAX);
            }
        }
    }
}

/// The outcomes with this attempt's answers replaced by a permanent error.
fn refuse_answers(
    batch: &ClaimedBatch,
    outcomes: Vec<IdOutcome>,
    end: AttemptEnd,
    message: &str,
) -> (Vec<IdOutcome>, AttemptEnd) {
    let fetched_now = |i: usize, now: &IdOutcome| {
        batch
            .outcomes
            .get(i)
            .is_none_or(|before| before.attempts < now.attempts)
    };
    let outcomes: Vec<IdOutcome> = outcomes
        .into_iter()
        .enumerate()
        .map(|(i, mut outcome)| {
            if fetched_now(i, &outcome) && matches!(outcome.outcome, Outcome::Ok { .. }) {
                outcome.outcome = Outcome::Error {
                    error: refused(message),
                };
            }
            outcome
        })
        .collect();
    let end = match end {
        AttemptEnd::RetryAt(at) => AttemptEnd::RetryAt(at),
        AttemptEnd::Completed | AttemptEnd::Failed => AttemptEnd::Failed,
    };
    (outcomes, end)
}

/// Every id ended in the store's refusal: the smallest outcome there is.
fn refuse_all(outcomes: Vec<IdOutcome>, message: &str) -> (Vec<IdOutcome>, AttemptEnd) {
    let outcomes = outcomes
        .into_iter()
        .map(|outcome| IdOutcome {
            outcome: Outcome::Error {
                error: refused(message),
            },
            ..outcome
        })
        .collect();
    (outcomes, AttemptEnd::Failed)
}

fn refused(message: &str) -> FetchFailure {
    FetchFailure {
        kind: FailureKind::Permanent,
        status: None,
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BatchId, IngestionId, ItemId, Priority};
    use crate::store::BatchKey;

    fn outcome(id: u64, outcome: Outcome, attempts: u32) -> IdOutcome {
        IdOutcome {
            id: ItemId::new(id).unwrap(),
            outcome,
            attempts,
            at: Timestamp::from_micros(0),
        }
    }

    #[test]
    fn a_refused_attempt_keeps_earlier_answers_and_ends_its_own_in_error() {
        let ok = || Outcome::Ok {
            data: serde_json::json!("data"),
        };
        let batch = ClaimedBatch {
            key: BatchKey {
                ingestion_seq: 1,
                position: 0,
            },
            id: BatchId {
                ingestion: IngestionId::from_bytes([0; 16]),
                position: 0,
            },
            priority: Priority::High,
            ids: [1, 2].map(|id| ItemId::new(id).unwrap()).to_vec(),
            attempt: 2,
            slot: Timestamp::from_micros(0),
            outcomes: vec![outcome(1, ok(), 1)],
        };
        let now = vec![outcome(1, ok(), 1), outcome(2, ok(), 1)];
        let (outcomes, end) = refuse_answers(&batch, now, AttemptEnd::Completed, "refused");
        assert_eq!(outcomes[0].outcome, ok(), "an earlier answer is kept");
        assert!(
            matches!(&outcomes[1].outcome, Outcome::Error { error } if error.kind == FailureKind::Permanent),
            "{outcomes:?}"
        );
        assert_eq!(end, AttemptEnd::Failed);

        let (outcomes, end) = refuse_all(outcomes, "refused");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o.outcome, Outcome::Error { .. }))
        );
        assert_eq!(end, AttemptEnd::Failed);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
        };
        for _ in 0..100 {
            let first = policy.backoff(1, None);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let third = policy.backoff(3, None);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            assert!(policy.backoff(30, None) <= Duration::from_secs(10));
            assert!(policy.backoff(1, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        }
    }
}
