//! Completion callbacks: when a request that named a `callback_url` ends
//! (completed, failed or cancelled), POST its final status there, retrying with
//! backoff. Delivery never affects processing: it runs beside the dispatcher,
//! and a callback that keeps failing is given up and recorded as such.
//!
//! [`policy`] decides where a callback may go; [`signing`] signs it. What is
//! recorded of a failure is only its class and status (`connect failed`,
//! `timed out`, `HTTP 503`): a status answer must not tell a submitter what
//! answered at an address, nor repeat what a receiver said.

pub mod policy;
pub mod signing;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tokio_util::sync::CancellationToken;

use self::policy::{DestinationRefused, Destinations, GuardedResolver};
use self::signing::SigningKey;

use crate::api::StatusSummary;
use crate::domain::{Clock, IngestionId};
use crate::signals::Signals;
use crate::store::{CallbackDelivery, DueCallback, SharedStore, StoreError};

/// Deliveries per request, the first included.
const MAX_ATTEMPTS: u32 = 8;
/// The wait after the first failure; it doubles with each attempt.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// How long a process holds a claimed callback before another may retry it.
const HOLD: Duration = Duration::from_secs(60);
/// How often to look for due callbacks without being told (other nodes' ends).
const POLL: Duration = Duration::from_secs(5);
const BATCH: usize = 16;

/// Where callbacks may go and how they are signed.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub destinations: Destinations,
    /// How long one delivery may take, connecting included.
    pub timeout: Duration,
    /// Without a key, callbacks carry `webhook-id` and `webhook-timestamp`
    /// but no signature.
    pub signing: Option<SigningKey>,
}

#[derive(Clone)]
pub struct CallbackSender {
    store: SharedStore,
    client: reqwest::Client,
    destinations: Arc<Destinations>,
    signing: Option<SigningKey>,
    clock: Clock,
    /// Tells when a request ends in this process.
    signals: Signals,
}

/// Why one delivery failed, as far as it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The policy refused every address: nothing was sent.
    Refused,
    /// The receiver redirected; redirects are not followed, since their
    /// target is a destination nobody checked.
    Redirected(u16),
    Status(u16),
    TimedOut,
    ConnectFailed,
    /// Sending or reading failed after connecting.
    RequestFailed,
    /// The request's status could not be read from the store.
    StoreUnavailable,
}

impl Failure {
    /// Whether trying again could change anything.
    fn is_final(self) -> bool {
        matches!(self, Self::Refused | Self::Redirected(_))
    }

    fn of(error: &reqwest::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(cause) = source {
            if cause.is::<DestinationRefused>() {
                return Self::Refused;
            }
            source = cause.source();
        }
        if error.is_timeout() {
            Self::TimedOut
        } else if error.is_connect() {
            Self::ConnectFailed
        } else {
            Self::RequestFailed
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused => f.write_str("destination not allowed"),
            Self::Redirected(status) => {
                write!(f, "destination not allowed: redirected (HTTP {status})")
            }
            Self::Status(status) => write!(f, "HTTP {status}"),
            Self::TimedOut => f.write_str("timed out"),
            Self::ConnectFailed => f.write_str("connect failed"),
            Self::RequestFailed => f.write_str("request failed"),
            Self::StoreUnavailable => f.write_str("the request's status could not be read"),
        }
    }
}

impl CallbackSender {
    pub fn new(
        store: SharedStore,
        clock: Clock,
        signals: Signals,
        settings: CallbackSettings,
    ) -> Self {
        let destinations = Arc::new(settings.destinations);
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            // Through a proxy, the resolver would check the proxy's address,
            // not the receiver's.
            .no_proxy()
            .dns_resolver(GuardedResolver {
                destinations: Arc::clone(&destinations),
            })
            .build()
            .expect("a default HTTP client builds");
        Self {
            store,
            client,
            destinations,
            signing: settings.signing,
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
            Err(failure) if failure.is_final() || callback.attempts + 1 >= MAX_ATTEMPTS => {
                tracing::warn!(ingestion_id = %callback.ingestion, error = %failure, "callback given up");
                CallbackDelivery::GaveUp(failure.to_string())
            }
            Err(failure) => {
                let wait = BACKOFF_BASE
                    .saturating_mul(1 << callback.attempts.min(16))
                    .min(BACKOFF_CAP)
                    .mul_f64(0.5 + fastrand::f64() / 2.0);
                tracing::info!(ingestion_id = %callback.ingestion, error = %failure, ?wait, "callback failed; will retry");
                let at = self
                    .clock
                    .now()
                    .saturating_add_micros(wait.as_micros() as i64);
                CallbackDelivery::RetryAt(at, failure.to_string())
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

    /// Whether the URL's host may be tried at all. A host name is checked
    /// again, address by address, when it is resolved; an IP address in the
    /// URL is not resolved, so this is its only check.
    fn may_try(&self, url: &reqwest::Url) -> bool {
        if !matches!(url.scheme(), "http" | "https") {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(ip) => self.destinations.allows_ip(ip),
            Err(_) => true,
        }
    }

    async fn post(&self, ingestion: IngestionId, url: &str) -> Result<(), Failure> {
        let url = reqwest::Url::parse(url).map_err(|_| Failure::Refused)?;
        if !self.may_try(&url) {
            return Err(Failure::Refused);
        }
        let record = self
            .store
            .ingestion(ingestion)
            .await
            .map_err(|_| Failure::StoreUnavailable)?
            .ok_or(Failure::StoreUnavailable)?;
        let body =
            serde_json::to_vec(&StatusSummary::of(&record)).expect("a status summary serializes");
        let id = ingestion.to_string();
        let timestamp = self.clock.now().as_micros().div_euclid(1_000_000);
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp);
        if let Some(key) = &self.signing {
            request = request.header("webhook-signature", key.sign(&id, timestamp, &body));
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::of(&e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            Err(Failure::Redirected(status.as_u16()))
        } else {
            Err(Failure::Status(status.as_u16()))
        }
    }
}
