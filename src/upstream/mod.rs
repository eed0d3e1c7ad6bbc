//! The upstream API that batches are fetched from, behind the [`Fetcher`] trait.
//! [`MockUpstream`] is the built-in default.

mod mock;

use std::sync::Arc;

use async_trait::async_trait;

pub use mock::MockUpstream;

use crate::domain::ItemId;

pub type SharedFetcher = Arc<dyn Fetcher>;

/// Why fetching one id failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Worth trying again later: a timeout, a refused connection, a 5xx.
    #[error("transient upstream failure: {0}")]
    Transient(String),
    /// Trying again would fail the same way.
    #[error("upstream refused the id: {0}")]
    Permanent(String),
}

#[async_trait]
pub trait Fetcher: Send + Sync + 'static {
    /// Fetches one id and returns the upstream's answer as JSON.
    async fn fetch(&self, id: ItemId) -> Result<serde_json::Value, FetchError>;

    /// Fetches a batch's ids, concurrently; the results are in the ids' order.
    async fn fetch_batch(&self, ids: &[ItemId]) -> Vec<Result<serde_json::Value, FetchError>> {
        futures_util::future::join_all(ids.iter().map(|&id| self.fetch(id))).await
    }
}
