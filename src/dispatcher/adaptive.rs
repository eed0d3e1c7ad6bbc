//! Adaptive rate: a queue's spacing between batch starts, widened when its
//! upstream refuses (429 or 503) and narrowed back after a run of successes.
//!
//! One [`AdaptiveRate`] serves one queue on one node. The dispatcher loop reads
//! [`AdaptiveRate::effective`] before each claim; the tasks processing batches
//! report every id's outcome. The controller only ever *adds* spacing on top of
//! the queue's configured interval (`base`), so the queue never runs faster
//! than its operator allowed, and it holds nothing but a few numbers: the
//! store's rate limit still decides each slot.
//!
//! The rule is multiplicative both ways, widening much faster than it
//! narrows, so that the queue leaves a limit quickly and probes it slowly:
//! - a refusal doubles the interval in force ([`GROWTH`]), or raises it to the
//!   upstream's `Retry-After` if that is longer, up to [`MAX_INTERVAL`];
//! - every [`SUCCESS_RUN`] successes take a tenth off ([`SHRINK_NUM`] /
//!   [`SHRINK_DEN`]), until the interval is back at `base`.
//!
//! Against an upstream that hides a limit of 5 requests a second (a token
//! bucket with a burst of 5) and a queue configured at 100 ms, that settles
//! into a saw-tooth around the hidden limit: about one refusal every 30
//! requests and ~99% of the upstream's capacity used (the simulation in the
//! tests below; the benchmark's `--scenario adaptive` measures the service).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How much one refusal multiplies the interval in force. Doubling halves the
/// rate, which takes a queue running at up to twice the hidden limit back
/// under it in one step.
const GROWTH: u32 = 2;
/// The least a refusal widens the interval to (10 requests a second). A queue
/// without limit (`base` zero), where doubling would leave it at zero, or
/// with a very short interval, steps straight there; and since a second step
/// waits for three quarters of the interval in force, refusals of many
/// batches in flight at once cannot compound from a microsecond interval.
const FIRST_STEP: Duration = Duration::from_millis(100);
/// The widest the controller makes the interval, whatever the upstream says:
/// a queue never waits more than this between starts because of refusals.
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Successes in a row that earn one narrowing step. Fewer makes the queue
/// probe the limit more often (more refusals); more leaves capacity unused
/// after each refusal.
const SUCCESS_RUN: u32 = 5;
/// Each narrowing step multiplies the interval by `SHRINK_NUM / SHRINK_DEN`.
const SHRINK_NUM: u32 = 9;
const SHRINK_DEN: u32 = 10;
/// Refusals within `HOLD_NUM / HOLD_DEN` of the interval in force after a
/// step do not step again.
const HOLD_NUM: u32 = 3;
const HOLD_DEN: u32 = 4;
/// Below this a slow-down of a queue without limit ends: nobody can tell a
/// millisecond from nothing at the upstream.
const MIN_SLOWED: Duration = Duration::from_millis(1);

/// The adaptive spacing of one queue on this node. `Sync`: the dispatcher
/// loop and the batch tasks share it (behind an `Arc`).
#[derive(Debug, Default)]
pub struct AdaptiveRate {
    /// A std mutex rather than tokio's: it is held for a few arithmetic
    /// operations and never across an `.await`.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The slowed interval; `ZERO` when not slowed. What is in force is the
    /// larger of this and the caller's `base`, so a `base` changed at run
    /// time takes effect at once, in both directions.
    slowed: Duration,
    /// Where the last refusal's doubling put the interval. Above it (after a
    /// long `Retry-After`), each success halves the interval: `Retry-After`
    /// says when to come back, not how fast to go afterwards.
    backoff: Duration,
    /// When the interval last grew by a refusal: refusals of batches that
    /// were already in flight then must not compound the step.
    last_increase: Option<Instant>,
    /// Successes since the last refusal or narrowing step.
    successes: u32,
}

impl AdaptiveRate {
    /// A controller that has seen nothing: the queue runs at its `base`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The upstream answered 429 or 503 for one id: slow the whole queue.
    /// To at least `retry_after` when it gave one, else multiplicatively.
    pub fn throttled(&self, base: Duration, retry_after: Option<Duration>) {
        self.throttled_at(Instant::now(), base, retry_after);
    }

    /// One id fetched without being throttled. After a run of these the
    /// interval shrinks back toward `base`, never below it.
    pub fn succeeded(&self, base: Duration) {
        self.lock().succeeded(base);
    }

    /// The spacing to keep between starts now: always >= base.
    pub fn effective(&self, base: Duration) -> Duration {
        self.lock().effective(base)
    }

    fn throttled_at(&self, now: Instant, base: Duration, retry_after: Option<Duration>) {
        self.lock().throttled(now, base, retry_after);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the numbers consistent, so a panic elsewhere
        // while the lock was held cannot have left them half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn effective(&self, base: Duration) -> Duration {
        base.max(self.slowed)
    }

    fn throttled(&mut self, now: Instant, base: Duration, retry_after: Option<Duration>) {
        let current = self.effective(base);
        self.successes = 0;
        let wanted = retry_after.unwrap_or_default().min(MAX_INTERVAL);
        // Refusals soon after the last step come from requests sent before
        // it took effect: they say nothing new about the rate. "Soon" is
        // three quarters of the interval now in force, not all of it: the
        // next start's refusal arrives about one interval after the step,
        // give or take the jitter of two fetches, and that one is news.
        // A longer `Retry-After` is still honoured (taking the larger of two
        // waits cannot compound).
        let hold = current * HOLD_NUM / HOLD_DEN;
        let recent = self
            .last_increase
            .is_some_and(|at| now.saturating_duration_since(at) < hold);
        if recent {
            if wanted > current {
                self.slowed = wanted;
            }
            return;
        }
        let grown = current
            .checked_mul(GROWTH)
            .map_or(MAX_INTERVAL, whole_millis)
            .max(FIRST_STEP)
            .min(MAX_INTERVAL);
        // A `base` above the cap stays in force: `effective` takes the larger.
        self.backoff = grown;
        self.slowed = grown.max(wanted);
        self.last_increase = Some(now);
    }

    fn succeeded(&mut self, base: Duration) {
        if self.slowed <= base {
            // Not slowed (or `base` has since risen above the slow-down).
            self.slowed = Duration::ZERO;
            self.successes = 0;
            return;
        }
        if self.slowed > self.backoff {
            // Past a `Retry-After`: come back quickly to the rate's back-off.
            self.slowed = whole_millis(self.slowed / 2).max(self.backoff);
            self.successes = 0;
            return;
        }
        self.successes += 1;
        if self.successes < SUCCESS_RUN {
            return;
        }
        self.successes = 0;
        let narrowed = whole_millis(self.slowed * SHRINK_NUM / SHRINK_DEN);
        self.slowed = if narrowed <= base || narrowed < MIN_SLOWED {
            Duration::ZERO
        } else {
            narrowed
        };
    }
}

/// `d` without its fraction of a millisecond. The slow-down is a rough
/// figure, and GET /queues shows it: "173ms" rather than "173ms 127us 245ns".
fn whole_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn assert_sync<T: Send + Sync>() {}

    #[test]
    fn it_can_be_shared_between_the_loop_and_the_batch_tasks() {
        assert_sync::<AdaptiveRate>();
    }

    #[test]
    fn untouched_it_keeps_the_base() {
        let rate = AdaptiveRate::new();
        assert_eq!(rate.effective(100 * MS), 100 * MS);
        assert_eq!(rate.effective(Duration::ZERO), Duration::ZERO);
        rate.succeeded(100 * MS);
        assert_eq!(rate.effective(100 * MS), 100 * MS);
    }

    #[test]
    fn a_refusal_doubles_the_interval() {
        let rate = AdaptiveRate::new();
        rate.throttled_at(Instant::now(), 100 * MS, None);
        assert_eq!(rate.effective(100 * MS), 200 * MS);
    }

    #[test]
    fn a_queue_without_limit_still_slows_down() {
        let rate = AdaptiveRate::new();
        let t0 = Instant::now();
        rate.throttled_at(t0, Duration::ZERO, None);
        assert_eq!(rate.effective(Duration::ZERO), FIRST_STEP);
        rate.throttled_at(t0 + Duration::from_secs(1), Duration::ZERO, None);
        assert_eq!(rate.effective(Duration::ZERO), 2 * FIRST_STEP);

        // A very short interval steps straight to the first step too.
        let rate = AdaptiveRate::new();
        rate.throttled_at(t0, MS, None);
        assert_eq!(rate.effective(MS), FIRST_STEP);
    }

    #[test]
    fn retry_after_sets_at_least_that_wait() {
        let rate = AdaptiveRate::new();
        rate.throttled_at(Instant::now(), 100 * MS, Some(Duration::from_secs(3)));
        assert_eq!(rate.effective(100 * MS), Duration::from_secs(3));

        // A Retry-After shorter than the doubling does not hold it back.
        let rate = AdaptiveRate::new();
        rate.throttled_at(Instant::now(), 100 * MS, Some(150 * MS));
        assert_eq!(rate.effective(100 * MS), 200 * MS);
    }

    #[test]
    fn growth_is_capped() {
        let rate = AdaptiveRate::new();
        let mut now = Instant::now();
        for _ in 0..30 {
            now += Duration::from_secs(120);
            rate.throttled_at(now, 100 * MS, None);
            assert!(rate.effective(100 * MS) <= MAX_INTERVAL);
        }
        assert_eq!(rate.effective(100 * MS), MAX_INTERVAL);

        let rate = AdaptiveRate::new();
        rate.throttled_at(Instant::now(), 100 * MS, Some(Duration::from_secs(3600)));
        assert_eq!(rate.effective(100 * MS), MAX_INTERVAL);

        // A configured interval above the cap is still the floor.
        assert_eq!(
            rate.effective(Duration::from_secs(120)),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn refusals_of_batches_already_in_flight_count_once() {
        let rate = AdaptiveRate::new();
        let t0 = Instant::now();
        // 8 batches in flight all refused within a few milliseconds.
        for i in 0..8 {
            rate.throttled_at(t0 + i * MS, 100 * MS, None);
        }
        assert_eq!(rate.effective(100 * MS), 200 * MS);
        // Well within the new interval of the step: ignored.
        rate.throttled_at(t0 + 140 * MS, 100 * MS, None);
        assert_eq!(rate.effective(100 * MS), 200 * MS);
        // The next start, about one interval later (its fetch a little
        // quicker than the last), refused again: that is news.
        rate.throttled_at(t0 + 195 * MS, 100 * MS, None);
        assert_eq!(rate.effective(100 * MS), 400 * MS);
    }

    #[test]
    fn a_longer_retry_after_is_honoured_even_right_after_a_step() {
        let rate = AdaptiveRate::new();
        let t0 = Instant::now();
        rate.throttled_at(t0, 100 * MS, None);
        rate.throttled_at(t0 + MS, 100 * MS, Some(Duration::from_secs(2)));
        assert_eq!(rate.effective(100 * MS), Duration::from_secs(2));
        // ... but a shorter one does not shrink it.
        rate.throttled_at(t0 + 2 * MS, 100 * MS, Some(Duration::from_secs(1)));
        assert_eq!(rate.effective(100 * MS), Duration::from_secs(2));
    }

    #[test]
    fn a_run_of_successes_narrows_back_to_the_base_and_never_below() {
        let base = 100 * MS;
        let rate = AdaptiveRate::new();
        rate.throttled_at(Instant::now(), base, None);
        assert_eq!(rate.effective(base), 200 * MS);
        for _ in 0..SUCCESS_RUN - 1 {
            rate.succeeded(base);
        }
        assert_eq!(rate.effective(base), 200 * MS, "a run is not over yet");
        rate.succeeded(base);
        assert_eq!(rate.effective(base), 180 * MS);
        for _ in 0..SUCCESS_RUN {
            rate.succeeded(base);
        }
        assert_eq!(rate.effective(base), 162 * MS);
        for _ in 0..SUCCESS_RUN {
            rate.succeeded(base);
        }
        // 145.8 ms, shown to the millisecond.
        assert_eq!(rate.effective(base), 145 * MS);

        let mut previous = rate.effective(base);
        for _ in 0..200 {
            rate.succeeded(base);
            let now = rate.effective(base);
            assert!(now <= previous, "successes never widen the interval");
            assert!(now >= base);
            previous = now;
        }
        assert_eq!(rate.effective(base), base);
    }

    #[test]
    fn a_refusal_restarts_the_run() {
        let base = 100 * MS;
        let rate = AdaptiveRate::new();
        let t0 = Instant::now();
        rate.throttled_at(t0, base, None);
        for _ in 0..SUCCESS_RUN - 1 {
            rate.succeeded(base);
        }
        // Within the window, so the interval stays, but the run restarts.
        rate.throttled_at(t0 + MS, base, None);
        rate.succeeded(base);
        assert_eq!(rate.effective(base), 200 * MS);
    }

    #[test]
    fn after_a_retry_after_successes_come_back_quickly() {
        let base = 100 * MS;
        let rate = AdaptiveRate::new();
        rate.throttled_at(Instant::now(), base, Some(Duration::from_secs(30)));
        let mut steps = 0;
        while rate.effective(base) > 200 * MS {
            rate.succeeded(base);
            steps += 1;
        }
        // 30 s halved to the 200 ms back-off of the rate that was refused.
        assert_eq!(steps, 8);
        assert_eq!(rate.effective(base), 200 * MS);
    }

    #[test]
    fn a_base_changed_at_run_time_takes_effect_at_once() {
        let rate = AdaptiveRate::new();
        rate.throttled_at(Instant::now(), 100 * MS, None);
        assert_eq!(rate.effective(100 * MS), 200 * MS);
        // Raised above the slow-down: the new base is in force.
        assert_eq!(
            rate.effective(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        rate.succeeded(Duration::from_secs(1));
        // Lowered again: the slow-down was dropped as moot.
        assert_eq!(rate.effective(100 * MS), 100 * MS);

        // Lowered while slowed: it narrows toward the new, lower base.
        let rate = AdaptiveRate::new();
        rate.throttled_at(Instant::now(), 100 * MS, None);
        for _ in 0..200 {
            rate.succeeded(10 * MS);
        }
        assert_eq!(rate.effective(10 * MS), 10 * MS);
    }

    /// The hidden limit of the benchmark: a token bucket.
    struct TokenBucket {
        per_second: f64,
        burst: f64,
        tokens: f64,
        last: Duration,
    }

    impl TokenBucket {
        fn new(per_second: f64, burst: f64) -> Self {
            Self {
                per_second,
                burst,
                tokens: burst,
                last: Duration::ZERO,
            }
        }

        /// Whether a request at `at` (since the start) is let through.
        fn admit(&mut self, at: Duration) -> bool {
            let elapsed = at.saturating_sub(self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
            self.last = at;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                true
            } else {
                false
            }
        }
    }

    /// Successes per second and the refused share over `run`, for a queue
    /// at `base` with one batch (of one id) in flight, against `bucket`. Each
    /// fetch takes 1 to 9 ms, varying; its outcome is reported before the
    /// next claim, and each start takes the slot `previous slot + effective
    /// interval`.
    fn simulate(base: Duration, mut bucket: TokenBucket, run: Duration) -> (f64, f64) {
        let rate = AdaptiveRate::new();
        let t0 = Instant::now();
        let (mut ok, mut refused) = (0u32, 0u32);
        let mut slot: Option<Duration> = None;
        let mut ready = Duration::ZERO;
        loop {
            let interval = rate.effective(base);
            let start = slot.map_or(Duration::ZERO, |s| (s + interval).max(ready));
            if start > run {
                break;
            }
            slot = Some(start);
            ready = start + (1 + (ok + refused) * 7 % 9) * MS;
            if bucket.admit(start) {
                ok += 1;
                rate.succeeded(base);
            } else {
                refused += 1;
                rate.throttled_at(t0 + ready, base, None);
            }
        }
        let share = f64::from(refused) / f64::from(ok + refused);
        (f64::from(ok) / run.as_secs_f64(), share)
    }

    #[test]
    fn against_a_hidden_limit_of_5_a_second_it_uses_most_of_it_with_few_refusals() {
        let (per_second, refused) = simulate(
            100 * MS,
            TokenBucket::new(5.0, 5.0),
            Duration::from_secs(60),
        );
        assert!(per_second >= 3.5, "{per_second:.2} successes/s");
        assert!(refused <= 0.15, "{:.1}% refused", refused * 100.0);
    }

    #[test]
    fn without_adaptation_half_the_requests_would_be_refused() {
        // The yardstick the test above is measured against: at a fixed 100 ms
        // the same bucket refuses about half.
        let mut bucket = TokenBucket::new(5.0, 5.0);
        let refused = (0..600).filter(|i| !bucket.admit(*i * 100 * MS)).count();
        assert!(refused > 250, "{refused} of 600 refused");
    }

    #[test]
    fn a_queue_without_limit_finds_the_hidden_one_too() {
        for (limit, burst) in [(2.0, 2.0), (5.0, 5.0), (20.0, 20.0)] {
            let (per_second, refused) = simulate(
                Duration::ZERO,
                TokenBucket::new(limit, burst),
                Duration::from_secs(120),
            );
            assert!(
                per_second >= 0.6 * limit,
                "limit {limit}/s: {per_second:.2} successes/s"
            );
            assert!(
                refused <= 0.15,
                "limit {limit}/s: {:.1}% refused",
                refused * 100.0
            );
        }
    }
}
