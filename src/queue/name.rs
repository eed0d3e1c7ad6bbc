use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A queue's name: 1 to 64 characters of `a-z`, `0-9`, `_` and `-`, starting
/// with a letter or a digit, so it is safe in a URL path, a metric label and a
/// log line as it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueName(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a queue name is 1 to {max} characters of a-z, 0-9, `_` and `-`, starting with a letter or a digit"
)]
pub struct QueueNameError {
    max: usize,
}

impl QueueName {
    pub const MAX_LEN: usize = 64;
    /// The queue every service has; SPEC.md's contract is its behaviour.
    pub const DEFAULT: &'static str = "default";

    pub fn default_queue() -> Self {
        Self(Arc::from(Self::DEFAULT))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        &*self.0 == Self::DEFAULT
    }
}

impl FromStr for QueueName {
    type Err = QueueNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if valid {
            Ok(Self(Arc::from(s)))
        } else {
            Err(QueueNameError { max: Self::MAX_LEN })
        }
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for QueueName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for QueueName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_path_and_label_safe() {
        for good in ["default", "enrich", "a", "9lives", "bulk-load_2"] {
            assert_eq!(good.parse::<QueueName>().unwrap().as_str(), good);
        }
        let too_long = "a".repeat(65);
        for bad in [
            "",
            "-x",
            "_x",
            "Enrich",
            "a b",
            "a/b",
            "é",
            too_long.as_str(),
        ] {
            assert!(bad.parse::<QueueName>().is_err(), "{bad:?}");
        }
        assert!("default".parse::<QueueName>().unwrap().is_default());
    }
}
