//! How values are laid out in the database, the same in every store.
//!
//! Both stores keep the same codes in their columns (a priority's rank, a
//! status's code, times as microseconds): the decoders live here once, taking
//! the widest integer either database hands back, so a code read wrongly in
//! one store is read wrongly in both and shows up in the shared tests.

use std::num::NonZeroUsize;
use std::time::Duration;

use crate::domain::{
    BatchStatus, IdOutcome, IngestionId, IngestionStatus, Interval, ItemId, Priority, Timestamp,
};
use crate::queue::QueueName;
use crate::store::{CallbackState, Event, EventSubject, QueueRuntime, StoreError};

/// A priority from its stored rank.
pub fn priority(rank: i64) -> Result<Priority, StoreError> {
    Priority::from_rank(rank).ok_or_else(|| StoreError::Corrupt(format!("priority rank {rank}")))
}

/// A batch status from its stored code.
pub fn status(code: i64) -> Result<BatchStatus, StoreError> {
    BatchStatus::from_code(code).ok_or_else(|| StoreError::Corrupt(format!("batch status {code}")))
}

/// A callback's state from its stored code; a request whose callback state
/// was never written has not ended, so its callback is pending.
pub fn callback_state(code: Option<i64>) -> Result<CallbackState, StoreError> {
    match code {
        Some(0) | None => Ok(CallbackState::Pending),
        Some(1) => Ok(CallbackState::Delivered),
        Some(2) => Ok(CallbackState::GaveUp),
        Some(other) => Err(StoreError::Corrupt(format!("callback state {other}"))),
    }
}

/// A time column that may be empty.
pub fn time(micros: Option<i64>) -> Option<Timestamp> {
    micros.map(Timestamp::from_micros)
}

/// A queue's stored name; the store only ever writes valid names, so any
/// other is corruption.
pub fn queue_name(name: &str) -> Result<QueueName, StoreError> {
    name.parse()
        .map_err(|_| StoreError::Corrupt(format!("a queue named {name:?}")))
}

/// An optional tenant or group name as stored (`''` for none).
pub fn optional_name<T: std::str::FromStr>(
    text: &str,
    what: &str,
) -> Result<Option<T>, StoreError> {
    crate::domain::name_from_store(text)
        .map_err(|_| StoreError::Corrupt(format!("a {what} named {text:?}")))
}

/// A `(priority, status, number of batches)` count row.
pub fn batch_count(
    rank: i64,
    code: i64,
    count: i64,
) -> Result<(Priority, BatchStatus, u64), StoreError> {
    Ok((priority(rank)?, status(code)?, count as u64))
}

/// A queue's row: `paused, interval_us, max_in_flight, last_slot`. A runtime
/// setting that is empty (or, for the limit, not positive) leaves the
/// configured one in force.
pub fn queue_runtime(
    paused: bool,
    interval_us: Option<i64>,
    max_in_flight: Option<i64>,
    last_slot: Option<i64>,
) -> QueueRuntime {
    QueueRuntime {
        paused,
        interval: interval_us
            .map(|us| Interval::from_duration(Duration::from_micros(us.max(0) as u64))),
        max_in_flight: max_in_flight.and_then(|n| NonZeroUsize::new(n.max(0) as usize)),
        last_slot: time(last_slot),
    }
}

/// Ids as consecutive little-endian `u32`s: four bytes an id, no parsing.
pub fn encode_ids(ids: &[ItemId]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.get().to_le_bytes()).collect()
}

pub fn decode_ids(bytes: &[u8]) -> Result<Vec<ItemId>, StoreError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(StoreError::Corrupt("an id list is not whole u32s".into()));
    }
    bytes
        .chunks_exact(4)
        .map(|b| {
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            ItemId::new(n.into())
                .map_err(|_| StoreError::Corrupt(format!("stored id {n} is out of range")))
        })
        .collect()
}

/// An event from its stored columns.
pub fn event(
    seq: i64,
    ingestion: IngestionId,
    position: Option<u32>,
    code: i64,
    at: i64,
) -> Result<Event, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("event status {code}"));
    let subject = match position {
        Some(position) => EventSubject::Batch {
            position,
            status: BatchStatus::from_code(code).ok_or_else(corrupt)?,
        },
        None => EventSubject::Ingestion {
            status: IngestionStatus::from_code(code).ok_or_else(corrupt)?,
        },
    };
    Ok(Event {
        seq: seq as u64,
        ingestion,
        subject,
        at: Timestamp::from_micros(at),
    })
}

/// A batch's outcomes as stored: a JSON array, as text. serde_json escapes
/// every control character, so the text holds no NUL byte whatever the
/// upstream sent, and both stores keep it as it is.
pub fn encode_outcomes(outcomes: &[IdOutcome]) -> Result<String, StoreError> {
    serde_json::to_string(outcomes).map_err(|e| StoreError::Rejected(format!("results: {e}")))
}

pub fn decode_outcomes(json: Option<&str>) -> Result<Vec<IdOutcome>, StoreError> {
    json.map_or(Ok(Vec::new()), |json| {
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("results: {e}")))
    })
}

/// The outcomes of earlier attempts, for a batch being started. Ones that
/// cannot be read back (written by an older version) must not stop the
/// dispatch: the batch then starts afresh, every id fetched again.
pub fn earlier_outcomes(json: Option<&str>, batch: crate::domain::BatchId) -> Vec<IdOutcome> {
    decode_outcomes(json).unwrap_or_else(|error| {
        tracing::error!(%batch, %error, "cannot read the earlier outcomes; fetching every id again");
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_written_reads_back_as_itself() {
        for s in BatchStatus::ALL {
            assert_eq!(status(s.code()).unwrap(), s);
        }
        for p in Priority::ALL {
            assert_eq!(priority(p.rank()).unwrap(), p);
        }
        assert!(matches!(status(6), Err(StoreError::Corrupt(_))));
        assert!(matches!(priority(-1), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            callback_state(Some(3)),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(callback_state(None).unwrap(), CallbackState::Pending);
        assert_eq!(callback_state(Some(2)).unwrap(), CallbackState::GaveUp);
    }

    #[test]
    fn empty_or_unusable_runtime_settings_leave_the_configured_ones() {
        let runtime = queue_runtime(true, None, Some(0), None);
        assert_eq!(runtime.interval, None);
        assert_eq!(runtime.max_in_flight, None);
        let runtime = queue_runtime(false, Some(2_000_000), Some(3), Some(7));
        assert_eq!(runtime.interval, Some("2s".parse().unwrap()));
        assert_eq!(runtime.max_in_flight, NonZeroUsize::new(3));
        assert_eq!(runtime.last_slot, Some(Timestamp::from_micros(7)));
    }
}
