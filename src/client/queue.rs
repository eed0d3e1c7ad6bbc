//! `sluice queue pause|resume|set NAME`: change one queue while it runs, and
//! print what the server says the queue is now, not what was asked for.

use anyhow::Context;
use serde_json::{Map, Value};

use super::args::{QueueCommand, QueueSetArgs};
use super::http::Sluice;
use super::{Outcome, print_out, render};

pub async fn run(command: QueueCommand) -> anyhow::Result<Outcome> {
    let line = match command {
        QueueCommand::Pause(args) => {
            let queue = Sluice::new(&args.server)?
                .pause_queue(&args.name, true)
                .await?;
            render::queue_state(&queue)
        }
        QueueCommand::Resume(args) => {
            let queue = Sluice::new(&args.server)?
                .pause_queue(&args.name, false)
                .await?;
            render::queue_state(&queue)
        }
        QueueCommand::Set(args) => {
            let queue = Sluice::new(&args.server)?
                .set_queue(&args.name, &changes(&args))
                .await?;
            render::queue_settings(&queue)
        }
    };
    print_out(&line).context("cannot write to standard output")?;
    Ok(Outcome::Success)
}

/// The `PATCH` body: only the settings given; `--reset` sends `null` for
/// both, which returns them to the configured values.
fn changes(args: &QueueSetArgs) -> Value {
    let mut body = Map::new();
    if args.reset {
        body.insert("interval".to_owned(), Value::Null);
        body.insert("max_in_flight".to_owned(), Value::Null);
    }
    if let Some(interval) = args.interval {
        body.insert("interval".to_owned(), interval.to_string().into());
    }
    if let Some(max) = args.max_in_flight {
        body.insert("max_in_flight".to_owned(), max.into());
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::client::ClientCommand;

    fn set_args(args: &[&str]) -> Result<QueueSetArgs, clap::Error> {
        let argv = ["sluice", "queue", "set"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Client(ClientCommand::Queue(QueueCommand::Set(args))) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn set_sends_only_what_was_given() {
        let args = set_args(&["enrich", "--interval", "2s"]).unwrap();
        assert_eq!(changes(&args), json!({"interval": "2s"}));
        let args = set_args(&["enrich", "--interval", "1m30s", "--max-in-flight", "3"]).unwrap();
        assert_eq!(
            changes(&args),
            json!({"interval": "1m 30s", "max_in_flight": 3})
        );
        let args = set_args(&["enrich", "--max-in-flight", "1"]).unwrap();
        assert_eq!(changes(&args), json!({"max_in_flight": 1}));
        let args = set_args(&["enrich", "--interval", "0"]).unwrap();
        assert_eq!(changes(&args), json!({"interval": "0"}));
    }

    #[test]
    fn reset_sends_nulls_for_both_settings() {
        let args = set_args(&["enrich", "--reset"]).unwrap();
        assert_eq!(
            changes(&args),
            json!({"interval": null, "max_in_flight": null})
        );
    }

    #[test]
    fn set_needs_a_change_and_refuses_contradictions() {
        assert!(set_args(&["enrich"]).is_err());
        assert!(set_args(&["enrich", "--reset", "--interval", "2s"]).is_err());
        assert!(set_args(&["enrich", "--max-in-flight", "0"]).is_err());
        assert!(set_args(&["enrich", "--interval", "soon"]).is_err());
    }
}
