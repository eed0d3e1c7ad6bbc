//! `sluice watch <id>`: follow a request live from its event stream,
//! `GET /status/{id}/events`, a line per status change, until it ends.
//!
//! The stream may drop (a restart, a proxy's idle timeout). The client then
//! reconnects with `Last-Event-ID`, so the server resumes after the last event
//! seen; an event seen twice anyway is skipped by its sequence number. When a
//! stream ends without the request's end, the status endpoint says whether the
//! request ended meanwhile, so the client never waits for an event that will
//! not come.

use std::collections::HashMap;

use anyhow::{Context, anyhow};
use futures_util::StreamExt;

use super::args::WatchArgs;
use super::http::{ClientError, Sluice};
use super::model::{BatchEvent, IngestionEvent, StatusAnswer, is_terminal};
use super::reconnect::Reconnect;
use super::sse::{SseEvent, SseParser};
use super::{Outcome, print_out, render};

pub async fn run(args: WatchArgs) -> anyhow::Result<Outcome> {
    let sluice = Sluice::new(&args.server)?;
    let (answer, _) = sluice.status(&args.id).await?;
    let mut progress = Progress::new(&answer);
    print(&format!(
        "{}: {}, {}/{} batches ended",
        answer.ingestion_id,
        answer.status,
        progress.ended(),
        progress.total()
    ))?;
    if answer.is_terminal() {
        print(&render::summary(&answer))?;
        return Ok(Outcome::of(&answer.status));
    }
    let status = follow(&sluice, &args.id, &mut progress).await?;
    // The summary counts from the server's own view, not from the events.
    let summary = match sluice.status(&args.id).await {
        Ok((last, _)) => render::summary(&last),
        Err(_) => format!("{} {status}", answer.ingestion_id),
    };
    print(&summary)?;
    Ok(Outcome::of(&status))
}

/// Reads the stream, reconnecting as needed, until the request ends; returns
/// its final status.
async fn follow(sluice: &Sluice, id: &str, progress: &mut Progress) -> anyhow::Result<String> {
    let mut resume = Resume::default();
    let mut reconnect = Reconnect::default();
    loop {
        match sluice.events(id, resume.last_event_id.as_deref()).await {
            Ok(response) => {
                reconnect.succeeded();
                let mut parser = SseParser::new();
                let mut body = response.bytes_stream();
                let ended = loop {
                    let Some(chunk) = body.next().await else {
                        break Ok(());
                    };
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(error) => break Err(error),
                    };
                    for event in parser.push(&chunk) {
                        if let Some(status) = progress.apply(&event, &mut resume)? {
                            return Ok(status);
                        }
                    }
                    if let Some(last) = parser.last_event_id() {
                        resume.last_event_id = Some(last.to_owned());
                    }
                    if let Some(retry) = parser.retry() {
                        reconnect.set_base(retry);
                    }
                };
                match ended {
                    Ok(()) => {
                        eprintln!("the event stream closed before the request ended; reconnecting")
                    }
                    Err(error) => eprintln!("the event stream broke ({error}); reconnecting"),
                }
            }
            // The status just said the ingestion exists: the stream is missing.
            Err(ClientError::NoSuchIngestion { .. }) => {
                return Err(anyhow!(
                    "Sluice at {} has no event stream for {id} (GET /status/{id}/events \
                     answered 404); `sluice submit --wait` and `sluice status` work without it",
                    sluice.server()
                ));
            }
            Err(error) if error.is_transient() => eprintln!("{error}; trying again"),
            Err(error) => return Err(error.into()),
        }

        // No end seen: the request may have ended while nobody listened.
        match sluice.status(id).await {
            Ok((answer, _)) => {
                reconnect.succeeded();
                if answer.is_terminal() {
                    return Ok(answer.status);
                }
            }
            Err(error) if error.is_transient() => {}
            Err(error) => return Err(error.into()),
        }
        let delay = reconnect
            .failed()
            .ok_or_else(|| anyhow!("gave up on Sluice at {}", sluice.server()))?;
        tokio::time::sleep(delay).await;
    }
}

/// Where to resume the stream from.
#[derive(Debug, Default)]
struct Resume {
    last_event_id: Option<String>,
    /// The highest sequence number seen; events up to it are not shown again.
    highest: Option<u64>,
}

impl Resume {
    /// Whether the event is new; events without a numeric id always are.
    fn is_new(&mut self, event: &SseEvent) -> bool {
        let Some(sequence) = event.id.as_deref().and_then(|id| id.parse::<u64>().ok()) else {
            return true;
        };
        if self.highest.is_some_and(|highest| sequence <= highest) {
            return false;
        }
        self.highest = Some(sequence);
        true
    }
}

/// The request as the events tell it: the status of each batch.
struct Progress {
    ingestion_id: String,
    batches: HashMap<String, String>,
    /// The width of the `batch :N` column, so that statuses line up.
    label_width: usize,
}

impl Progress {
    fn new(answer: &StatusAnswer) -> Self {
        let label_width = answer
            .batches
            .iter()
            .map(|b| render::batch_label(&answer.ingestion_id, &b.batch_id).len())
            .max()
            .unwrap_or(0);
        Self {
            ingestion_id: answer.ingestion_id.clone(),
            batches: answer
                .batches
                .iter()
                .map(|b| (b.batch_id.clone(), b.status.clone()))
                .collect(),
            label_width,
        }
    }

    fn total(&self) -> usize {
        self.batches.len()
    }

    fn ended(&self) -> usize {
        self.batches.values().filter(|s| is_terminal(s)).count()
    }

    /// Prints the event; returns the request's status if it has ended.
    fn apply(&mut self, event: &SseEvent, resume: &mut Resume) -> anyhow::Result<Option<String>> {
        if !resume.is_new(event) {
            return Ok(None);
        }
        let unreadable = |error: serde_json::Error| {
            eprintln!(
                "warning: skipped an unreadable {} event ({error}): {}",
                event.event, event.data
            );
        };
        match event.event.as_str() {
            "batch" => match serde_json::from_str::<BatchEvent>(&event.data) {
                Ok(batch) => {
                    self.batches
                        .insert(batch.batch_id.clone(), batch.status.clone());
                    let label = render::batch_label(&self.ingestion_id, &batch.batch_id);
                    self.line(
                        batch.at.as_deref(),
                        &format!("batch {label}"),
                        &batch.status,
                    )?;
                }
                Err(error) => unreadable(error),
            },
            "ingestion" => match serde_json::from_str::<IngestionEvent>(&event.data) {
                Ok(ingestion) => {
                    self.line(ingestion.at.as_deref(), "request", &ingestion.status)?;
                    if is_terminal(&ingestion.status) {
                        return Ok(Some(ingestion.status));
                    }
                }
                Err(error) => unreadable(error),
            },
            // Other kinds (keep-alives, later additions) are not for us.
            _ => {}
        }
        Ok(None)
    }

    /// `15:06:19.545  [1/2]  batch :0  completed`.
    fn line(&self, at: Option<&str>, what: &str, status: &str) -> anyhow::Result<()> {
        let width = (self.label_width + "batch ".len()).max("request".len());
        print(&format!(
            "{}  [{}/{}]  {what:<width$}  {status}",
            render::time_of_day(at),
            self.ended(),
            self.total(),
        ))
    }
}

fn print(line: &str) -> anyhow::Result<()> {
    print_out(line).context("cannot write to standard output")
}
