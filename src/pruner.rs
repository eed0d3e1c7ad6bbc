//! The pruner: deletes ended requests once they are older than `--retention`,
//! and expired idempotency keys, so that the database stops growing.
//!
//! A pass deletes in chunks of at most [`CHUNK`] requests, each its own short
//! transaction, with a pause between chunks: a long history is worked off a
//! little at a time while the service goes on answering. Passes start every
//! `--retention-period`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::{Clock, Interval};
use crate::metrics::Metrics;
use crate::store::{Prune, Pruned, StoreError};

/// The most requests (and idempotency keys) one chunk deletes.
const CHUNK: usize = 100;
/// The pause between two chunks of a pass, which leaves the database to the
/// service's own writes.
const PAUSE: Duration = Duration::from_millis(20);
/// The shortest period between passes, whatever the setting.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// The pruner's settings.
#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// How long an ended request is kept; never zero (zero keeps everything
    /// and runs no pruner).
    pub retention: Duration,
    /// How often a pass starts.
    pub period: Duration,
}

impl RetentionSettings {
    /// `None` when `retention` is zero: everything is kept.
    pub fn new(retention: Interval, period: Interval) -> Option<Self> {
        let retention = retention.as_duration();
        (!retention.is_zero()).then(|| Self {
            retention,
            period: period.as_duration().max(MIN_PERIOD),
        })
    }
}

#[derive(Clone)]
pub struct Pruner {
    prune: Arc<dyn Prune>,
    settings: RetentionSettings,
    clock: Clock,
    metrics: Arc<Metrics>,
}

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassEnd {
    /// Nothing more to delete now.
    Done(Pruned),
    /// Another node is pruning: this one left it to them.
    Yielded(Pruned),
}

impl Pruner {
    pub fn new(
        prune: Arc<dyn Prune>,
        settings: RetentionSettings,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            prune,
            settings,
            clock,
            metrics,
        }
    }

    /// Runs a pass now and then every period, until `shutdown`. A failing
    /// pass (the database is away) is logged and tried again next period.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.pass(&shutdown) => match result {
                    Ok(PassEnd::Done(pruned)) => tracing::info!(
                        ingestions = pruned.ingestions,
                        batches = pruned.batches,
                        events = pruned.events,
                        idempotency_keys = pruned.idempotency_keys,
                        flows = pruned.flows,
                        "pruning pass done"
                    ),
                    Ok(PassEnd::Yielded(pruned)) => tracing::info!(
                        ingestions = pruned.ingestions,
                        batches = pruned.batches,
                        events = pruned.events,
                        idempotency_keys = pruned.idempotency_keys,
                        flows = pruned.flows,
                        "pruning pass left to another node"
                    ),
                    Err(error) => tracing::warn!(%error, "pruning pass failed; trying again later"),
                },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.period) => {}
            }
        }
    }

    async fn pass(&self, shutdown: &CancellationToken) -> Result<PassEnd, StoreError> {
        let mut total = Pruned::default();
        let end = loop {
            let now = self.clock.now();
            let micros = i64::try_from(self.settings.retention.as_micros()).unwrap_or(i64::MAX);
            let ended_before = now.saturating_add_micros(-micros);
            let Some(pruned) = self.prune.prune_chunk(ended_before, now, CHUNK).await? else {
                break PassEnd::Yielded(total);
            };
            self.metrics.count_pruned(&pruned);
            total.add(pruned);
            let more = [pruned.ingestions, pruned.idempotency_keys, pruned.flows]
                .iter()
                .any(|&n| n as usize >= CHUNK);
            if !more {
                break PassEnd::Done(total);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break PassEnd::Done(total),
                _ = tokio::time::sleep(PAUSE) => {}
            }
        };
        if let PassEnd::Done(_) = end {
            self.prune.record_pass(self.clock.now()).await?;
        }
        Ok(end)
    }
}
