//! PLACEHOLDER: the helper "adaptive" writes the real controller.
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct AdaptiveRate {
    current: Mutex<Option<Duration>>,
}

impl AdaptiveRate {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn throttled(&self, base: Duration, retry_after: Option<Duration>) {
        let mut c = self.current.lock().unwrap();
        let next = c.unwrap_or(base).max(Duration::from_millis(10)) * 2;
        *c = Some(next.max(retry_after.unwrap_or_default()));
    }
    pub fn succeeded(&self, _base: Duration) {}
    pub fn effective(&self, base: Duration) -> Duration {
        self.current.lock().unwrap().unwrap_or(base).max(base)
    }
}
