//! How values are laid out in the database, the same in every store.

use crate::domain::{BatchStatus, IdOutcome, IngestionId, IngestionStatus, ItemId, Timestamp};
use crate::store::{Event, EventSubject, StoreError};

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
