//! `POST /ingest`: validate, store durably, wake the dispatcher, answer the id.

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::body::{JsonBody, StringField};
use super::error::{ApiError, FieldError};
use super::error::{
    BadRequest, Forbidden, Internal, PayloadTooLarge, QueueFull, RequestTimeout, Unauthorized,
    Unavailable, UnsupportedMediaType, ValidationFailed,
};
use crate::domain::{CallbackUrl, CallbackUrlError, GroupName, IngestionId, ItemId, Priority};
use crate::queue::{Queue, Queues};
use crate::store::{Created, IdempotencyKey, NewIngestion};

/// How many offending ids a problem document lists before it just counts them.
const LISTED_ID_ERRORS: usize = 10;

/// A request that is now on disk.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResponse {
    pub ingestion_id: IngestionId,
}

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

// The body of `POST /ingest`, for the API document only: the real decoding is
// `IngestBody`, which collects every offending field instead of stopping at
// the first.
/// A request: ids to fetch, and how urgent they are. Unknown fields are
/// ignored.
#[derive(ToSchema)]
#[schema(examples(json!({"ids": [1, 2, 3, 4, 5], "priority": "MEDIUM"})))]
#[allow(dead_code)] // Never built: it only describes what `IngestBody` reads.
pub struct IngestRequest {
    /// The ids to fetch, in order; a repeated id is fetched again. Only JSON
    /// integers count (`"1"`, `1.5`, `2.0`, `true` and `null` are not). At most
    /// `--max-ids-per-request` (default 1,000,000): more answer 413.
    #[schema(min_items = 1)]
    ids: Vec<ItemId>,
    /// `HIGH`, `MEDIUM` or `LOW`, in any letter case.
    #[schema(schema_with = priority_any_case)]
    priority: String,
    /// An absolute `http://` or `https://` URL of at most 2,048 bytes, without
    /// a user name or password, that Sluice POSTs the final status to (the
    /// status answer without `batches`) once the request ends.
    #[schema(format = "uri", max_length = 2048)]
    callback_url: Option<String>,
    /// The queue to run the request in (see `GET /queues`); `default` when
    /// left out. An unknown queue answers 422.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,63}$", example = "default")]
    queue: Option<String>,
    /// Whom inside the tenant the request is for: 1 to 128 characters, no
    /// control characters. In a queue with `fairness = "tenant"` a tenant's
    /// groups take turns, as tenants do.
    #[schema(min_length = 1, max_length = 128, example = "customer-42")]
    group: Option<String>,
}

/// The headers `POST /ingest` reads, for the API document only.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Never built: `idempotency_key` reads the header.
pub struct IngestHeaders {
    /// 1 to 255 visible ASCII characters. The same key with the same body
    /// answers the same `ingestion_id` (with `Idempotent-Replayed: true`) and
    /// stores nothing; with another body, 422. A key holds for
    /// `--idempotency-ttl` (24 h by default).
    #[param(
        rename = "Idempotency-Key",
        value_type = String,
        required = false,
        min_length = 1,
        max_length = 255
    )]
    idempotency_key: Option<String>,
}

fn priority_any_case() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(
            "^([Hh][Ii][Gg][Hh]|[Mm][Ee][Dd][Ii][Uu][Mm]|[Ll][Oo][Ww])$",
        ))
        .description(Some("`HIGH`, `MEDIUM` or `LOW`, in any letter case."))
        .examples(["HIGH", "medium", "Low"])
        .build()
}

/// The request an answer is about, for its line in the access log.
#[derive(Clone, Copy)]
pub struct LoggedIngestion(pub IngestionId);

/// Submit a request
///
/// Validates the ids and the priority, splits the ids into batches and stores
/// the request and all its batches durably; answers only once they are on
/// disk, and never waits for processing. Unknown fields are ignored. A
/// rejected request stores nothing; its problem document lists every
/// offending field.
#[utoipa::path(
    post,
    path = "/ingest",
    tag = "requests",
    operation_id = "ingest",
    params(IngestHeaders),
    request_body(content = IngestRequest, content_type = "application/json"),
    security((), ("api_key" = ["submit"])),
    responses(
        (status = 200, description = "The request is on disk; follow it by its id.",
            body = IngestResponse,
            headers(("Idempotent-Replayed" = String,
                description = "`true` when an earlier request with the same `Idempotency-Key` \
                    is answered again."))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ValidationFailed),
        (status = 429, response = QueueFull),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn ingest(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<IngestBody>,
) -> Result<Response, ApiError> {
    // A tenant's keys are its own: stored as "{tenant}\n{key}". A header
    // cannot carry '\n', so no tenant's key is ever another's, nor one sent
    // with a key without a tenant (stored as it came).
    let key = idempotency_key(&headers)?.map(|key| match caller.tenant() {
        Some(tenant) => format!("{tenant}\n{key}", tenant = tenant.as_str()),
        None => key,
    });
    let request = body.validate(app.limits.max_ids_per_request, &app.queues)?;
    let created_at = app.clock.now();
    let idempotency = key.map(|key| IdempotencyKey {
        fingerprint: request.fingerprint(),
        key,
        expires_at: created_at.saturating_add_micros(app.idempotency_ttl.as_micros() as i64),
    });
    let new = NewIngestion {
        id: IngestionId::generate(),
        queue: request.queue.name.clone(),
        priority: request.priority,
        ids: request.ids,
        batch_size: request.queue.settings.batch_size,
        created_at,
        callback_url: request.callback_url.map(CallbackUrl::into_string),
        idempotency,
        tenant: caller.tenant,
        group: request.group,
    };
    let (priority, id_count, batches) = (new.priority, new.ids.len(), new.batches().len());
    match app.store.create_ingestion(new).await? {
        Created::New(id) => {
            app.metrics.ingestions.inc();
            app.metrics.ids_accepted.inc_by(id_count as u64);
            app.signals.work_available();
            app.signals.events_stored();
            tracing::debug!(ingestion_id = %id, %priority, ids = id_count, batches, "ingestion accepted");
            let mut response = Json(IngestResponse { ingestion_id: id }).into_response();
            response.extensions_mut().insert(LoggedIngestion(id));
            Ok(response)
        }
        Created::Replayed(id) => {
            tracing::debug!(ingestion_id = %id, "idempotent replay");
            let mut response = Json(IngestResponse { ingestion_id: id }).into_response();
            response.extensions_mut().insert(LoggedIngestion(id));
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Created::KeyConflict => Err(ApiError::validation(vec![FieldError::new(
            "Idempotency-Key",
            "was already used with a different request; use a new key",
        )])),
    }
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(key.to_owned())),
        _ => Err(ApiError::validation(vec![FieldError::new(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )])),
    }
}

/// A request that passed validation.
#[derive(Debug)]
pub struct ValidIngest {
    pub queue: Arc<Queue>,
    pub ids: Vec<ItemId>,
    pub priority: Priority,
    pub callback_url: Option<CallbackUrl>,
    pub group: Option<GroupName>,
}

impl ValidIngest {
    /// A digest of everything that makes two requests the same request.
    fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update([self.priority.rank() as u8]);
        hasher.update((self.ids.len() as u64).to_le_bytes());
        for id in &self.ids {
            hasher.update(id.get().to_le_bytes());
        }
        if let Some(url) = &self.callback_url {
            hasher.update(url.as_str().as_bytes());
        }
        // Only another queue counts, so that keys stored before queues
        // existed still match their replays.
        if !self.queue.name.is_default() {
            hasher.update(b"queue:");
            hasher.update(self.queue.name.as_str().as_bytes());
        }
        if let Some(group) = &self.group {
            hasher.update(b"group:");
            hasher.update(group.as_str().as_bytes());
        }
        hasher.finalize().into()
    }
}

/// The body of `POST /ingest` as it arrived. Decoding never stops at the first
/// problem: every offending field is kept, so one answer tells the client all
/// it must fix. Unknown fields are ignored. Every field is decoded into a
/// bounded shape: a value of the wrong type is read past, never built.
#[derive(Debug, Default)]
pub struct IngestBody {
    ids: Option<IdList>,
    priority: Option<Result<Priority, ()>>,
    callback_url: Option<Result<Option<CallbackUrl>, CallbackUrlError>>,
    /// `None` when left out or `null`; `Err` when not a string.
    queue: Option<Result<String, ()>>,
    /// `None` when left out or `null`; `Err` when not a group name.
    group: Option<Result<GroupName, ()>>,
}

impl IngestBody {
    /// The request, or every rule it breaks.
    pub fn validate(self, max_ids: usize, queues: &Queues) -> Result<ValidIngest, ApiError> {
        let mut errors = Vec::new();

        let queue = match &self.queue {
            None => Some(queues.default_queue()),
            Some(Ok(name)) => {
                let queue = queues.get(name);
                if queue.is_none() {
                    errors.push(FieldError::new(
                        "queue",
                        format!(
                            "no such queue; the queues are {}",
                            queues
                                .names()
                                .iter()
                                .map(|name| name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                queue
            }
            Some(Err(())) => {
                errors.push(FieldError::new("queue", "must be a string"));
                None
            }
        };

        let ids = match self.ids {
            None => {
                errors.push(FieldError::new("ids", "is required"));
                None
            }
            Some(IdList::NotAnArray) => {
                errors.push(FieldError::new("ids", "must be an array of integers"));
                None
            }
            Some(IdList::Array { len, .. }) if len > max_ids => {
                return Err(ApiError::too_large(format!(
                    "{len} ids in one request; the limit is {max_ids} (--max-ids-per-request)"
                )));
            }
            Some(IdList::Array { len: 0, .. }) => {
                errors.push(FieldError::new("ids", "must not be empty"));
                None
            }
            Some(IdList::Array {
                valid,
                invalid,
                invalid_count,
                ..
            }) => {
                errors.extend(invalid);
                if invalid_count > LISTED_ID_ERRORS {
                    errors.push(FieldError::new(
                        "ids",
                        format!(
                            "{} more invalid ids not listed",
                            invalid_count - LISTED_ID_ERRORS
                        ),
                    ));
                }
                Some(valid)
            }
        };

        let priority = match self.priority {
            None => {
                errors.push(FieldError::new("priority", "is required"));
                None
            }
            Some(Ok(priority)) => Some(priority),
            Some(Err(())) => {
                errors.push(FieldError::new(
                    "priority",
                    crate::domain::PriorityError.to_string(),
                ));
                None
            }
        };

        let callback_url = match self.callback_url {
            None => None,
            Some(Ok(url)) => url,
            Some(Err(message)) => {
                errors.push(FieldError::new("callback_url", message.to_string()));
                None
            }
        };

        let group = match self.group {
            None => None,
            Some(Ok(group)) => Some(group),
            Some(Err(())) => {
                errors.push(FieldError::new(
                    "group",
                    crate::domain::NameError::Group.to_string(),
                ));
                None
            }
        };

        match (ids, priority, queue) {
            (Some(ids), Some(priority), Some(queue)) if errors.is_empty() => Ok(ValidIngest {
                queue: Arc::clone(queue),
                ids,
                priority,
                callback_url,
                group,
            }),
            _ => Err(ApiError::validation(errors)),
        }
    }
}

impl<'de> Deserialize<'de> for IngestBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = IngestBody;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object with `ids` and `priority`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IngestBody, A::Error> {
                let mut body = IngestBody::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "ids" if body.ids.is_some() => {
                            return Err(de::Error::duplicate_field("ids"));
                        }
                        "ids" => body.ids = Some(map.next_value()?),
                        "priority" if body.priority.is_some() => {
                            return Err(de::Error::duplicate_field("priority"));
                        }
                        "priority" => {
                            body.priority = Some(match map.next_value::<StringField>()? {
                                StringField::Str(s) => s.parse().map_err(|_| ()),
                                StringField::Null | StringField::Other => Err(()),
                            });
                        }
                        "callback_url" if body.callback_url.is_some() => {
                            return Err(de::Error::duplicate_field("callback_url"));
                        }
                        "callback_url" => {
                            body.callback_url = Some(match map.next_value::<StringField>()? {
                                StringField::Null => Ok(None),
                                StringField::Str(s) => CallbackUrl::parse(&s).map(Some),
                                StringField::Other => Err(CallbackUrlError::NotHttp),
                            });
                        }
                        "queue" if body.queue.is_some() => {
                            return Err(de::Error::duplicate_field("queue"));
                        }
                        "queue" => {
                            body.queue = match map.next_value::<StringField>()? {
                                StringField::Null => None,
                                StringField::Str(s) => Some(Ok(s.into_owned())),
                                StringField::Other => Some(Err(())),
                            };
                        }
                        "group" if body.group.is_some() => {
                            return Err(de::Error::duplicate_field("group"));
                        }
                        "group" => {
                            body.group = match map.next_value::<StringField>()? {
                                StringField::Null => None,
                                StringField::Str(s) => Some(GroupName::parse(&s).map_err(|_| ())),
                                StringField::Other => Some(Err(())),
                            };
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(body)
            }
        }
        d.deserialize_map(BodyVisitor)
    }
}

/// The `ids` field: the valid ids in order, and the first few invalid ones.
#[derive(Debug)]
enum IdList {
    NotAnArray,
    Array {
        len: usize,
        valid: Vec<ItemId>,
        invalid: Vec<FieldError>,
        invalid_count: usize,
    },
}

impl<'de> Deserialize<'de> for IdList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IdListVisitor)
    }
}

struct IdListVisitor;

impl<'de> Visitor<'de> for IdListVisitor {
    type Value = IdList;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of integers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IdList, A::Error> {
        let mut valid = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        let (mut invalid, mut invalid_count, mut len) = (Vec::new(), 0, 0);
        while let Some(element) = seq.next_element::<RawId>()? {
            match element {
                RawId::Valid(id) => valid.push(id),
                RawId::Invalid(got) => {
                    invalid_count += 1;
                    if invalid.len() < LISTED_ID_ERRORS {
                        invalid.push(FieldError::new(
                            format!("ids[{len}]"),
                            format!(
                                "must be an integer from {} to {}, got {got}",
                                ItemId::MIN,
                                ItemId::MAX
                            ),
                        ));
                    }
                }
            }
            len += 1;
        }
        Ok(IdList::Array {
            len,
            valid,
            invalid,
            invalid_count,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IdList, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(IdList::NotAnArray)
    }

    fn visit_u64<E>(self, _: u64) -> Result<IdList, E> {
        Ok(IdList::NotAnArray)
    }
    fn visit_i64<E>(self, _: i64) -> Result<IdList, E> {
        Ok(IdList::NotAnArray)
    }
    fn visit_f64<E>(self, _: f64) -> Result<IdList, E> {
        Ok(IdList::NotAnArray)
    }
    fn visit_bool<E>(self, _: bool) -> Result<IdList, E> {
        Ok(IdList::NotAnArray)
    }
    fn visit_str<E>(self, _: &str) -> Result<IdList, E> {
        Ok(IdList::NotAnArray)
    }
    fn visit_unit<E>(self) -> Result<IdList, E> {
        Ok(IdList::NotAnArray)
    }
}

/// One element of `ids`. Only a JSON integer in range is valid: `"1"`, `1.5`,
/// `2.0`, `true` and `null` are not (serde_json reads `2.0` as a float).
enum RawId {
    Valid(ItemId),
    Invalid(&'static str),
}

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawIdVisitor)
    }
}

struct RawIdVisitor;

impl<'de> Visitor<'de> for RawIdVisitor {
    type Value = RawId;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_u64<E>(self, n: u64) -> Result<RawId, E> {
        Ok(ItemId::new(n).map_or(RawId::Invalid("an integer out of range"), RawId::Valid))
    }
    fn visit_i64<E>(self, _: i64) -> Result<RawId, E> {
        Ok(RawId::Invalid("a negative integer"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<RawId, E> {
        Ok(RawId::Invalid("a number that is not a JSON integer"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<RawId, E> {
        Ok(RawId::Invalid("a boolean"))
    }
    fn visit_str<E>(self, _: &str) -> Result<RawId, E> {
        Ok(RawId::Invalid("a string"))
    }
    fn visit_unit<E>(self) -> Result<RawId, E> {
        Ok(RawId::Invalid("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawId, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawId::Invalid("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawId, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(RawId::Invalid("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<(Vec<ItemId>, Priority), ApiError> {
        let valid = serde_json::from_str::<IngestBody>(json)
            .unwrap()
            .validate(1000, &crate::queue::Queues::default_only())?;
        Ok((valid.ids, valid.priority))
    }

    #[test]
    fn keeps_ids_in_order_with_repeats_and_ignores_unknown_fields() {
        let (ids, priority) =
            decode(r#"{"ids": [5, 1, 5, 1000000007], "priority": "low", "later": {"x": 1}}"#)
                .unwrap();
        let raw: Vec<u32> = ids.iter().map(|i| i.get()).collect();
        assert_eq!(raw, [5, 1, 5, 1_000_000_007]);
        assert_eq!(priority, Priority::Low);
    }

    #[test]
    fn lists_every_offending_field() {
        let err = decode(
            r#"{"ids": [1, "2", 1.5, 2.0, true, null, 0, 1000000008, -3], "priority": "urgent"}"#,
        )
        .unwrap_err();
        let fields: Vec<&str> = err.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "ids[1]", "ids[2]", "ids[3]", "ids[4]", "ids[5]", "ids[6]", "ids[7]", "ids[8]",
                "priority"
            ]
        );
    }

    #[test]
    fn too_many_ids_is_too_large() {
        let ids: Vec<String> = (1..=1001).map(|i| i.to_string()).collect();
        let err = decode(&format!(
            r#"{{"ids": [{}], "priority": "HIGH"}}"#,
            ids.join(",")
        ))
        .unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    }
}
