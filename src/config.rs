//! The settings of `sluice serve`: each a flag with a `SLUICE_*` environment
//! variable, each parsed into a type that is valid by construction.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::domain::{BatchSize, Interval};
use crate::store::postgres::LeaseSettings;

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

    /// PostgreSQL only: how long a node keeps a claimed batch without renewing
    /// it. A node renews every fifth of this; when a node dies, another
    /// re-queues its batches once the lease runs out.
    #[arg(long, env = "SLUICE_LEASE", default_value = "5s")]
    pub lease: Interval,

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

    pub fn lease_settings(&self) -> LeaseSettings {
        let lease = self.lease.as_duration().max(MIN_LEASE);
        LeaseSettings {
            lease,
            heartbeat: lease / 5,
            poll: IDLE_POLL,
        }
    }
}
