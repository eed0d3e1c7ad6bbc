//! Processing one started batch: fetch every id, store the results.

use std::time::Duration;

use serde_json::json;
use tracing::Instrument;

use crate::domain::Clock;
use crate::store::{ClaimedBatch, Store, StoreError};
use crate::upstream::Fetcher;

/// How often, and how far apart, a completion is retried while the store fails.
/// After that the batch stays `triggered` and runs again at the next start.
const COMPLETE_ATTEMPTS: u32 = 5;
const COMPLETE_BACKOFF: Duration = Duration::from_millis(200);

pub async fn process(store: &dyn Store, fetcher: &dyn Fetcher, clock: Clock, batch: ClaimedBatch) {
    let span = tracing::info_span!("batch", batch_id = %batch.id, priority = %batch.priority);
    run(store, fetcher, clock, batch).instrument(span).await
}

async fn run(store: &dyn Store, fetcher: &dyn Fetcher, clock: Clock, batch: ClaimedBatch) {
    tracing::info!(
        ids = batch.ids.len(),
        attempt = batch.attempt,
        "batch triggered"
    );

    let outcomes = fetcher.fetch_batch(&batch.ids).await;
    let results: Vec<serde_json::Value> = batch
        .ids
        .iter()
        .zip(outcomes)
        .map(|(id, outcome)| match outcome {
            Ok(data) => data,
            Err(error) => json!({"id": id, "error": error.to_string()}),
        })
        .collect();

    let mut backoff = COMPLETE_BACKOFF;
    for attempt in 1..=COMPLETE_ATTEMPTS {
        match store
            .complete_batch(batch.key, results.clone(), clock.now())
            .await
        {
            Ok(()) => {
                tracing::info!("batch completed");
                return;
            }
            Err(StoreError::Closed) => break,
            Err(error) if attempt < COMPLETE_ATTEMPTS => {
                tracing::warn!(%error, attempt, "cannot record completion; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(error) => tracing::error!(%error, "cannot record completion"),
        }
    }
    tracing::error!("batch left triggered; it will run again at the next start");
}
