//! The body of `POST /ingest`, written while it uploads.
//!
//! `1-100000000` is a few bytes on the command line and about a gigabyte of
//! JSON. Building that in memory would let the client, not the server, decide
//! how many ids a request may carry, or run it out of memory. So the body is
//! generated in chunks as it is sent, under an exact `Content-Length`, which
//! also lets the server refuse an oversized body (413) from its headers alone.

use crate::domain::Priority;

use super::ids::{IdList, Run};

/// Chunks of about this size go to the connection.
const CHUNK_BYTES: usize = 64 * 1024;

/// A body too long to describe in a `Content-Length`: no server takes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ids} ids make a request body of more than 2^64 bytes; no server can take it")]
pub struct BodyTooLong {
    pub ids: u128,
}

/// `{"queue":"…","priority":"…","ids":[…]}`, as a length and the chunks that
/// make it up. Without a queue the field is left out, so that the server's
/// default applies (and a server from before queues reads the same body).
pub struct IngestBody {
    /// Bytes in all.
    pub length: u64,
    /// How many ids it carries.
    pub ids: u128,
    pub chunks: Chunks,
}

impl IngestBody {
    pub fn new(ids: IdList, priority: Priority, queue: Option<&str>) -> Result<Self, BodyTooLong> {
        let queue = match queue {
            // Quoted and escaped as JSON: the server, not the client, judges
            // the name, and a stray `"` must not break the body.
            Some(name) => format!(r#""queue":{},"#, serde_json::Value::from(name)),
            None => String::new(),
        };
        let head = format!(r#"{{{queue}"priority":"{priority}","ids":["#).into_bytes();
        let count = ids.len();
        let digits: u128 = ids.runs().iter().map(|&run| digits_in(run)).sum();
        let length = head.len() as u128 + digits + count.saturating_sub(1) + TAIL.len() as u128;
        let length = u64::try_from(length).map_err(|_| BodyTooLong { ids: count })?;
        Ok(Self {
            length,
            ids: count,
            chunks: Chunks {
                head: Some(head),
                ids,
                run: 0,
                next: None,
                first: true,
                done: false,
            },
        })
    }
}

const TAIL: &[u8] = b"]}";

/// The body's bytes, one chunk at a time.
pub struct Chunks {
    head: Option<Vec<u8>>,
    ids: IdList,
    /// The run being written, and its next id.
    run: usize,
    next: Option<u64>,
    first: bool,
    done: bool,
}

impl Iterator for Chunks {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let mut chunk = self.head.take().unwrap_or_default();
        chunk.reserve(CHUNK_BYTES + 24);
        let mut digits = [0u8; 20];
        while chunk.len() < CHUNK_BYTES {
            let Some(&Run { first, last }) = self.ids.runs().get(self.run) else {
                chunk.extend_from_slice(TAIL);
                self.done = true;
                break;
            };
            let id = self.next.unwrap_or(first);
            if !std::mem::take(&mut self.first) {
                chunk.push(b',');
            }
            chunk.extend_from_slice(format_u64(id, &mut digits));
            if id == last {
                self.run += 1;
                self.next = None;
            } else {
                self.next = Some(id + 1);
            }
        }
        Some(chunk)
    }
}

/// How many decimal digits the ids of `run` have in all.
fn digits_in(Run { first, last }: Run) -> u128 {
    let mut total = 0;
    // Ids with d digits are 10^(d-1)..=10^d - 1 (and 0 has one digit).
    let mut low: u128 = 0;
    for d in 1..=20u32 {
        let high = 10u128.pow(d) - 1;
        let (from, to) = (u128::from(first).max(low), u128::from(last).min(high));
        if from <= to {
            total += (to - from + 1) * u128::from(d);
        }
        low = high + 1;
    }
    total
}

/// `n` in decimal, written into `buffer` (the formatting machinery of
/// `write!` is several times slower on a million ids).
fn format_u64(mut n: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ids::Source;

    fn body(text: &str, priority: Priority) -> (u64, Vec<u8>) {
        body_for(text, priority, None)
    }

    fn body_for(text: &str, priority: Priority, queue: Option<&str>) -> (u64, Vec<u8>) {
        let mut ids = IdList::default();
        ids.extend_from_text(text, &Source::Stdin).unwrap();
        let body = IngestBody::new(ids, priority, queue).unwrap();
        (body.length, body.chunks.flatten().collect())
    }

    #[test]
    fn a_queue_is_named_only_when_given_and_always_as_a_json_string() {
        let (length, bytes) = body_for("1-2", Priority::Low, Some("enrich"));
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"queue": "enrich", "priority": "LOW", "ids": [1, 2]})
        );
        assert_eq!(length, bytes.len() as u64);

        let (_, bytes) = body("1", Priority::Low);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(value.get("queue").is_none(), "{value}");

        let odd = "a\"b\\c\n";
        let (length, bytes) = body_for("1", Priority::Low, Some(odd));
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["queue"], odd);
        assert_eq!(length, bytes.len() as u64);
    }

    #[test]
    fn the_body_is_the_json_the_api_expects() {
        let (length, bytes) = body("1 2 3 10-12 7", Priority::High);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"priority": "HIGH", "ids": [1, 2, 3, 10, 11, 12, 7]})
        );
        assert_eq!(length, bytes.len() as u64);
    }

    #[test]
    fn the_length_is_exact_across_digit_counts_and_chunks() {
        for text in [
            "0",
            "5",
            "9-10",
            "0-123456",
            "99999-100001 18446744073709551614-18446744073709551615",
        ] {
            let (length, bytes) = body(text, Priority::Low);
            assert_eq!(length, bytes.len() as u64, "{text}");
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let mut ids = IdList::default();
            ids.extend_from_text(text, &Source::Stdin).unwrap();
            assert_eq!(value["ids"].as_array().unwrap().len() as u128, ids.len());
        }
    }

    #[test]
    fn a_body_beyond_any_content_length_is_refused() {
        let mut ids = IdList::default();
        ids.extend_from_text("1-18446744073709551615", &Source::Stdin)
            .unwrap();
        assert!(IngestBody::new(ids, Priority::Medium, None).is_err());
    }

    #[test]
    fn chunks_stay_near_their_size() {
        let mut ids = IdList::default();
        ids.extend_from_text("1-1000000", &Source::Stdin).unwrap();
        let body = IngestBody::new(ids, Priority::Medium, None).unwrap();
        let sizes: Vec<usize> = body.chunks.map(|c| c.len()).collect();
        assert!(sizes.len() > 10);
        assert!(sizes.iter().all(|&s| s <= CHUNK_BYTES + 24), "{sizes:?}");
    }
}
