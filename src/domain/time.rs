use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::time::Instant;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

/// A point in wall-clock time, in microseconds since the Unix epoch: the form in
/// which times are stored and compared across restarts (and, later, nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    pub fn saturating_add_micros(self, micros: i64) -> Self {
        Self(self.0.saturating_add(micros))
    }

    /// How long from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(u64::try_from(self.0 - earlier.0).unwrap_or(0))
    }

    fn to_system_time(self) -> SystemTime {
        match u64::try_from(self.0) {
            Ok(us) => UNIX_EPOCH + Duration::from_micros(us),
            Err(_) => UNIX_EPOCH,
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_micros(self.to_system_time()).fmt(f)
    }
}

/// Rendered as RFC 3339 with microseconds, e.g. `2026-11-28T15:04:05.123456Z`.
impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        let time = humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)?;
        let micros = time
            .duration_since(UNIX_EPOCH)
            .map_err(serde::de::Error::custom)?
            .as_micros();
        Ok(Self(
            i64::try_from(micros).map_err(serde::de::Error::custom)?,
        ))
    }
}

// The OpenAPI schema, matching the `Serialize` above: always UTC, always six
// fractional digits.
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .pattern(Some(
                "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$",
            ))
            .description(Some("RFC 3339, UTC, with microseconds."))
            .examples(["2026-11-28T15:06:19.489512Z"])
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

/// The service's clock: wall-clock time read through tokio's monotonic clock.
///
/// Reading the wall clock once and then advancing it with `tokio::time::Instant`
/// does two things: a clock step (NTP) cannot make the dispatcher start two
/// batches too close together, and tests that pause tokio's clock control every
/// time Sluice sees, including the timestamps it stores.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_wall: Timestamp,
}

impl Clock {
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            origin: Instant::now(),
            origin_wall: Timestamp(i64::try_from(wall.as_micros()).unwrap_or(i64::MAX)),
        }
    }

    pub fn now(&self) -> Timestamp {
        let elapsed = self.origin.elapsed().as_micros();
        self.origin_wall
            .saturating_add_micros(i64::try_from(elapsed).unwrap_or(i64::MAX))
    }

    /// The tokio instant at which this clock will read `at` (now, if `at` is past).
    pub fn instant_at(&self, at: Timestamp) -> Instant {
        let offset = at.since(self.origin_wall);
        self.origin + offset
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_tokio_time() {
        let clock = Clock::new();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now().as_micros() - t0.as_micros(), 1_500_000);
        let later = t0.saturating_add_micros(2_000_000);
        assert_eq!(
            clock.instant_at(later) - Instant::now(),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn timestamps_render_as_rfc3339() {
        let t = Timestamp::from_micros(1_700_000_000_123_456);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.123456Z");
    }
}
