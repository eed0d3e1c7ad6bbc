//! `sluice submit`: read the ids, send them, print the new id; with `--wait`,
//! follow the request to its end.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail, ensure};

use super::args::SubmitArgs;
use super::body::IngestBody;
use super::http::Sluice;
use super::ids::{IdList, Source};
use super::wait::{self, WaitOptions};
use super::{Outcome, print_out};

pub async fn run(args: SubmitArgs) -> anyhow::Result<Outcome> {
    let ids = read_ids(&args.ids, args.ids_file.as_deref())?;
    let body = IngestBody::new(ids, args.priority.into(), args.queue.as_deref())?;
    let sluice = Sluice::new(&args.server)?;
    let id = sluice.submit(body).await?;
    // Only the id, so that `id=$(sluice submit …)` captures it; printed before
    // waiting, so that it is known even if the wait is interrupted.
    print_out(&id).context("cannot write to standard output")?;
    if !args.wait {
        return Ok(Outcome::Success);
    }
    let options = WaitOptions {
        interval: args.interval.map(|i| i.as_duration()),
        poll: args.poll.as_duration(),
    };
    wait::follow(&sluice, &id, options)
        .await
        .with_context(|| format!("{id} was submitted, but could not be followed to its end"))
}

/// The ids from the arguments (where `-` is standard input) or from
/// `--ids-file`, in the order given.
fn read_ids(args: &[String], file: Option<&Path>) -> anyhow::Result<IdList> {
    let mut ids = IdList::default();
    if let Some(path) = file {
        let source = if path == Path::new("-") {
            Source::Stdin
        } else {
            Source::File(path.to_owned())
        };
        let text = match source {
            Source::Stdin => read_stdin()?,
            _ => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read ids from {}", path.display()))?,
        };
        ids.extend_from_text(&text, &source)?;
        ensure!(!ids.is_empty(), "no ids in {source}");
        return Ok(ids);
    }

    let mut stdin_read = false;
    for (index, arg) in args.iter().enumerate() {
        if arg == "-" {
            ensure!(!stdin_read, "`-` (standard input) is given twice");
            stdin_read = true;
            ids.extend_from_text(&read_stdin()?, &Source::Stdin)?;
        } else {
            ids.extend_from_text(arg, &Source::Argument(index + 1))?;
        }
    }
    if ids.is_empty() {
        match args {
            [] => bail!(
                "no ids given: pass them as arguments (`1 2 3`, `1-1000`), \
                 with --ids-file FILE, or `-` to read standard input"
            ),
            [only] if only == "-" => bail!("no ids on standard input"),
            _ => bail!("no ids in the arguments"),
        }
    }
    Ok(ids)
}

fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read ids from standard input")?;
    Ok(text)
}
