//! `sluice queues`: every queue, as a table or as the server's JSON.

use anyhow::Context;

use super::args::QueuesArgs;
use super::http::Sluice;
use super::{Outcome, print_out, render};

pub async fn run(args: QueuesArgs) -> anyhow::Result<Outcome> {
    let sluice = Sluice::new(&args.server)?;
    let (answer, raw) = sluice.queues().await?;
    let text = if args.json {
        String::from_utf8_lossy(&raw).into_owned()
    } else {
        render::queues_table(&answer.queues)
    };
    print_out(&text).context("cannot write to standard output")?;
    Ok(Outcome::Success)
}
