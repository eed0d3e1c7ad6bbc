//! The wake-ups that tie the parts together, in one cheap handle.
//!
//! Each is a `Notify`: a signal carries no data, only "look again"; whoever
//! wakes reads the truth from the store. A signal sent while nobody waits is
//! kept (`notify_one`) where one waiter must not miss it, and broadcast
//! (`notify_waiters`) where many listen and each re-reads anyway.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

#[derive(Clone, Default)]
pub struct Signals {
    /// New work, or a free processing slot: the dispatcher may claim now.
    work: Arc<Notify>,
    /// A request has ended: its callback may be due.
    request_ended: Arc<Notify>,
    /// New events are stored: live progress streams may read them.
    events: Arc<Notify>,
}

impl Signals {
    pub fn work_available(&self) {
        self.work.notify_one();
    }

    pub fn request_ended(&self) {
        self.request_ended.notify_one();
    }

    pub fn events_stored(&self) {
        self.events.notify_waiters();
    }

    /// Resolves at the next `work_available` (or at once if one is pending).
    pub async fn work(&self) {
        self.work.notified().await
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
