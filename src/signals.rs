//! The wake-ups that tie the parts together, in one cheap handle.
//!
//! Each is a `Notify`: a signal carries no data, only "look again"; whoever
//! wakes reads the truth from the store. A signal sent while nobody waits is
//! kept (`notify_one`) where one waiter must not miss it, and broadcast
//! (`notify_waiters`) where many listen and each re-reads anyway.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::{Notify, watch};

#[derive(Clone)]
pub struct Signals {
    /// New work, or a free processing slot: a dispatcher may claim now. A
    /// count each dispatcher (one per queue) follows with its own
    /// [`Wakeups`], so every one of them hears every signal, even one sent
    /// while it was busy.
    work: Arc<watch::Sender<u64>>,
    /// An operator changed a queue (paused, resumed, new settings).
    queues: Arc<watch::Sender<u64>>,
    /// A request has ended: its callback may be due.
    request_ended: Arc<Notify>,
    /// New events are stored: live progress streams may read them.
    events: Arc<Notify>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            work: Arc::new(watch::Sender::new(0)),
            queues: Arc::new(watch::Sender::new(0)),
            request_ended: Arc::default(),
            events: Arc::default(),
        }
    }
}

impl Signals {
    pub fn work_available(&self) {
        self.work.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn queues_changed(&self) {
        self.queues.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A dispatcher's own view of the wake-ups.
    pub fn wakeups(&self) -> Wakeups {
        Wakeups {
            work: self.work.subscribe(),
            queues: self.queues.subscribe(),
        }
    }

    pub fn request_ended(&self) {
        self.request_ended.notify_one();
    }

    pub fn events_stored(&self) {
        self.events.notify_waiters();
    }

    pub async fn ended_request(&self) {
        self.request_ended.notified().await
    }

    /// A future that resolves at the next `events_stored` after this call, even
    /// if it is first polled later: create it before reading the store, so no
    /// event stored in between is missed.
    pub fn next_events(&self) -> Pin<Box<OwnedNotified>> {
        let mut notified = Box::pin(Arc::clone(&self.events).notified_owned());
        notified.as_mut().enable();
        notified
    }
}

/// What woke a dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// New work or a free processing slot.
    Work,
    /// An operator changed a queue.
    QueueChanged,
}

/// One dispatcher's wake-ups: each resolves for a signal sent since the last
/// [`Wakeups::seen`], so none sent between a look at the store and the wait
/// that follows it is missed.
pub struct Wakeups {
    work: watch::Receiver<u64>,
    queues: watch::Receiver<u64>,
}

impl Wakeups {
    /// Marks every signal so far as seen: call it before reading the store.
    pub fn seen(&mut self) {
        self.work.mark_unchanged();
        self.queues.mark_unchanged();
    }

    /// New work, a free slot, or a change to a queue: which.
    pub async fn work(&mut self) -> Wakeup {
        tokio::select! {
            _ = self.work.changed() => Wakeup::Work,
            _ = self.queues.changed() => Wakeup::QueueChanged,
        }
    }

    /// A change to a queue only (a new interval, a pause).
    pub async fn queue_change(&mut self) {
        // The senders live as long as `Signals`; a closed channel never
        // wakes, rather than spinning.
        if self.queues.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
