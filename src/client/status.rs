//! `sluice status <id>`: the request and its batches, as a table or as the
//! server's JSON.

use anyhow::Context;

use super::args::StatusArgs;
use super::http::Sluice;
use super::{Outcome, print_out, render};

pub async fn run(args: StatusArgs) -> anyhow::Result<Outcome> {
    let sluice = Sluice::new(&args.server)?;
    let (answer, raw) = sluice.status(&args.id).await?;
    let text = if args.json {
        // As it came: the server's field order and numbers, for `jq`.
        String::from_utf8_lossy(&raw).into_owned()
    } else {
        render::status_table(&answer)
    };
    print_out(&text).context("cannot write to standard output")?;
    // The request's own status is shown, not judged: `status` did its job.
    Ok(Outcome::Success)
}
