use serde::Serialize;

/// Where a batch is in its life: `yet_to_start` → `triggered` → `completed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    YetToStart,
    Triggered,
    Completed,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 3] = [Self::YetToStart, Self::Triggered, Self::Completed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::YetToStart => "yet_to_start",
            Self::Triggered => "triggered",
            Self::Completed => "completed",
        }
    }

    /// The code kept in the store.
    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.get(usize::try_from(code).ok()?).copied()
    }
}

/// The status of a whole request, derived from its batches (SPEC.md):
/// `yet_to_start` if every batch is, `completed` if every batch is, otherwise
/// `triggered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestionStatus {
    YetToStart,
    Triggered,
    Completed,
}

impl IngestionStatus {
    pub fn derive(batches: impl IntoIterator<Item = BatchStatus>) -> Self {
        let (mut all_waiting, mut all_done) = (true, true);
        for status in batches {
            all_waiting &= status == BatchStatus::YetToStart;
            all_done &= status == BatchStatus::Completed;
        }
        match (all_waiting, all_done) {
            // An ingestion always has at least one batch; an empty list reads
            // as nothing left to do.
            (_, true) => Self::Completed,
            (true, false) => Self::YetToStart,
            (false, false) => Self::Triggered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BatchStatus::*;
    use super::*;

    #[test]
    fn overall_status_follows_the_contract() {
        assert_eq!(
            IngestionStatus::derive([YetToStart, YetToStart]),
            IngestionStatus::YetToStart
        );
        assert_eq!(
            IngestionStatus::derive([Completed, Completed]),
            IngestionStatus::Completed
        );
        assert_eq!(
            IngestionStatus::derive([Completed, YetToStart]),
            IngestionStatus::Triggered
        );
        assert_eq!(
            IngestionStatus::derive([Triggered, YetToStart]),
            IngestionStatus::Triggered
        );
    }
}
