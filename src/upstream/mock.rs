use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::{FetchError, Fetcher};
use crate::domain::ItemId;

/// The built-in upstream of SPEC.md: answers `{"id": <id>, "data": "processed"}`
/// after a simulated delay.
#[derive(Debug, Clone)]
pub struct MockUpstream {
    latency: Duration,
}

impl MockUpstream {
    pub fn new(latency: Duration) -> Self {
        Self { latency }
    }
}

#[async_trait]
impl Fetcher for MockUpstream {
    async fn fetch(&self, id: ItemId) -> Result<serde_json::Value, FetchError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        Ok(json!({"id": id, "data": "processed"}))
    }
}
