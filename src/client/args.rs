//! The flags of the client subcommands: `sluice submit`, `status` and `watch`.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::http::ServerUrl;
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
}

const SUBMIT_EXAMPLES: &str = "\
Examples:
  sluice submit 1 2 3
  sluice submit --priority high 1-1000,2000
  seq 1 500 | sluice submit -
  id=$(sluice submit --ids-file ids.txt --wait --interval 5s)

Exit status: 0 once submitted (with --wait: once completed), 1 if the request
ended failed or cancelled (--wait), 2 if it could not be submitted or followed.";

/// Where the service is; every client subcommand takes it.
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
