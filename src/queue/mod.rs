//! Named queues: each a name with its own rate, in-flight limit, batch size,
//! upstream and retries, so one service feeds several upstreams without any
//! of them waiting for another.
//!
//! A queue is a value that flows through every part: [`Queues`] is built once
//! from the configuration (the flags give the `default` queue, the queues
//! file the others); the API looks a request's queue up by name, the store
//! keeps a row per queue (its rate-limit slot, whether it is paused, and the
//! settings changed at runtime), and the dispatcher runs one loop per queue.

pub mod file;
mod name;
mod order;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

pub use name::{QueueName, QueueNameError};
pub use order::{DispatchOrder, Fairness, MAX_WEIGHT, TURN};

use crate::dispatcher::RetryPolicy;
use crate::dispatcher::adaptive::AdaptiveRate;
use crate::domain::{BatchSize, Interval};
use crate::store::QueueRuntime;
use crate::upstream::{HttpUpstreamSettings, SharedFetcher};

/// A queue's settings as the flags and the queues file give them. The
/// interval and the in-flight limit may be changed at runtime
/// (`PATCH /queues/{name}`): the store keeps those changes, and they win.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// The minimum spacing between two starts in this queue; zero for none.
    pub interval: Interval,
    /// How many of this queue's batches may be processing at once.
    pub max_in_flight: NonZeroUsize,
    pub batch_size: BatchSize,
    /// The HTTP upstream; `None` for the built-in mock.
    pub upstream: Option<HttpUpstreamSettings>,
    /// How long the built-in mock takes per id.
    pub mock_latency: Duration,
    pub retry: RetryPolicy,
    /// Whether the queue slows down by itself when its upstream answers 429
    /// or 503.
    pub adaptive: bool,
    /// Fair turns and aging inside the queue's priorities.
    pub order: DispatchOrder,
}

/// A configured queue, with what processes its batches.
pub struct Queue {
    pub name: QueueName,
    pub settings: QueueSettings,
    pub fetcher: SharedFetcher,
    /// This node's view of how much the upstream wants the queue slowed down;
    /// `None` unless the queue is adaptive.
    pub adaptive: Option<AdaptiveRate>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the upstream's settings: their headers may hold secrets.
        f.debug_struct("Queue")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Queue {
    pub fn new(name: QueueName, settings: QueueSettings, fetcher: SharedFetcher) -> Self {
        let adaptive = settings.adaptive.then(AdaptiveRate::new);
        Self {
            name,
            settings,
            fetcher,
            adaptive,
        }
    }

    /// The interval in force, given what the store keeps of the queue: the
    /// one set at runtime, if any, else the configured one.
    pub fn interval_in_force(&self, runtime: &QueueRuntime) -> Interval {
        runtime.interval.unwrap_or(self.settings.interval)
    }

    /// The in-flight limit in force, as [`Queue::interval_in_force`].
    pub fn max_in_flight_in_force(&self, runtime: &QueueRuntime) -> NonZeroUsize {
        runtime.max_in_flight.unwrap_or(self.settings.max_in_flight)
    }

    /// The spacing to keep between starts with `interval` in force: more
    /// while an adaptive queue's upstream pushes back.
    pub fn effective_interval(&self, interval: Interval) -> Interval {
        match &self.adaptive {
            Some(adaptive) => Interval::from_duration(adaptive.effective(interval.as_duration())),
            None => interval,
        }
    }
}

/// Every configured queue, by name; `default` is always one of them.
#[derive(Clone)]
pub struct Queues {
    by_name: Arc<BTreeMap<QueueName, Arc<Queue>>>,
}

impl Queues {
    /// # Panics
    /// Without a `default` queue: the configuration always makes one.
    pub fn new(queues: impl IntoIterator<Item = Queue>) -> Self {
        let by_name: BTreeMap<_, _> = queues
            .into_iter()
            .map(|queue| (queue.name.clone(), Arc::new(queue)))
            .collect();
        assert!(
            by_name.contains_key(QueueName::DEFAULT),
            "the default queue always exists"
        );
        Self {
            by_name: Arc::new(by_name),
        }
    }

    /// Only the `default` queue, on the flags' defaults and the mock: for
    /// unit tests and the fuzz harness.
    #[doc(hidden)]
    pub fn default_only() -> Self {
        let config = crate::config::Config::defaults();
        let queues = config.queue_settings().expect("the defaults are valid");
        Self::new(queues.into_iter().map(|(name, settings)| {
            let fetcher = Arc::new(crate::upstream::MockUpstream::new(settings.mock_latency));
            Queue::new(name, settings, fetcher)
        }))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Queue>> {
        self.by_name.get(name)
    }

    pub fn default_queue(&self) -> &Arc<Queue> {
        &self.by_name[QueueName::DEFAULT]
    }

    /// The queues in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Queue>> {
        self.by_name.values()
    }

    pub fn names(&self) -> Vec<QueueName> {
        self.by_name.keys().cloned().collect()
    }
}

impl std::borrow::Borrow<str> for QueueName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
