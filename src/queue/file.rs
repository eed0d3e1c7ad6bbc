//! The queues file (`--queues-file`): one TOML table per queue, each setting
//! optional. A file that does not parse, or names a setting that does not
//! exist, is refused with its line and the reason, so that a typo never
//! silently leaves a queue on its defaults.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use serde::{Deserialize, Deserializer};

use super::QueueName;
use super::order::{Fairness, MAX_WEIGHT};
use crate::domain::{BatchSize, Interval, TenantName};

/// What a file says about one queue; `None` where it says nothing, so the
/// flags' value applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueEntry {
    #[serde(default, deserialize_with = "parsed")]
    pub interval: Option<Interval>,
    pub max_in_flight: Option<NonZeroUsize>,
    #[serde(default, deserialize_with = "batch_size")]
    pub batch_size: Option<BatchSize>,
    pub upstream_url: Option<String>,
    pub upstream_headers: Option<Vec<String>>,
    pub upstream_token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "parsed")]
    pub upstream_timeout: Option<Interval>,
    pub upstream_max_body: Option<u64>,
    pub upstream_follow_redirects: Option<bool>,
    #[serde(default, deserialize_with = "max_attempts")]
    pub max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "parsed")]
    pub retry_base: Option<Interval>,
    pub adaptive: Option<bool>,
    #[serde(default, deserialize_with = "parsed")]
    pub fairness: Option<Fairness>,
    #[serde(default, deserialize_with = "weights")]
    pub tenant_weights: Option<BTreeMap<TenantName, NonZeroU32>>,
    #[serde(default, deserialize_with = "parsed")]
    pub aging: Option<Interval>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueuesFile {
    #[serde(default)]
    queues: BTreeMap<QueueName, QueueEntry>,
}

/// Reads and checks a queues file.
pub fn load(path: &Path) -> anyhow::Result<BTreeMap<QueueName, QueueEntry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --queues-file {}", path.display()))?;
    parse(&text).with_context(|| format!("--queues-file {}", path.display()))
}

/// Parses a queues file's text.
pub fn parse(text: &str) -> anyhow::Result<BTreeMap<QueueName, QueueEntry>> {
    // toml's message names the line and column, and shows the line.
    let file: QueuesFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(file.queues)
}

/// A setting written as a string and parsed by its type's `FromStr`, such as
/// `interval = "250ms"`.
fn parsed<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

fn batch_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BatchSize>, D::Error> {
    let n = u32::deserialize(d)?;
    BatchSize::new(n)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn max_attempts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(serde::de::Error::custom("max_attempts must be at least 1")),
        n => Ok(Some(n)),
    }
}

/// `[queues.NAME.tenant_weights]`: tenant names, each with a weight from 1
/// to [`MAX_WEIGHT`].
fn weights<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<TenantName, NonZeroU32>>, D::Error> {
    let weights = BTreeMap::<TenantName, u32>::deserialize(d)?;
    weights
        .into_iter()
        .map(|(tenant, weight)| match NonZeroU32::new(weight) {
            Some(w) if weight <= MAX_WEIGHT => Ok((tenant, w)),
            _ => Err(serde::de::Error::custom(format!(
                "tenant {tenant}'s weight must be from 1 to {MAX_WEIGHT}, not {weight}"
            ))),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_gives_each_queue_its_settings() {
        let queues = parse(
            r#"
            [queues.enrich]
            interval = "250ms"
            max_in_flight = 2
            batch_size = 10
            upstream_url = "http://127.0.0.1:9000/items/{id}"
            max_attempts = 3
            adaptive = true

            [queues.bulk]
            interval = "0"
            fairness = "tenant"
            aging = "30s"

            [queues.bulk.tenant_weights]
            acme = 3
            "Big.Co" = 1
            "#,
        )
        .unwrap();
        let enrich = &queues["enrich"];
        assert_eq!(enrich.interval, Some("250ms".parse().unwrap()));
        assert_eq!(enrich.max_in_flight, NonZeroUsize::new(2));
        assert_eq!(enrich.batch_size, Some(BatchSize::new(10).unwrap()));
        assert_eq!(enrich.max_attempts, Some(3));
        assert_eq!(enrich.adaptive, Some(true));
        assert_eq!(enrich.retry_base, None);
        let bulk = &queues["bulk"];
        assert!(bulk.interval.unwrap().is_zero());
        assert_eq!(bulk.max_in_flight, None);
        assert_eq!(bulk.fairness, Some(Fairness::Tenant));
        assert_eq!(bulk.aging, Some("30s".parse().unwrap()));
        let weights = bulk.tenant_weights.as_ref().unwrap();
        assert_eq!(weights[&TenantName::parse("acme").unwrap()].get(), 3);
        assert_eq!(weights.len(), 2);
        assert_eq!(enrich.fairness, None);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn a_bad_file_is_refused_with_its_line_and_reason() {
        let cases = [
            // A misspelt setting.
            (
                "[queues.a]\ninterval = \"1s\"\nmax_inflight = 2\n",
                "line 3",
                "max_inflight",
            ),
            // A value of the wrong kind.
            ("[queues.a]\n\nbatch_size = 0\n", "line 3", "batch size"),
            ("[queues.a]\ninterval = \"soon\"\n", "line 2", "soon"),
            ("[queues.a]\nmax_attempts = 0\n", "line 2", "at least 1"),
            ("[queues.a]\nfairness = \"round-robin\"\n", "line 2", "fifo"),
            (
                "[queues.a.tenant_weights]\nacme = 0\n",
                "line 1",
                "from 1 to 1000",
            ),
            (
                "[queues.a.tenant_weights]\n\"a b\" = 2\n",
                "line 2",
                "tenant",
            ),
            // A name that is not one.
            ("[queues.Big]\n", "line 1", "queue name"),
            // Not TOML at all.
            ("[queues.a\n", "line 1", ""),
            // Something beside `queues`.
            ("[queue.a]\n", "line 1", "queue"),
        ];
        for (text, line, reason) in cases {
            let message = format!("{:#}", parse(text).unwrap_err());
            assert!(message.contains(line), "{text:?}: {message}");
            assert!(message.contains(reason), "{text:?}: {message}");
        }
    }
}
