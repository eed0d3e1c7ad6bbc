//! The ids of `sluice submit`, read from arguments, a file or standard input.
//!
//! People paste ids from anywhere, so any mix of newlines, commas and spaces
//! separates them, and `a-b` stands for every id from `a` to `b` inclusive. Only
//! the syntax is checked here. Whether an id is in range, and how many ids one
//! request may carry, are the server's rules (the second is a setting of the
//! server), so the server judges them and its answer is shown as it is.

use std::fmt;
use std::path::PathBuf;

/// Where a piece of text with ids came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The n-th id argument, from 1.
    Argument(usize),
    File(PathBuf),
    Stdin,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Argument(n) => write!(f, "argument {n}"),
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Stdin => f.write_str("standard input"),
        }
    }
}

/// Where one token is: its source, and its line for multi-line input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    source: Source,
    line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            // An argument is one line; its number says enough.
            Source::Argument(_) => self.source.fmt(f),
            _ => write!(f, "{}, line {}", self.source, self.line),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdsError {
    #[error(
        "{at}: {token:?} is not an id; expected a whole number such as 42, \
         or a range such as 1-1000"
    )]
    BadToken { at: Location, token: String },
    #[error("{at}: {token:?} is too large to be an id")]
    TooLarge { at: Location, token: String },
    #[error("{at}: the range {token} is reversed; did you mean {last}-{first}?")]
    ReversedRange {
        at: Location,
        token: String,
        first: u64,
        last: u64,
    },
}

/// A run of consecutive ids, `first..=last`. A single id is a run of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub last: u64,
}

impl Run {
    pub fn len(self) -> u128 {
        u128::from(self.last - self.first) + 1
    }
}

/// The ids of one request, in the order given, repeats included (the server
/// fetches a repeated id again). Kept as runs, so `1-100000000` takes sixteen
/// bytes, not eight hundred megabytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdList {
    runs: Vec<Run>,
}

impl IdList {
    /// Adds the ids in `text`, which came from `source`.
    pub fn extend_from_text(&mut self, text: &str, source: &Source) -> Result<(), IdsError> {
        for (index, line) in text.lines().enumerate() {
            let at = || Location {
                source: source.clone(),
                line: index + 1,
            };
            for token in line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|t| !t.is_empty())
            {
                self.push(parse_token(token, at)?);
            }
        }
        Ok(())
    }

    /// How many ids there are; more than `u64::MAX` is possible with ranges.
    pub fn len(&self) -> u128 {
        self.runs.iter().map(|r| r.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Every id, in order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|r| r.first..=r.last)
    }

    /// Appends a run, merged into the last one when it continues it, so a file
    /// of consecutive ids stays small.
    fn push(&mut self, run: Run) {
        if let Some(last) = self.runs.last_mut()
            && last.last.checked_add(1) == Some(run.first)
        {
            last.last = run.last;
            return;
        }
        self.runs.push(run);
    }
}

/// `42` or `1-1000`. Only ASCII digits count: `+5`, `-5` and `1.0` are not ids.
fn parse_token(token: &str, at: impl Fn() -> Location) -> Result<Run, IdsError> {
    let number = |text: &str| -> Result<u64, IdsError> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdsError::BadToken {
                at: at(),
                token: token.to_owned(),
            });
        }
        // Only digits, so the one way to fail is overflow.
        text.parse().map_err(|_| IdsError::TooLarge {
            at: at(),
            token: token.to_owned(),
        })
    };
    match token.split_once('-') {
        None => number(token).map(|id| Run {
            first: id,
            last: id,
        }),
        Some((first, last)) => {
            let (first, last) = (number(first)?, number(last)?);
            if first > last {
                return Err(IdsError::ReversedRange {
                    at: at(),
                    token: token.to_owned(),
                    first,
                    last,
                });
            }
            Ok(Run { first, last })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<u64>, IdsError> {
        let mut ids = IdList::default();
        ids.extend_from_text(text, &Source::Stdin)?;
        Ok(ids.iter().collect())
    }

    #[test]
    fn newlines_commas_and_spaces_all_separate_ids() {
        assert_eq!(
            parse("1\n2,3 4\t5\r\n6, 7,,8\n\n").unwrap(),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn ranges_are_inclusive_and_keep_the_order_given() {
        assert_eq!(parse("7 1-3 5-5 2").unwrap(), [7, 1, 2, 3, 5, 2]);
    }

    #[test]
    fn repeats_are_kept() {
        assert_eq!(parse("1,1,1-2").unwrap(), [1, 1, 1, 2]);
    }

    #[test]
    fn consecutive_ids_are_stored_as_one_run() {
        let mut ids = IdList::default();
        ids.extend_from_text("1\n2\n3\n4-10\n11", &Source::Stdin)
            .unwrap();
        assert_eq!(ids.runs(), [Run { first: 1, last: 11 }]);
        assert_eq!(ids.len(), 11);
    }

    #[test]
    fn huge_ranges_are_counted_without_being_expanded() {
        let mut ids = IdList::default();
        ids.extend_from_text(
            "1-18446744073709551615 0-18446744073709551615",
            &Source::Stdin,
        )
        .unwrap();
        assert_eq!(ids.len(), 2 * u128::from(u64::MAX) + 1);
    }

    #[test]
    fn out_of_range_ids_are_left_for_the_server_to_judge() {
        assert_eq!(parse("0 1000000008").unwrap(), [0, 1_000_000_008]);
    }

    #[test]
    fn empty_input_gives_an_empty_list() {
        assert!(parse(" \n,\n").unwrap().is_empty());
    }

    #[test]
    fn a_bad_token_is_named_with_its_line() {
        let error = parse("1\n2 abc").unwrap_err();
        assert_eq!(
            error.to_string(),
            "standard input, line 2: \"abc\" is not an id; expected a whole number \
             such as 42, or a range such as 1-1000"
        );
    }

    #[test]
    fn signs_decimals_and_broken_ranges_are_not_ids() {
        for token in [
            "-5", "+5", "1.0", "1e3", "1-", "-", "1--3", "1-2-3", "0x10", "²",
        ] {
            assert!(
                matches!(parse(token), Err(IdsError::BadToken { .. })),
                "{token:?} was accepted"
            );
        }
    }

    #[test]
    fn a_reversed_range_is_refused_with_a_suggestion() {
        let error = parse("10-1").unwrap_err();
        assert!(matches!(
            error,
            IdsError::ReversedRange {
                first: 10,
                last: 1,
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            "standard input, line 1: the range 10-1 is reversed; did you mean 1-10?"
        );
    }

    #[test]
    fn numbers_past_u64_are_too_large() {
        let error = parse("18446744073709551616").unwrap_err();
        assert!(matches!(error, IdsError::TooLarge { .. }), "{error}");
    }

    #[test]
    fn arguments_are_named_by_position() {
        let mut ids = IdList::default();
        let error = ids
            .extend_from_text("1,x", &Source::Argument(3))
            .unwrap_err();
        assert!(
            error.to_string().starts_with("argument 3: \"x\""),
            "{error}"
        );
    }
}
