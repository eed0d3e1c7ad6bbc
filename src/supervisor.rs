//! Supervision of the background parts (the dispatcher, the callback sender,
//! the store's listener and heartbeat, the queue counter): each runs in its own
//! task, and one that stops before shutdown, by a panic or by returning, is
//! logged at `error` and started again after a backoff. While it is down,
//! [`Supervision::down`] names it, and `/readyz` answers 503.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The first wait before a restart; it doubles with each failure in a row.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A part that ran this long before stopping starts again from the first backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Makes one run of a part; called again for every restart.
pub type Part = Box<dyn FnMut() -> BoxFuture<'static, ()> + Send>;

/// Which parts are down now; cheap to clone, shared with the API.
#[derive(Clone, Default)]
pub struct Supervision {
    down: Arc<Mutex<BTreeSet<&'static str>>>,
}

impl Supervision {
    /// The names of the parts that are down, in name order.
    pub fn down(&self) -> Vec<&'static str> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<&'static str>> {
        self.down
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs parts until shutdown, restarting those that stop.
pub struct Supervisor {
    supervision: Supervision,
    shutdown: CancellationToken,
    watchers: JoinSet<()>,
}

impl Supervisor {
    pub fn new(supervision: Supervision, shutdown: CancellationToken) -> Self {
        Self {
            supervision,
            shutdown,
            watchers: JoinSet::new(),
        }
    }

    /// Starts `part` now, and again whenever it stops before shutdown.
    pub fn spawn(&mut self, name: &'static str, mut part: Part) {
        let (supervision, shutdown) = (self.supervision.clone(), self.shutdown.clone());
        self.watchers.spawn(async move {
            let mut backoff = BACKOFF_FIRST;
            loop {
                let started = Instant::now();
                let run = tokio::spawn(part());
                let ended = run.await;
                if shutdown.is_cancelled() {
                    if let Err(error) = ended {
                        tracing::error!(part = name, %error, "stopped with a panic during shutdown");
                    }
                    return;
                }
                supervision.lock().insert(name);
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff = BACKOFF_FIRST;
                }
                match ended {
                    Ok(()) => tracing::error!(
                        part = name,
                        restart_in = ?backoff,
                        "stopped on its own; restarting"
                    ),
                    Err(error) => tracing::error!(
                        part = name,
                        restart_in = ?backoff,
                        panic = %panic_message(error),
                        "panicked; restarting"
                    ),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                supervision.lock().remove(name);
                tracing::info!(part = name, "restarted");
            }
        });
    }

    /// Waits, once shutdown has begun, for every part to finish.
    pub async fn wait(mut self) {
        while self.watchers.join_next().await.is_some() {}
    }
}

/// What a panic said, when it said it with a string.
pub fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload_message(payload.as_ref()),
        Err(error) => error.to_string(),
    }
}

/// The message of a caught panic's payload.
pub fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_part_that_stops_is_down_until_restarted_with_backoff() {
        let supervision = Supervision::default();
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(supervision.clone(), shutdown);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        supervisor.spawn(
            "flaky",
            Box::new(move || {
                let run = counted.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    match run {
                        0 => panic!("first run fails"),
                        1 => {}
                        _ => std::future::pending().await,
                    }
                })
            }),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(supervision.down(), ["flaky"], "down after its panic");

        tokio::time::sleep(BACKOFF_FIRST).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "restarted after the backoff"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(supervision.down(), ["flaky"], "down again: it returned");

        tokio::time::sleep(BACKOFF_FIRST).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the backoff doubled");
        tokio::time::sleep(BACKOFF_FIRST).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(supervision.down().is_empty(), "up while it runs");
    }
}
