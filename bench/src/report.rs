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
        let verdict = |met: Option<bool>| match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| {
                vec![
                    row.figure.clone(),
                    row.measured.clone(),
                    row.target.clone(),
                    verdict(row.met).to_string(),
                ]
            })
            .collect();
        print_table(&["figure", "measured", "target", ""], &rows);
        let missed = self.rows.iter().filter(|r| r.met == Some(false)).count();
        let met = self.rows.iter().filter(|r| r.met == Some(true)).count();
        println!("\n{met} targets met, {missed} missed.");
    }
}

/// Prints a table with a header row, every column as wide as its widest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    print_row(headers.iter().copied(), &widths);
    print_row(rule.iter().map(String::as_str), &widths);
    for row in rows {
        print_row(row.iter().map(String::as_str), &widths);
    }
}

fn print_row<'a>(cells: impl Iterator<Item = &'a str>, widths: &[usize]) {
    let mut out = String::from("|");
    for (cell, width) in cells.zip(widths) {
        let pad = width.saturating_sub(cell.chars().count());
        out.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
    }
    println!("{out}");
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
