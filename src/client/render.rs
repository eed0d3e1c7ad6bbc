//! What the client prints: the status table, event lines and summaries. Plain
//! text with aligned columns and no colour, so it reads the same in a terminal,
//! a log file and a `grep`.

use std::fmt::Write as _;
use std::time::Duration;

use super::model::{StatusAnswer, parse_time};

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

    #[test]
    fn the_table_lines_up_and_abbreviates() {
        let answer: StatusAnswer = serde_json::from_str(
            r#"{"ingestion_id": "i", "status": "triggered", "priority": "HIGH",
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
