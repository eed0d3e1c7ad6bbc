use serde::{Deserialize, Serialize};

use super::{ItemId, Timestamp};

/// What became of one id, as stored with its batch and served by the results API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdOutcome {
    pub id: ItemId,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// How many times the id was fetched.
    pub attempts: u32,
    /// When the last fetch ended.
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream's answer: JSON when it was JSON, a string otherwise.
    Ok { data: serde_json::Value },
    /// Final: a permanent error, or a transient one after the last attempt.
    Error { error: FetchFailure },
    /// A transient error; the id will be fetched again.
    Retrying { error: FetchFailure },
}

impl Outcome {
    /// Its name, as the results API and the metrics give it.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Error { .. } => "error",
            Outcome::Retrying { .. } => "retrying",
        }
    }

    /// Whether the id needs no more fetching.
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Retrying { .. })
    }
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FetchFailure {
    pub kind: FailureKind,
    /// The upstream's HTTP status, if it answered.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = u16)]
    pub status: Option<u16>,
    /// A short description: the error, or the start of the upstream's body.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Trying again could succeed: a timeout, a refused connection, 5xx, 408, 429.
    Transient,
    /// Trying again would fail the same way: any other 4xx.
    Permanent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_back_as_written() {
        let outcome = IdOutcome {
            id: ItemId::new(7).unwrap(),
            outcome: Outcome::Error {
                error: FetchFailure {
                    kind: FailureKind::Permanent,
                    status: Some(404),
                    message: "not found".into(),
                },
            },
            attempts: 1,
            at: Timestamp::from_micros(1_700_000_000_000_000),
        };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["outcome"], "error");
        assert_eq!(json["error"]["status"], 404);
        assert_eq!(serde_json::from_value::<IdOutcome>(json).unwrap(), outcome);
    }
}
