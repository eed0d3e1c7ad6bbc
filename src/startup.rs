//! Wiring: open the store, recover, bind the listener, and run the API beside
//! the dispatcher until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::auth::ApiKeys;
use crate::api::host::AllowedHosts;
use crate::api::limits::Limits;
use crate::api::serve::ConnectionLimits;
use crate::api::{self, ApiLimits, App, AppState};
use crate::callbacks::CallbackSender;
use crate::config::Config;
use crate::dispatcher::{Dispatcher, LoopFault};
use crate::domain::Clock;
use crate::metrics::Metrics;
use crate::pruner::{Pruner, RetentionSettings};
use crate::queue::{Queue, QueueName, QueueSettings, Queues};
use crate::redact::redacted_url;
use crate::signals::Signals;
use crate::store::{self, SharedStore};
use crate::supervisor::{Supervision, Supervisor};
use crate::upstream::{HttpUpstream, Metered, MockUpstream, SharedFetcher};

/// A service that is bound and recovered, ready to run.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    /// One per queue.
    dispatchers: Vec<Dispatcher>,
    callbacks: CallbackSender,
    store: SharedStore,
    signals: Signals,
    /// Handed to the API, which ends its live streams when it is cancelled.
    stopping: CancellationToken,
    /// Where the queue counter keeps the API's view of the queue.
    queued_ids: Arc<AtomicU64>,
    queues: Queues,
    /// Which background parts are down, as `/readyz` reports them.
    supervision: Supervision,
    /// Header-read and keep-alive timeouts, and the connection cap.
    connections: ConnectionLimits,
    /// Deletes ended work past `--retention`; `None` keeps everything.
    pruner: Option<Pruner>,
}

/// Parts a test puts in place of those the configuration names.
#[doc(hidden)]
#[derive(Default)]
pub struct TestParts {
    /// Fetches instead of the mock or the HTTP upstream.
    pub fetcher: Option<SharedFetcher>,
    /// Runs in the dispatcher's loop before every claim.
    pub dispatcher_fault: Option<LoopFault>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, TestParts::default()).await
    }

    #[doc(hidden)]
    pub async fn build_with(config: Config, parts: TestParts) -> anyhow::Result<Self> {
        // Before anything is opened or created: a refused start leaves no trace.
        refuse_open_access_beyond_loopback(&config)?;
        let callback_settings = config.callback_settings()?;
        let queue_settings = config.queue_settings()?;
        let store = store::open(&config.database, config.lease_settings())
            .await
            .with_context(|| format!("opening the database {}", redacted_url(&config.database)))?;
        let clock = Clock::new();
        let requeued = store
            .requeue_interrupted(clock.now())
            .await
            .context("putting interrupted batches back in the queue")?;
        if requeued > 0 {
            tracing::warn!(
                batches = requeued,
                "batches interrupted by a crash will run again"
            );
        }

        let metrics = Arc::new(Metrics::default());
        let queues = build_queues(queue_settings, parts.fetcher, &metrics)?;
        store
            .register_queues(&queues.names())
            .await
            .context("recording the configured queues")?;
        report_runtime_changes(store.as_ref(), &queues).await;

        let signals = Signals::default();
        let api_keys = match &config.api_keys_file {
            Some(path) => {
                let keys = ApiKeys::load(path).context("loading --api-keys-file")?;
                tracing::info!(
                    keys = keys.len(),
                    "API keys required on every endpoint but /healthz"
                );
                Some(Arc::new(keys))
            }
            None => {
                if config.listen.ip().is_loopback() {
                    tracing::info!(
                        "no API keys configured: every endpoint is open to this machine"
                    );
                } else {
                    tracing::warn!(
                        listen = %config.listen,
                        "--insecure-no-auth: listening beyond this machine without API keys; \
                         anyone who can reach it can submit and cancel"
                    );
                }
                None
            }
        };
        // Keys authenticate every request; without them, only the Host header
        // tells a local client from a web page rebound onto this address.
        let allowed_hosts = api_keys
            .is_none()
            .then(|| Arc::new(AllowedHosts::new(config.listen.ip(), &config.allowed_hosts)));
        let overload = Limits {
            writes: Arc::new(Semaphore::new(config.max_concurrent_writes.max(1))),
            request_timeout: config.request_timeout.as_duration(),
            max_queued_ids: config.max_queued_ids,
            queued_ids: Arc::new(AtomicU64::new(0)),
            event_streams: Arc::new(Semaphore::new(config.max_event_streams)),
            body_memory: Limits::body_memory(config.max_body_memory, config.max_body_bytes),
        };
        let stopping = CancellationToken::new();
        let dispatchers = queues
            .iter()
            .map(|queue| {
                let dispatcher = Dispatcher::new(
                    Arc::clone(&store),
                    Arc::clone(queue),
                    clock,
                    config.shutdown_grace(),
                    signals.clone(),
                    Arc::clone(&metrics),
                );
                match &parts.dispatcher_fault {
                    Some(fault) => dispatcher.with_fault(Arc::clone(fault)),
                    None => dispatcher,
                }
            })
            .collect();
        let supervision = Supervision::default();
        if callback_settings.signing.is_none() {
            tracing::info!("callbacks are not signed: see --callback-secret-file");
        }
        let callbacks = CallbackSender::new(
            Arc::clone(&store),
            clock,
            signals.clone(),
            callback_settings,
        );
        let pruner = RetentionSettings::new(config.retention, config.retention_period).and_then(
            |settings| {
                let prune = store.pruning()?;
                Some(Pruner::new(prune, settings, clock, Arc::clone(&metrics)))
            },
        );
        let router = api::router(AppState::new(App {
            store: Arc::clone(&store),
            signals: signals.clone(),
            metrics,
            queues: queues.clone(),
            shutdown: stopping.clone(),
            overload: overload.clone(),
            api_keys,
            allowed_hosts,
            clock,
            limits: ApiLimits {
                max_body_bytes: config.max_body_bytes,
                max_ids_per_request: config.max_ids_per_request,
            },
            idempotency_ttl: config.idempotency_ttl.as_duration(),
            supervision: supervision.clone(),
        }));
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;

        Ok(Self {
            listener,
            router,
            dispatchers,
            callbacks,
            store,
            signals,
            stopping,
            queued_ids: overload.queued_ids,
            queues,
            supervision,
            connections: config.connection_limits(),
            pruner,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The store, for tests and tools that inspect what the service holds.
    pub fn store(&self) -> SharedStore {
        Arc::clone(&self.store)
    }

    /// Serves until `shutdown` is cancelled: stops accepting connections, starts
    /// no new batch, and gives batches in flight the shutdown grace to finish.
    /// The background parts are supervised meanwhile: one that stops is
    /// restarted.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!("listening on http://{}", self.local_addr());
        let mut supervisor = Supervisor::new(self.supervision, shutdown.clone());
        for part in self
            .store
            .background(self.signals.clone(), shutdown.clone())
        {
            supervisor.spawn(part.name, part.run);
        }
        let (store, queued_ids, queues, stop) = (
            Arc::clone(&self.store),
            self.queued_ids,
            self.queues,
            shutdown.clone(),
        );
        supervisor.spawn(
            "queue counter",
            Box::new(move || {
                Box::pin(count_queue(
                    Arc::clone(&store),
                    Arc::clone(&queued_ids),
                    queues.clone(),
                    stop.clone(),
                ))
            }),
        );
        let stopping = self.stopping.clone();
        let shutdown_seen = shutdown.clone();
        tokio::spawn(async move {
            shutdown_seen.cancelled().await;
            stopping.cancel();
        });
        for dispatcher in self.dispatchers {
            let name = dispatcher.part_name();
            let (dispatcher, stop) = (Arc::new(dispatcher), shutdown.clone());
            let mut runs = 0u64;
            supervisor.spawn(
                name,
                Box::new(move || {
                    let (dispatcher, stop) = (Arc::clone(&dispatcher), stop.clone());
                    runs += 1;
                    let first = runs == 1;
                    Box::pin(async move {
                        if first {
                            dispatcher.run(stop).await;
                        } else {
                            dispatcher.resume(stop).await;
                        }
                    })
                }),
            );
        }
        if let Some(pruner) = self.pruner {
            let stop = shutdown.clone();
            supervisor.spawn(
                "pruner",
                Box::new(move || Box::pin(pruner.clone().run(stop.clone()))),
            );
        }
        let (callbacks, stop) = (self.callbacks, shutdown.clone());
        supervisor.spawn(
            "callback sender",
            Box::new(move || Box::pin(callbacks.clone().run(stop.clone()))),
        );
        api::serve::serve(
            self.listener,
            self.router,
            self.connections,
            shutdown.clone(),
        )
        .await;
        // If the server failed on its own, the dispatcher must stop too.
        shutdown.cancel();
        supervisor.wait().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The configured queues, each with its fetcher: the one a test gives, else
/// its HTTP upstream, else the built-in mock.
fn build_queues(
    settings: Vec<(QueueName, QueueSettings)>,
    test_fetcher: Option<SharedFetcher>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Queues> {
    let mut queues = Vec::with_capacity(settings.len());
    for (name, settings) in settings {
        let fetcher: SharedFetcher = match (&test_fetcher, &settings.upstream) {
            (Some(fetcher), _) => Arc::clone(fetcher),
            (None, Some(upstream)) => {
                tracing::info!(
                    queue = %name,
                    url = %redacted_url(&upstream.url_template),
                    "fetching from an HTTP upstream"
                );
                Arc::new(Metered::new(
                    HttpUpstream::new(upstream.clone()).with_context(|| format!("queue {name}"))?,
                    Arc::clone(metrics),
                ))
            }
            (None, None) => Arc::new(Metered::new(
                MockUpstream::new(settings.mock_latency),
                Arc::clone(metrics),
            )),
        };
        queues.push(Queue::new(name, settings, fetcher));
    }
    Ok(Queues::new(queues))
}

/// Says at start where a setting changed at runtime overrides the
/// configuration: it wins until it is reset (`PATCH` with `null`), and an
/// operator who edits the file should know why the change does not show.
async fn report_runtime_changes(store: &dyn store::Store, queues: &Queues) {
    for queue in queues.iter() {
        let Ok(Some(state)) = store.queue_state(&queue.name).await else {
            continue;
        };
        let runtime = state.runtime;
        if runtime.interval.is_some() || runtime.max_in_flight.is_some() || runtime.paused {
            tracing::warn!(
                queue = %queue.name,
                paused = runtime.paused,
                interval = runtime.interval.map(tracing::field::display),
                max_in_flight = runtime.max_in_flight.map(|n| n.get()),
                "settings changed at runtime are in force over the configuration; \
                 PATCH /queues/NAME with null returns a setting to the configuration"
            );
        }
    }
}

/// Protected mode: without API keys, listening beyond loopback would open
/// every endpoint to the network, so it must be asked for by name.
fn refuse_open_access_beyond_loopback(config: &Config) -> anyhow::Result<()> {
    if config.api_keys_file.is_none()
        && !config.listen.ip().is_loopback()
        && !config.insecure_no_auth
    {
        anyhow::bail!(
            "refusing to listen on {} without API keys: anyone who can reach it could submit \
             and cancel work. Give --api-keys-file FILE (see the README's \"API keys\"), \
             listen on 127.0.0.1, or, behind a firewall or an authenticating proxy, pass \
             --insecure-no-auth",
            config.listen
        );
    }
    Ok(())
}

/// Runs `sluice serve` until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    app.run(shutdown).await
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}

/// Counts the waiting ids once a second for the queue limit of POST /ingest.
/// A count, not a reservation: concurrent requests can overshoot the limit by
/// what arrives within a second.
async fn count_queue(
    store: SharedStore,
    queued_ids: Arc<AtomicU64>,
    queues: Queues,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.waiting_batches().await {
            Ok(waiting) => {
                // Each queue's batches at its own size; a queue no longer
                // configured at the default's.
                let ids = waiting
                    .iter()
                    .map(|(name, batches)| {
                        let size = queues
                            .get(name.as_str())
                            .unwrap_or(queues.default_queue())
                            .settings
                            .batch_size;
                        batches * size.get() as u64
                    })
                    .sum();
                queued_ids.store(ids, Ordering::Relaxed);
            }
            Err(error) => tracing::warn!(%error, "cannot count the queue"),
        }
    }
}
