//! The summary table: each figure beside its target from issue 6.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub figure: String,
    pub measured: String,
    pub target: String,
    /// `Some(true)` met, `Some(false)` missed, `None` no target here.
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Summary {
    pub rows: Vec<Row>,
}

impl Summary {
    pub fn add(
        &mut self,
        figure: impl Into<String>,
        measured: impl Into<String>,
        target: impl Into<String>,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            measured: measured.into(),
            target: target.into(),
            met,
        });
    }

    pub fn print(&self) {
        let headers = ["figure", "measured", "target", ""];
        let verdict = |met: Option<bool>| match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        let mut widths = headers.map(str::len);
        for row in &self.rows {
            widths[0] = widths[0].max(row.figure.chars().count());
            widths[1] = widths[1].max(row.measured.chars().count());
            widths[2] = widths[2].max(row.target.chars().count());
            widths[3] = widths[3].max(verdict(row.met).len());
        }
        let line = |cells: [&str; 4]| {
            let mut out = String::from("|");
            for (cell, width) in cells.iter().zip(widths) {
                let pad = width - cell.chars().count();
                out.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
            }
            println!("{out}");
        };
        line(headers);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line([&rule[0], &rule[1], &rule[2], &rule[3]]);
        for row in &self.rows {
            line([&row.figure, &row.measured, &row.target, verdict(row.met)]);
        }
        let missed = self.rows.iter().filter(|r| r.met == Some(false)).count();
        let met = self.rows.iter().filter(|r| r.met == Some(true)).count();
        println!("\n{met} targets met, {missed} missed.");
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[i64], quantile: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds as milliseconds, to the microsecond.
pub fn micros_ms(micros: i64) -> String {
    format!("{:.3} ms", micros as f64 / 1e3)
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
