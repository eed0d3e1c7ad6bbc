//! What the fuzz targets share: Sluice's real router, with every layer the
//! service runs (body limit, write shedding, time limit, auth, the handlers and
//! their extractors), over an in-memory store that records what it is given.
//!
//! A fuzz input goes in as an HTTP request and the checks read the answer the
//! way a client would, plus what reached the store. No socket, no database: one
//! current-thread runtime, built once.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use sluice::api::limits::Limits;
use sluice::api::{ApiLimits, App, AppState, router};
use sluice::config::Config;
use sluice::domain::{
    BatchId, BatchStatus, Clock, IdOutcome, IngestionId, ItemId, Priority, Timestamp,
};
use sluice::metrics::Metrics;
use sluice::queue::{QueueName, Queues};
use sluice::signals::Signals;
use sluice::store::{
    AttemptEnd, BatchKey, BatchOutcomes, BatchRecord, CallbackDelivery, ClaimOutcome, ClaimRequest,
    Created, DueCallback, Event, IngestionRecord, IngestionSummary, NewIngestion, QueueChange,
    QueueState, QueueStats, Store, StoreError,
};

/// The one request the store knows (the README's example id), so that the
/// status target can reach a 200.
pub const KNOWN_ID: &str = "01a222b1-5fe1-70d3-b4a9-2fc5e0dc2351";

/// The ids of the known request, in its two batches.
pub const KNOWN_BATCHES: [&[u32]; 2] = [&[1, 2, 3], &[4, 5]];

/// The `--max-ids-per-request` values the ingest target runs under: the
/// default, and small ones so that the 413 for too many ids is reachable
/// within libFuzzer's input sizes.
pub const MAX_IDS: [usize; 4] = [1_000_000, 1, 3, 10];

pub struct Harness {
    runtime: Runtime,
    store: Arc<RecordingStore>,
    /// One router per entry of [`MAX_IDS`], in that order.
    routers: Vec<Router>,
    /// Everything else as `Config::defaults()` has it.
    pub config: Config,
}

/// The harness, built on first use.
pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(Harness::new)
}

/// An answer, read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Harness {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let config = Config::defaults();
        let store = Arc::new(RecordingStore::default());
        let routers = MAX_IDS
            .iter()
            .map(|&max_ids| {
                router(AppState::new(App {
                    store: store.clone(),
                    signals: Signals::default(),
                    metrics: Arc::new(Metrics::default()),
                    clock: Clock::new(),
                    queues: Queues::default_only(),
                    limits: ApiLimits {
                        max_body_bytes: config.max_body_bytes,
                        max_ids_per_request: max_ids,
                    },
                    shutdown: CancellationToken::new(),
                    overload: Limits {
                        writes: Arc::new(Semaphore::new(config.max_concurrent_writes.max(1))),
                        request_timeout: config.request_timeout.as_duration(),
                        max_queued_ids: config.max_queued_ids,
                        queued_ids: Arc::new(AtomicU64::new(0)),
                        event_streams: Arc::new(Semaphore::new(config.max_event_streams)),
                        body_memory: Limits::body_memory(
                            config.max_body_memory,
                            config.max_body_bytes,
                        ),
                    },
                    api_keys: None,
                    allowed_hosts: None,
                    idempotency_ttl: config.idempotency_ttl.as_duration(),
                    supervision: Default::default(),
                }))
            })
            .collect();
        Self {
            runtime,
            store,
            routers,
            config,
        }
    }

    /// Sends `request` through the router configured with `MAX_IDS[index]`.
    pub fn send(&self, index: usize, request: Request<Body>) -> Answer {
        let router = self.routers[index].clone();
        self.runtime.block_on(async move {
            let response = router.oneshot(request).await.expect("infallible");
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("the body of an in-memory answer")
                .to_vec();
            Answer {
                status,
                content_type,
                body,
            }
        })
    }

    /// What `create_ingestion` was given since the last call.
    pub fn take_created(&self) -> Vec<NewIngestion> {
        std::mem::take(&mut *self.store.created.lock().unwrap())
    }
}

impl Answer {
    /// The body as JSON; panics (a finding) if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "a {} answer whose body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Checks that this is a client error (never a 5xx) answered as an RFC
    /// 9457 problem document, as SPEC.md requires of every error; returns the
    /// offending fields it lists.
    pub fn assert_client_problem(&self) -> Vec<String> {
        assert!(
            self.status.is_client_error(),
            "a client's input caused a {}: {:?}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/problem+json"),
            "a {} that is not a problem document: {:?}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        let problem = self.json();
        let kind = problem["type"].as_str().expect("`type` is a string");
        let slug = kind
            .strip_prefix("urn:sluice:problem:")
            .unwrap_or_else(|| panic!("`type` {kind:?} is not urn:sluice:problem:<slug>"));
        assert!(
            !slug.is_empty() && slug.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
            "`type` {kind:?} has a malformed slug"
        );
        assert!(
            problem["title"].as_str().is_some_and(|t| !t.is_empty()),
            "`title` is a non-empty string: {problem}"
        );
        assert_eq!(
            problem["status"].as_u64(),
            Some(u64::from(self.status.as_u16())),
            "`status` repeats the HTTP status: {problem}"
        );
        assert!(
            problem["detail"].is_string(),
            "`detail` is a string: {problem}"
        );
        let fields: Vec<String> = match problem.get("errors") {
            None => Vec::new(),
            Some(errors) => {
                let errors = errors.as_array().expect("`errors` is an array");
                assert!(!errors.is_empty(), "`errors`, when present, is not empty");
                errors
                    .iter()
                    .map(|e| {
                        assert!(
                            e["message"].as_str().is_some_and(|m| !m.is_empty()),
                            "every offending field has a message: {problem}"
                        );
                        e["field"].as_str().expect("`field` is a string").to_owned()
                    })
                    .collect()
            }
        };
        if self.status == StatusCode::UNPROCESSABLE_ENTITY {
            assert!(
                !fields.is_empty(),
                "a 422 lists the offending fields: {problem}"
            );
        }
        fields
    }
}

/// Percent-encodes every byte but the unreserved ones, so that any bytes make
/// a valid URI component that decodes back to them.
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A store that keeps nothing: it records what `POST /ingest` hands it and
/// knows one request, [`KNOWN_ID`]. The other operations are never reached
/// by the routes the targets call.
#[derive(Default)]
pub struct RecordingStore {
    created: Mutex<Vec<NewIngestion>>,
}

fn known_record() -> IngestionRecord {
    let id: IngestionId = KNOWN_ID.parse().expect("the known id parses");
    let at = Timestamp::from_micros(1_796_000_000_000_000);
    let statuses = [BatchStatus::Completed, BatchStatus::YetToStart];
    IngestionRecord {
        id,
        queue: QueueName::default_queue(),
        tenant: None,
        group: None,
        priority: Priority::Medium,
        created_at: at,
        finished_at: None,
        callback: None,
        batches: KNOWN_BATCHES
            .iter()
            .zip(statuses)
            .enumerate()
            .map(|(position, (ids, status))| BatchRecord {
                id: BatchId {
                    ingestion: id,
                    position: position as u32,
                },
                ids: ids
                    .iter()
                    .map(|&i| ItemId::new(i.into()).unwrap())
                    .collect(),
                status,
                attempts: u32::from(status == BatchStatus::Completed),
                retry_at: None,
                scheduled_at: None,
                started_at: None,
                completed_at: None,
            })
            .collect(),
    }
}

const UNUSED: &str = "not reached by POST /ingest or GET /status";

#[async_trait]
impl Store for RecordingStore {
    async fn create_ingestion(&self, new: NewIngestion) -> Result<Created, StoreError> {
        let id = new.id;
        self.created.lock().unwrap().push(new);
        Ok(Created::New(id))
    }

    async fn ingestion(&self, id: IngestionId) -> Result<Option<IngestionRecord>, StoreError> {
        let known = known_record();
        Ok((id == known.id).then_some(known))
    }

    async fn ingestion_page(
        &self,
        id: IngestionId,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Option<IngestionRecord>, StoreError> {
        let mut known = known_record();
        if id != known.id {
            return Ok(None);
        }
        known
            .batches
            .retain(|b| after.is_none_or(|after| b.id.position > after));
        known.batches.truncate(limit);
        Ok(Some(known))
    }

    async fn claim_batches(&self, _: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn finish_attempt(
        &self,
        _: BatchKey,
        _: Vec<IdOutcome>,
        _: AttemptEnd,
        _: Timestamp,
    ) -> Result<bool, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn cancel_ingestion(
        &self,
        _: IngestionId,
        _: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn batch_outcomes(
        &self,
        _: IngestionId,
        _: Option<u32>,
        _: usize,
    ) -> Result<Option<Vec<BatchOutcomes>>, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn requeue_interrupted(&self, _: Timestamp) -> Result<u64, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn release_unfinished(&self, _: &QueueName, _: Timestamp) -> Result<u64, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn claim_due_callbacks(
        &self,
        _: Timestamp,
        _: Duration,
        _: usize,
    ) -> Result<Vec<DueCallback>, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn finish_callback(&self, _: IngestionId, _: CallbackDelivery) -> Result<(), StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn next_callback_due(&self) -> Result<Option<Timestamp>, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn events_after(
        &self,
        _: u64,
        _: Option<IngestionId>,
        _: usize,
    ) -> Result<Vec<Event>, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn latest_event(&self) -> Result<u64, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn recent_ingestions(&self, _: usize) -> Result<Vec<IngestionSummary>, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn tenant_ingestions(
        &self,
        _: &sluice::domain::TenantName,
        _: usize,
    ) -> Result<Vec<IngestionSummary>, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn tenant_events_after(
        &self,
        _: u64,
        _: &sluice::domain::TenantName,
        _: usize,
    ) -> Result<Vec<Event>, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn waiting_batches(&self) -> Result<Vec<(QueueName, u64)>, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn register_queues(&self, _: &[QueueName]) -> Result<(), StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn queue_state(&self, _: &QueueName) -> Result<Option<QueueState>, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn change_queue(&self, _: &QueueName, _: QueueChange) -> Result<bool, StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        unreachable!("{UNUSED}")
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        unreachable!("{UNUSED}")
    }
}
