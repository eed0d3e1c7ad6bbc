//! `POST /ingest` with arbitrary bytes as its JSON body, through the real
//! router: the `JsonBody` extractor (`parse_json`), `IngestBody`'s decoding
//! and `IngestBody::validate`, then the handler up to the store.
//!
//! Checked on every input, beyond "does not panic":
//! - never a 5xx; every error is a 4xx problem document (SPEC.md, Errors);
//! - a rejected request stores nothing; an accepted one stores exactly one
//!   request, whose id is the one answered, with 1 to `--max-ids-per-request`
//!   ids each from 1 to 1,000,000,007, a priority that round-trips through its
//!   name, and batches that cut the ids in order;
//! - the answer is the one a small independent reading of the body predicts:
//!   the exact status, the exact ids and priority of an accepted request, and
//!   the exact list of offending fields of a 422.
//!
//! The input's length picks the `--max-ids-per-request` in force (see
//! `MAX_IDS`), so that seeds stay plain JSON bodies. The seeds named `found-*`
//! are what this target found, since fixed: a body that is not JSON answered
//! 422, and one that is not UTF-8 accepted.

#![no_main]

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use sluice::domain::{IngestionId, ItemId, Priority};
use sluice::store::NewIngestion;
use sluice_fuzz::{MAX_IDS, harness};

fuzz_target!(|body: &[u8]| {
    let harness = harness();
    let index = body.len() % MAX_IDS.len();
    let max_ids = MAX_IDS[index];
    let request = Request::post("/ingest")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let answer = harness.send(index, request);
    let stored = harness.take_created();

    // What every answer must be, whatever the body.
    let fields = if answer.status == StatusCode::OK {
        let [new] = stored.as_slice() else {
            panic!("a 200 stored {} requests, not one", stored.len());
        };
        check_stored(new, max_ids, harness.config.batch_size.get());
        let answered = answer.json();
        assert_eq!(
            answered["ingestion_id"].as_str(),
            Some(new.id.to_string().as_str()),
            "the 200 answers the id of the stored request: {answered}"
        );
        None
    } else {
        assert!(
            stored.is_empty(),
            "a {} stored a request: {stored:?}",
            answer.status
        );
        Some(answer.assert_client_problem())
    };

    // What this body must get, read independently of `IngestBody`.
    let expected = expect(body, max_ids);
    match expected {
        Expect::NotUtf8 => assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "a body that is not UTF-8 gets 400"
        ),
        Expect::NotJson => assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "a body that is not JSON gets 400: {:?}",
            String::from_utf8_lossy(&answer.body)
        ),
        Expect::Lenient => {}
        Expect::TooManyIds => assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE),
        Expect::Invalid(expected) => {
            assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(
                fields.as_deref(),
                Some(expected.as_slice()),
                "the 422 lists every offending field, in order"
            );
        }
        Expect::Accepted {
            ids,
            priority,
            callback_url,
        } => {
            assert_eq!(answer.status, StatusCode::OK, "a valid request is accepted");
            let new = &stored[0];
            let got: Vec<u64> = new.ids.iter().map(|i| u64::from(i.get())).collect();
            assert_eq!(got, ids, "the ids are stored as sent, in order");
            assert_eq!(new.priority, priority);
            assert_eq!(new.callback_url, callback_url);
        }
    }
});

/// What an accepted request must look like in the store.
fn check_stored(new: &NewIngestion, max_ids: usize, batch_size: usize) {
    assert!(
        (1..=max_ids).contains(&new.ids.len()),
        "{} ids stored, the limit is {max_ids}",
        new.ids.len()
    );
    for id in &new.ids {
        assert!(
            (ItemId::MIN..=ItemId::MAX).contains(&u64::from(id.get())),
            "id {id} is out of range"
        );
    }
    let name = new.priority.as_str();
    assert_eq!(name, name.to_ascii_uppercase());
    assert_eq!(name.parse::<Priority>(), Ok(new.priority));
    assert_eq!(
        name.to_ascii_lowercase().parse::<Priority>(),
        Ok(new.priority)
    );
    assert_eq!(Priority::from_rank(new.priority.rank()), Some(new.priority));
    let batches: Vec<&[ItemId]> = new.batches().collect();
    assert_eq!(batches.len(), new.ids.len().div_ceil(batch_size));
    assert!(batches.iter().all(|b| (1..=batch_size).contains(&b.len())));
    assert_eq!(batches.concat(), new.ids, "batches cut the ids in order");
    let id = new.id.to_string();
    assert_eq!(id.parse::<IngestionId>().ok(), Some(new.id));
    assert_eq!(&id[14..15], "7", "ingestion ids are UUIDv7: {id}");
    if let Some(url) = &new.callback_url {
        let parsed = url::Url::parse(url).expect("a stored callback URL parses");
        assert!(matches!(parsed.scheme(), "http" | "https"));
        assert!(url.len() <= 2048, "a stored callback URL is at most 2048 bytes");
        assert!(
            parsed.username().is_empty() && parsed.password().is_none(),
            "a stored callback URL has no user-info: {url}"
        );
    }
}

/// The answer a body must get.
#[derive(Debug)]
enum Expect {
    /// Not JSON (or empty): 400.
    NotJson,
    /// JSON in form, but not UTF-8, so not JSON (RFC 8259, 8.1): 400.
    NotUtf8,
    /// JSON that the strict reading below refuses but the handler may read,
    /// because serde_json skips unknown fields (and the ids' nested values)
    /// without building them: numbers past f64's range, nesting past 128
    /// levels. Only the invariants above hold.
    Lenient,
    /// More ids than `--max-ids-per-request`: 413, whatever else is wrong.
    TooManyIds,
    /// Valid JSON that breaks the rules: 422 listing these fields.
    Invalid(Vec<String>),
    /// A valid request.
    Accepted {
        ids: Vec<u64>,
        priority: Priority,
        callback_url: Option<String>,
    },
}

/// A JSON object's members, in order, duplicates kept.
struct Members(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(MembersVisitor)
    }
}

/// SPEC.md's rules for a `POST /ingest` body, written from the SPEC rather
/// than from `IngestBody`.
fn expect(body: &[u8], max_ids: usize) -> Expect {
    if body.iter().all(u8::is_ascii_whitespace)
        || serde_json::from_slice::<IgnoredAny>(body).is_err()
    {
        return Expect::NotJson;
    }
    if std::str::from_utf8(body).is_err() {
        return Expect::NotUtf8;
    }
    let members = match serde_json::from_slice::<Members>(body) {
        Ok(Members(members)) => members,
        // Valid JSON, but not an object.
        Err(e) if e.is_data() => return Expect::Invalid(vec!["body".into()]),
        Err(_) => return Expect::Lenient,
    };
    let (Ok(ids), Ok(priority), Ok(callback_url)) = (
        field(&members, "ids"),
        field(&members, "priority"),
        field(&members, "callback_url"),
    ) else {
        // A known field given twice.
        return Expect::Invalid(vec!["body".into()]);
    };

    let mut errors = Vec::new();
    let ids = match ids.map(|v| v.as_array()) {
        None | Some(None) => {
            errors.push("ids".to_owned());
            None
        }
        Some(Some(ids)) if ids.len() > max_ids => return Expect::TooManyIds,
        Some(Some(ids)) if ids.is_empty() => {
            errors.push("ids".to_owned());
            None
        }
        Some(Some(ids)) => {
            let valid: Vec<u64> = ids
                .iter()
                .filter_map(Value::as_u64)
                .filter(|n| (1..=1_000_000_007).contains(n))
                .collect();
            let bad: Vec<usize> = ids
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.as_u64().is_some_and(|n| (1..=1_000_000_007).contains(&n)))
                .map(|(i, _)| i)
                .collect();
            errors.extend(bad.iter().take(10).map(|i| format!("ids[{i}]")));
            if bad.len() > 10 {
                errors.push("ids".to_owned());
            }
            Some(valid)
        }
    };
    let priority = match priority.and_then(Value::as_str) {
        Some(p) if p.eq_ignore_ascii_case("high") => Some(Priority::High),
        Some(p) if p.eq_ignore_ascii_case("medium") => Some(Priority::Medium),
        Some(p) if p.eq_ignore_ascii_case("low") => Some(Priority::Low),
        _ => {
            errors.push("priority".to_owned());
            None
        }
    };
    let callback_url = match callback_url {
        None | Some(Value::Null) => None,
        // An absolute http(s) URL of at most 2,048 bytes, as sent and as
        // normalized, with no user name or password.
        Some(value) => match value
            .as_str()
            .filter(|raw| raw.len() <= 2048)
            .map(url::Url::parse)
        {
            Some(Ok(url))
                if (url.scheme() == "http" || url.scheme() == "https")
                    && url.username().is_empty()
                    && url.password().is_none()
                    && url.as_str().len() <= 2048 =>
            {
                Some(url.to_string())
            }
            _ => {
                errors.push("callback_url".to_owned());
                None
            }
        },
    };
    match (ids, priority) {
        (Some(ids), Some(priority)) if errors.is_empty() => Expect::Accepted {
            ids,
            priority,
            callback_url,
        },
        _ => Expect::Invalid(errors),
    }
}

/// The one value of a member; `Err` if it is given twice or more.
fn field<'a>(members: &'a [(String, Value)], name: &str) -> Result<Option<&'a Value>, ()> {
    let mut values = members.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    let first = values.next();
    match values.next() {
        Some(_) => Err(()),
        None => Ok(first),
    }
}
