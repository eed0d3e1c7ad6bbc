//! The flags of the client subcommands: `sluice submit`, `status`, `watch`,
//! `queues` and `queue`.

use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Subcommand, ValueEnum};

use super::http::{ApiKey, ServerUrl};
use crate::domain::{Interval, Priority};

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Submit ids for ingestion; print the new ingestion's id.
    #[command(after_help = SUBMIT_EXAMPLES)]
    Submit(SubmitArgs),
    /// Show an ingestion: its status, then one row per batch.
    Status(StatusArgs),
    /// Follow an ingestion live, a line per status change, until it ends.
    Watch(WatchArgs),
    /// List the queues: their settings, what waits and what runs in each.
    Queues(QueuesArgs),
    /// Pause, resume or retune one queue (needs an admin key when the server
    /// has keys).
    #[command(subcommand)]
    Queue(QueueCommand),
}

const SUBMIT_EXAMPLES: &str = "\
Examples:
  sluice submit 1 2 3
  sluice submit --priority high 1-1000,2000
  seq 1 500 | sluice submit -
  id=$(sluice submit --ids-file ids.txt --wait --interval 5s)

Exit status: 0 once submitted (with --wait: once completed), 1 if the request
ended failed or cancelled (--wait), 2 if it could not be submitted or followed.";

/// Where the service is and how to sign in; every client subcommand takes it.
#[derive(Debug, Clone, Args)]
pub struct ServerArg {
    /// The Sluice service to talk to (`host:port` means `http://host:port`).
    #[arg(
        long = "server",
        env = "SLUICE_URL",
        default_value = "http://127.0.0.1:8000",
        value_name = "URL"
    )]
    pub url: ServerUrl,

    /// The API key to send (`Authorization: Bearer <key>`), for a server
    /// started with --api-keys-file. Prefer the environment variable: a flag
    /// shows in the process list.
    // `hide_env_values`: `--help` must not print the key it found.
    #[arg(
        long = "api-key",
        env = "SLUICE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<ApiKey>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Ids to ingest: whole numbers and inclusive ranges (`1-1000`), separated
    /// by spaces, commas or newlines. `-` reads them from standard input.
    #[arg(value_name = "IDS", allow_negative_numbers = true)]
    pub ids: Vec<String>,

    /// Read the ids from this file instead (same format; `-` is standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "ids")]
    pub ids_file: Option<PathBuf>,

    /// The queue to send the ids to (the server's `default` queue when not
    /// given).
    #[arg(long, short, value_name = "NAME")]
    pub queue: Option<String>,

    /// How urgent the request is (any letter case).
    #[arg(long, short, value_enum, ignore_case = true, default_value_t = PriorityArg::Medium)]
    pub priority: PriorityArg,

    /// Wait until the request ends, with a progress bar on a terminal. Exits
    /// 1 if it ended failed or cancelled.
    #[arg(long)]
    pub wait: bool,

    /// With --wait: the server's --interval, for an ETA from the first moment.
    /// Without it, the ETA is learned from how far apart the request's batches
    /// start, once two have.
    #[arg(long, value_name = "DURATION", requires = "wait")]
    pub interval: Option<Interval>,

    /// With --wait: how often to ask the server for progress.
    #[arg(long, value_name = "DURATION", default_value = "500ms")]
    pub poll: Interval,

    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PriorityArg {
    High,
    Medium,
    Low,
}

impl From<PriorityArg> for Priority {
    fn from(priority: PriorityArg) -> Self {
        match priority {
            PriorityArg::High => Priority::High,
            PriorityArg::Medium => Priority::Medium,
            PriorityArg::Low => Priority::Low,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The ingestion id that `sluice submit` printed.
    pub id: String,

    /// Print the server's JSON answer as it came, for scripts.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 if the request completed, 1 if it ended failed or \
                        cancelled, 2 if it could not be followed."
)]
pub struct WatchArgs {
    /// The ingestion id that `sluice submit` printed.
    pub id: String,

    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// Print the server's JSON answer as it came, for scripts.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Stop starting batches from a queue; those processing finish, and new
    /// requests are still accepted.
    Pause(QueueNameArgs),
    /// Start batches from a paused queue again.
    Resume(QueueNameArgs),
    /// Change a queue's interval or in-flight limit while it runs, from its
    /// next slot; the change is stored and outlives a restart.
    #[command(after_help = SET_EXAMPLES)]
    Set(QueueSetArgs),
}

const SET_EXAMPLES: &str = "\
Examples:
  sluice queue set enrich --interval 2s
  sluice queue set enrich --interval 500ms --max-in-flight 3
  sluice queue set enrich --reset      # back to the queues file's settings";

#[derive(Debug, Args)]
pub struct QueueNameArgs {
    /// The queue's name, as `sluice queues` lists it.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub name: String,

    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("change")
        .args(["interval", "max_in_flight", "reset"])
        .required(true)
        .multiple(true)
))]
pub struct QueueSetArgs {
    /// The queue's name, as `sluice queues` lists it.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub name: String,

    /// At most one batch start per this long (`250ms`, `2s`, `0` for no limit).
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<Interval>,

    /// How many batches may process at once (1 or more).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: Option<u32>,

    /// Drop the runtime settings: the queue goes back to its queues file's
    /// (or, for `default`, the server flags') interval and in-flight limit.
    #[arg(long, conflicts_with_all = ["interval", "max_in_flight"])]
    pub reset: bool,

    #[command(flatten)]
    pub server: ServerArg,
}
