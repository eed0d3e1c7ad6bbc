//! Completion callbacks: when a request that named a `callback_url` ends
//! (completed, failed or cancelled), POST its final status there, retrying with
//! backoff. Delivery never affects processing: it runs beside the dispatcher,
//! and a callback that keeps failing is given up and recorded as such.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::StatusSummary;
use crate::domain::{Clock, IngestionId};
use crate::signals::Signals;
use crate::store::{CallbackDelivery, DueCallback, SharedStore, StoreError};

/// Deliveries per request, the first included.
const MAX_ATTEMPTS: u32 = 8;
/// The wait after the first failure; it doubles with each attempt.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process holds a claimed callback before another may retry it.
const HOLD: Duration = Duration::from_secs(60);
/// How often to look for due callbacks without being told (other nodes' ends).
const POLL: Duration = Duration::from_secs(5);
const BATCH: usize = 16;

#[derive(Clone)]
pub struct CallbackSender {
    store: SharedStore,
    client: reqwest::Client,
    clock: Clock,
    /// Tells when a request ends in this process.
    signals: Signals,
}

impl CallbackSender {
    pub fn new(store: SharedStore, clock: Clock, signals: Signals) -> Self {
        let client = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a default HTTP client builds");
        Self {
            store,
            client,
            clock,
            signals,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let wait = match self.deliver_due().await {
                Ok(true) => Duration::ZERO,
                Ok(false) => self.until_next_due().await,
                Err(error) => {
                    tracing::warn!(%error, "cannot read due callbacks");
                    POLL
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.signals.ended_request() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Delivers the callbacks due now; whether there were any.
    async fn deliver_due(&self) -> Result<bool, StoreError> {
        let due = self
            .store
            .claim_due_callbacks(self.clock.now(), HOLD, BATCH)
            .await?;
        let any = !due.is_empty();
        futures_util::future::join_all(due.into_iter().map(|c| self.deliver(c))).await;
        Ok(any)
    }

    async fn until_next_due(&self) -> Duration {
        match self.store.next_callback_due().await {
            Ok(Some(at)) => at.since(self.clock.now()).min(POLL),
            _ => POLL,
        }
    }

    async fn deliver(&self, callback: DueCallback) {
        let outcome = match self.post(callback.ingestion, &callback.url).await {
            Ok(()) => {
                tracing::info!(ingestion_id = %callback.ingestion, "callback delivered");
                CallbackDelivery::Delivered
            }
            Err(error) if callback.attempts + 1 >= MAX_ATTEMPTS => {
                tracing::warn!(ingestion_id = %callback.ingestion, %error, "callback given up");
                CallbackDelivery::GaveUp(error)
            }
            Err(error) => {
                let wait = BACKOFF_BASE
                    .saturating_mul(1 << callback.attempts.min(16))
                    .min(BACKOFF_CAP)
                    .mul_f64(0.5 + fastrand::f64() / 2.0);
                tracing::info!(ingestion_id = %callback.ingestion, %error, ?wait, "callback failed; will retry");
                let at = self
                    .clock
                    .now()
                    .saturating_add_micros(wait.as_micros() as i64);
                CallbackDelivery::RetryAt(at, error)
            }
        };
        if let Err(error) = self
            .store
            .finish_callback(callback.ingestion, outcome)
            .await
        {
            tracing::warn!(%error, "cannot record a callback delivery; it will be tried again");
        }
    }

    async fn post(&self, ingestion: IngestionId, url: &str) -> Result<(), String> {
        let record = self
            .store
            .ingestion(ingestion)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the request is gone")?;
        let response = self
            .client
            .post(url)
            .json(&StatusSummary::of(&record))
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timed out".into()
                } else {
                    e.to_string()
                }
            })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered HTTP {}", response.status().as_u16()))
        }
    }
}
