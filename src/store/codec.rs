//! How values are laid out in the database, the same in every store.

use crate::domain::{BatchStatus, IngestionId, IngestionStatus, ItemId, Timestamp};
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
