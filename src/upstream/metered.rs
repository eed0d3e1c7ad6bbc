use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{FetchError, Fetcher};
use crate::domain::ItemId;
use crate::metrics::Metrics;

/// Any fetcher, with the upstream's answer time recorded per id.
pub struct Metered<F> {
    inner: F,
    metrics: Arc<Metrics>,
}

impl<F> Metered<F> {
    pub fn new(inner: F, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl<F: Fetcher> Fetcher for Metered<F> {
    async fn fetch(&self, id: ItemId) -> Result<serde_json::Value, FetchError> {
        let started = Instant::now();
        let result = self.inner.fetch(id).await;
        Metrics::observe(&self.metrics.upstream_latency, started.elapsed());
        result
    }
}
