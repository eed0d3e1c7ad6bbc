use serde::{Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

/// Where a batch is in its life.
///
/// `yet_to_start` → `triggered` → `completed`, as in SPEC.md; a batch can also
/// end `failed` (an id ended in error) or `cancelled` (its request was cancelled
/// before it started). Between two attempts a batch is `Retrying` inside Sluice
/// but `triggered` to clients: it has started and is not done, which is what
/// `triggered` promises them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchStatus {
    YetToStart,
    Triggered,
    Completed,
    /// Waiting for its next attempt after a transient upstream failure.
    Retrying,
    Failed,
    Cancelled,
}

impl BatchStatus {
    /// In the order of their store codes.
    pub const ALL: [BatchStatus; 6] = [
        Self::YetToStart,
        Self::Triggered,
        Self::Completed,
        Self::Retrying,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::YetToStart => "yet_to_start",
            Self::Triggered | Self::Retrying => "triggered",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The name operators see (metrics, `/stats`): like [`as_str`](Self::as_str),
    /// but a batch between attempts is `retrying`, apart from `triggered`.
    pub fn operator_name(self) -> &'static str {
        match self {
            Self::Retrying => "retrying",
            other => other.as_str(),
        }
    }

    /// Whether nothing more will happen to the batch.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The code kept in the store.
    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.get(usize::try_from(code).ok()?).copied()
    }
}

impl Serialize for BatchStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

// The OpenAPI schema, matching the hand-written `Serialize` above: the five
// names clients see (`Retrying` is written `triggered`).
impl utoipa::PartialSchema for BatchStatus {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([
                "yet_to_start",
                "triggered",
                "completed",
                "failed",
                "cancelled",
            ]))
            .description(Some(
                "Where a batch is: `yet_to_start`, then `triggered` (started, not yet \
                 ended; also while it waits between two attempts), then `completed`. It \
                 can also end `failed` (an id ended in error) or `cancelled` (its request \
                 was cancelled before it started).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for BatchStatus {}

/// The status of a whole request, derived from its batches:
/// - `yet_to_start` if every batch is;
/// - `completed` if every batch is;
/// - once every batch has ended: `failed` if any failed, else `cancelled`;
/// - otherwise `triggered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IngestionStatus {
    YetToStart,
    Triggered,
    Completed,
    Failed,
    Cancelled,
}

impl IngestionStatus {
    pub fn derive(batches: impl IntoIterator<Item = BatchStatus>) -> Self {
        let (mut all_waiting, mut all_done, mut all_final) = (true, true, true);
        let (mut any_failed, mut any_cancelled) = (false, false);
        for status in batches {
            all_waiting &= status == BatchStatus::YetToStart;
            all_done &= status == BatchStatus::Completed;
            all_final &= status.is_final();
            any_failed |= status == BatchStatus::Failed;
            any_cancelled |= status == BatchStatus::Cancelled;
        }
        if all_done {
            // An ingestion always has a batch; an empty list reads as done.
            Self::Completed
        } else if all_waiting {
            Self::YetToStart
        } else if all_final && any_failed {
            Self::Failed
        } else if all_final && any_cancelled {
            Self::Cancelled
        } else {
            Self::Triggered
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The code kept in the store: the same as the batch status of that name.
    pub fn code(self) -> i64 {
        match self {
            Self::YetToStart => BatchStatus::YetToStart.code(),
            Self::Triggered => BatchStatus::Triggered.code(),
            Self::Completed => BatchStatus::Completed.code(),
            Self::Failed => BatchStatus::Failed.code(),
            Self::Cancelled => BatchStatus::Cancelled.code(),
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        match BatchStatus::from_code(code)? {
            BatchStatus::YetToStart => Some(Self::YetToStart),
            BatchStatus::Triggered => Some(Self::Triggered),
            BatchStatus::Completed => Some(Self::Completed),
            BatchStatus::Failed => Some(Self::Failed),
            BatchStatus::Cancelled => Some(Self::Cancelled),
            BatchStatus::Retrying => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::YetToStart => "yet_to_start",
            Self::Triggered => "triggered",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BatchStatus::*;
    use super::*;

    fn derive(batches: &[BatchStatus]) -> IngestionStatus {
        IngestionStatus::derive(batches.iter().copied())
    }

    #[test]
    fn overall_status_follows_the_contract() {
        assert_eq!(
            derive(&[YetToStart, YetToStart]),
            IngestionStatus::YetToStart
        );
        assert_eq!(derive(&[Completed, Completed]), IngestionStatus::Completed);
        assert_eq!(derive(&[Completed, YetToStart]), IngestionStatus::Triggered);
        assert_eq!(derive(&[Triggered, YetToStart]), IngestionStatus::Triggered);
        assert_eq!(derive(&[Retrying, Completed]), IngestionStatus::Triggered);
    }

    #[test]
    fn ended_requests_are_failed_or_cancelled() {
        assert_eq!(derive(&[Completed, Failed]), IngestionStatus::Failed);
        assert_eq!(derive(&[Failed, Cancelled]), IngestionStatus::Failed);
        assert_eq!(derive(&[Completed, Cancelled]), IngestionStatus::Cancelled);
        assert_eq!(derive(&[Cancelled, Cancelled]), IngestionStatus::Cancelled);
        assert_eq!(derive(&[Failed, Triggered]), IngestionStatus::Triggered);
    }

    #[test]
    fn a_retrying_batch_reads_as_triggered() {
        assert_eq!(Retrying.as_str(), "triggered");
        assert!(!Retrying.is_final());
    }
}
