//! The dispatcher: one loop that starts batches in the contract's order, no
//! faster than the rate limit, with at most `max_in_flight` processing at once.
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
use crate::metrics::Metrics;
use crate::signals::Signals;
use crate::store::{ClaimOutcome, ClaimRequest, ClaimedBatch, SharedStore, StoreError};
use crate::upstream::SharedFetcher;

/// How long to wait before asking a failing store again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// The most batches one claim starts: bounds the claim's transaction.
const MAX_CLAIM: usize = 128;

#[derive(Debug, Clone, Copy)]
pub struct DispatchSettings {
    /// The minimum spacing between two batch starts, service-wide.
    pub interval: Interval,
    /// How many batches may be processing at once, service-wide.
    pub max_in_flight: NonZeroUsize,
    /// How long a shutdown waits for batches already processing.
    pub shutdown_grace: Duration,
    /// When batches with transient failures are tried again.
    pub retry: RetryPolicy,
}

/// A fault injected into the dispatcher's loop, before every claim: tests use
/// it to make the loop panic and watch it recover.
#[doc(hidden)]
pub type LoopFault = Arc<dyn Fn() + Send + Sync>;

pub struct Dispatcher {
    store: SharedStore,
    fetcher: SharedFetcher,
    clock: Clock,
    settings: DispatchSettings,
    /// Wakes the loop when a claim might now succeed (new work, a completed
    /// batch, or either seen elsewhere by the store); the loop sends the rest.
    signals: Signals,
    metrics: Arc<Metrics>,
    fault: Option<LoopFault>,
}

impl Dispatcher {
    pub fn new(
        store: SharedStore,
        fetcher: SharedFetcher,
        clock: Clock,
        settings: DispatchSettings,
        signals: Signals,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            fetcher,
            clock,
            settings,
            signals,
            metrics,
            fault: None,
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
            match self.store.release_unfinished(self.clock.now()).await {
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
        loop {
            while processing.try_join_next().is_some() {}
            let Some(batches) = self.next_batches(processing.len(), &shutdown).await else {
                break;
            };
            self.signals.events_stored();
            for batch in batches {
                self.start(batch, &mut processing);
            }
        }
        self.drain(processing).await;
    }

    /// Processes a started batch in its own task.
    fn start(&self, batch: ClaimedBatch, processing: &mut JoinSet<()>) {
        self.metrics.batches_started.inc();
        Metrics::observe(
            &self.metrics.dispatch_lag,
            self.clock.now().since(batch.slot),
        );
        let (store, fetcher, signals, metrics) = (
            Arc::clone(&self.store),
            Arc::clone(&self.fetcher),
            self.signals.clone(),
            Arc::clone(&self.metrics),
        );
        let (clock, retry) = (self.clock, self.settings.retry);
        processing.spawn(async move {
            let started = batch.clone();
            let processed = AssertUnwindSafe(processing::process(
                store.as_ref(),
                fetcher.as_ref(),
                clock,
                retry,
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
        shutdown: &CancellationToken,
    ) -> Option<Vec<ClaimedBatch>> {
        // Ask for every free processing slot at once: without an interval the
        // store starts them all in one commit.
        let free = self
            .settings
            .max_in_flight
            .get()
            .saturating_sub(running_here);
        let batches = NonZeroUsize::new(free.min(MAX_CLAIM)).unwrap_or(NonZeroUsize::MIN);
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
            let request = ClaimRequest {
                ready_since,
                now: self.clock.now(),
                interval: self.settings.interval,
                max_in_flight: self.settings.max_in_flight,
                batches,
            };
            let wait = match self.store.claim_batches(request).await {
                Ok(ClaimOutcome::Started(batches)) => return Some(batches),
                Ok(ClaimOutcome::NotBefore(at)) => {
                    // We wait on the store's word, ready for the slot it named.
                    ready_since = None;
                    Metrics::observe(&self.metrics.rate_limit_wait, at.since(self.clock.now()));
                    Wait::Until(tokio::time::sleep_until(self.clock.instant_at(at)))
                }
                Ok(ClaimOutcome::Busy | ClaimOutcome::Idle) => Wait::ForWakeUp,
                Err(error) => {
                    tracing::error!(%error, "cannot claim a batch; retrying");
                    // Ready again only once the store answers.
                    ready_since = None;
                    Wait::Until(tokio::time::sleep(STORE_RETRY))
                }
            };
            match wait {
                Wait::Until(sleep) => tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return None,
                    _ = sleep => {}
                },
                Wait::ForWakeUp => {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return None,
                        _ = self.signals.work() => {}
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
                grace = ?self.settings.shutdown_grace,
                "waiting for batches in flight"
            );
            let all_done = async { while processing.join_next().await.is_some() {} };
            if tokio::time::timeout(self.settings.shutdown_grace, all_done)
                .await
                .is_err()
            {
                processing.abort_all();
                while processing.join_next().await.is_some() {}
            }
        }
        match self.store.release_unfinished(self.clock.now()).await {
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
