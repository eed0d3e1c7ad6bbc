//! `sluice submit`, `status`, `watch`, `queues` and `queue`: the command-line
//! client of a Sluice service, over its public HTTP API only, so it works
//! against any node, local or remote, and shows exactly what other clients
//! see. With `--api-key` (`SLUICE_API_KEY`) every request carries the key.
//!
//! # Layout
//!
//! - [`args`]: the flags of each subcommand.
//! - `submit`, `status`, `watch`, `queues`, `queue`: one file per
//!   subcommand; `wait` is `submit --wait` (polling, with a progress bar).
//! - `ids`: the id syntax (`1 2,3`, `1-1000`); `body`: the `POST /ingest` body,
//!   generated while it uploads.
//! - `http`: one method per endpoint, and errors in the user's terms;
//!   `model`: what the server answers; `sse`: the event-stream parser;
//!   `reconnect`: how long to ride out a server that went away.
//! - `render`: the tables, event lines and summaries.
//!
//! Exit codes: 0 success; 1 the request followed by `--wait` or `watch` ended
//! `failed` or `cancelled`; 2 the command could not do its job (bad ids, server
//! unreachable, an error answer, no such ingestion or queue). Errors go to
//! stderr, as one `error: …` message with its causes; stdout carries only
//! results.

pub mod args;
mod body;
mod http;
mod ids;
mod model;
mod queue;
mod queues;
mod reconnect;
mod render;
mod sse;
mod status;
mod submit;
mod wait;
mod watch;

use std::io::Write;
use std::process::ExitCode;

pub use args::ClientCommand;
pub use http::ServerUrl;

/// The exit code of a command that could not do its job.
const EXIT_ERROR: u8 = 2;

/// Runs one client subcommand and reports how it went, as `main` returns it.
pub async fn run(command: ClientCommand) -> ExitCode {
    let result = match command {
        ClientCommand::Submit(args) => submit::run(args).await,
        ClientCommand::Status(args) => status::run(args).await,
        ClientCommand::Watch(args) => watch::run(args).await,
        ClientCommand::Queues(args) => queues::run(args).await,
        ClientCommand::Queue(command) => queue::run(command).await,
    };
    match result {
        Ok(outcome) => outcome.exit_code(),
        // A reader that went away (`| head`) wants no more, not an error.
        Err(error) if is_broken_pipe(&error) => ExitCode::from(EXIT_ERROR),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// How a request that the command followed ended, or just "done".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The command did its job; a followed request completed.
    Success,
    /// A followed request ended `failed` or `cancelled`.
    Unsuccessful,
}

impl Outcome {
    /// The outcome of a request that has ended with `status`.
    fn of(status: &str) -> Self {
        if status == "completed" {
            Self::Success
        } else {
            Self::Unsuccessful
        }
    }

    fn exit_code(self) -> ExitCode {
        match self {
            Self::Success => ExitCode::SUCCESS,
            Self::Unsuccessful => ExitCode::FAILURE,
        }
    }
}

/// Writes a result to stdout. `println!` would panic on a closed pipe.
fn print_out(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
