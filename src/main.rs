use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(config) => {
            sluice::telemetry::init(config.log_format);
            match sluice::startup::serve(*config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Client(command) => sluice::client::run(command).await,
    }
}
