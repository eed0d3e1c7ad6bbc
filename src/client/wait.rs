//! `sluice submit --wait`: poll the request's status until it ends, with a
//! progress bar of batches ended out of all, and an ETA.
//!
//! The ETA counts the batches not yet started, one start per period, plus the
//! time a batch takes to process. The period is the server's interval, which
//! the client cannot ask for: `--interval` gives it, and the spacing of the
//! request's own `scheduled_at` slots measures it once two batches have
//! started. The larger of the two wins: a request that shares the service with
//! others gets fewer slots than one per interval, and its spacing shows that.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Outcome;
use super::http::{ClientError, Sluice};
use super::model::{StatusAnswer, parse_time};
use super::reconnect::Reconnect;
use super::render;

pub struct WaitOptions {
    /// The server's `--interval`, if the user gave it.
    pub interval: Option<Duration>,
    /// How often to ask for the status.
    pub poll: Duration,
}

/// Fetching a large request's status takes time; never spend more than about
/// a fifth of the wait doing it.
const POLL_TO_FETCH_RATIO: u32 = 5;
const MIN_POLL: Duration = Duration::from_millis(20);

/// Polls until the request ends; the summary goes to stderr, so that stdout
/// keeps only the id.
pub async fn follow(
    sluice: &Sluice,
    id: &str,
    options: WaitOptions,
) -> Result<Outcome, ClientError> {
    // `stderr()` draws only on a terminal: piped or redirected, nothing shows.
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:32}] {pos}/{len} batches  {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));

    let mut reconnect = Reconnect::default();
    let result = loop {
        let asked = Instant::now();
        match sluice.status(id).await {
            Ok((answer, _)) => {
                reconnect.succeeded();
                bar.set_length(answer.batches.len() as u64);
                bar.set_position(answer.batches_ended() as u64);
                bar.set_message(progress_message(&answer, options.interval));
                if answer.is_terminal() {
                    break Ok(answer);
                }
                let pause = options
                    .poll
                    .max(asked.elapsed() * POLL_TO_FETCH_RATIO)
                    .max(MIN_POLL);
                tokio::time::sleep(pause).await;
            }
            Err(error) if error.is_transient() => match reconnect.failed() {
                Some(delay) => {
                    bar.set_message(format!("{error}; trying again"));
                    tokio::time::sleep(delay).await;
                }
                None => break Err(error),
            },
            Err(error) => break Err(error),
        }
    };
    bar.finish_and_clear();
    let answer = result?;
    eprintln!("{}", render::summary(&answer));
    Ok(Outcome::of(&answer.status))
}

/// `triggered, ETA 12s, 1 failed`.
fn progress_message(answer: &StatusAnswer, interval: Option<Duration>) -> String {
    let mut parts = vec![answer.status.clone()];
    if !answer.is_terminal() {
        parts.push(match eta(answer, interval) {
            Some(eta) if eta < Duration::from_secs(1) => "ETA <1s".to_owned(),
            Some(eta) => format!(
                "ETA {}",
                humantime::format_duration(Duration::from_secs(eta.as_secs_f64().ceil() as u64))
            ),
            None => "measuring the rate for an ETA".to_owned(),
        });
    }
    for (status, n) in answer.batch_counts() {
        if status == "failed" || status == "cancelled" {
            parts.push(format!("{n} {status}"));
        }
    }
    parts.join(", ")
}

/// The time left: a period per batch not yet started, then one processing.
fn eta(answer: &StatusAnswer, interval: Option<Duration>) -> Option<Duration> {
    let waiting = answer
        .batches
        .iter()
        .filter(|b| b.status == "yet_to_start")
        .count();
    let processing = mean_processing(answer).unwrap_or_default();
    if waiting == 0 {
        return Some(processing);
    }
    let period = match (interval, observed_period(answer)) {
        (Some(given), Some(seen)) => given.max(seen),
        (given, seen) => given.or(seen)?,
    };
    Some(period * waiting as u32 + processing)
}

/// The mean spacing of the request's batch slots so far.
fn observed_period(answer: &StatusAnswer) -> Option<Duration> {
    let mut slots: Vec<_> = answer
        .batches
        .iter()
        .filter_map(|b| b.scheduled_at.as_deref().or(b.started_at.as_deref()))
        .filter_map(parse_time)
        .collect();
    slots.sort();
    let (first, last) = (slots.first()?, slots.last()?);
    let gaps = u32::try_from(slots.len() - 1).ok().filter(|&n| n > 0)?;
    Some(last.duration_since(*first).ok()? / gaps)
}

/// How long the request's completed batches took, on average.
fn mean_processing(answer: &StatusAnswer) -> Option<Duration> {
    let took: Vec<Duration> = answer
        .batches
        .iter()
        .filter_map(|b| {
            let start = parse_time(b.started_at.as_deref()?)?;
            parse_time(b.completed_at.as_deref()?)?
                .duration_since(start)
                .ok()
        })
        .collect();
    let n = u32::try_from(took.len()).ok().filter(|&n| n > 0)?;
    Some(took.iter().sum::<Duration>() / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(batches: &str) -> StatusAnswer {
        serde_json::from_str(&format!(
            r#"{{"ingestion_id": "i", "status": "triggered", "batches": [{batches}]}}"#
        ))
        .unwrap()
    }

    const TWO_DONE_TWO_WAITING: &str = r#"
        {"batch_id": "i:0", "status": "completed", "scheduled_at": "2026-01-01T00:00:00Z",
         "started_at": "2026-01-01T00:00:00Z", "completed_at": "2026-01-01T00:00:00.2Z"},
        {"batch_id": "i:1", "status": "completed", "scheduled_at": "2026-01-01T00:00:05Z",
         "started_at": "2026-01-01T00:00:05Z", "completed_at": "2026-01-01T00:00:05.2Z"},
        {"batch_id": "i:2", "status": "yet_to_start"},
        {"batch_id": "i:3", "status": "yet_to_start"}"#;

    #[test]
    fn the_eta_is_learned_from_the_spacing_of_slots() {
        let answer = answer(TWO_DONE_TWO_WAITING);
        assert_eq!(eta(&answer, None), Some(Duration::from_millis(10_200)));
    }

    #[test]
    fn a_given_interval_counts_until_the_spacing_shows_a_slower_rate() {
        let answer = answer(TWO_DONE_TWO_WAITING);
        assert_eq!(
            eta(&answer, Some(Duration::from_secs(1))),
            Some(Duration::from_millis(10_200)),
            "the request gets a slot every 5s, not every 1s"
        );
        let fresh = self::answer(r#"{"batch_id": "i:0", "status": "yet_to_start"}"#);
        assert_eq!(
            eta(&fresh, Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(eta(&fresh, None), None);
    }

    #[test]
    fn the_message_names_failures() {
        let answer = answer(
            r#"{"batch_id": "i:0", "status": "failed"},
               {"batch_id": "i:1", "status": "triggered"}"#,
        );
        assert_eq!(
            progress_message(&answer, None),
            "triggered, ETA <1s, 1 failed"
        );
    }
}
