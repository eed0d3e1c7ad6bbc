//! What the client prints: the status and queue tables, event lines and
//! summaries. Plain
//! text with aligned columns and no colour, so it reads the same in a terminal,
//! a log file and a `grep`.

use std::fmt::Write as _;
use std::time::Duration;

use super::model::{QueueAnswer, StatusAnswer, parse_time};

/// Ids beyond this width are cut, with a count of the rest.
const IDS_WIDTH: usize = 32;
/// What an absent time or value shows as.
const NONE: &str = "-";

/// `sluice status`: the request, then one row per batch.
pub fn status_table(answer: &StatusAnswer) -> String {
    let mut out = String::new();
    let field = |name: &str, value: &str| format!("{name:<14}{value}\n");
    out += &field("ingestion", &answer.ingestion_id);
    out += &field("status", &answer.status);
    out += &field("priority", answer.priority.as_deref().unwrap_or(NONE));
    // A server from before queues says nothing of them; neither does the table.
    if let Some(queue) = &answer.queue {
        out += &field("queue", queue);
    }
    out += &field("created_at", answer.created_at.as_deref().unwrap_or(NONE));
    out += &field(
        "completed_at",
        answer.completed_at.as_deref().unwrap_or(NONE),
    );
    out += &field("batches", &counts_line(answer));
    out.push('\n');

    let mut rows = vec![
        [
            "batch_id",
            "status",
            "attempts",
            "ids",
            "started_at",
            "completed_at",
        ]
        .map(String::from),
    ];
    for batch in &answer.batches {
        rows.push([
            batch_label(&answer.ingestion_id, &batch.batch_id).to_owned(),
            batch.status.clone(),
            batch.attempts.map_or(NONE.to_owned(), |n| n.to_string()),
            abbreviate_ids(&batch.ids),
            batch.started_at.clone().unwrap_or_else(|| NONE.to_owned()),
            batch
                .completed_at
                .clone()
                .unwrap_or_else(|| NONE.to_owned()),
        ]);
    }
    out += &columns(&rows);
    out
}

/// `sluice queues`: one row per queue, in the server's order (by name).
pub fn queues_table(queues: &[QueueAnswer]) -> String {
    let text = |value: &Option<String>| value.clone().unwrap_or_else(|| NONE.to_owned());
    let number = |value: Option<u64>| value.map_or(NONE.to_owned(), |n| n.to_string());
    let mut rows = vec![
        [
            "NAME",
            "PAUSED",
            "INTERVAL",
            "EFFECTIVE",
            "IN-FLIGHT",
            "WAITING",
            "PROCESSING",
            "NEXT-SLOT",
        ]
        .map(String::from),
    ];
    for queue in queues {
        rows.push([
            queue.name.clone(),
            if queue.paused { "yes" } else { "no" }.to_owned(),
            text(&queue.interval),
            text(&queue.effective_interval),
            number(queue.max_in_flight),
            number(queue.waiting),
            number(queue.processing),
            queue
                .next_slot
                .as_deref()
                .map_or(NONE.to_owned(), |at| time_of_day(Some(at))),
        ]);
    }
    columns(&rows)
}

/// `enrich: paused, 12 waiting, 1 processing`: what `sluice queue pause` and
/// `resume` print.
pub fn queue_state(queue: &QueueAnswer) -> String {
    let state = if queue.paused { "paused" } else { "running" };
    let mut line = format!("{}: {state}", queue.name);
    if let Some(waiting) = queue.waiting {
        let _ = write!(line, ", {waiting} waiting");
    }
    if let Some(processing) = queue.processing {
        let _ = write!(line, ", {processing} processing");
    }
    line
}

/// `enrich: interval 2s (configured 250ms), max in flight 3 (configured 2)`:
/// what `sluice queue set` prints. A setting that is as configured says
/// nothing more; an adaptive slow-down shows as the effective interval.
pub fn queue_settings(queue: &QueueAnswer) -> String {
    let mut line = format!("{}:", queue.name);
    let setting = |name: &str, now: Option<String>, configured: Option<String>| {
        let now = now.unwrap_or_else(|| NONE.to_owned());
        match configured {
            Some(configured) if configured != now => {
                format!(" {name} {now} (configured {configured})")
            }
            _ => format!(" {name} {now}"),
        }
    };
    line += &setting(
        "interval",
        queue.interval.clone(),
        queue.configured.interval.clone(),
    );
    line.push(',');
    line += &setting(
        "max in flight",
        queue.max_in_flight.map(|n| n.to_string()),
        queue.configured.max_in_flight.map(|n| n.to_string()),
    );
    if let Some(effective) = &queue.effective_interval
        && queue.interval.as_ref() != Some(effective)
    {
        let _ = write!(line, ", effective interval {effective} (slowed down)");
    }
    line
}

/// `5 total: 3 completed, 1 triggered, 1 yet_to_start`.
fn counts_line(answer: &StatusAnswer) -> String {
    let counts = answer.batch_counts();
    let mut line = format!("{} total", answer.batches.len());
    if !counts.is_empty() {
        line += ": ";
        line += &counts
            .iter()
            .map(|(status, n)| format!("{n} {status}"))
            .collect::<Vec<_>>()
            .join(", ");
    }
    line
}

/// Rows left-aligned in columns two spaces apart, without trailing blanks.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// A batch id without the request's id in front, when it has it: the table
/// and the event lines name the request once, above. Batch ids are opaque to
/// clients, so anything else is shown whole.
pub fn batch_label<'a>(ingestion_id: &str, batch_id: &'a str) -> &'a str {
    match batch_id.strip_prefix(ingestion_id) {
        Some(rest) if rest.starts_with(':') => rest,
        _ => batch_id,
    }
}

/// `1,2,3`, or `1,2,3,…(+997)` when that is too wide.
pub fn abbreviate_ids(ids: &[u64]) -> String {
    let mut out = String::new();
    for (i, id) in ids.iter().enumerate() {
        let next = if i == 0 {
            id.to_string()
        } else {
            format!(",{id}")
        };
        if out.len() + next.len() > IDS_WIDTH && i + 1 < ids.len() {
            let _ = write!(out, ",…(+{})", ids.len() - i);
            return out;
        }
        out += &next;
    }
    out
}

/// `completed: 5 batches (5 completed) in 1.2s`, the last line of `--wait` and
/// `watch`.
pub fn summary(answer: &StatusAnswer) -> String {
    let counts = answer
        .batch_counts()
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ");
    let batches = match answer.batches.len() {
        1 => "1 batch".to_owned(),
        n => format!("{n} batches"),
    };
    let mut line = format!(
        "{} {}: {batches} ({counts})",
        answer.ingestion_id, answer.status
    );
    if let Some(took) = answer.duration() {
        let _ = write!(line, " in {}", human_duration(took));
    }
    line
}

/// `1.23s`, `2m 5s`: short, for people.
pub fn human_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(60) {
        format!("{:.2}s", duration.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
    }
}

/// `15:06:19.489`: the time of day (UTC) of an event, or the text as sent if it
/// is not a time Sluice would write.
pub fn time_of_day(at: Option<&str>) -> String {
    let Some(at) = at else {
        return "--:--:--.---".to_owned();
    };
    match parse_time(at) {
        Some(time) => {
            let text = humantime::format_rfc3339_millis(time).to_string();
            // `YYYY-MM-DDTHH:MM:SS.mmmZ`: keep `HH:MM:SS.mmm`.
            text.get(11..23).unwrap_or(&text).to_owned()
        }
        None => at.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_id_lists_are_cut_with_a_count() {
        assert_eq!(abbreviate_ids(&[1, 2, 3]), "1,2,3");
        assert_eq!(abbreviate_ids(&[]), "");
        let many: Vec<u64> = (1_000_000..1_000_100).collect();
        let shown = abbreviate_ids(&many);
        assert!(shown.starts_with("1000000,1000001,1000002,"), "{shown}");
        assert!(shown.ends_with(",…(+96)"), "{shown}");
    }

    #[test]
    fn batch_labels_drop_the_request_id_only_when_it_leads() {
        assert_eq!(batch_label("abc", "abc:3"), ":3");
        assert_eq!(batch_label("abc", "abcd:3"), "abcd:3");
        assert_eq!(batch_label("abc", "opaque"), "opaque");
    }

    #[test]
    fn times_of_day_keep_milliseconds() {
        assert_eq!(
            time_of_day(Some("2026-11-28T15:06:19.489713Z")),
            "15:06:19.489"
        );
        assert_eq!(time_of_day(Some("yesterday")), "yesterday");
    }

    fn queue(json: &str) -> QueueAnswer {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_queues_table_has_a_row_per_queue_and_a_dash_for_what_is_absent() {
        let queues = [
            queue(
                r#"{"name": "default", "paused": false, "interval": "5s", "max_in_flight": 1,
                    "effective_interval": "5s", "configured": {"interval": "5s", "max_in_flight": 1},
                    "last_slot": null, "next_slot": null, "waiting": 0, "processing": 0,
                    "batches": {"HIGH": {}, "MEDIUM": {}, "LOW": {}}}"#,
            ),
            queue(
                r#"{"name": "enrich", "paused": true, "interval": "250ms", "max_in_flight": 12,
                    "effective_interval": "1s 500ms", "next_slot": "2026-12-01T12:00:00.250000Z",
                    "waiting": 1234, "processing": 2, "surprise": [1]}"#,
            ),
            // A server that says less: the client shows what it has.
            queue(r#"{"name": "sparse"}"#),
        ];
        let expected = "\
NAME     PAUSED  INTERVAL  EFFECTIVE  IN-FLIGHT  WAITING  PROCESSING  NEXT-SLOT
default  no      5s        5s         1          0        0           -
enrich   yes     250ms     1s 500ms   12         1234     2           12:00:00.250
sparse   no      -         -          -          -        -           -
";
        assert_eq!(queues_table(&queues), expected);
    }

    #[test]
    fn queue_lines_say_the_state_and_the_settings_against_the_configured_ones() {
        let paused = queue(r#"{"name": "enrich", "paused": true, "waiting": 3, "processing": 1}"#);
        assert_eq!(
            queue_state(&paused),
            "enrich: paused, 3 waiting, 1 processing"
        );
        let running = queue(r#"{"name": "enrich", "paused": false}"#);
        assert_eq!(queue_state(&running), "enrich: running");

        let changed = queue(
            r#"{"name": "enrich", "interval": "2s", "max_in_flight": 2, "effective_interval": "2s",
                "configured": {"interval": "250ms", "max_in_flight": 2}}"#,
        );
        assert_eq!(
            queue_settings(&changed),
            "enrich: interval 2s (configured 250ms), max in flight 2"
        );
        let slowed = queue(
            r#"{"name": "enrich", "interval": "100ms", "max_in_flight": 3, "effective_interval": "400ms",
                "configured": {"interval": "100ms", "max_in_flight": 1}}"#,
        );
        assert_eq!(
            queue_settings(&slowed),
            "enrich: interval 100ms, max in flight 3 (configured 1), \
             effective interval 400ms (slowed down)"
        );
    }

    #[test]
    fn the_table_lines_up_and_abbreviates() {
        let answer: StatusAnswer = serde_json::from_str(
            r#"{"ingestion_id": "i", "status": "triggered", "priority": "HIGH", "queue": "enrich",
                "created_at": "2026-11-28T15:06:19.489512Z", "completed_at": null,
                "batches": [
                  {"batch_id": "i:0", "ids": [1, 2, 3], "status": "completed", "attempts": 1,
                   "started_at": "2026-11-28T15:06:19.489713Z", "completed_at": "2026-11-28T15:06:19.545981Z"},
                  {"batch_id": "i:1", "ids": [4, 5], "status": "yet_to_start", "attempts": 0,
                   "started_at": null, "completed_at": null}]}"#,
        )
        .unwrap();
        let expected = "\
ingestion     i
status        triggered
priority      HIGH
queue         enrich
created_at    2026-11-28T15:06:19.489512Z
completed_at  -
batches       2 total: 1 completed, 1 yet_to_start

batch_id  status        attempts  ids    started_at                   completed_at
:0        completed     1         1,2,3  2026-11-28T15:06:19.489713Z  2026-11-28T15:06:19.545981Z
:1        yet_to_start  0         4,5    -                            -
";
        assert_eq!(status_table(&answer), expected);
    }
}
