//! The dispatcher: one loop per queue, each starting its queue's batches in
//! the contract's order, no faster than the queue's rate limit, with at most
//! its `max_in_flight` processing at once.
//!
//! One loop per queue rather than one loop for all: each loop waits for its
//! own next slot, so a queue never waits for another's slot, a slow claim or
//! a paused neighbour, and the loop stays the simple one-queue loop below. A
//! loop costs a task and, when idle, nothing else.
//!
//! The loop holds no queue and no counters of its own. Each turn it asks the
//! store to claim the next batch; the store applies the rate limit and the
//! in-flight limit in the same commit as the claim, so they hold for every
//! process sharing the database, and answers `Started`, `NotBefore(t)`, `Busy`
//! or `Idle`. The loop then processes the batch, sleeps until `t`, or waits for
//! a wake-up (new work from the API, a completed batch, or the store's own
//! notifications). Nothing polls, so an idle service uses no CPU.
//!
//! Exactness: each start takes a *slot*, `max(previous slot + interval, the
//! moment the dispatcher became ready)`. A backlog therefore runs on an exact
//! grid, one interval apart, whatever each batch takes to process, and a timer
//! that fires late does not push later slots back. Work arriving at an idle
//! service starts at once when the last slot is at least an interval old.

pub mod adaptive;
mod processing;

pub use processing::RetryPolicy;

use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::{Clock, Interval};
use crate::metrics::{Metrics, QueueLabels};
use crate::queue::Queue;
use crate::signals::{Signals, Wakeup, Wakeups};
use crate::store::{ClaimOutcome, ClaimRequest, ClaimedBatch, SharedStore, StoreError};

/// How long to wait before asking a failing store again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// The most batches one claim starts: bounds the claim's transaction.
const MAX_CLAIM: usize = 128;

/// A fault injected into the dispatcher's loop, before every claim: tests use
/// it to make the loop panic and watch it recover.
#[doc(hidden)]
pub type LoopFault = Arc<dyn Fn() + Send + Sync>;

pub struct Dispatcher {
    store: SharedStore,
    /// The queue whose batches this loop starts, with its settings and fetcher.
    queue: Arc<Queue>,
    clock: Clock,
    /// How long a shutdown waits for batches already processing.
    shutdown_grace: Duration,
    /// Wakes the loop when a claim might now succeed (new work, a completed
    /// batch, or either seen elsewhere by the store); the loop sends the rest.
    signals: Signals,
    metrics: Arc<Metrics>,
    fault: Option<LoopFault>,
}

impl Dispatcher {
    pub fn new(
        store: SharedStore,
        queue: Arc<Queue>,
        clock: Clock,
        shutdown_grace: Duration,
        signals: Signals,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            queue,
            clock,
            shutdown_grace,
            signals,
            metrics,
            fault: None,
        }
    }

    /// The name its loop has among the supervised parts (`/readyz`, logs):
    /// `dispatcher` for the default queue, `dispatcher NAME` for the others.
    pub fn part_name(&self) -> &'static str {
        if self.queue.name.is_default() {
            "dispatcher"
        } else {
            // Made once per queue at start, and kept for the process's life.
            Box::leak(format!("dispatcher {}", self.queue.name).into_boxed_str())
        }
    }

    #[doc(hidden)]
    pub fn with_fault(mut self, fault: LoopFault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Runs again after a run that stopped early (a panic): the batches that
    /// run left processing were abandoned with it, so they go back to the
    /// queue first, still `triggered`, to run again before anything else.
    pub async fn resume(&self, shutdown: CancellationToken) {
        // Asked until the store takes it: on PostgreSQL this node's heartbeat
        // would otherwise renew the abandoned batches' leases for as long as
        // it lives, and they would hold their processing slots all that time.
        let mut wait = STORE_RETRY / 10;
        loop {
            match self
                .store
                .release_unfinished(&self.queue.name, self.clock.now())
                .await
            {
                Ok(0) => break,
                Ok(n) => {
                    tracing::warn!(
                        batches = n,
                        "batches abandoned by the stopped dispatcher will run again"
                    );
                    break;
                }
                Err(StoreError::Closed) => return,
                Err(error) => tracing::error!(
                    %error,
                    retry_in = ?wait,
                    "cannot hand back the batches the stopped dispatcher left yet; retrying"
                ),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(STORE_RETRY * 2);
        }
        self.signals.work_available();
        self.run(shutdown).await;
    }

    /// Runs until `shutdown` is cancelled, then lets batches already processing
    /// finish within the grace period. A batch still processing after that goes
    /// back to the queue, to be processed again.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut processing = JoinSet::new();
        let mut wakeups = self.signals.wakeups();
        let mut interval = self.interval_in_force(&shutdown).await;
        loop {
            while processing.try_join_next().is_some() {}
            let Some(batches) = self
                .next_batches(processing.len(), &mut wakeups, &mut interval, &shutdown)
                .await
            else {
                break;
            };
            self.signals.events_stored();
            for batch in batches {
                self.start(batch, interval, &mut processing);
            }
        }
        self.drain(processing).await;
    }

    /// The queue's interval in force: the one set at runtime, if any, else
    /// the configured one. Only adaptive rate needs it here (the floor its
    /// slow-down returns to); claims read the store's own row.
    async fn interval_in_force(&self, shutdown: &CancellationToken) -> Interval {
        let configured = self.queue.settings.interval;
        if self.queue.adaptive.is_none() || shutdown.is_cancelled() {
            return configured;
        }
        match self.store.queue_state(&self.queue.name).await {
            Ok(Some(state)) => self.queue.interval_in_force(&state.runtime),
            Ok(None) => configured,
            Err(error) => {
                tracing::warn!(%error, queue = %self.queue.name, "cannot read the queue's settings");
                configured
            }
        }
    }

    /// Processes a started batch in its own task.
    fn start(&self, batch: ClaimedBatch, interval: Interval, processing: &mut JoinSet<()>) {
        let labels = QueueLabels::of(&self.queue.name);
        self.metrics.batches_started.get_or_create(&labels).inc();
        Metrics::observe(
            &self.metrics.dispatch_lag,
            self.clock.now().since(batch.slot),
        );
        let (store, queue, signals, metrics) = (
            Arc::clone(&self.store),
            Arc::clone(&self.queue),
            self.signals.clone(),
            Arc::clone(&self.metrics),
        );
        let (clock, retry) = (self.clock, self.queue.settings.retry);
        processing.spawn(async move {
            let started = batch.clone();
            let processed = AssertUnwindSafe(processing::process(
                store.as_ref(),
                &queue,
                interval,
                clock,
                &metrics,
                batch,
            ))
            .catch_unwind()
            .await;
            let request_ended = match processed {
                Ok(ended) => ended,
                Err(payload) => {
                    let panic = crate::supervisor::payload_message(payload.as_ref());
                    processing::end_after_panic(store.as_ref(), clock, retry, &started, &panic)
                        .await
                }
            };
            signals.events_stored();
            // A processing slot is free: the next claim may succeed now.
            signals.work_available();
            if request_ended {
                signals.request_ended();
            }
        });
    }

    /// Waits until the store starts one or more batches; `None` once shutdown
    /// begins. `running_here` batches of this process are processing.
    async fn next_batches(
        &self,
        running_here: usize,
        wakeups: &mut Wakeups,
        interval: &mut Interval,
        shutdown: &CancellationToken,
    ) -> Option<Vec<ClaimedBatch>> {
        // Ask for every free processing slot at once: without an interval the
        // store starts them all in one commit. The limit may have been raised
        // at runtime, so ask for as many as could be free; the store stops at
        // the limit in force.
        let settings = &self.queue.settings;
        let free = MAX_CLAIM.saturating_sub(running_here);
        let batches = NonZeroUsize::new(free).unwrap_or(NonZeroUsize::MIN);
        let mut ready_since = Some(self.clock.now());
        loop {
            // Checked before every claim, not only while waiting: with a backlog
            // and no interval, claims succeed one after another and the loop
            // would never wait, so it would go on starting batches after a
            // shutdown began (seen: 15 s of it after SIGTERM).
            if shutdown.is_cancelled() {
                return None;
            }
            if let Some(fault) = &self.fault {
                fault();
            }
            wakeups.seen();
            // Zero unless the upstream pushed back: a queue not slowed keeps
            // the store's interval in force, whatever it is.
            let effective = self.queue.effective_interval(*interval);
            let slow_down = if effective > *interval {
                effective
            } else {
                Interval::default()
            };
            let request = ClaimRequest {
                queue: self.queue.name.clone(),
                ready_since,
                now: self.clock.now(),
                interval: settings.interval,
                slow_down,
                max_in_flight: settings.max_in_flight,
                batches,
                order: settings.order.clone(),
            };
            let wait = match self.store.claim_batches(request).await {
                Ok(ClaimOutcome::Started(batches)) => return Some(batches),
                Ok(ClaimOutcome::NotBefore(at)) => {
                    // We wait on the store's word, ready for the slot it named.
                    ready_since = None;
                    Metrics::observe(&self.metrics.rate_limit_wait, at.since(self.clock.now()));
                    Wait::Until(tokio::time::sleep_until(self.clock.instant_at(at)))
                }
                Ok(ClaimOutcome::Busy | ClaimOutcome::Idle | ClaimOutcome::Paused) => {
                    Wait::ForWakeUp
                }
                Err(error) => {
                    tracing::error!(%error, queue = %self.queue.name, "cannot claim a batch; retrying");
                    // Ready again only once the store answers.
                    ready_since = None;
                    Wait::Until(tokio::time::sleep(STORE_RETRY))
                }
            };
            match wait {
                // An operator's change (a shorter interval, a pause) takes
                // effect from the next slot: it ends the wait for this one.
                Wait::Until(sleep) => tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return None,
                    _ = sleep => {}
                    _ = wakeups.queue_change() => {
                        *interval = self.interval_in_force(shutdown).await;
                    }
                },
                Wait::ForWakeUp => {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return None,
                        wakeup = wakeups.work() => if wakeup == Wakeup::QueueChanged {
                            *interval = self.interval_in_force(shutdown).await;
                        }
                    }
                    // Work or a processing slot appeared just now: this is when
                    // the dispatcher became ready to start.
                    ready_since = Some(self.clock.now());
                }
            }
        }
    }

    async fn drain(&self, mut processing: JoinSet<()>) {
        while processing.try_join_next().is_some() {}
        if !processing.is_empty() {
            tracing::info!(
                batches = processing.len(),
                grace = ?self.shutdown_grace,
                "waiting for batches in flight"
            );
            let all_done = async { while processing.join_next().await.is_some() {} };
            if tokio::time::timeout(self.shutdown_grace, all_done)
                .await
                .is_err()
            {
                processing.abort_all();
                while processing.join_next().await.is_some() {}
            }
        }
        match self
            .store
            .release_unfinished(&self.queue.name, self.clock.now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                batches = n,
                "shutdown grace ran out; unfinished batches are back in the queue"
            ),
            Err(error) => tracing::error!(
                %error,
                "cannot hand back unfinished batches; they will be recovered at the next start"
            ),
        }
    }
}

enum Wait {
    Until(tokio::time::Sleep),
    ForWakeUp,
}
