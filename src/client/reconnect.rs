//! How long `--wait` and `watch` keep trying when the server goes away.
//!
//! A Sluice that restarts (a deploy, a crash and its recovery) is back within
//! seconds and loses nothing, so a client following a request should ride it
//! out rather than fail; a server that stays away for long is reported.

use std::time::Duration;

use tokio::time::Instant;

/// Give up after failing for this long without one success.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Reconnect {
    /// When the current run of failures began.
    failing_since: Option<Instant>,
    next_delay: Duration,
    /// The first delay: ours, or the one the server asked for (SSE `retry:`).
    base: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            failing_since: None,
            next_delay: FIRST_DELAY,
            base: FIRST_DELAY,
        }
    }
}

impl Reconnect {
    /// The server asked to wait this long before reconnecting.
    pub fn set_base(&mut self, delay: Duration) {
        self.base = delay.min(MAX_DELAY);
        if self.failing_since.is_none() {
            self.next_delay = self.base;
        }
    }

    pub fn succeeded(&mut self) {
        self.failing_since = None;
        self.next_delay = self.base;
    }

    /// How long to wait before the next try, or `None` to give up. The delay
    /// doubles with each failure, up to a few seconds.
    pub fn failed(&mut self) -> Option<Duration> {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= GIVE_UP_AFTER {
            return None;
        }
        let delay = self.next_delay;
        self.next_delay = (delay * 2).min(MAX_DELAY);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delays_double_then_stop_after_a_minute_of_failures() {
        let mut reconnect = Reconnect::default();
        assert_eq!(reconnect.failed(), Some(Duration::from_millis(250)));
        assert_eq!(reconnect.failed(), Some(Duration::from_millis(500)));
        reconnect.succeeded();
        assert_eq!(reconnect.failed(), Some(Duration::from_millis(250)));
        let mut total = Duration::ZERO;
        while let Some(delay) = reconnect.failed() {
            assert!(delay <= MAX_DELAY);
            tokio::time::sleep(delay).await;
            total += delay;
        }
        assert!(total >= GIVE_UP_AFTER && total < GIVE_UP_AFTER + MAX_DELAY * 2);
    }
}
