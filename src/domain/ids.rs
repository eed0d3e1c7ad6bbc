use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use uuid::Uuid;

/// An id to fetch from the upstream: an integer from 1 to 1,000,000,007.
///
/// The upper bound fits in a `u32`, which keeps a queued id at four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64")]
pub struct ItemId(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be an integer from {} to {}", ItemId::MIN, ItemId::MAX)]
pub struct ItemIdError;

impl ItemId {
    pub const MIN: u64 = 1;
    pub const MAX: u64 = 1_000_000_007;

    pub fn new(value: u64) -> Result<Self, ItemIdError> {
        if (Self::MIN..=Self::MAX).contains(&value) {
            Ok(Self(value as u32))
        } else {
            Err(ItemIdError)
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u64> for ItemId {
    type Error = ItemIdError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The public id of an ingestion request: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IngestionId(Uuid);

impl IngestionId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl FromStr for IngestionId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(Self)
    }
}

impl fmt::Display for IngestionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl Serialize for IngestionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The public id of a batch: its ingestion's id and its position in it
/// (`<ingestion_id>:<n>`, n from 0). Clients should treat it as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId {
    pub ingestion: IngestionId,
    pub position: u32,
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ingestion, self.position)
    }
}

impl Serialize for BatchId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A hyphenated, lower-case UUID: how an [`IngestionId`] is written.
const UUID_PATTERN: &str = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";

// OpenAPI schemas, written by hand to match the hand-written `Serialize`
// impls above.

impl utoipa::PartialSchema for ItemId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(Self::MIN as f64))
            .maximum(Some(Self::MAX as f64))
            .description(Some("An id to fetch from the upstream."))
            .into()
    }
}

impl utoipa::ToSchema for ItemId {}

impl utoipa::PartialSchema for IngestionId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
            .pattern(Some(format!("^{UUID_PATTERN}$")))
            .description(Some(
                "A request's id: a UUIDv7, so ids sort by creation time.",
            ))
            .examples(["01a222b1-5fe1-70d3-b4a9-2fc5e0dc2351"])
            .into()
    }
}

impl utoipa::ToSchema for IngestionId {}

impl utoipa::PartialSchema for BatchId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(format!("^{UUID_PATTERN}:(0|[1-9][0-9]*)$")))
            .description(Some(
                "A batch's id: `<ingestion_id>:<position>`, the position counted from 0. \
                 Treat it as opaque.",
            ))
            .examples(["01a222b1-5fe1-70d3-b4a9-2fc5e0dc2351:0"])
            .into()
    }
}

impl utoipa::ToSchema for BatchId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids_are_bounded_inclusively() {
        assert!(ItemId::new(0).is_err());
        assert_eq!(ItemId::new(1).unwrap().get(), 1);
        assert_eq!(ItemId::new(1_000_000_007).unwrap().get(), 1_000_000_007);
        assert!(ItemId::new(1_000_000_008).is_err());
        assert!(ItemId::new(u64::MAX).is_err());
    }

    #[test]
    fn ingestion_ids_round_trip_and_reject_garbage() {
        let id = IngestionId::generate();
        assert_eq!(id.to_string().parse::<IngestionId>().unwrap(), id);
        assert!("not-a-uuid".parse::<IngestionId>().is_err());
    }
}
