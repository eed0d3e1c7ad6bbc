//! The upstream API that batches are fetched from, behind the [`Fetcher`]
//! trait: [`MockUpstream`] by default, [`HttpUpstream`] with `--upstream-url`.

mod http;
mod metered;
mod mock;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use http::{HttpUpstream, HttpUpstreamSettings};
pub use metered::Metered;
pub use mock::MockUpstream;

use crate::domain::{FailureKind, FetchFailure, ItemId};

pub type SharedFetcher = Arc<dyn Fetcher>;

/// Why fetching one id failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Worth trying again later: a timeout, a refused connection, 5xx, 408, 429.
    #[error("{reason}")]
    Transient {
        reason: String,
        status: Option<u16>,
        /// What the upstream asked for with `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Trying again would fail the same way: any other 4xx.
    #[error("HTTP {status}: {body_excerpt}")]
    Permanent { status: u16, body_excerpt: String },
}

impl FetchError {
    pub fn failure(&self) -> FetchFailure {
        match self {
            FetchError::Transient { reason, status, .. } => FetchFailure {
                kind: FailureKind::Transient,
                status: *status,
                message: reason.clone(),
            },
            FetchError::Permanent {
                status,
                body_excerpt,
            } => FetchFailure {
                kind: FailureKind::Permanent,
                status: Some(*status),
                message: body_excerpt.clone(),
            },
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Transient { retry_after, .. } => *retry_after,
            FetchError::Permanent { .. } => None,
        }
    }
}

#[async_trait]
pub trait Fetcher: Send + Sync + 'static {
    /// Fetches one id: the upstream's answer, as JSON if it was JSON and as a
    /// JSON string otherwise.
    async fn fetch(&self, id: ItemId) -> Result<serde_json::Value, FetchError>;

    /// Fetches several ids concurrently; the results are in the ids' order.
    async fn fetch_all(&self, ids: &[ItemId]) -> Vec<Result<serde_json::Value, FetchError>> {
        futures_util::future::join_all(ids.iter().map(|&id| self.fetch(id))).await
    }
}
