use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("batch size must be a whole number from 1 to {max}")]
    BatchSize { max: u32 },
    #[error("{0}: use a duration such as 5s, 250ms or 1m, or 0")]
    Duration(String),
}

/// How many ids go into one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSize(NonZeroU32);

impl BatchSize {
    /// A batch is fetched under one rate-limit slot; a huge one would hold the
    /// upstream for too long, so the size is capped.
    pub const MAX: u32 = 10_000;

    pub fn new(size: u32) -> Result<Self, SettingError> {
        NonZeroU32::new(size)
            .filter(|n| n.get() <= Self::MAX)
            .map(Self)
            .ok_or(SettingError::BatchSize { max: Self::MAX })
    }

    pub fn get(self) -> usize {
        self.0.get() as usize
    }
}

impl Default for BatchSize {
    fn default() -> Self {
        Self(NonZeroU32::new(3).expect("3 is not zero"))
    }
}

impl FromStr for BatchSize {
    type Err = SettingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n = s
            .trim()
            .parse::<u32>()
            .map_err(|_| SettingError::BatchSize { max: Self::MAX })?;
        Self::new(n)
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A duration given on the command line: `5s`, `250ms`, `1m30s`, or `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Interval(Duration);

impl Interval {
    pub const fn from_duration(d: Duration) -> Self {
        Self(d)
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn as_micros(self) -> i64 {
        i64::try_from(self.0.as_micros()).unwrap_or(i64::MAX)
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// How late a start may be and still keep its place on the rate grid: a
    /// tenth of the interval, at most 25 ms. Consecutive starts are never closer
    /// than the interval minus this.
    pub fn late_tolerance_micros(self) -> i64 {
        (self.as_micros() / 10).min(25_000)
    }
}

impl FromStr for Interval {
    type Err = SettingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "0" {
            return Ok(Self(Duration::ZERO));
        }
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|e| SettingError::Duration(format!("{s:?}: {e}")))
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            f.write_str("0")
        } else {
            humantime::format_duration(self.0).fmt(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_is_bounded() {
        assert!("0".parse::<BatchSize>().is_err());
        assert!("-1".parse::<BatchSize>().is_err());
        assert_eq!("7".parse::<BatchSize>().unwrap().get(), 7);
        assert!("10001".parse::<BatchSize>().is_err());
        assert_eq!(BatchSize::default().get(), 3);
    }

    #[test]
    fn intervals_read_human_durations() {
        assert_eq!(
            "250ms".parse::<Interval>().unwrap().as_duration(),
            Duration::from_millis(250)
        );
        assert_eq!("5s".parse::<Interval>().unwrap().as_micros(), 5_000_000);
        assert!("0".parse::<Interval>().unwrap().is_zero());
        assert!("0ms".parse::<Interval>().unwrap().is_zero());
        assert!("soon".parse::<Interval>().is_err());
        assert!(
            "5".parse::<Interval>().is_err(),
            "a bare number has no unit"
        );
    }
}
