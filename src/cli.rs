//! The `sluice` command line: the service, and a client for it.

use clap::{Parser, Subcommand};

use crate::client::ClientCommand;
use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "A prioritized, rate-limited, durable ingestion service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the settings does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(Box<Config>),
    #[command(flatten)]
    Client(ClientCommand),
}
