//! Prometheus metrics, served at `/metrics`, all prefixed `sluice_`.
//!
//! One registry per service instance rather than a process-wide recorder: tests
//! run many services in one process, and each must see only its own counts.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::domain::{BatchStatus, Priority};
use crate::queue::QueueName;

/// What `/metrics` shows of one queue, read at each scrape.
pub struct QueueGauges {
    pub name: QueueName,
    pub batches: Vec<(Priority, BatchStatus, u64)>,
    pub effective_interval: Duration,
    pub paused: bool,
}

/// The queue a metric is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

impl QueueLabels {
    pub fn of(queue: &QueueName) -> Self {
        Self {
            queue: queue.as_str().to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    pub queue: String,
    pub priority: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    /// Requests accepted by POST /ingest.
    pub ingestions: Counter,
    pub ids_accepted: Counter,
    /// Batch starts, retries included, per queue.
    pub batches_started: Family<QueueLabels, Counter>,
    /// How attempts at batches ended: `completed`, `failed` or `retry`.
    pub batch_attempts: Family<OutcomeLabels, Counter>,
    /// Ids fetched, by outcome: `ok`, `error` or `retrying`.
    pub ids_fetched: Family<OutcomeLabels, Counter>,
    /// The upstream's answer time, per id.
    pub upstream_latency: Histogram,
    /// Time the dispatcher waited for the rate limit before a start.
    pub rate_limit_wait: Histogram,
    /// How far each start came after its ideal slot.
    pub dispatch_lag: Histogram,
    pub http_requests: Family<ResponseLabels, Counter>,
    pub http_latency: Family<RouteLabels, Histogram>,
    /// Batches by queue, priority and status, read from the store at each scrape.
    queue: Family<BatchLabels, Gauge>,
    /// Each queue's spacing between starts in force, adaptive slow-down included.
    effective_interval: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// 1 for a paused queue.
    paused: Family<QueueLabels, Gauge>,
    /// Rows pruned by this node, by kind: `ingestions`, `batches`, `events`,
    /// `idempotency_keys`.
    pub pruned: Family<KindLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 3 minutes.
    Histogram::new(exponential_buckets(0.000_1, 2.5, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let metrics = Self {
            ingestions: Counter::default(),
            ids_accepted: Counter::default(),
            batches_started: Family::default(),
            batch_attempts: Family::default(),
            ids_fetched: Family::default(),
            upstream_latency: latency_histogram(),
            rate_limit_wait: latency_histogram(),
            dispatch_lag: latency_histogram(),
            http_requests: Family::default(),
            http_latency: Family::new_with_constructor(latency_histogram),
            queue: Family::default(),
            effective_interval: Family::default(),
            paused: Family::default(),
            pruned: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ingestions",
            "Requests accepted",
            metrics.ingestions.clone(),
        );
        registry.register("ids_accepted", "Ids accepted", metrics.ids_accepted.clone());
        registry.register(
            "batches_started",
            "Batch starts, retries included, per queue",
            metrics.batches_started.clone(),
        );
        registry.register(
            "batch_attempts",
            "Attempts at batches, by how they ended (completed, failed, retry)",
            metrics.batch_attempts.clone(),
        );
        registry.register(
            "ids_fetched",
            "Ids fetched from the upstream, by outcome (ok, error, retrying)",
            metrics.ids_fetched.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Time the upstream took to answer one id",
            metrics.upstream_latency.clone(),
        );
        registry.register(
            "rate_limit_wait_seconds",
            "Time the dispatcher waited for the rate limit before a start",
            metrics.rate_limit_wait.clone(),
        );
        registry.register(
            "dispatch_lag_seconds",
            "How long after its ideal slot each batch started",
            metrics.dispatch_lag.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route",
            metrics.http_latency.clone(),
        );
        registry.register(
            "queue_batches",
            "Batches by queue, priority and status",
            metrics.queue.clone(),
        );
        registry.register(
            "queue_effective_interval_seconds",
            "Each queue's spacing between starts now, adaptive slow-down included",
            metrics.effective_interval.clone(),
        );
        registry.register(
            "queue_paused",
            "1 for a paused queue, else 0",
            metrics.paused.clone(),
        );
        registry.register(
            "pruned",
            "Rows deleted by pruning on this node, by kind (ingestions, batches, events, \
             idempotency_keys)",
            metrics.pruned.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The metrics in the OpenMetrics text format, with the queues' gauges
    /// read from `queues`.
    pub fn render(&self, queues: &[QueueGauges]) -> String {
        self.queue.clear();
        self.effective_interval.clear();
        self.paused.clear();
        for gauges in queues {
            let queue = gauges.name.as_str().to_owned();
            for priority in Priority::ALL {
                for status in BatchStatus::ALL {
                    let count = gauges
                        .batches
                        .iter()
                        .filter(|(p, s, _)| *p == priority && *s == status)
                        .map(|(_, _, n)| *n)
                        .sum::<u64>();
                    self.queue
                        .get_or_create(&BatchLabels {
                            queue: queue.clone(),
                            priority: priority.as_str(),
                            status: status.operator_name(),
                        })
                        .set(count as i64);
                }
            }
            let labels = QueueLabels { queue };
            self.effective_interval
                .get_or_create(&labels)
                .set(gauges.effective_interval.as_secs_f64());
            self.paused
                .get_or_create(&labels)
                .set(i64::from(gauges.paused));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Counts what a chunk of pruning deleted.
    pub fn count_pruned(&self, pruned: &crate::store::Pruned) {
        for (kind, n) in [
            ("ingestions", pruned.ingestions),
            ("batches", pruned.batches),
            ("events", pruned.events),
            ("idempotency_keys", pruned.idempotency_keys),
            ("flows", pruned.flows),
        ] {
            self.pruned.get_or_create(&KindLabels { kind }).inc_by(n);
        }
    }

    pub fn observe(histogram: &Histogram, duration: Duration) {
        histogram.observe(duration.as_secs_f64());
    }
}
