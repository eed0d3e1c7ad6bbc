//! What the client reads from Sluice: status answers, problem documents and
//! the data of live events.
//!
//! These are the client's own types, not the server's: a client must keep
//! working against a newer server, so statuses are plain strings (new ones pass
//! through to the screen), unknown fields are ignored, and every field that is
//! not in SPEC.md is optional.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// The statuses after which nothing more happens to a request or a batch.
pub const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

pub fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

/// `GET /status/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusAnswer {
    pub ingestion_id: String,
    pub status: String,
    pub priority: Option<String>,
    /// The queue the request runs in (servers from before queues omit it).
    pub queue: Option<String>,
    pub created_at: Option<String>,
    pub completed_at: Option<String>,
    #[serde(default)]
    pub batches: Vec<BatchAnswer>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BatchAnswer {
    pub batch_id: String,
    #[serde(default)]
    pub ids: Vec<u64>,
    pub status: String,
    pub attempts: Option<u32>,
    pub scheduled_at: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

impl StatusAnswer {
    pub fn is_terminal(&self) -> bool {
        is_terminal(&self.status)
    }

    /// Batches that have ended, whichever way.
    pub fn batches_ended(&self) -> usize {
        self.batches
            .iter()
            .filter(|b| is_terminal(&b.status))
            .count()
    }

    /// How many batches are in each status: the ended ones first, then those
    /// in progress, then any status this client does not know, as they come.
    pub fn batch_counts(&self) -> Vec<(&str, usize)> {
        const ORDER: [&str; 5] = [
            "completed",
            "failed",
            "cancelled",
            "triggered",
            "yet_to_start",
        ];
        let mut counts: Vec<(&str, usize)> = ORDER.iter().map(|&s| (s, 0)).collect();
        for batch in &self.batches {
            match counts.iter_mut().find(|(s, _)| *s == batch.status) {
                Some((_, n)) => *n += 1,
                None => counts.push((&batch.status, 1)),
            }
        }
        counts.retain(|&(_, n)| n > 0);
        counts
    }

    /// How long the request took, once it has ended and the server says when.
    pub fn duration(&self) -> Option<Duration> {
        let start = parse_time(self.created_at.as_deref()?)?;
        let end = parse_time(self.completed_at.as_deref()?)?;
        end.duration_since(start).ok()
    }
}

/// `GET /queues`.
#[derive(Debug, Clone, Deserialize)]
pub struct QueuesAnswer {
    #[serde(default)]
    pub queues: Vec<QueueAnswer>,
}

/// One queue, as `GET /queues`, `GET /queues/{name}` and the queue commands
/// answer it. Intervals stay the server's text (`250ms`, `2s`, `0`).
#[derive(Debug, Clone, Deserialize)]
pub struct QueueAnswer {
    pub name: String,
    #[serde(default)]
    pub paused: bool,
    /// In force now: the runtime setting, else the configured one.
    pub interval: Option<String>,
    pub max_in_flight: Option<u64>,
    /// With the adaptive slow-down; the same as `interval` when not slowed.
    pub effective_interval: Option<String>,
    /// The queues file's (or the flags') values.
    #[serde(default)]
    pub configured: Configured,
    pub next_slot: Option<String>,
    /// Batches waiting to start, retries included.
    pub waiting: Option<u64>,
    /// Batches processing now.
    pub processing: Option<u64>,
}

/// A queue's settings as configured, before any runtime change.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Configured {
    pub interval: Option<String>,
    pub max_in_flight: Option<u64>,
}

/// An RFC 3339 time as Sluice writes it (UTC, `Z`).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

/// An RFC 9457 problem document: every error Sluice answers.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub title: Option<String>,
    pub status: Option<u16>,
    pub detail: Option<String>,
    #[serde(default)]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl Problem {
    /// Whether a JSON object looks like a problem document at all, and not
    /// some other JSON that happened to come with an error status.
    pub fn is_problem(&self) -> bool {
        self.kind.is_some() || self.title.is_some() || self.detail.is_some()
    }
}

/// `422 The request breaks the API's rules: 2 fields are invalid`, then one
/// indented line per offending field.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let heading: Vec<String> = [self.status.map(|s| s.to_string()), self.title.clone()]
            .into_iter()
            .flatten()
            .collect();
        f.write_str(&heading.join(" "))?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        for error in &self.errors {
            write!(f, "\n  {}: {}", error.field, error.message)?;
        }
        Ok(())
    }
}

/// The data of an `event: batch` of the live stream.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchEvent {
    pub batch_id: String,
    pub status: String,
    pub at: Option<String>,
}

/// The data of an `event: ingestion` of the live stream.
#[derive(Debug, Clone, Deserialize)]
pub struct IngestionEvent {
    pub status: String,
    pub at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_renders_its_detail_and_every_field() {
        let problem: Problem = serde_json::from_str(
            r#"{"type": "urn:sluice:problem:validation", "title": "The request breaks the API's rules",
                "status": 422, "detail": "2 fields are invalid",
                "errors": [{"field": "ids[1]", "message": "must be an integer"},
                           {"field": "priority", "message": "must be one of HIGH, MEDIUM or LOW"}]}"#,
        )
        .unwrap();
        assert_eq!(
            problem.to_string(),
            "422 The request breaks the API's rules: 2 fields are invalid\n  \
             ids[1]: must be an integer\n  priority: must be one of HIGH, MEDIUM or LOW"
        );
    }

    #[test]
    fn counts_put_ended_batches_first_and_keep_unknown_statuses() {
        let answer: StatusAnswer = serde_json::from_str(
            r#"{"ingestion_id": "x", "status": "triggered", "surprise": 1, "batches": [
                {"batch_id": "x:0", "status": "triggered"},
                {"batch_id": "x:1", "status": "completed"},
                {"batch_id": "x:2", "status": "paused"},
                {"batch_id": "x:3", "status": "failed"},
                {"batch_id": "x:4", "status": "completed"}]}"#,
        )
        .unwrap();
        assert_eq!(
            answer.batch_counts(),
            [
                ("completed", 2),
                ("failed", 1),
                ("triggered", 1),
                ("paused", 1)
            ]
        );
        assert_eq!(answer.batches_ended(), 3);
    }
}
