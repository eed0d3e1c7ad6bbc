//! The three spellings of a status read, through the real router, with an
//! arbitrary ingestion id (or body). The first byte picks the spelling:
//! - `/`: `GET /status/{rest}`, the rest percent-encoded into the path;
//! - `?`: `GET /status?{rest}`, the rest as the query string;
//! - anything else: `GET /status` with the whole input as its body.
//!
//! The store knows one request, `KNOWN_ID`. Checked: never a 5xx; every error
//! is a 4xx problem document; the exact status SPEC.md gives (200 for an id
//! that names the known request, 404 for an unknown or malformed id, 400 for
//! a body that is not JSON, 422 for JSON without `ingestion_id`); a 200
//! answers the known request; and `IngestionId` parsing round-trips. The seed
//! `found-path-not-utf8.txt` is what it found, since fixed: a path id that is
//! not UTF-8 answered axum's plain-text 400.

#![no_main]

use axum::body::Body;
use axum::http::{Request, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::Value;
use sluice::domain::IngestionId;
use sluice_fuzz::{KNOWN_BATCHES, KNOWN_ID, harness, percent_encode};

/// The largest `GET /status` body read; past it, 413.
const STATUS_BODY_LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let (uri, body, expected) = match data.split_first() {
        Some((b'/', raw)) => {
            let uri = format!("/status/{}", percent_encode(raw));
            let expected = if raw.is_empty() {
                // `/status/` is no route at all.
                StatusCode::NOT_FOUND
            } else {
                lookup(std::str::from_utf8(raw).ok())
            };
            (uri, Vec::new(), Some(expected))
        }
        Some((b'?', query)) => {
            let Some(uri) = query_uri(query) else {
                return;
            };
            let ids: Vec<String> = form_urlencoded::parse(query)
                .filter(|(k, _)| k == "ingestion_id")
                .map(|(_, v)| v.into_owned())
                .collect();
            let expected = match ids.as_slice() {
                // No id in the query, and no body either.
                [] => StatusCode::BAD_REQUEST,
                [id] => lookup(Some(id.as_str())),
                // `ingestion_id` twice: a query that does not parse.
                _ => StatusCode::BAD_REQUEST,
            };
            (uri, Vec::new(), Some(expected))
        }
        _ => {
            let expected = if data.len() > STATUS_BODY_LIMIT {
                Some(StatusCode::PAYLOAD_TOO_LARGE)
            } else if data.iter().all(u8::is_ascii_whitespace) {
                Some(StatusCode::BAD_REQUEST)
            } else {
                match serde_json::from_slice::<Value>(data) {
                    // JSON that a `Value` cannot hold (nesting past 128
                    // levels, numbers past f64's range) but that the handler
                    // may read past without building it: only the invariants
                    // hold.
                    Err(_) if serde_json::from_slice::<IgnoredAny>(data).is_ok() => None,
                    Err(_) => Some(StatusCode::BAD_REQUEST),
                    Ok(value) => match value.get("ingestion_id").and_then(Value::as_str) {
                        None => Some(StatusCode::UNPROCESSABLE_ENTITY),
                        Some(id) => Some(lookup(Some(id))),
                    },
                }
            };
            ("/status".to_owned(), data.to_vec(), expected)
        }
    };

    let request = Request::get(uri.as_str()).body(Body::from(body)).unwrap();
    let answer = harness().send(0, request);
    if answer.status == StatusCode::OK {
        let status = answer.json();
        assert_eq!(status["ingestion_id"].as_str(), Some(KNOWN_ID), "{status}");
        let batches = status["batches"].as_array().expect("`batches` is an array");
        assert_eq!(batches.len(), KNOWN_BATCHES.len());
        for (position, (batch, ids)) in batches.iter().zip(KNOWN_BATCHES).enumerate() {
            assert_eq!(
                batch["batch_id"].as_str(),
                Some(format!("{KNOWN_ID}:{position}").as_str())
            );
            let got: Vec<u64> = batch["ids"]
                .as_array()
                .expect("a batch's `ids` is an array")
                .iter()
                .map(|i| i.as_u64().expect("an id is an integer"))
                .collect();
            let want: Vec<u64> = ids.iter().map(|&i| u64::from(i)).collect();
            assert_eq!(got, want);
        }
        assert_eq!(status["status"], "triggered");
    } else {
        answer.assert_client_problem();
    }
    let Some(expected) = expected else {
        return;
    };
    assert_eq!(
        answer.status,
        expected,
        "{uri} with body {:?}: {:?}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&answer.body)
    );
});

/// The status a lookup of this raw id must answer (`None`: not UTF-8), and
/// the properties of `IngestionId` parsing on the way.
fn lookup(raw: Option<&str>) -> StatusCode {
    let Some(raw) = raw else {
        return StatusCode::NOT_FOUND;
    };
    let Ok(id) = raw.trim().parse::<IngestionId>() else {
        return StatusCode::NOT_FOUND;
    };
    let written = id.to_string();
    assert_eq!(written.len(), 36, "{written}");
    assert!(
        written
            .bytes()
            .enumerate()
            .all(|(i, b)| if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
            }),
        "an ingestion id is written as a lower-case hyphenated UUID: {written}"
    );
    assert_eq!(written.parse::<IngestionId>().ok(), Some(id));
    assert_eq!(IngestionId::from_bytes(*id.as_bytes()), id);
    if written == KNOWN_ID {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

/// `/status?{query}`, with the bytes a URI cannot carry percent-encoded;
/// `None` if it still is not a URI (no client could send it).
fn query_uri(query: &[u8]) -> Option<String> {
    let mut uri = String::from("/status?");
    for &b in query {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.parse::<Uri>().ok().map(|_| uri)
}
