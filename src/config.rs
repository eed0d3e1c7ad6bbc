//! The settings of `sluice serve`: each a flag with a `SLUICE_*` environment
//! variable, each parsed into a type that is valid by construction.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::api::serve::ConnectionLimits;
use crate::callbacks::CallbackSettings;
use crate::callbacks::policy::{CallbackAllow, Destinations};
use crate::callbacks::signing::SigningKey;
use crate::dispatcher::RetryPolicy;
use crate::domain::{BatchSize, Interval};
use crate::queue::file::QueueEntry;
use crate::queue::{DispatchOrder, QueueName, QueueSettings};
use crate::store::postgres::LeaseSettings;
use crate::upstream::HttpUpstreamSettings;

/// The longest wait between two attempts at a batch.
const RETRY_CAP: Duration = Duration::from_secs(600);

/// A lease shorter than this would expire under ordinary database latency.
const MIN_LEASE: Duration = Duration::from_millis(500);
/// How often an idle PostgreSQL node looks for work without a notification.
const IDLE_POLL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Parser)]
#[command(about = "Run the Sluice service")]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Database URL. `sqlite://PATH` keeps everything in one file, created if
    /// missing.
    #[arg(long, env = "SLUICE_DATABASE", default_value = "sqlite://sluice.db")]
    pub database: String,

    /// How many ids go into one batch (1 to 10000).
    #[arg(long, env = "SLUICE_BATCH_SIZE", default_value = "3")]
    pub batch_size: BatchSize,

    /// Minimum time between two batch starts, for the whole service, e.g. `5s`
    /// or `250ms`. `0` means no rate limit.
    #[arg(long, env = "SLUICE_INTERVAL", default_value = "5s")]
    pub interval: Interval,

    /// How many batches may be processing at the same time.
    #[arg(long, env = "SLUICE_MAX_IN_FLIGHT", default_value = "1")]
    pub max_in_flight: NonZeroUsize,

    /// Simulated time the built-in mock upstream takes to answer one id, e.g.
    /// `50ms`; `0ms` answers at once.
    #[arg(long, env = "SLUICE_MOCK_LATENCY", default_value = "50ms")]
    pub mock_latency: Interval,

    /// On SIGINT or SIGTERM, how long to let batches already processing finish
    /// before exiting. Unfinished batches run again at the next start.
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: Interval,

    /// Largest request body accepted, in bytes (larger: 413). The default fits
    /// a request of 1,000,000 ids of any size.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value = "16777216")]
    pub max_body_bytes: usize,

    /// Most ids accepted in one request (more: 413).
    #[arg(long, env = "SLUICE_MAX_IDS_PER_REQUEST", default_value = "1000000")]
    pub max_ids_per_request: usize,

    /// A real upstream: a URL with `{id}` where the id goes, e.g.
    /// `http://127.0.0.1:9000/items/{id}`. Without it, the built-in mock answers.
    #[arg(long, env = "SLUICE_UPSTREAM_URL")]
    pub upstream_url: Option<String>,

    /// A header sent with every upstream request, `Name: value`; repeatable.
    /// Header values are never logged.
    #[arg(
        long = "upstream-header",
        env = "SLUICE_UPSTREAM_HEADERS",
        value_delimiter = '\n'
    )]
    pub upstream_headers: Vec<String>,

    /// A file holding a bearer token for the upstream (`Authorization: Bearer
    /// <token>`), re-read at each start; keeps the token out of the process list.
    #[arg(long, env = "SLUICE_UPSTREAM_TOKEN_FILE")]
    pub upstream_token_file: Option<std::path::PathBuf>,

    /// How long one upstream request may take, connecting included.
    #[arg(long, env = "SLUICE_UPSTREAM_TIMEOUT", default_value = "10s")]
    pub upstream_timeout: Interval,

    /// The largest upstream answer read, in bytes; past it reading stops and
    /// the id ends in a permanent error ("the answer was too large").
    #[arg(long, env = "SLUICE_UPSTREAM_MAX_BODY", default_value = "1048576")]
    pub upstream_max_body: u64,

    /// Follow the upstream's redirects, and then only to the same scheme, host
    /// and port, so headers never reach another host. Without it a redirect
    /// ends the id in a permanent error.
    #[arg(long, env = "SLUICE_UPSTREAM_FOLLOW_REDIRECTS")]
    pub upstream_follow_redirects: bool,

    /// Attempts per batch, the first included, before a batch with transient
    /// failures is `failed`.
    #[arg(long, env = "SLUICE_MAX_ATTEMPTS", default_value = "5", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// The backoff after a batch's first failed attempt; it doubles with each
    /// attempt (with jitter, up to 10 minutes) and never undercuts the
    /// upstream's `Retry-After`.
    #[arg(long, env = "SLUICE_RETRY_BASE", default_value = "1s")]
    pub retry_base: Interval,

    /// How long an `Idempotency-Key` holds.
    #[arg(long, env = "SLUICE_IDEMPOTENCY_TTL", default_value = "24h")]
    pub idempotency_ttl: Interval,

    /// How long an ended request (completed, failed or cancelled) is kept,
    /// with its batches, results and events, before it is pruned; `0` keeps
    /// everything. A request with a callback still to deliver is kept.
    #[arg(long, env = "SLUICE_RETENTION", default_value = "7d")]
    pub retention: Interval,

    /// How often a pruning pass starts (for tests; the default suits a service).
    #[arg(
        long,
        env = "SLUICE_RETENTION_PERIOD",
        default_value = "1m",
        hide = true
    )]
    pub retention_period: Interval,

    /// A file of API keys, one per line: `<role> <key>`, roles `read`,
    /// `submit` or `admin`. Re-read when it changes. Without it every endpoint
    /// is open to the hosts `--allowed-hosts` describes, and listening beyond
    /// loopback needs `--insecure-no-auth`.
    #[arg(long, env = "SLUICE_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// Listen beyond loopback without `--api-keys-file`: every endpoint is then
    /// open to anyone who can reach the port. Only behind a firewall or an
    /// authenticating proxy.
    #[arg(long, env = "SLUICE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Without API keys, host names served besides loopback names and
    /// addresses and the listen address (compared with the `Host` header, port
    /// ignored; others get 403, which blocks DNS rebinding). Repeatable, or
    /// comma-separated.
    #[arg(
        long = "allowed-hosts",
        env = "SLUICE_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// An internal callback receiver to admit: a network (`10.1.0.0/16`,
    /// `127.0.0.1`) or a host name (then whatever it resolves to). Repeatable,
    /// or comma-separated. By default a callback may reach only public
    /// addresses.
    #[arg(
        long = "callback-allow",
        env = "SLUICE_CALLBACK_ALLOW",
        value_delimiter = ','
    )]
    pub callback_allow: Vec<CallbackAllow>,

    /// A file holding the secret callbacks are signed with (Standard
    /// Webhooks: `whsec_<base64>`), read at start. Without it callbacks are
    /// sent unsigned.
    #[arg(long, env = "SLUICE_CALLBACK_SECRET_FILE")]
    pub callback_secret_file: Option<std::path::PathBuf>,

    /// How long one callback delivery may take, connecting included; past it
    /// the attempt failed (`timed out`) and is retried.
    #[arg(long, env = "SLUICE_CALLBACK_TIMEOUT", default_value = "10s")]
    pub callback_timeout: Interval,

    /// Writes (POST, DELETE) answered at once; more get 503 with Retry-After.
    #[arg(long, env = "SLUICE_MAX_CONCURRENT_WRITES", default_value = "512")]
    pub max_concurrent_writes: usize,

    /// How long one request may take, reading its body included (slow
    /// clients get 408); `0` for no limit. Live event streams are not cut.
    #[arg(long, env = "SLUICE_REQUEST_TIMEOUT", default_value = "30s")]
    pub request_timeout: Interval,

    /// How long a client may take to send a request's headers, counted from
    /// when its connection opens or its previous answer ends; slower
    /// connections are closed (slowloris). `0` for no limit.
    #[arg(long, env = "SLUICE_HEADER_READ_TIMEOUT", default_value = "10s")]
    pub header_read_timeout: Interval,

    /// How long a connection may stay idle, nothing sent either way, before
    /// it is closed; a request being answered is always finished first. `0`
    /// for no limit.
    #[arg(long, env = "SLUICE_KEEP_ALIVE_TIMEOUT", default_value = "10s")]
    pub keep_alive_timeout: Interval,

    /// Connections served at once; more wait in the listen backlog until one
    /// closes.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value = "4096")]
    pub max_connections: NonZeroUsize,

    /// Live event streams open at once; more get 503 with Retry-After.
    #[arg(long, env = "SLUICE_MAX_EVENT_STREAMS", default_value = "256")]
    pub max_event_streams: usize,

    /// Bytes of large request bodies (over 64 KiB) held in memory at once,
    /// across all requests; a body waits for room before it is read. At
    /// least `--max-body-bytes` is always allowed.
    #[arg(long, env = "SLUICE_MAX_BODY_MEMORY", default_value = "67108864")]
    pub max_body_memory: usize,

    /// Ids waiting in the queue beyond which POST /ingest gets 429 with
    /// Retry-After (counted each second, as waiting batches × batch size).
    #[arg(long, env = "SLUICE_MAX_QUEUED_IDS", default_value = "100000000")]
    pub max_queued_ids: u64,

    /// PostgreSQL only: how long a node keeps a claimed batch without renewing
    /// it. A node renews every fifth of this; when a node dies, another
    /// re-queues its batches once the lease runs out.
    #[arg(long, env = "SLUICE_LEASE", default_value = "5s")]
    pub lease: Interval,

    /// A TOML file of named queues, each with its own rate, limits and
    /// upstream (see the README's "Queues"). The flags above configure the
    /// `default` queue; the file's `[queues.default]` settings, if any, win
    /// over them.
    #[arg(long, env = "SLUICE_QUEUES_FILE")]
    pub queues_file: Option<std::path::PathBuf>,

    /// Log format: `text` for people, `json` for machines.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The defaults, as `sluice serve` with no flags would have them (ignoring
    /// the environment).
    pub fn defaults() -> Self {
        Self::try_parse_from(["serve"]).expect("the defaults parse")
    }

    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace.as_duration()
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            base: self.retry_base.as_duration(),
            cap: RETRY_CAP,
        }
    }

    /// Every queue's settings: the `default` queue's from the flags, then
    /// the queues file's, each setting it leaves out taken from the flags.
    /// The upstream's headers and token go only with the URL they were given
    /// with, so one upstream's secret never reaches another.
    pub fn queue_settings(&self) -> anyhow::Result<Vec<(QueueName, QueueSettings)>> {
        let mut entries = match &self.queues_file {
            Some(path) => crate::queue::file::load(path)?,
            None => Default::default(),
        };
        entries.entry(QueueName::default_queue()).or_default();
        entries
            .into_iter()
            .map(|(name, entry)| {
                let settings = self
                    .settings_of(&entry)
                    .with_context(|| format!("queue {name}"))?;
                Ok((name, settings))
            })
            .collect()
    }

    fn settings_of(&self, entry: &QueueEntry) -> anyhow::Result<QueueSettings> {
        let retry = self.retry_policy();
        Ok(QueueSettings {
            interval: entry.interval.unwrap_or(self.interval),
            max_in_flight: entry.max_in_flight.unwrap_or(self.max_in_flight),
            batch_size: entry.batch_size.unwrap_or(self.batch_size),
            upstream: self.http_upstream(entry)?,
            mock_latency: self.mock_latency.as_duration(),
            retry: RetryPolicy {
                max_attempts: entry.max_attempts.unwrap_or(retry.max_attempts),
                base: entry.retry_base.map_or(retry.base, Interval::as_duration),
                cap: retry.cap,
            },
            adaptive: entry.adaptive.unwrap_or(false),
            order: DispatchOrder {
                fairness: entry.fairness.unwrap_or_default(),
                weights: Arc::new(entry.tenant_weights.clone().unwrap_or_default()),
                aging: entry.aging.filter(|aging| !aging.is_zero()),
            },
        })
    }

    /// A queue's upstream settings, with the token file read; `None` for the
    /// mock.
    fn http_upstream(&self, entry: &QueueEntry) -> anyhow::Result<Option<HttpUpstreamSettings>> {
        // Where the headers come from, as the operator wrote it.
        let (url_template, headers, token_file, source) = match &entry.upstream_url {
            Some(url) => (
                url.clone(),
                entry.upstream_headers.clone().unwrap_or_default(),
                entry.upstream_token_file.as_ref(),
                "upstream_headers",
            ),
            None => match &self.upstream_url {
                Some(url) => (
                    url.clone(),
                    self.upstream_headers.clone(),
                    self.upstream_token_file.as_ref(),
                    "--upstream-header",
                ),
                None => return Ok(None),
            },
        };
        let mut parsed = Vec::new();
        for (n, header) in headers.iter().enumerate() {
            // The whole argument may be a secret (a token without its name),
            // so the message says which one it is, never what it holds.
            let (name, value) = header.split_once(':').with_context(|| {
                format!(
                    "{source} number {} of {} has no `:`: use `Name: value` \
                     (its text is not shown: it may hold a secret)",
                    n + 1,
                    headers.len()
                )
            })?;
            parsed.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        if let Some(path) = token_file {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("reading the upstream token file {}", path.display()))?;
            parsed.push(("Authorization".into(), format!("Bearer {}", token.trim())));
        }
        Ok(Some(HttpUpstreamSettings {
            url_template,
            headers: parsed,
            timeout: entry
                .upstream_timeout
                .unwrap_or(self.upstream_timeout)
                .as_duration(),
            max_body: entry.upstream_max_body.unwrap_or(self.upstream_max_body),
            follow_redirects: entry
                .upstream_follow_redirects
                .unwrap_or(self.upstream_follow_redirects),
        }))
    }

    /// Where callbacks may go, and their signing key, with the secret file read.
    pub fn callback_settings(&self) -> anyhow::Result<CallbackSettings> {
        let signing = match &self.callback_secret_file {
            Some(path) => Some(SigningKey::load(path).context("--callback-secret-file")?),
            None => None,
        };
        let timeout = self.callback_timeout.as_duration();
        anyhow::ensure!(!timeout.is_zero(), "--callback-timeout must be more than 0");
        Ok(CallbackSettings {
            destinations: Destinations::new(&self.callback_allow),
            timeout,
            signing,
        })
    }

    pub fn connection_limits(&self) -> ConnectionLimits {
        let limit = |interval: Interval| (!interval.is_zero()).then(|| interval.as_duration());
        ConnectionLimits {
            header_read_timeout: limit(self.header_read_timeout),
            idle_timeout: limit(self.keep_alive_timeout),
            max_connections: self.max_connections.get(),
        }
    }

    pub fn lease_settings(&self) -> LeaseSettings {
        let lease = self.lease.as_duration().max(MIN_LEASE);
        LeaseSettings {
            lease,
            heartbeat: lease / 5,
            poll: IDLE_POLL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callbacks::policy::CallbackAllow;

    #[test]
    fn retention_defaults_to_seven_days_and_zero_keeps_everything() {
        let config = Config::defaults();
        assert_eq!(
            config.retention.as_duration(),
            Duration::from_secs(7 * 24 * 3600)
        );
        let keep_all = Config::try_parse_from(["serve", "--retention", "0"]).unwrap();
        assert!(keep_all.retention.as_duration().is_zero());
        assert!(Config::try_parse_from(["serve", "--retention", "soon"]).is_err());
    }

    #[test]
    fn protection_flags_repeat_and_split_on_commas() {
        let config = Config::try_parse_from([
            "serve",
            "--callback-allow",
            "10.0.0.0/8,hooks.internal",
            "--callback-allow",
            "127.0.0.1",
            "--allowed-hosts",
            "a.example,b.example",
            "--insecure-no-auth",
        ])
        .unwrap();
        assert_eq!(
            config.callback_allow,
            vec![
                CallbackAllow::Net("10.0.0.0/8".parse().unwrap()),
                CallbackAllow::Host("hooks.internal".into()),
                CallbackAllow::Net("127.0.0.1/32".parse().unwrap()),
            ]
        );
        assert_eq!(config.allowed_hosts, ["a.example", "b.example"]);
        assert!(config.insecure_no_auth);
        assert!(Config::try_parse_from(["serve", "--callback-allow", "10.0.0.0/99"]).is_err());

        let defaults = Config::defaults();
        assert!(!defaults.insecure_no_auth);
        assert!(defaults.callback_allow.is_empty());
        assert!(defaults.callback_secret_file.is_none());
        assert_eq!(
            defaults.callback_settings().unwrap().timeout,
            Duration::from_secs(10)
        );
        let mut no_timeout = Config::defaults();
        no_timeout.callback_timeout = "0s".parse().unwrap();
        assert!(no_timeout.callback_settings().is_err());
    }
}
